"""The descriptor of a Nystrom CKN as a differentiable function of its free parameters.

For supervised fine-tuning (``ckn.finetune``) every step recomputes, from the
current parameters, each kernel layer of ``ckn.kernel_layer_apply`` with

  z_l = v_l / |v_l|                      (filters on the unit sphere)
  L   = (kappa(Z Z^T) + lam I)^{-1/2}    (:func:`nystrom_map`)

so that gradients flow through the kernel AND the Nystrom map (GLOBAL_NOTES
section 4; [P3] section 3). alpha = 1/sigma^2 and the bias -1/sigma^2 stay
fixed (sigma is the unsupervised one). Choices:

* The inverse square root is an eigendecomposition with a custom JVP, the
  Daleckii-Krein formula dF = V (G o (V^T dK V)) V^T, whose divided
  differences of f(w) = w^{-1/2} have the closed form
  G_ij = -1 / (s_i s_j (s_i + s_j)), s = sqrt(w): exact, free of cancellation
  and finite for equal eigenvalues, so no floor on |w_i - w_j| is needed.
  JAX's own eigh derivative divides by w_i - w_j and gives NaN for equal
  eigenvalues (orthogonal filters: tested); coupled Newton-Schulz iterations
  need ~30 iterations at the condition numbers of trained layers (~4e3,
  ckn-grad on the default data). Measured (64 filters; float64 gradients
  against central differences, relative error): eigh+JVP 3e-10,
  Newton-Schulz(30) 7e-11; float32 value + gradient on the 2-core CPU:
  1.5 ms vs 5.0 ms.
* Filters are parametrized as v / |v| (and ``ckn.finetune`` renormalizes v
  after each step), so the gradient is tangent to the sphere.
* The layers are ``ckn.kernel_layer_apply`` itself (every path, the
  small-sub-patch one included) with its ``sqrt`` option set to a square root
  whose derivative at 0 is 0: with ``jnp.sqrt`` a flat region gives
  sqrt'(0) * 0 = NaN gradients.
* ``trainable`` ("filters" plus any of "+input", "+lam", "+linear"):
  "input" adds the first layer's pre-processing matrix (centring of ckn-raw,
  whitening of ckn-white; the gradient map of ckn-grad has no learned array,
  so for it "+input" adds nothing); "lam" each layer's lam (as log lam);
  "linear" a (p, p) matrix W_l after each Nystrom map (linear = L(Z) W,
  W = I for a model of ``ckn.train``): supervised metric learning on the
  kernel features, still a ``ckn.save`` model, but no longer a Nystrom layer
  (it can be fine-tuned again only with "+linear"); "projection" the model's
  (D, k) map of the descriptor (``CKNConfig.projection``), with the filters or
  alone (a fixed network).
  NIPS 2014 layers are refused.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ckn._src import ops
from ckn._src.errors import InputError
from ckn._src.layers import CKN, LayerParams, kernel_layer_apply

#: What ``trainable`` may name, joined by "+" ("filters" always, e.g. "filters+linear",
#: or "projection" alone: the descriptor's projection on a fixed network).
TRAINABLE_PARTS = ("filters", "input", "lam", "linear", "projection")


def trainable_parts(trainable: str) -> tuple[str, ...]:
    """The parts of a ``trainable`` string, checked.

    Raises:
      InputError: an unknown or repeated part, or no "filters" (except "projection" alone).
    """
    parts = tuple(trainable.split("+"))
    bad = len(set(parts)) != len(parts) or set(parts) - set(TRAINABLE_PARTS)
    if bad or ("filters" not in parts and parts != ("projection",)):
        raise InputError(
            "trainable must be 'filters' plus any of +input, +lam, +linear, +projection, "
            f"or 'projection' alone, got {trainable!r}"
        )
    return parts


# --- Differentiable Nystrom map --------------------------------------------------------------


@jax.custom_jvp
def _inverse_sqrt(k: jax.Array) -> jax.Array:
    w, v = jnp.linalg.eigh(k)
    w = jnp.maximum(w, 1e-12 * jnp.max(w))  # the floor of ops.inverse_sqrt_psd
    return (v * lax.rsqrt(w)[None, :]) @ v.T


@_inverse_sqrt.defjvp
def _inverse_sqrt_jvp(primals, tangents):
    (k,), (dk,) = primals, tangents
    w, v = jnp.linalg.eigh(k)
    s = jnp.sqrt(jnp.maximum(w, 1e-12 * jnp.max(w)))
    out = (v * (1.0 / s)[None, :]) @ v.T
    g = -1.0 / (s[:, None] * s[None, :] * (s[:, None] + s[None, :]))
    dk = 0.5 * (dk + dk.T)
    return out, v @ (g * (v.T @ dk @ v)) @ v.T


def nystrom_map(filters: jax.Array, alpha: jax.Array | float, lam: jax.Array | float) -> jax.Array:
    """(kappa(Z Z^T) + lam I)^{-1/2} with a derivative that is exact for equal eigenvalues.

    The same value as ``ckn.ops.nystrom_projection`` with alpha = 1/sigma^2
    (up to float rounding), differentiable in ``filters``, ``alpha`` and
    ``lam`` (see the module docstring for the JVP).

    Args:
      filters: (p, d) unit-norm filters Z.
      alpha: () 1/sigma^2, kappa(u) = exp(alpha (u - 1)).
      lam: () ridge lambda.

    Returns:
      (p, p) symmetric matrix.
    """
    p = filters.shape[0]
    gram = jnp.exp(alpha * (jnp.matmul(filters, filters.T, precision="highest") - 1.0))
    return _inverse_sqrt(gram + lam * jnp.eye(p, dtype=gram.dtype))


@jax.custom_jvp
def _safe_sqrt(s: jax.Array) -> jax.Array:
    return jnp.sqrt(s)


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (s,), (ds,) = primals, tangents
    r = jnp.sqrt(s)
    return r, jnp.where(s > 0, ds * 0.5 / jnp.where(s > 0, r, 1.0), 0.0)


def unit_rows(v: jax.Array) -> jax.Array:
    """(p, d) rows scaled to unit norm (a zero row stays zero, with a finite derivative)."""
    return v / _safe_sqrt(jnp.sum(v * v, axis=1, keepdims=True))


def _layer_arrays(model: CKN, params: dict, dtype) -> list[LayerParams]:
    """Every layer's arrays, with the trainable ones from ``params`` (Nystrom map recomputed)."""
    out = []
    for i, layer in enumerate(model.layers):
        z = unit_rows(params["filters"][i] if "filters" in params else layer.filters.get_value())
        alpha = layer.alpha.get_value().astype(dtype)
        lam = jnp.exp(params["log_lam"][i]) if "log_lam" in params else layer.config.lam
        if i == 0 and "preproc" in params:
            pre = params["preproc"]
        else:
            pre = None if layer.preproc is None else layer.preproc.get_value().astype(dtype)
        bias = layer.bias.get_value().astype(dtype)
        linear = nystrom_map(z, alpha, lam)
        if "linear" in params:
            linear = jnp.matmul(linear, params["linear"][i], precision="highest")
        out.append(LayerParams(z, alpha, bias, linear, pre))
    return out


def forward(graphdef, state, params: dict, patches: jax.Array) -> jax.Array:
    """(B, H, W[, C]) patches -> (B, D) descriptors as ``CKN.describe``, differentiable in params.

    ``graphdef, state = split(model)``; ``params`` as :func:`initial_params` returns them.
    """
    model = nnx.merge(graphdef, state)
    dtype = jax.tree.leaves(params)[0].dtype
    x = model.input_map(patches).astype(dtype)
    for lp, layer in zip(_layer_arrays(model, params, dtype), model.layers):
        x = kernel_layer_apply(x, lp, layer.config, precision=model.precision, sqrt=_safe_sqrt)
    if model.config.normalize == "position":
        x = x / jnp.maximum(_safe_sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), 1e-12)
    x = x.reshape(x.shape[0], -1)
    x = x / jnp.maximum(_safe_sqrt(jnp.sum(x * x, axis=1, keepdims=True)), 1e-12)
    return project(model, params, x)


def project(model: CKN, params: dict, x: jax.Array) -> jax.Array:
    """(B, D) normalized last maps -> the descriptors: the projection of ``params`` (trained)
    or of the model (fixed), if any (``ckn.ops.project_descriptors``); else ``x``."""
    if "projection" in params:
        return ops.project_descriptors(x, params["projection"], precision=model.precision)
    if model.projection is not None:
        return ops.project_descriptors(x, model.projection.get_value(), precision=model.precision)
    return x


def _check_nystrom(model: CKN, *, free_linear: bool = False) -> None:
    for i, layer in enumerate(model.layers):
        alpha = float(layer.alpha.get_value())
        nystrom = np.allclose(np.asarray(layer.bias.get_value()), -alpha, rtol=1e-5)
        if not free_linear:
            linear = np.asarray(layer.linear.get_value())
            z = unit_rows(layer.filters.get_value())
            ref = np.asarray(nystrom_map(z, layer.alpha.get_value(), layer.config.lam))
            nystrom = nystrom and np.abs(linear - ref).max() <= 1e-2 * np.abs(ref).max()
        if model.config.train.method == "nips14" or not nystrom:
            raise InputError(
                f"layer {i + 1} is not a Nystrom layer: fine-tuning needs alpha = 1/sigma^2, "
                "bias = -1/sigma^2 and (unless +linear trains) the Nystrom map of the filters; "
                "NIPS 2014 layers or a map learned with +linear do not qualify"
            )


def _linear_factor(layer) -> jax.Array:
    """W with linear = nystrom_map(Z) W: (kappa(Z Z^T) + lam I)^{1/2} linear (I for ckn.train's)."""
    z = np.asarray(unit_rows(layer.filters.get_value()), np.float64)
    alpha = float(layer.alpha.get_value())
    w, v = np.linalg.eigh(np.exp(alpha * (z @ z.T - 1.0)) + layer.config.lam * np.eye(z.shape[0]))
    half = (v * np.sqrt(np.maximum(w, 1e-12 * w.max()))) @ v.T
    return jnp.asarray(half @ np.asarray(layer.linear.get_value(), np.float64), jnp.float32)


def initial_params(model: CKN, trainable: str = "filters") -> dict:
    """The free parameters of a model, as :func:`descriptor_function` takes them.

    Args:
      model: a Nystrom CKN.
      trainable: "filters" plus any of "+input", "+lam", "+linear" (module docstring).

    Returns:
      {"filters": tuple of (p_l, d_l) unit rows (unless "projection" alone); with
      "+input" on a model with a pre-processing matrix "preproc": (d_0, d_0); with
      "+lam" "log_lam": tuple of () per layer; with "+linear" "linear": tuple of
      (p_l, p_l) W_l; with "projection" the model's (D, k) "projection"}.

    Raises:
      InputError: not a Nystrom model, a bad ``trainable``, lam = 0 with "+lam", or
        "projection" on a model without one.
    """
    parts = trainable_parts(trainable)
    _check_nystrom(model, free_linear="linear" in parts)
    params = {}
    if "filters" in parts:
        params["filters"] = tuple(unit_rows(lay.filters.get_value()) for lay in model.layers)
    if "projection" in parts:
        if model.projection is None:
            raise InputError(
                "training the projection needs a model with one (CKNConfig.projection)"
            )
        params["projection"] = model.projection.get_value()
    if "input" in parts and model.layers[0].preproc is not None:
        params["preproc"] = model.layers[0].preproc.get_value()
    if "lam" in parts:
        if any(lay.config.lam <= 0 for lay in model.layers):
            raise InputError("training lam needs lam > 0 in every layer (it is learned as log lam)")
        params["log_lam"] = tuple(jnp.log(jnp.float32(lay.config.lam)) for lay in model.layers)
    if "linear" in parts:
        params["linear"] = tuple(_linear_factor(lay) for lay in model.layers)
    return params


@functools.lru_cache(maxsize=32)
def _graphdef(config, precision: str):
    return nnx.split(nnx.eval_shape(lambda: CKN(config, rngs=nnx.Rngs(0), precision=precision)))[0]


def split(model: CKN):
    """``nnx.split(model)`` with one graph per (config, precision).

    A model built by ``CKN(...)`` and the same model read back by ``ckn.load``
    have graphs that differ in Flax's bookkeeping only; jitted functions
    keyed on this graph compile once for both.
    """
    return _graphdef(model.config, model.precision), nnx.state(model)


def descriptor_function(model: CKN) -> Callable[[dict, jax.Array], jax.Array]:
    """The model's descriptors as a pure function of its free parameters.

    ``fn(params, patches)`` equals ``model.describe(patches)`` (up to float
    rounding) at ``params = initial_params(model, ...)`` and is differentiable
    in ``params``; all parameters in float64 give a float64 computation
    after the (fixed) input map.

    Args:
      model: a Nystrom CKN.

    Returns:
      fn(params, (B, H, W[, C]) patches) -> (B, D) L2-normalized descriptors.
    """
    _check_nystrom(model, free_linear=True)
    graphdef, state = split(model)
    return functools.partial(forward, graphdef, state)


@functools.partial(jax.jit, static_argnames="graphdef")
def _materialize(graphdef, state, params):
    """The arrays of every layer for the current parameters (filters, linear, preproc)."""
    params = {k: v for k, v in params.items() if k != "projection"}
    model = nnx.merge(graphdef, state)
    return [(lp.filters, lp.linear, lp.preproc) for lp in _layer_arrays(model, params, jnp.float32)]


def install(model: CKN, params: dict) -> CKN:
    """A new model: ``model`` with ``params`` installed (Nystrom maps recomputed, lam
    written into the config if trained); ``model`` is not modified."""
    if set(params) == {"projection"}:  # a fixed network: its arrays kept bit for bit
        new = nnx.clone(model)
        new.projection.set_value(params["projection"])
        return new
    graphdef, state = split(model)
    arrays = _materialize(graphdef, state, params)
    cfg = model.config
    if "log_lam" in params:
        lams = [float(jnp.exp(v)) for v in params["log_lam"]]
        cfg = dataclasses.replace(
            cfg, layers=tuple(dataclasses.replace(lc, lam=lam) for lc, lam in zip(cfg.layers, lams))
        )
    new = nnx.eval_shape(lambda: CKN(cfg, rngs=nnx.Rngs(0), precision=model.precision))
    for old, layer, (z, linear, pre) in zip(model.layers, new.layers, arrays):
        layer.filters.set_value(z)
        layer.linear.set_value(linear)
        layer.alpha.set_value(old.alpha.get_value())
        layer.bias.set_value(old.bias.get_value())
        if layer.preproc is not None:
            layer.preproc.set_value(pre)
    if new.projection is not None:
        new.projection.set_value(params.get("projection", model.projection.get_value()))
    return new
