"""Class-weighted convolutional features (CAM pooling) and online aggregation.

A CNN that ends in global average pooling and a linear classifier (EfficientNet-Lite0, ResNets:
``Backbone.classifier``) gives, for each ImageNet class c, a class activation map
``CAM_c = sum_k W[c, k] x_k`` over the positions of its last conv map ``x: (h, w, C)``. Jimenez
et al. pool the map once per predicted class:

1. ``CAM_c`` divided by its maximum over the image, negatives clipped to 0
   (:func:`class_activation_maps`). A map whose maximum is <= 0 is all zeros (the reference
   code divides by the negative maximum, which turns the map upside down).
2. The top ``N_C`` classes of the image's logits ``GAP(x) @ W.T + b``.
3. Per class, ``f_c = CW * sum over positions of x * CAM_c`` with CW the CroW channel weights
   ``log(sum_j Q_j / Q_k)`` of the map (Q_k the fraction of positions where channel k is
   non-zero), then L2 (:func:`cam_pool`, :func:`cam_class_vectors`).
4. Each class vector PCA-whitened and L2-normalized, summed over classes, L2-normalized
   (:func:`aggregate_class_vectors`). The whitening is fitted on class vectors of OTHER images
   (the reference fits it on the top-1 class vector of each image of the other data set:
   ``fit_pca_whitening(vectors[:, 0], dim)``).

Offline aggregation (OfA) uses each image's own top classes: ``cam_pool`` then
``aggregate_class_vectors``. Online aggregation (OnA) re-aggregates every database image with
the QUERY's classes (:func:`online_aggregation`), which needs, per database image, something from
which any class's vector can be computed.

OnA storage decision. The reference code stores each database image's class vectors for all
1000 classes (1000 x C floats). This module stores nothing of its own: OnA recomputes the class
vectors from the database images' feature maps, which the caller keeps. float16 is enough (the
OnA descriptors of random 24 x 32 x 1280 post-ReLU-like maps moved by < 1e-5). Per image of
768 x 1024 px: the EfficientNet-Lite0 map is 24 x 32 x 1280, 1.9 MiB in float16 (all-class
vectors: 2.4 MiB); the ResNet-50/101 map 24 x 32 x 2048, 3.0 MiB (class vectors: 3.9 MiB). The
map is the smaller whenever h * w < 1000 cells, and gives exact OnA for any query; the cost moves
to query time: 2 h w C N_C multiply-adds per database image and query (0.13 G for Lite0 with
N_C = 64, 0.64 T per query over Oxford5k's 5063 images). So on a CPU, OnA is meant for a
shortlist: the top R of the OfA ranking (the paper re-ranks R = 1000), whose maps are read back
(e.g. from a float16 ``np.memmap``: 9.3 GiB for all of Oxford5k with Lite0) or recomputed.

Re-ranking with the CAMs of the query's classes: :mod:`retrieval._src.cam_rerank`.

Everything on maps is jitted and mask-aware (``mask: (N, h, w)`` bool, padded images in one
bucket). ``top_classes`` is static (it sets the output shape: a new value compiles once more);
class ids are traced (a new query's classes do not recompile); re-ranking thresholds are
host-side Python floats (new values, or a new number of them, do not recompile).

References:
  A. Jimenez, J. M. Alvarez, X. Giro-i-Nieto, "Class-weighted convolutional features for visual
  instance search", BMVC 2017 (arXiv:1707.02581): CAMs, class vectors and their aggregation,
  offline / online aggregation, CAM re-ranking; code: github.com/imatge-upc/retrieval-2017-cam
  (``cam_utils.py``, ``pooling_functions.py``, ``reranking.py``). B. Zhou et al., "Learning
  deep features for discriminative localization", CVPR 2016 (CAMs). Y. Kalantidis, C. Mellina,
  S. Osindero, "Cross-dimensional weighting for aggregated deep convolutional features", ECCVW
  2016, section 3 (channel weights).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src.pooling import NORM_FLOOR, _check_maps, l2_normalize
from retrieval._src.postprocess import PCAWhitening, Whitening, apply_whitening

_HIGHEST = jax.lax.Precision.HIGHEST


class CamVectors(NamedTuple):
    """Per-class pooled vectors of images (the output of :func:`cam_pool`).

    Attributes:
      vectors: (N, N_C, C) float32 class vectors, each L2-normalized (zeros for a class whose CAM
        is zero everywhere).
      classes: (N, N_C) int32 class ids, by decreasing logit.
    """

    vectors: jax.Array
    classes: jax.Array


# --------------------------------------------------------------------------- checks


def _check_weight(weight, channels: int) -> None:
    if weight.ndim != 2 or weight.shape[1] != channels or weight.shape[0] == 0:
        raise InputError(
            f"weight must be (K, C) = (K, {channels}) classifier rows, got shape "
            f"{tuple(weight.shape)}"
        )
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise InputError(f"weight must be a float array, got dtype {weight.dtype}")


def _check_classes(classes, n: int) -> None:
    if not jnp.issubdtype(classes.dtype, jnp.integer):
        raise InputError(f"classes must be integer class ids, got dtype {classes.dtype}")
    if classes.ndim not in (1, 2) or classes.shape[-1] == 0:
        raise InputError(f"classes must be (N_C,) or (N, N_C), got shape {tuple(classes.shape)}")
    if classes.ndim == 2 and classes.shape[0] != n:
        raise InputError(f"classes must be (N, N_C) with N = {n}, got shape {tuple(classes.shape)}")


def _valid(features: jax.Array, mask: jax.Array | None) -> jax.Array:
    return jnp.ones(features.shape[:3], jnp.bool_) if mask is None else mask


# --------------------------------------------------------------------------- pure core


def _normalized_cams(raw: jax.Array, valid: jax.Array) -> jax.Array:
    """raw (N, h, w, K) -> CAM / max over valid positions, negatives and invalid positions 0."""
    peak = jnp.max(jnp.where(valid[..., None], raw, -jnp.inf), axis=(1, 2), keepdims=True)
    ok = jnp.logical_and(valid[..., None], peak > 0)
    return jnp.where(ok, jnp.maximum(raw / jnp.where(peak > 0, peak, 1.0), 0.0), 0.0)


def _crow_channel_weights(x: jax.Array, valid: jax.Array) -> jax.Array:
    """(N, C) CroW channel weights log(sum_j Q_j / Q_k) over valid positions, 0 where Q_k = 0."""
    n = jnp.maximum(jnp.sum(valid, axis=(1, 2), dtype=x.dtype), 1.0)[:, None]
    nonzero = jnp.sum(jnp.logical_and(x != 0, valid[..., None]), axis=(1, 2), dtype=x.dtype)
    q = nonzero / n
    qsum = jnp.sum(q, axis=1, keepdims=True)
    return jnp.where(q > 0, jnp.log(jnp.where(q > 0, qsum, 1.0) / jnp.where(q > 0, q, 1.0)), 0.0)


def _cams_for(x: jax.Array, rows: jax.Array, valid: jax.Array) -> jax.Array:
    """CAMs of per-image classifier rows: x (N, h, w, C), rows (N, K, C) -> (N, h, w, K)."""
    raw = jnp.einsum("nhwc,nkc->nhwk", x, rows, precision=_HIGHEST)
    return _normalized_cams(raw, valid)


def _pool_with_cams(x: jax.Array, cams: jax.Array, region: jax.Array) -> jax.Array:
    """Class vectors pooled over ``region`` (N, h, w): (N, K, C), L2-normalized."""
    cw = _crow_channel_weights(x, region)
    xm = jnp.where(region[..., None], x, 0.0)
    f = jnp.einsum("nhwc,nhwk->nkc", xm, cams, precision=_HIGHEST) * cw[:, None, :]
    return l2_normalize(f, eps=NORM_FLOOR)


def _rows(weight: jax.Array, classes: jax.Array, n: int) -> jax.Array:
    """(N, N_C, C) classifier rows of each image's classes."""
    rows = jnp.take(weight, classes, axis=0)
    return jnp.broadcast_to(rows, (n, *rows.shape[-2:])) if classes.ndim == 1 else rows


# --------------------------------------------------------------------------- public, jitted


@jax.jit
def class_activation_maps(
    features: jax.Array, weight: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Normalized class activation maps of every row of ``weight``.

    ``CAM_c = sum_k weight[c, k] features[..., k]``, divided by its maximum over the image's
    valid positions, negatives clipped to 0; all zeros when that maximum is <= 0, and 0 at
    invalid positions.

    Args:
      features: (N, h, w, C) conv maps (any float dtype; computed in float32).
      weight: (K, C) classifier rows (``Backbone.classifier[0]``, or some of its rows).
      mask: (N, h, w) bool validity, or None.

    Returns:
      (N, h, w, K) float32 in [0, 1].

    References:
      Zhou et al., CVPR 2016, section 2; Jimenez et al., BMVC 2017 (class activation maps).
    """
    _check_maps(features, mask)
    _check_weight(weight, features.shape[-1])
    x, w = features.astype(jnp.float32), weight.astype(jnp.float32)
    raw = jnp.einsum("nhwc,kc->nhwk", x, w, precision=_HIGHEST)
    return _normalized_cams(raw, _valid(features, mask))


@jax.jit
def cam_class_vectors(
    features: jax.Array,
    weight: jax.Array,
    classes: jax.Array,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Class-weighted pooled vectors of given classes (OnA: the query's classes).

    ``f_c = CW * sum over valid positions of features * CAM_c`` (CW: CroW channel weights of
    the image's valid positions), L2-normalized.

    Args:
      features: (N, h, w, C) conv maps (float16 storage is fine; computed in float32).
      weight: (K, C) classifier weight (all classes).
      classes: (N_C,) class ids for every image, or (N, N_C) per image; traced (new ids do not
        recompile). Ids outside 0..K-1 are clamped (jnp.take).
      mask: (N, h, w) bool validity, or None.

    Returns:
      (N, N_C, C) float32, each vector L2-normalized (zeros where the CAM is zero everywhere).

    References:
      Jimenez et al., BMVC 2017 (class vectors, online aggregation).
    """
    _check_maps(features, mask)
    _check_weight(weight, features.shape[-1])
    _check_classes(classes, features.shape[0])
    x, w = features.astype(jnp.float32), weight.astype(jnp.float32)
    valid = _valid(features, mask)
    cams = _cams_for(x, _rows(w, classes, x.shape[0]), valid)
    return _pool_with_cams(x, cams, valid)


@functools.partial(jax.jit, static_argnames=("top_classes",))
def cam_pool(
    features: jax.Array,
    classifier: tuple[jax.Array, jax.Array],
    *,
    top_classes: int = 64,
    logits: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> CamVectors:
    """Class-weighted pooling of each image with its own top classes (OfA).

    Args:
      features: (N, h, w, C) conv maps of a GAP + linear-classifier network.
      classifier: (weight (K, C), bias (K,)) with logits = GAP(features) @ weight.T + bias
        (``Backbone.classifier``).
      top_classes: N_C, the number of predicted classes kept (64 in the paper; 32 nearly as
        good). Static: a new value compiles once more (it sets the output shape).
      logits: (N, K) class scores, or None to compute them from the GAP of the valid positions.
      mask: (N, h, w) bool validity, or None.

    Returns:
      ``CamVectors(vectors (N, N_C, C), classes (N, N_C) int32)``, classes by decreasing logit
      (ties: the lower class id first). Follow with :func:`aggregate_class_vectors`.

    References:
      Jimenez et al., BMVC 2017 (class vectors, offline aggregation).
    """
    weight, bias = classifier
    _check_maps(features, mask)
    _check_weight(weight, features.shape[-1])
    k = weight.shape[0]
    if isinstance(top_classes, bool) or not isinstance(top_classes, int):
        raise InputError(f"top_classes must be an int, got {top_classes!r}")
    if not 1 <= top_classes <= k:
        raise InputError(f"top_classes must be in 1..{k} (classifier rows), got {top_classes}")
    x, w = features.astype(jnp.float32), weight.astype(jnp.float32)
    valid = _valid(features, mask)
    if logits is None:
        if tuple(bias.shape) != (k,):
            raise InputError(f"bias must be ({k},), got shape {tuple(bias.shape)}")
        n = jnp.maximum(jnp.sum(valid, axis=(1, 2), dtype=jnp.float32), 1.0)[:, None]
        gap = jnp.sum(jnp.where(valid[..., None], x, 0.0), axis=(1, 2)) / n
        logits = jnp.matmul(gap, w.T, precision=_HIGHEST) + bias.astype(jnp.float32)[None, :]
    elif tuple(logits.shape) != (x.shape[0], k):
        raise InputError(f"logits must be (N, K) = {(x.shape[0], k)}, got {tuple(logits.shape)}")
    _, classes = jax.lax.top_k(logits.astype(jnp.float32), top_classes)
    classes = classes.astype(jnp.int32)
    cams = _cams_for(x, _rows(w, classes, x.shape[0]), valid)
    return CamVectors(_pool_with_cams(x, cams, valid), classes)


# --------------------------------------------------------------------------- host side


def aggregate_class_vectors(
    class_vectors,
    whitening: PCAWhitening | Whitening | None = None,
    *,
    dim: int | None = None,
) -> np.ndarray:
    """Image descriptors from class vectors: whiten + L2 each, sum over classes, L2.

    A zero class vector (a class whose CAM is zero everywhere) contributes nothing (whitening
    would turn it into ``-P m``).

    Args:
      class_vectors: (N, N_C, C) L2-normalized class vectors (:func:`cam_pool`,
        :func:`cam_class_vectors`).
      whitening: a PCA or learned whitening fitted on class vectors of other images, or None
        (sum of the L2-normalized vectors).
      dim: keep the first ``dim`` whitened coordinates (None: all).

    Returns:
      (N, D) float32 L2-normalized descriptors, D = dim, the whitening's dimension, or C.

    Raises:
      InputError: not (N, N_C, C), non-finite values, a dimension that differs from the
        whitening's.

    References:
      Jimenez et al., BMVC 2017 (descriptor aggregation); reference ``descriptor_aggregation``.
    """
    v = np.asarray(class_vectors, np.float32)
    if v.ndim != 3 or v.shape[1] == 0 or v.shape[2] == 0:
        raise InputError(f"class_vectors must be (N, N_C, C), got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InputError("class_vectors hold NaN or inf values")
    n, nc, c = v.shape
    alive = np.linalg.norm(v, axis=2) > 0  # (N, N_C)
    if whitening is None:
        if dim is not None:
            raise InputError("dim needs a whitening")
        y = v
    else:
        flat = v.reshape(n * nc, c)
        y = apply_whitening(whitening, flat, dim=dim) if n else np.zeros((0, 1), np.float32)
        y = y.reshape(n, nc, -1)
    s = np.sum(np.where(alive[..., None], y, 0.0), axis=1, dtype=np.float64)
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), NORM_FLOOR)
    return s.astype(np.float32)


def online_aggregation(
    db_features,
    weight,
    query_classes,
    *,
    whitening: PCAWhitening | Whitening | None = None,
    dim: int | None = None,
    mask=None,
    batch_size: int = 64,
) -> np.ndarray:
    """OnA descriptors of database images for one query: their maps pooled with its classes.

    Args:
      db_features: (M, h, w, C) stored maps of the database images (or of the OfA shortlist),
        float16 or float32, NumPy (a memmap is fine) or JAX.
      weight: (K, C) classifier weight.
      query_classes: (N_C,) the query's class ids (``cam_pool(...).classes[i]``).
      whitening, dim: as in :func:`aggregate_class_vectors` (the query's).
      mask: (M, h, w) bool validity, or None.
      batch_size: images per jitted call (the last batch is padded: one compilation).

    Returns:
      (M, D) float32 L2-normalized descriptors, comparable with the query's
      ``aggregate_class_vectors`` output.

    References:
      Jimenez et al., BMVC 2017 (online aggregation); reference ``descriptor_aggregation_cl``.
    """
    classes = jnp.asarray(query_classes)
    if classes.ndim != 1:
        raise InputError(f"query_classes must be (N_C,), got shape {tuple(classes.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    m = int(db_features.shape[0])
    if m == 0:
        raise InputError("db_features: empty batch")
    b = min(batch_size, m)
    out = []
    for i in range(0, m, b):
        x = np.asarray(db_features[i : i + b])
        mk = None if mask is None else np.asarray(mask[i : i + b])
        k = len(x)
        if k < b:  # pad the last batch (valid rows first, sliced off below)
            x = np.concatenate([x, np.zeros((b - k, *x.shape[1:]), x.dtype)])
            if mk is not None:
                mk = np.concatenate([mk, np.zeros((b - k, *mk.shape[1:]), mk.dtype)])
        v = cam_class_vectors(jnp.asarray(x), jnp.asarray(weight), classes, mk)
        out.append(np.asarray(v)[:k])
    return aggregate_class_vectors(np.concatenate(out), whitening, dim=dim)
