"""CKN layers and networks as Flax NNX modules (channels last).

A kernel layer maps a feature map x (N, H, W, C) to

  psi(x) = P( rho * exp(alpha * <w_l, x~> + b_l) )_l  @  L

where x~ = x / max(rho, eps) is the normalized sub-patch at each position,
rho its norm, P the Gaussian pooling and L a (p, p) linear map. This one
form covers both training methods:
  Nystrom ([P3]):  alpha = 1/sigma^2, b_l = -1/sigma^2 (so the term is
                   rho * kappa(<z_l, x~>)), L = (kappa(Z Z^T) + lam I)^{-1/2};
  NIPS 2014 ([P2]): alpha = 2/sigma^2, b_l = log sqrt(eta_l) - (1 + ||w_l||^2)/sigma^2
                   (so the term is rho sqrt(eta_l) exp(-||x~ - w_l||^2/sigma^2)), L = I.
Pooling and L are linear and commute, so L is applied after pooling where
the map is smallest (CKN_NOTES section 1.6).

All arrays learned without gradients are ``Filters`` variables, so an
optimizer built with ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` leaves them
alone and ``nnx.state(model, Filters)`` selects them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ckn._src import ops
from ckn._src.config import CKNConfig, LayerConfig
from ckn._src.sharding import BATCH

# Matrix-product precisions, named as JAX names them (jnp/lax accept these strings).
PRECISIONS = (
    "highest",  # true fp32 everywhere (TF32 off on GPUs)
    "default",  # the backend's fastest (TF32/bf16 passes on GPUs)
)


def check_precision(precision: str) -> str:
    """Returns ``precision`` if it is one of ``PRECISIONS``, else raises ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


# Up to this sub-patch dimension d = e*e*C, a layer with a pre-processing matrix
# (the first layer of CKN-raw / CKN-white) computes its products as d
# multiply-adds of shifted maps per output value instead of matrix products:
# XLA then fuses the products, the norms and the kernel embedding into one loop
# that writes the (N, H, W, p) map once (see ``_small_subpatch_products``).
_SMALL_SUBPATCH = 32


class Filters(nnx.Variable):
    """Arrays learned without gradients (k-means filters, Nystrom map, whitening)."""


class LayerParams(NamedTuple):
    """The arrays of one kernel layer (see the module docstring).

    Attributes:
      filters: (p, d) filters, d = subpatch^2 * C.
      alpha: () scale of the dot products.
      bias: (p,) offsets.
      linear: (p, p) map applied after pooling.
      preproc: (d, d) matrix applied to every sub-patch before normalization
        (centring / whitening), or None.
    """

    filters: jax.Array
    alpha: jax.Array
    bias: jax.Array
    linear: jax.Array
    preproc: jax.Array | None = None


def kernel_layer_apply(
    x: jax.Array,
    params: LayerParams,
    cfg: LayerConfig,
    *,
    precision: str | None = None,
    sqrt: Callable[[jax.Array], jax.Array] = jnp.sqrt,
) -> jax.Array:
    """One kernel layer, as a pure function (see the module docstring).

    Args:
      x: (N, H, W, C) input map.
      params: the layer's arrays.
      cfg: the layer's settings (sub-patch, padding, subsampling, pooling); static under jit.
      precision: matrix-product precision ("highest", "default") or None (JAX's default).
      sqrt: the square root of the sub-patch norms: ``jnp.sqrt``, or, for gradients
        (``ckn.finetune``), one with a finite derivative at 0 (``jnp.sqrt``'s is infinite,
        and a flat region would give NaN gradients); the values are the same.

    Returns:
      (N, H', W', p) output map.
    """
    filters, alpha, bias, linear, preproc = params
    subpatch, padding = cfg.subpatch, cfg.padding
    c = x.shape[-1]
    p = filters.shape[0]
    if preproc is not None and subpatch * subpatch * c <= _SMALL_SUBPATCH:
        zx, rho = _small_subpatch_products(x, filters, preproc, subpatch, padding, precision, sqrt)
    elif preproc is not None:
        # Pre-processed sub-patch vectors at every position, then 1x1 products.
        y = ops.conv(x, preproc.reshape(subpatch, subpatch, c, -1), padding, precision=precision)
        rho = sqrt(jnp.sum(y * y, axis=-1, keepdims=True))  # jnp.linalg.norm's own formula
        zx = jnp.matmul(y, filters.T, precision=precision)
    else:
        # Z^T x at all positions is one convolution; ||x||^2 is the e x e box
        # sum of the per-position sums of squares (a convolution of x^2 with a
        # ones kernel, done as shifted adds: 8x less time than a 1-channel conv).
        zx = ops.conv(x, filters.T.reshape(subpatch, subpatch, c, p), padding, precision=precision)
        rho = sqrt(ops.box_sum(jnp.sum(x * x, axis=-1, keepdims=True), subpatch, padding))
    u = zx / jnp.maximum(rho, ops.NORM_EPS)
    # Norms below eps are float rounding of a flat region (XLA fuses a*k - b*k
    # into an FMA, so equal inputs need not cancel exactly): count them as 0,
    # so that a flat patch gives exactly the zero descriptor.
    rho = jnp.where(rho > ops.NORM_EPS, rho, 0.0)
    phi = rho * jnp.exp(alpha * u + bias.reshape(1, 1, 1, p))
    phi = ops.gaussian_pool(
        phi, cfg.subsampling, mode=cfg.pooling, std=cfg.pool_std, precision=precision
    )
    return jnp.matmul(phi, linear, precision=precision)


def _small_subpatch_products(
    x: jax.Array,
    filters: jax.Array,
    preproc: jax.Array,
    subpatch: int,
    padding: str,
    precision: str | None,
    sqrt: Callable[[jax.Array], jax.Array] = jnp.sqrt,
) -> tuple[jax.Array, jax.Array]:
    """Z^T (x P) and ||x P|| at every position, for sub-patches of few values.

    With d = e*e*C values per sub-patch, each is a shifted map x_k (N, H', W');
    the pre-processed vector is y_j = sum_k x_k P[k, j] and Z^T y = sum_k x_k
    (P Z^T)[k]: d multiply-adds per output value, in elementwise form. XLA
    fuses them with the kernel embedding that follows, so the (N, H', W', p)
    map is written once; matrix products with d = 9 rows (ckn-ref64's first
    layer) ran far below the machine's rate and wrote the map twice more.

    Args:
      x: (N, H, W, C) input map.
      filters: (p, d) filters Z.
      preproc: (d, d) pre-processing matrix P (centring or whitening).
      subpatch, padding: the layer's sub-patch geometry.
      precision: precision of the one small product P Z^T.
      sqrt: the square root of the norms (see :func:`kernel_layer_apply`).

    Returns:
      (zx (N, H', W', p), rho (N, H', W', 1)).
    """
    maps = ops.shifted_maps(x, subpatch, padding)
    cols = [m[..., k] for m in maps for k in range(x.shape[-1])]  # (row, column, channel) order
    y = [_weighted_sum(cols, preproc[:, j]) for j in range(len(cols))]
    rho = sqrt(_weighted_sum(y, y))[..., None]
    w = jnp.matmul(preproc, filters.T, precision=precision)  # (d, p)
    zx = _weighted_sum([col[..., None] for col in cols], w.reshape(len(cols), 1, 1, 1, -1))
    return zx, rho


def _weighted_sum(terms: list[jax.Array], weights) -> jax.Array:
    """sum_k terms[k] * weights[k], left to right."""
    out = terms[0] * weights[0]
    for k in range(1, len(terms)):
        out = out + terms[k] * weights[k]
    return out


class KernelLayer(nnx.Module):
    """A CKN layer: sub-patches, kernel embedding, Gaussian pooling, Nystrom map.

    Args:
      in_channels: C of the input map.
      config: the layer's settings.
      preprocess: optional (d, d) matrix applied to each sub-patch before
        normalization (the centring / whitening of the first layer of
        CKN-raw / CKN-white); learned at training for whitening.
      rngs: random filters until the layer is trained.
    """

    def __init__(
        self,
        in_channels: int,
        config: LayerConfig,
        *,
        preprocess: np.ndarray | None = None,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.in_channels = in_channels
        d = config.subpatch**2 * in_channels
        z = jax.random.normal(rngs.params(), (config.filters, d), jnp.float32)
        z = z / jnp.linalg.norm(z, axis=1, keepdims=True)
        sigma = 0.6 if config.sigma == "auto" else float(config.sigma)
        self.filters = Filters(z)
        self.alpha = Filters(jnp.asarray(1.0 / sigma**2, jnp.float32))
        self.bias = Filters(jnp.full((config.filters,), -1.0 / sigma**2, jnp.float32))
        self.linear = Filters(ops.nystrom_projection(z, sigma, config.lam))
        self.preproc = None if preprocess is None else Filters(jnp.asarray(preprocess, jnp.float32))

    @property
    def input_dim(self) -> int:
        return self.config.subpatch**2 * self.in_channels

    def set_nystrom(self, filters, sigma: float) -> None:
        """Installs unit-norm filters (p, d) with the Nystrom map of bandwidth sigma."""
        filters = jnp.asarray(filters, jnp.float32)
        p = self.config.filters
        self.filters.set_value(filters)
        self.alpha.set_value(jnp.asarray(1.0 / sigma**2, jnp.float32))
        self.bias.set_value(jnp.full((p,), -1.0 / sigma**2, jnp.float32))
        self.linear.set_value(ops.nystrom_projection(filters, sigma, self.config.lam))

    def set_nips14(self, w, eta, sigma: float) -> None:
        """Installs the NIPS 2014 layer: anchors w (p, d), weights eta (p,) >= 0."""
        w = jnp.asarray(w, jnp.float32)
        eta = jnp.asarray(eta, jnp.float32)
        p = self.config.filters
        # eta = 0 gives a dead unit: floor its log so the map stays finite.
        log_sqrt_eta = 0.5 * jnp.log(jnp.maximum(eta, 1e-30))
        self.filters.set_value(w)
        self.alpha.set_value(jnp.asarray(2.0 / sigma**2, jnp.float32))
        self.bias.set_value(log_sqrt_eta - (1.0 + jnp.sum(w * w, axis=1)) / sigma**2)
        self.linear.set_value(jnp.eye(p, dtype=jnp.float32))

    @property
    def params(self) -> LayerParams:
        """The layer's current arrays."""
        return LayerParams(
            self.filters.get_value(),
            self.alpha.get_value(),
            self.bias.get_value(),
            self.linear.get_value(),
            None if self.preproc is None else self.preproc.get_value(),
        )

    def __call__(self, x: jax.Array, *, precision: str | None = None) -> jax.Array:
        return kernel_layer_apply(x, self.params, self.config, precision=precision)


class CKN(nnx.Module):
    """A convolutional kernel network: input map then kernel layers.

    Args:
      config: architecture (see ``CKNConfig`` and the presets).
      rngs: initial random filters (replaced by training).
      precision: "highest" (fp32, default) or "default" (the backend's fastest,
        e.g. TF32 on recent GPUs).

    Input: (N, H, W) or (N, H, W, C) patches, uint8 (scaled to [0, 1]) or float.

    Examples:
      >>> model = CKN(get_preset("ckn-tiny"), rngs=nnx.Rngs(0))
      >>> model.describe(jnp.zeros((2, 16, 16), jnp.uint8)).shape
      (2, 128)
    """

    def __init__(self, config: CKNConfig, *, rngs: nnx.Rngs, precision: str = "highest"):
        self.config = config
        c = config.grad_orientations if config.input == "grad" else config.in_channels
        layers = []
        for i, lc in enumerate(config.layers):
            pre = None
            if i == 0 and config.input in ("raw", "white"):
                pre = ops.centering_matrix(lc.subpatch, c)
            layers.append(KernelLayer(c, lc, preprocess=pre, rngs=rngs))
            c = lc.filters
        self.layers = nnx.List(layers)
        # A learned (D, k) map of the descriptor (``CKNConfig.projection``); zeros until set.
        proj = config.projection
        self.projection = None if proj is None else Filters(jnp.zeros(proj, jnp.float32))
        self.precision = check_precision(precision)

    def input_map(self, patches: jax.Array, *, precision: str | None = None) -> jax.Array:
        """(N, H, W[, C]) patches -> (N, H', W', C') map that feeds the first kernel layer."""
        cfg = self.config
        precision = precision or self.precision
        x = ops.select_channels(ops.to_float(patches), cfg.channels)
        x = ops.gaussian_blur(x, cfg.blur, precision=precision)
        if cfg.input == "grad":
            # Channels first while the map has K channels (see ops.gradient_planes).
            x = ops.gradient_planes(x, cfg.grad_orientations, cfg.grad_sigma)
            x = ops.gaussian_pool_planes(
                x,
                cfg.grad_subsampling,
                mode=cfg.grad_pooling,
                std=cfg.grad_pool_std,
                precision=precision,
            )
            x = jnp.moveaxis(x, 1, -1)
        return x

    def map_before(
        self, patches: jax.Array, layer_index: int, *, precision: str | None = None
    ) -> jax.Array:
        """The map that feeds kernel layer ``layer_index`` (0 = the input map)."""
        precision = precision or self.precision
        x = self.input_map(patches, precision=precision)
        for layer in self.layers[:layer_index]:
            x = layer(x, precision=precision)
        return x

    def __call__(self, patches: jax.Array, *, precision: str | None = None) -> jax.Array:
        """(N, H, W[, C]) patches -> (N, H', W', p) last map.

        ``precision`` ("highest" or "default") overrides the model's for this call.
        """
        return self.map_before(patches, len(self.layers), precision=precision)

    def describe(self, patches: jax.Array, *, precision: str | None = None) -> jax.Array:
        """(N, H, W[, C]) patches -> (N, D) float32 descriptors, L2-normalized.

        ``config.normalize == "position"`` L2-normalizes each position of the
        last map before the global L2 normalization; a model with a projection
        (``config.projection``) then maps it to k dims and L2-normalizes again
        (``ckn.ops.project_descriptors``). A flat patch gives the zero vector
        (finite, never NaN).
        """
        y = self(patches, precision=precision)
        if self.config.normalize == "position":
            # Each spatial cell of the last map to unit norm first (as SIFT's
            # cells share one normalization, but without its clipping).
            y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
        y = y.reshape(y.shape[0], -1)
        norm = jnp.linalg.norm(y, axis=1, keepdims=True)
        y = y / jnp.maximum(norm, 1e-12)
        if self.projection is not None:
            y = ops.project_descriptors(y, self.projection.get_value(), precision=precision)
        return y.astype(jnp.float32)


# XLA's CPU backend emits 256-bit vector code unless told otherwise; the
# elementwise loops of the kernel maps (exp, a first layer's fused multiply-adds)
# measured faster with 512-bit vectors on the AVX-512 host (process CPU time,
# one process, interleaved rounds, load 14-17: ckn-ref64 -5 to -12%, ckn-raw
# -7%, ckn-grad -5% to +9%). A preference only: hosts without AVX-512 keep
# their vectors, other backends ignore the option.
_COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("mesh", "precision"),
    compiler_options=_COMPILER_OPTIONS,
)
def apply_describe(graphdef, state, patches, *, mesh=None, precision=None):
    """Jitted ``CKN.describe`` over a split model (compiled once per graph and shape).

    Args:
      graphdef, state: ``nnx.split(model)``.
      patches: (N, H, W[, C]); with a mesh, N is a multiple of the device
        count and the rows are split over the mesh's ``"batch"`` axis.
      mesh: a 1-D ``"batch"`` mesh (``ckn._src.sharding.batch_mesh``) or None
        (one device). Each device runs the same program on its N / devices rows.
      precision: overrides the model's matrix-product precision, or None.

    Returns:
      (N, D) float32 descriptors (sharded like ``patches``).
    """

    def local(state, x):
        return nnx.merge(graphdef, state).describe(x, precision=precision)

    if mesh is None:
        return local(state, patches)
    spec = jax.sharding.PartitionSpec
    return jax.shard_map(local, mesh=mesh, in_specs=(spec(), spec(BATCH)), out_specs=spec(BATCH))(
        state, patches
    )
