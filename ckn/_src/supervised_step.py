"""One supervised training step: Adam, a pull towards the start, the learning rate, skipped
when the gradient is not finite (optax), then the caller's projection.

``ckn.finetune`` (a CKN's filters) and retrieval's global heads (GeM p, R-MAC projection,
whitening) take the same step, inside their own jitted functions:

  g = grad loss(params)
  u = Adam(g)                                         (``optax.scale_by_adam``)
  u = u + decay (params - start)                      (:func:`pull_towards`: decoupled, L2-SP)
  params = params - (lr s) u                          (:func:`scale_by_rate`, s per leaf, 1 default)
  params = project(params)                            (unit filters; p clipped to its bounds)

as one ``optax.chain`` wrapped in ``optax.apply_if_finite``: a gradient with a NaN or an Inf
leaves the parameters and the Adam state unchanged (``finite`` False). The learning rate and the
decay are traced (a new value does not recompile); ``lr`` is this step's value of the caller's
schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any
#: Consecutive non-finite gradients skipped before one is applied: never (as before optax).
_NEVER = 2**31 - 2


def pull_towards(start: PyTree, decay) -> optax.GradientTransformation:
    """``u + decay (params - start)``: a decoupled decay towards the start (not towards 0, which
    means nothing for unit filters)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        pulled = jax.tree.map(lambda u, p, p0: u + decay * (p - p0), updates, params, start)
        return pulled, state

    return optax.GradientTransformation(init, update)


def scale_by_rate(lr, scales: PyTree | None = None) -> optax.GradientTransformation:
    """``-(lr s) u`` for each leaf with its factor s of ``scales`` (a tree like the parameters;
    None: 1 everywhere)."""

    def init(params):
        return optax.EmptyState()

    def update(updates, state, params=None):
        if scales is None:
            return jax.tree.map(lambda u: -lr * u, updates), state
        return jax.tree.map(lambda u, s: -(lr * s) * u, updates, scales), state

    return optax.GradientTransformation(init, update)


def step_optimizer(start: PyTree, lr=0.0, decay=0.0, scales: PyTree | None = None):
    """The step's ``optax.apply_if_finite(optax.chain(scale_by_adam, pull_towards,
    scale_by_rate))``; its state has the same structure for any ``lr``, ``decay``, ``scales``
    (``step_optimizer(start).init(params)`` starts a run)."""
    chain = optax.chain(
        optax.scale_by_adam(), pull_towards(start, decay), scale_by_rate(lr, scales)
    )
    return optax.apply_if_finite(chain, _NEVER)


def supervised_step(
    loss: Callable[[PyTree], jax.Array],
    params: PyTree,
    start: PyTree,
    opt_state,
    lr,
    decay,
    *,
    scales: PyTree | None = None,
    project: Callable[[PyTree], PyTree] | None = None,
):
    """One step (module docstring), traced inside the caller's jit.

    Args:
      loss: ``params -> scalar`` on this step's batch.
      params, start: the parameters and the starting point the decay pulls towards.
      opt_state: from ``step_optimizer(start).init(params)`` or a previous step.
      lr: this step's learning rate; decay: the pull towards ``start`` (both traced).
      scales: per-leaf learning-rate factors (None: 1).
      project: applied to the new parameters (e.g. unit filters), not on a skipped step.

    Returns:
      (params, opt_state, loss value, finite): ``finite`` False when the gradient was not
      finite and the step was skipped.
    """
    value, grads = jax.value_and_grad(loss)(params)
    tx = step_optimizer(start, lr, decay, scales)
    with jax.numpy_dtype_promotion("standard"):  # optax's Adam: b1 ** count (float ** int32)
        updates, new_state = tx.update(grads, opt_state, params)
    finite = new_state.last_finite
    new = optax.apply_updates(params, updates)
    if project is not None:
        new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), project(new), params)
    return new, new_state, value, finite
