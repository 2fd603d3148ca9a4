"""The pure forward of a head: :class:`HeadParams` -> pooled, projected, whitened vectors
(:func:`head_forward` and its parts, jitted copies, chunked evaluation over a set)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from retrieval._src import pooling
from retrieval._src.global_head.config import (
    DESCRIBE_CHUNK,
)


class HeadParams(NamedTuple):
    """Parameters of a head (a pytree; absent parts are None).

    Attributes:
      p: () GeM exponent (gem).
      shift: (C,) region shift m (rmac).
      proj: (C, D0) region projection W (rmac).
      w_shift: (D0,) whitening shift (whiten).
      w_proj: (D0, D) whitening matrix (whiten).
    """

    p: jax.Array | None = None
    shift: jax.Array | None = None
    proj: jax.Array | None = None
    w_shift: jax.Array | None = None
    w_proj: jax.Array | None = None


def _dtype(params: HeadParams):
    return (params.p if params.p is not None else params.proj).dtype


def pool_forward(
    params: HeadParams,
    maps: jax.Array,
    mask: jax.Array | None = None,
    *,
    head: str,
    levels: int = 3,
    max_regions: int | None = None,
) -> jax.Array:
    """The head before its whitening: (N, h, w, C) maps -> (N, D0), L2-normalized.

    gem: L2(GeM_p(x)). rmac: per region r of :func:`pooling.regional_mac`,
    y_r = L2((L2(r) - m) W); then L2(sum of y_r over the valid regions).

    Args:
      params: a :class:`HeadParams` (float32, or float64 under x64).
      maps: (N, h, w, C) float maps (any float dtype; cast to the parameters').
      mask: (N, h, w) bool validity (a top-left rectangle per image), or None.
      head: "gem" or "rmac" (static).
      levels: R-MAC levels (static).
      max_regions: rmac only (static): at most this many valid regions per image
        (:func:`region_cap`); the valid slots are gathered first, so the projection
        runs on them only (the slot table has 50 slots for 3 levels, a 7 x 7 map 14
        regions). None: every slot. The result is the same when no image has more.

    Returns:
      (N, D0) in the parameters' dtype; zeros for an image without valid positions.
    """
    x = maps.astype(_dtype(params))
    if head == "gem":
        return pooling.l2_normalize(_scaled_gem(x, params.p, mask))
    regions, valid = pooling.regional_mac(x, levels, mask=mask)  # (N, R, C), (N, R)
    if max_regions is not None and max_regions < valid.shape[1]:
        first = jnp.argsort(~valid, axis=1, stable=True)[:, :max_regions]  # valid slots first
        regions = jnp.take_along_axis(regions, first[..., None], axis=1)
        valid = jnp.take_along_axis(valid, first, axis=1)
    return project_regions(params, regions, valid)


def _scaled_gem(x: jax.Array, p: jax.Array, mask: jax.Array | None) -> jax.Array:
    """GeM computed as s * GeM(x / s), s = each channel's max (not differentiated).

    The same function of x and p (GeM is positively homogeneous: GeM(c x) = c GeM(x)),
    and the same gradients, but (x / s)^p <= 1 cannot overflow: in float32 a plain
    x^p overflows for p = 32 and x = 16 (EfficientNet's maps reach 6, and 6^64 does).
    """
    valid = jnp.ones(x.shape[:3], bool) if mask is None else mask
    top = jnp.max(jnp.where(valid[..., None], x, 0.0), axis=(1, 2), keepdims=True)
    s = jax.lax.stop_gradient(jnp.maximum(top, 1e-6))  # (N, 1, 1, C), >= GeM's eps
    return pooling.gem(x / s, p, eps=1e-6 / s, mask=mask) * s[:, 0, 0, :]


def project_regions(params: HeadParams, regions: jax.Array, valid: jax.Array) -> jax.Array:
    """Gordo's aggregation of region MACs: L2(sum over valid r of L2((L2(r) - m) W)).

    The part of the rmac head that depends on its parameters (the regions do not).

    Args:
      params: with ``shift`` (C,) and ``proj`` (C, D0).
      regions: (N, R, C) region MACs (:func:`pooling.regional_mac`).
      valid: (N, R) bool.

    Returns:
      (N, D0), L2-normalized.
    """
    r = pooling.l2_normalize(regions.astype(params.proj.dtype)) - params.shift[None, None, :]
    y = pooling.l2_normalize(jnp.matmul(r, params.proj, precision="highest"))
    y = jnp.where(valid[..., None], y, 0.0)
    return pooling.l2_normalize(jnp.sum(y, axis=1))


def whiten_forward(params: HeadParams, v: jax.Array) -> jax.Array:
    """The learned whitening L2((v - m_w) W_w) of (N, D0) vectors; identity without one."""
    if params.w_proj is None:
        return v
    y = jnp.matmul(v - params.w_shift[None, :], params.w_proj, precision="highest")
    return pooling.l2_normalize(y)


def head_forward(
    params: HeadParams,
    maps: jax.Array,
    mask: jax.Array | None = None,
    *,
    head: str,
    levels: int = 3,
    max_regions: int | None = None,
) -> jax.Array:
    """A learned head: (N, h, w, C) maps (+ (N, h, w) mask) -> (N, D) L2-normalized.

    :func:`pool_forward` then :func:`whiten_forward`; pure and differentiable in
    every parameter (p included).
    """
    v = pool_forward(params, maps, mask, head=head, levels=levels, max_regions=max_regions)
    return whiten_forward(params, v)


def region_cap(mask: np.ndarray, levels: int = 3, overlap: float = 0.4) -> int:
    """The most R-MAC regions of any image of a (N, h, w) validity mask (host, exact)."""
    mask = np.asarray(mask, bool)
    vh = mask.any(axis=2).sum(axis=1)
    vw = mask.any(axis=1).sum(axis=1)
    sizes = {(int(a), int(b)) for a, b in zip(vh, vw) if a and b}
    return max((len(pooling.rmac_regions(a, b, levels, overlap)) for a, b in sizes), default=1)


_STATIC = ("head", "levels", "max_regions")
_forward = jax.jit(head_forward, static_argnames=_STATIC)
_pool = jax.jit(pool_forward, static_argnames=_STATIC)
_whiten = jax.jit(whiten_forward)


def _chunks(fn, maps: np.ndarray, mask: np.ndarray | None, chunk: int = DESCRIBE_CHUNK):
    """fn over fixed-size chunks of rows (the last one padded): one compilation per map size."""
    n = maps.shape[0]
    out = None
    size = min(chunk, n)
    for start in range(0, n, size):
        stop = min(n, start + size)
        x = np.zeros((size, *maps.shape[1:]), maps.dtype)
        x[: stop - start] = maps[start:stop]
        m = None
        if mask is not None:
            m = np.zeros((size, *mask.shape[1:]), bool)
            m[: stop - start] = mask[start:stop]
        v = np.asarray(fn(x, m))
        if out is None:
            out = np.empty((n, v.shape[1]), np.float32)
        out[start:stop] = v[: stop - start]
    return out
