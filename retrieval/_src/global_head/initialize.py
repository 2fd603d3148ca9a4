"""Initial head parameters: Gordo's PCA of R-MAC regions, Radenovic's Lw (shrunk),
each matrix rescaled to a standard initialization's scale (:func:`init_head_params`)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src import pooling
from retrieval._src.global_head.config import (
    DESCRIBE_CHUNK,
    MAX_PCA_REGIONS,
    GlobalHeadConfig,
)
from retrieval._src.global_head.forward import (
    HeadParams,
    _chunks,
    _pool,
    region_cap,
)
from retrieval._src.global_head.maps import (
    HeadMaps,
)
from retrieval._src.image_folder import group_pairs
from retrieval._src.postprocess import Whitening, fit_learned_whitening, fit_pca_whitening


def _learned_whitening(x: np.ndarray, pairs: np.ndarray, dim: int, shrinkage: float):
    """Radenovic's Lw (:func:`retrieval.image.fit_learned_whitening`), with the covariance of
    matching differences shrunk towards the identity when ``shrinkage`` > 0.

    Returns a :class:`retrieval.image.Whitening`-like (mean (D,), projection (dim, D)).
    """
    if shrinkage == 0:
        return fit_learned_whitening(x, pairs, dim=dim)
    a = np.asarray(x, np.float64)
    big_d = a.shape[1]
    q, p = pairs[:, 0], pairs[:, 1]
    mean = a[q].mean(axis=0)
    diff = a[q] - a[p]
    s = diff.T @ diff / diff.shape[0]
    s = (1.0 - shrinkage) * s + shrinkage * np.trace(s) / big_d * np.eye(big_d)
    p1 = np.linalg.inv(np.linalg.cholesky(s))  # positive definite: shrinkage > 0
    y = (a - mean) @ p1.T
    _, vec = np.linalg.eigh(y.T @ y)
    vec = vec[:, ::-1]
    big = np.argmax(np.abs(vec), axis=0)
    vec = vec * np.sign(vec[big, np.arange(big_d)])[None, :]
    return Whitening(mean, (vec.T @ p1)[:dim])


def _rescaled(matrix: np.ndarray) -> np.ndarray:
    """matrix times the scalar that brings its RMS entry to 1 / sqrt(rows) (module docstring)."""
    rms = float(np.sqrt(np.mean(matrix * matrix)))
    return matrix / max(rms * math.sqrt(matrix.shape[0]), 1e-30)


@functools.partial(jax.jit, static_argnames=("levels",))
def _unit_regions(x, mask, levels: int):
    r, valid = pooling.regional_mac(x.astype(jnp.float32), levels, mask=mask)
    return pooling.l2_normalize(r), valid


def _regions(maps: HeadMaps, levels: int, limit: int, seed: int) -> np.ndarray:
    """L2-normalized valid R-MAC region vectors of the images, at most ``limit`` (seeded sample)."""
    out = []
    for start in range(0, len(maps), DESCRIBE_CHUNK):
        sl = slice(start, start + DESCRIBE_CHUNK)
        r, valid = _unit_regions(maps.maps[sl], maps.mask[sl], levels)
        out.append(np.asarray(r)[np.asarray(valid)])
    regions = np.concatenate(out).astype(np.float64)
    if regions.shape[0] > limit:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(regions.shape[0], limit, False))
        regions = regions[keep]
    return regions


def init_head_params(maps: HeadMaps, labels, config: GlobalHeadConfig, *, seed: int = 0):
    """Initial parameters from the training maps (Gordo's PCA for rmac, Radenovic's Lw).

    Args:
      maps: the training images' :class:`HeadMaps`.
      labels: (N,) group ids (the Lw matching pairs).
      config: the head.
      seed: the region sample of the PCA when there are more than ``MAX_PCA_REGIONS``.

    Returns:
      (:class:`HeadParams` float32, info dict: dimensions and fitted sizes).

    Raises:
      InputError: a projection dimension above the regions' rank, no group of two
        images for the whitening.
    """
    c = maps.maps.shape[3]
    info: dict = {"channels": int(c)}
    params = HeadParams()
    if config.head == "gem":
        params = params._replace(p=jnp.asarray(config.p, jnp.float32))
    else:
        regions = _regions(maps, config.levels, MAX_PCA_REGIONS, seed)
        if config.dim is not None and config.dim > c:
            raise InputError(f"dim {config.dim} exceeds the backbone's {c} channels")
        try:  # the default (C) capped to what the regions span; a given dim must fit
            pca = fit_pca_whitening(regions, config.dim or c, cap=config.dim is None)
        except InputError as e:
            if config.dim is None:
                raise
            raise InputError(f"dim {config.dim} is too large for these images: {e}") from None
        dim = pca.projection.shape[0]
        if dim < c and config.dim is None:
            info["dim_capped"] = (
                f"R-MAC projection to {dim}-D instead of the default {c} (the channels): the "
                f"{regions.shape[0]} regions of the training images span {dim} directions"
            )
        params = params._replace(
            shift=jnp.asarray(pca.mean, jnp.float32),
            proj=jnp.asarray(_rescaled(pca.projection.T), jnp.float32),
        )
        info.update(pca_regions=int(regions.shape[0]), projection_dim=int(dim))
    if config.whiten:
        cap = region_cap(maps.mask, config.levels) if config.head == "rmac" else None
        fn = lambda x, m: _pool(
            params, x, m, head=config.head, levels=config.levels, max_regions=cap
        )
        v = _chunks(fn, maps.maps, maps.mask)
        pairs = group_pairs(labels)
        if pairs.shape[0] == 0:
            raise InputError("learned whitening needs groups: no group holds two training images")
        d_in, n = v.shape[1], v.shape[0]
        want = config.dim if config.head == "gem" and config.dim is not None else d_in
        if config.head == "gem" and want > d_in:
            raise InputError(f"dim {want} exceeds the whitening's input dimension {d_in}")
        # Beyond n - 1 directions the n training vectors have no variance.
        dim = min(want, n - 1)
        if dim < want and config.dim is not None:
            raise InputError(
                f"dim {config.dim} with whitening: the learned whitening of {n} training "
                f"images keeps at most {n - 1} dimensions: give a dim <= {n - 1} or more images"
            )
        if dim < want:
            info["dim_capped"] = " and ".join(
                [*([info["dim_capped"]] if "dim_capped" in info else []),
                 f"whitening to {dim}-D instead of {want}: {n} training images span at most "
                 f"{n - 1} directions"]
            )  # fmt: skip
        lw = _learned_whitening(v, pairs, dim, config.whiten_shrinkage)
        params = params._replace(
            w_shift=jnp.asarray(lw.mean, jnp.float32),
            w_proj=jnp.asarray(_rescaled(lw.projection.T), jnp.float32),
        )
        info.update(whiten_pairs=int(pairs.shape[0]), whiten_dim=int(dim))
    return params, info
