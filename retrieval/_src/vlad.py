"""VLAD: codebooks, VLFeat-order encoding (single and batched).

Given a codebook of k centres c_j (Euclidean k-means on training descriptors)
and the local descriptors x_i of one image, every descriptor goes to its
nearest centre (hard assignment, squared Euclidean distance; the lowest index
wins a tie) and

    v_j = sum over the x_i assigned to c_j of (x_i - c_j)        (k, d)

The normalizations then run in the order of VLFeat's ``vl_vlad_encode``
(``VL_VLAD_FLAG_NORMALIZE_MASS``, ``_SQUARE_ROOT``, ``_NORMALIZE_COMPONENTS``,
then the global L2 unless ``_UNNORMALIZED``), each optional, chosen by one
:class:`VladNorm` value:

1. mass normalization (``mass``): v_j /= n_j, the number of descriptors assigned to c_j
   (an empty centre keeps v_j = 0);
2. signed power (``power``): v -> sign(v) |v|^power (power 0.5 is VLFeat's signed square
   root; power 1 does nothing);
3. intra-normalization (``intra``; Arandjelovic & Zisserman, CVPR 2013):
   v_j /= max(||v_j||, 1e-12);
4. global L2 (``l2``): v /= max(||v||, 1e-12).

Residual normalization (Delhumeau et al., "Revisiting the VLAD image
representation", ACM MM 2013; not in VLFeat; ``residual``) is an extra option that replaces
each residual x_i - c_j by (x_i - c_j) / max(||x_i - c_j||, 1e-12) before the
sum. The output is v flattened centre by centre, shape (k * d,).

Residuals are formed explicitly (x_i - c_{a(i)}, then summed) rather than as
VLFeat's ``sum_i x_i - n_j c_j``: the same value in exact arithmetic, without
the cancellation that the second form suffers in float32.

Trap (CKN_NOTES section 4): encoding the very vectors the codebook was fitted
on gives tiny residuals wherever a centre sits on a single vector, and
intra-normalization blows them up to unit norm. Codebooks are therefore tested
on held-out vectors.

The flags are traced scalars under ``jit`` (not static arguments), so one
compilation of the batched encoder serves every combination. PCA-whitening of
VLADs lives in :mod:`retrieval._src.postprocess`; a model fitted on images
(local PCA, codebook, PCA-whitening) in :mod:`retrieval._src.vlad_fit`.

References:
  H. Jegou et al., "Aggregating local descriptors into a compact image
  representation", CVPR 2010. R. Arandjelovic and A. Zisserman, "All about
  VLAD", CVPR 2013. A. Vedaldi and B. Fulkerson, VLFeat ``vl_vlad_encode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from ckn.unsupervised import kmeans
from retrieval._src.checks import check_matrix

_HIGHEST = jax.lax.Precision.HIGHEST
#: Norm floor of intra- and global normalization (VLFeat's value).
NORM_FLOOR = 1e-12


class VladNorm(NamedTuple):
    """The VLAD normalizations, applied in VLFeat's order (see the module docstring).

    Attributes:
      mass: divide each v_j by the number of descriptors assigned to c_j.
      power: signed power exponent in (0, 1]; 0.5 = signed square root, 1 = none.
      intra: L2-normalize each v_j (floor 1e-12).
      l2: L2-normalize the whole vector (floor 1e-12).
      residual: L2-normalize each residual before summing.

    Python values at the public encoders; inside :func:`vlad_core` the fields
    may be traced scalars (bool, float32), so that one compilation serves every
    combination.

    Examples:
      >>> VladNorm(power=0.5, intra=True)  # signed square root + intra-normalization, then L2
    """

    mass: bool = False
    power: float = 1.0
    intra: bool = False
    l2: bool = True
    residual: bool = False


# --------------------------------------------------------------------------- checks


def _check_centers(centers) -> np.ndarray:
    c = check_matrix(centers, "centers", empty=True)
    if c.shape[0] == 0:
        raise InputError("the codebook is empty (k = 0 centres)")
    return c


def _check_norm(norm) -> VladNorm:
    if norm is None:
        return VladNorm()
    if not isinstance(norm, VladNorm):
        raise InputError(f"norm must be a VladNorm, got {type(norm).__name__}")
    power = float(norm.power)
    if not 0.0 < power <= 1.0:
        raise InputError(f"power must be in (0, 1], got {power}")
    return norm


def _traced(norm: VladNorm) -> VladNorm:
    """The flags as device scalars of fixed dtypes: every combination hits one compilation."""
    return VladNorm(
        mass=jnp.asarray(bool(norm.mass)),
        power=jnp.asarray(float(norm.power), jnp.float32),
        intra=jnp.asarray(bool(norm.intra)),
        l2=jnp.asarray(bool(norm.l2)),
        residual=jnp.asarray(bool(norm.residual)),
    )


# --------------------------------------------------------------------------- pure core


def assign(x: jax.Array, centers: jax.Array) -> jax.Array:
    """Index of the nearest centre (squared Euclidean) of each row, (n,) int32."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin.
    dots = jnp.matmul(x, centers.T, precision=_HIGHEST)
    d = jnp.sum(centers * centers, axis=1)[None, :] - 2.0 * dots
    return jnp.argmin(d, axis=1).astype(jnp.int32)


def vlad_core(
    x: jax.Array, mask: jax.Array, centers: jax.Array, norm: VladNorm | None = None
) -> jax.Array:
    """VLAD of one padded set of descriptors; pure and jit-able.

    Args:
      x: (n, d) descriptors, padded rows allowed.
      mask: (n,) bool, True for real rows; padded rows contribute nothing.
      centers: (k, d) codebook.
      norm: the normalizations (None: global L2 only); fields Python values or
        traced scalars (bool, float32), so that one compilation serves every
        combination.

    Returns:
      (k * d,) float32 VLAD vector.
    """
    norm = VladNorm() if norm is None else norm
    k, d = centers.shape
    a = assign(x, centers)
    r = x - centers[a]
    rn = r / jnp.maximum(jnp.linalg.norm(r, axis=1, keepdims=True), NORM_FLOOR)
    r = jnp.where(norm.residual, rn, r)
    w = mask.astype(x.dtype)
    # One-hot (n, k) times (n, d): exact sums, and a matmul rather than a scatter.
    onehot = (a[:, None] == jnp.arange(k, dtype=jnp.int32)[None, :]).astype(x.dtype) * w[:, None]
    v = jnp.matmul(onehot.T, r, precision=_HIGHEST)  # (k, d)
    counts = jnp.sum(onehot, axis=0)
    v = jnp.where(norm.mass, v / jnp.maximum(counts, 1.0)[:, None], v)
    # power == 1 keeps v bit for bit (pow(|v|, 1) need not be exact).
    v = jnp.where(norm.power == 1.0, v, jnp.sign(v) * jnp.power(jnp.abs(v), norm.power))
    v = jnp.where(
        norm.intra, v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), NORM_FLOOR), v
    )
    v = v.reshape(k * d)
    return jnp.where(norm.l2, v / jnp.maximum(jnp.linalg.norm(v), NORM_FLOOR), v)


@jax.jit
def _vlad_batch(x, mask, centers, norm):
    """(B, n, d), (B, n), (k, d), VladNorm of traced scalars -> (B, k * d)."""
    return jax.vmap(lambda xi, mi: vlad_core(xi, mi, centers, norm))(x, mask)


def _bucket(n: int, minimum: int = 64) -> int:
    """Padded length: the next power of two >= n (at least ``minimum``)."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


# --------------------------------------------------------------------------- public encoders


def vlad_encode(descriptors, centers, norm: VladNorm | None = None) -> np.ndarray:
    """VLAD of the local descriptors of one image.

    Args:
      descriptors: (n, d) local descriptors, n >= 1.
      centers: (k, d) codebook (e.g. from :func:`fit_codebook`).
      norm: the normalizations (None: global L2 only).

    Returns:
      (k * d,) float32, ordered centre by centre (v_1, ..., v_k).

    Raises:
      InputError: no descriptors, wrong shapes, NaN values, a descriptor
        dimension that differs from the codebook's, a power outside (0, 1].

    Examples:
      >>> v = vlad_encode(x, centers, VladNorm(power=0.5, intra=True))  # x (n, d), centers (k, d)
    """
    c = _check_centers(centers)
    x = check_matrix(
        descriptors, "descriptors", dim=c.shape[1], dim_name="the codebook", empty=True
    )
    if x.shape[0] == 0:
        raise InputError(
            "descriptors is empty (n = 0): an image without local descriptors has no VLAD"
        )
    return vlad_encode_batch([x], c, norm, batch_size=1)[0]


def vlad_encode_batch(
    descriptors: Sequence[np.ndarray],
    centers,
    norm: VladNorm | None = None,
    *,
    batch_size: int = 8,
    pad_to: int | None = None,
) -> np.ndarray:
    """VLADs of many images with different descriptor counts, in jitted batches.

    Each image's (n_i, d) descriptors are zero-padded to a common length L with
    a validity mask, and images go through in batches of ``batch_size`` (the
    last batch padded with empty images), so a whole call compiles once, and
    later calls with the same (L, batch_size, k, d) compile nothing, whatever
    the flags (traced scalars, not static arguments): L
    is ``pad_to`` if given, else the next power of two of the largest n_i
    (at least 64).

    Args:
      descriptors: sequence of B arrays (n_i, d), n_i >= 1.
      centers: (k, d) codebook.
      norm: the normalizations, as :func:`vlad_encode`.
      batch_size: images per jitted call.
      pad_to: padded length L >= max n_i.

    Returns:
      (B, k * d) float32, row i equal to ``vlad_encode(descriptors[i], centers, norm)``.

    Raises:
      InputError: as :func:`vlad_encode`; the message names the image index.
    """
    c = _check_centers(centers)
    k, d = c.shape
    norm = _check_norm(norm)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    xs = []
    for i, x in enumerate(descriptors):
        x = check_matrix(x, f"descriptors of image {i}", dim=d, dim_name="the codebook", empty=True)
        if x.shape[0] == 0:
            raise InputError(
                f"descriptors of image {i} is empty (n = 0): "
                "an image without local descriptors has no VLAD"
            )
        xs.append(x)
    if not xs:
        return np.zeros((0, k * d), np.float32)
    longest = max(x.shape[0] for x in xs)
    length = _bucket(longest) if pad_to is None else int(pad_to)
    if length < longest:
        raise InputError(f"pad_to = {length} is below the largest descriptor count {longest}")
    traced = _traced(norm)
    cj = jnp.asarray(c)
    out = np.empty((len(xs), k * d), np.float32)
    for start in range(0, len(xs), batch_size):
        chunk = xs[start : start + batch_size]
        xb = np.zeros((batch_size, length, d), np.float32)
        mb = np.zeros((batch_size, length), bool)
        for j, x in enumerate(chunk):
            xb[j, : x.shape[0]] = x
            mb[j, : x.shape[0]] = True
        v = _vlad_batch(jnp.asarray(xb), jnp.asarray(mb), cj, traced)
        out[start : start + len(chunk)] = np.asarray(v[: len(chunk)])
    return out


# --------------------------------------------------------------------------- codebook


def fit_codebook(
    descriptors,
    k: int,
    *,
    iters: int = 30,
    max_samples: int | None = 100_000,
    seed: int = 0,
) -> np.ndarray:
    """A VLAD codebook: Euclidean k-means (``ckn.unsupervised.kmeans(spherical=False)``).

    Args:
      descriptors: (n, d) training descriptors (from images other than the
        ones to encode when possible: see the module docstring's trap).
      k: number of centres, 1 <= k <= n.
      iters: Lloyd iterations.
      max_samples: fit on this many descriptors drawn at random without
        replacement (None: all).
      seed: seeds the subsample and the k-means initialization.

    Returns:
      (k, d) float32 centres.

    Raises:
      InputError: wrong shape, NaN values, fewer than k descriptors.
    """
    x = check_matrix(descriptors, "descriptors", empty=True)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise InputError(
            f"a codebook of k = {k} centres needs at least {k} training descriptors, got {n}"
        )
    if iters < 1:
        raise InputError(f"iters must be >= 1, got {iters}")
    if max_samples is not None and n > max_samples:
        if max_samples < k:
            raise InputError(f"max_samples = {max_samples} is below k = {k}")
        idx = np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))
        x = x[idx]
    centers, _ = kmeans(
        jnp.asarray(x), k, key=seed, iters=iters, spherical=False, precision=_HIGHEST
    )
    return np.asarray(centers, np.float32)
