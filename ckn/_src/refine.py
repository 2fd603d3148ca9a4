"""Refining a layer's filters after k-means: the Nystrom residual and the NIPS 2014 objective.

The ``"kmeans+nystrom"`` method runs Adam on the Nystrom residual of the sub-patches
(:func:`refine_nystrom`, filters renormalized after each step); ``"nips14"`` fits the
kernel-approximation objective of [P2] (:func:`fit_nips14`: W initialized by k-means, eta >= 0
by projection). Each fit is one ``lax.scan`` over its steps. :func:`ckn.train` calls them per
layer (CKN_NOTES section 1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ckn._src import ops


def _optax_promotion():
    # optax's Adam computes `b1 ** count` (float ** int32), which strict dtype
    # promotion rejects; allow standard promotion inside its update only.
    return jax.numpy_dtype_promotion("standard")


# --- Nystrom residual refinement ---------------------------------------------------


def nystrom_residual(
    filters: jax.Array, x: jax.Array, sigma: float, lam: float = 1e-3
) -> jax.Array:
    """(1/2n) sum_i (1 - k_i^T (K + lam I)^{-1} k_i), k_i = kappa(Z x~_i), K = kappa(Z Z^T).

    For unit x this is half the mean of K(x, x) - ||psi(x)||^2: the error of
    the layer's kernel approximation on the diagonal.

    Args:
      filters: (p, d) unit-norm filters.
      x: (n, d) unit-norm sub-patches.
    """
    p = filters.shape[0]
    gram = ops.kappa(filters @ filters.T, sigma) + lam * jnp.eye(p, dtype=filters.dtype)
    kx = ops.kappa(x @ filters.T, sigma)
    sol = jnp.linalg.solve(gram, kx.T)
    return 0.5 * jnp.mean(1.0 - jnp.sum(kx * sol.T, axis=1))


@functools.partial(jax.jit, static_argnames=("steps", "batch"))
def refine_nystrom(key, filters, x, *, sigma, lam, steps, batch, lr):
    """Adam on ``nystrom_residual`` over random minibatches; rows renormalized after each step.

    ``sigma``, ``lam`` and ``lr`` are traced: a new value (another layer) reuses
    the compiled function; ``steps`` and ``batch`` fix shapes and are static.

    Returns:
      (filters (p, d), residual per step (steps,)).
    """
    tx = optax.adam(lr)

    def step(carry, k):
        z, opt = carry
        xb = x[jax.random.randint(k, (batch,), 0, x.shape[0])]
        loss, g = jax.value_and_grad(nystrom_residual)(z, xb, sigma, lam)
        with _optax_promotion():
            upd, opt = tx.update(g, opt, z)
        z = optax.apply_updates(z, upd)
        z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return (z, opt), loss

    (z, _), losses = lax.scan(step, (filters, tx.init(filters)), jax.random.split(key, steps))
    return z, losses


# --- The NIPS 2014 objective ------------------------------------------------------------


def nips14_features(x: jax.Array, w: jax.Array, sigma: float) -> jax.Array:
    """exp(-||x - w_l||^2 / sigma^2) for rows x (n, d) and anchors w (p, d) -> (n, p)."""
    d2 = jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * x @ w.T + jnp.sum(w * w, axis=1)[None, :]
    return jnp.exp(-jnp.maximum(d2, 0.0) / (sigma * sigma))


def nips14_loss(params, x, y, sigma):
    """Mean squared error of sum_l eta_l f_l(x) f_l(y) against exp(-||x - y||^2 / (2 sigma^2))."""
    w, eta = params
    model = (nips14_features(x, w, sigma) * nips14_features(y, w, sigma)) @ eta
    target = jnp.exp(-jnp.sum((x - y) ** 2, axis=1) / (2.0 * sigma * sigma))
    return jnp.mean((model - target) ** 2)


def nips14_pairs(key, x, batch, candidates: int = 256):
    """Pairs for the NIPS 2014 objective: half random pairs, half near pairs.

    A near pair joins an anchor with the most similar of ``candidates`` random
    rows, so that the targets cover the whole range of the kernel, not only
    the near-zero values of random pairs. (A reconstruction: no source gives
    the pair sampling.)
    """
    ka, kb, kc = jax.random.split(key, 3)
    n = x.shape[0]
    anchors = x[jax.random.randint(ka, (batch,), 0, n)]
    half = batch // 2
    rand = x[jax.random.randint(kb, (half,), 0, n)]
    cand = x[jax.random.randint(kc, (batch - half, candidates), 0, n)]
    sims = jnp.einsum("bd,bcd->bc", anchors[half:], cand)
    # Exclude exact copies of the anchor (similarity 1) from being the "near" row.
    sims = jnp.where(sims > 1.0 - 1e-6, -jnp.inf, sims)
    near = jnp.take_along_axis(cand, jnp.argmax(sims, axis=1)[:, None, None], axis=1)[:, 0]
    return anchors, jnp.concatenate([rand, near])


@functools.partial(jax.jit, static_argnames=("steps", "batch"))
def fit_nips14(key, w0, x, *, sigma, steps, batch, lr):
    """Adam on ``nips14_loss`` over fresh pairs each step, eta projected onto eta >= 0.

    ``sigma`` and ``lr`` are traced (no recompilation for a new value).

    eta is initialized by least squares on a first batch of pairs (clipped at 0).

    Returns:
      (w (p, d), eta (p,), loss per step (steps,)).
    """
    k0, kloop = jax.random.split(key)
    xa, ya = nips14_pairs(k0, x, max(batch, 4 * w0.shape[0]))
    feats = nips14_features(xa, w0, sigma) * nips14_features(ya, w0, sigma)
    target = jnp.exp(-jnp.sum((xa - ya) ** 2, axis=1) / (2.0 * sigma * sigma))
    eta0 = jnp.maximum(jnp.linalg.lstsq(feats, target)[0], 0.0)
    tx = optax.adam(lr)
    params = (w0, eta0)

    def step(carry, k):
        p, opt = carry
        xb, yb = nips14_pairs(k, x, batch)
        loss, g = jax.value_and_grad(nips14_loss)(p, xb, yb, sigma)
        with _optax_promotion():
            upd, opt = tx.update(g, opt, p)
        w, eta = optax.apply_updates(p, upd)
        return ((w, jnp.maximum(eta, 0.0)), opt), loss

    ((w, eta), _), losses = lax.scan(
        step, (params, tx.init(params)), jax.random.split(kloop, steps)
    )
    return w, eta, losses
