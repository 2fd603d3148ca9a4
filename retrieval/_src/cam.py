"""Class-weighted convolutional features (CAM pooling), online aggregation and CAM re-ranking.

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

Re-ranking (:func:`cam_rerank`), as the reference code: for each of the top R database images,
the CAMs of the query's classes are computed on the database image; the heatmap is the mean of the
CAMs of the query's first two classes; at each threshold t (1, 10, 20, 30 % of the heatmap's
maximum) the largest contour (OpenCV, by ``contourArea``) of ``heatmap > t * max`` gives a box
(:func:`heatmap_boxes`); the region's descriptor is class-weighted pooling of the map inside the
box (the whole-image CAMs cropped, not renormalized; CroW channel weights of the crop), aggregated
as in step 4; its cosine with the query vector is the region's score and an image keeps its best
region's. Two choices differ from the reference: a box narrower or shorter than ``min_cells`` is
enlarged to ``min_cells`` (centred, kept inside the map) where the reference skips it (with a
32 px stride a 1024 px image has 32 cells, and small boxes are frequent); an all-zero heatmap
gives the whole map as its box (the reference crashes). The reference re-ranks with the first 6 of
the query's classes, recomputing the query vector from them too: pass
``aggregate_class_vectors(query_vectors[:, :6], whitening)`` and ``classes[:6]``.

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
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src.pooling import NORM_FLOOR, _check_maps, l2_normalize
from retrieval._src.postprocess import PCAWhitening, Whitening, apply_whitening

#: Thresholds of the re-ranking boxes, fractions of the heatmap's maximum (the paper's).
THRESHOLDS = (0.01, 0.1, 0.2, 0.3)
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


class Reranked(NamedTuple):
    """The result of :func:`cam_rerank`, best first.

    Attributes:
      ids: (R,) int64 database ids in the new order.
      scores: (R,) float32 best region cosine of each image.
      boxes: (R, T, 4) int64 boxes (y, x, height, width) in map cells, one per threshold.
    """

    ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


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


@jax.jit
def _region_vectors(x: jax.Array, cams: jax.Array, region: jax.Array) -> jax.Array:
    return _pool_with_cams(x, cams, region)


@jax.jit
def _query_cams(features, weight, classes, mask):
    x, w = features.astype(jnp.float32), weight.astype(jnp.float32)
    return x, _cams_for(x, _rows(w, classes, x.shape[0]), _valid(features, mask))


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


def _enlarge(start: int, size: int, lo: int, extent: int, min_size: int) -> tuple[int, int]:
    """Grow [start, start + size) to at least min_size, centred, inside [lo, lo + extent)."""
    if size >= min_size:
        return start, size
    new = min(min_size, extent)
    start = start - (new - size) // 2
    return int(min(max(start, lo), lo + extent - new)), int(new)


def heatmap_boxes(
    heatmap,
    thresholds: Sequence[float] = THRESHOLDS,
    *,
    min_cells: int = 5,
    valid=None,
) -> np.ndarray:
    """Boxes around the largest hot region of a heatmap, one per threshold.

    For each t: the external contours (OpenCV ``findContours``, ``RETR_EXTERNAL``) of
    ``heatmap > t * max``; the largest by ``cv2.contourArea`` (the first among equals, as the
    reference code; a one-cell-wide blob has area 0); its bounding rectangle, enlarged to at
    least ``min_cells`` x ``min_cells`` (centred, kept inside the valid area). No cell above
    the threshold (an all-zero heatmap, t >= 1): the whole valid area.

    Args:
      heatmap: (h, w) float values (mean of CAMs, >= 0).
      thresholds: fractions of the maximum, each in [0, 1]. Host-side: new values never
        recompile anything.
      min_cells: smallest box side in cells.
      valid: (h, w) bool validity (a top-left rectangle after padding), or None; boxes stay
        inside its bounding rectangle.

    Returns:
      (T, 4) int64 boxes (y, x, height, width).

    References:
      Jimenez et al., BMVC 2017 (re-ranking); reference code ``extract_ROI``.
    """
    hm = np.asarray(heatmap, np.float32)
    if hm.ndim != 2 or hm.size == 0:
        raise InputError(f"heatmap must be a non-empty (h, w) array, got shape {hm.shape}")
    if not np.isfinite(hm).all():
        raise InputError("heatmap holds NaN or inf values")
    ts = [float(t) for t in thresholds]
    if not ts or not all(0.0 <= t <= 1.0 for t in ts):
        raise InputError(f"thresholds must be fractions in [0, 1], got {tuple(thresholds)}")
    if isinstance(min_cells, bool) or not isinstance(min_cells, int) or min_cells < 1:
        raise InputError(f"min_cells must be an int >= 1, got {min_cells!r}")
    if valid is None:
        vy, vx, vh, vw = 0, 0, hm.shape[0], hm.shape[1]
    else:
        valid = np.asarray(valid, bool)
        if valid.shape != hm.shape:
            raise InputError(f"valid must be {hm.shape} like the heatmap, got {valid.shape}")
        rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
        if rows.size == 0:
            return np.zeros((len(ts), 4), np.int64)
        vy, vx = int(rows[0]), int(cols[0])
        vh, vw = int(rows[-1]) + 1 - vy, int(cols[-1]) + 1 - vx
        hm = np.where(valid, hm, 0.0)
    peak = float(hm.max())
    boxes = []
    for t in ts:
        binary = (hm > t * peak).astype(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        if peak <= 0 or not contours:
            y, x, h, w = vy, vx, vh, vw
        else:
            areas = [cv2.contourArea(c) for c in contours]
            x, y, w, h = cv2.boundingRect(contours[int(np.argmax(areas))])
        y, h = _enlarge(y, h, vy, vh, min_cells)
        x, w = _enlarge(x, w, vx, vw, min_cells)
        boxes.append((y, x, h, w))
    return np.asarray(boxes, np.int64)


def cam_rerank(
    query_vector,
    query_classes,
    db_features,
    weight,
    *,
    ids=None,
    whitening: PCAWhitening | Whitening | None = None,
    dim: int | None = None,
    mask=None,
    thresholds: Sequence[float] = THRESHOLDS,
    min_cells: int = 5,
    heatmap_classes: int = 2,
    batch_size: int = 64,
) -> Reranked:
    """Re-ranks a shortlist by the best CAM region of each database image.

    For each database image: the CAMs of the query's classes on it; heatmap = mean of the first
    ``heatmap_classes`` of them; one box per threshold (:func:`heatmap_boxes`); per box, the
    class vectors pooled inside it (whole-image CAMs cropped; CroW channel weights of the crop)
    aggregated with the query's whitening; score = the best cosine with ``query_vector`` over
    the boxes. The shortlist is sorted by score, descending (stable: ties keep their order).

    Args:
      query_vector: (D,) the query's L2-normalized descriptor, aggregated from the same classes
        (``aggregate_class_vectors(vectors[:, :n], whitening)[0]`` with ``classes[:n]``).
      query_classes: (N_C,) the query's class ids, by decreasing logit.
      db_features: (R, h, w, C) maps of the shortlisted database images (float16 or float32).
      weight: (K, C) classifier weight.
      ids: (R,) database ids of the shortlist (None: 0..R-1).
      whitening, dim: the whitening of the query's descriptor (None: none).
      mask: (R, h, w) bool validity (a top-left rectangle per image), or None.
      thresholds: fractions of each heatmap's maximum (host-side: never recompiles).
      min_cells: smallest box side in cells.
      heatmap_classes: CAMs averaged into the heatmap (2 in the paper).
      batch_size: database images per jitted call (the last batch is padded: one compilation);
        bounds the memory: R = 1000 Lite0 maps of 24 x 32 are 3.9 GB in float32.

    Returns:
      ``Reranked(ids (R,), scores (R,), boxes (R, T, 4))``, best first.

    Raises:
      InputError: mismatched shapes, a query vector of another dimension, bad thresholds.

    References:
      Jimenez et al., BMVC 2017 (re-ranking); reference code ``re_ranking``.
    """
    q = np.asarray(query_vector, np.float32)
    if q.ndim != 1 or not np.isfinite(q).all():
        raise InputError(f"query_vector must be a finite (D,) vector, got shape {q.shape}")
    classes = jnp.asarray(query_classes)
    if classes.ndim != 1 or classes.shape[0] == 0:
        raise InputError(f"query_classes must be (N_C,), got shape {tuple(classes.shape)}")
    if not hasattr(db_features, "shape"):
        db_features = np.asarray(db_features)
    feats = jax.ShapeDtypeStruct(tuple(db_features.shape), db_features.dtype)  # checks only
    w = jnp.asarray(weight)
    _check_maps(feats, None if mask is None else jnp.asarray(mask))
    _check_weight(w, feats.shape[-1])
    _check_classes(classes, feats.shape[0])
    r, h, wd = feats.shape[:3]
    if r == 0:
        raise InputError("db_features: empty shortlist")
    ids = np.arange(r, dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
    if ids.shape != (r,):
        raise InputError(f"ids must be (R,) = ({r},), got shape {ids.shape}")
    if isinstance(heatmap_classes, bool) or not isinstance(heatmap_classes, int):
        raise InputError(f"heatmap_classes must be an int >= 1, got {heatmap_classes!r}")
    if heatmap_classes < 1:
        raise InputError(f"heatmap_classes must be an int >= 1, got {heatmap_classes!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    valid = np.ones((r, h, wd), bool) if mask is None else np.asarray(mask, bool)
    b = min(batch_size, r)
    scores, boxes = [], []
    for i in range(0, r, b):
        x, vk = np.asarray(db_features[i : i + b]), valid[i : i + b]
        k = len(x)
        if k < b:  # pad the last batch: one compilation per batch size
            x = np.concatenate([x, np.zeros((b - k, *x.shape[1:]), x.dtype)])
            vk = np.concatenate([vk, np.ones((b - k, h, wd), bool)])
        sc, bx = _rerank_batch(
            q, classes, x, w, vk, whitening, dim, thresholds, min_cells, heatmap_classes
        )
        scores.append(sc[:k])
        boxes.append(bx[:k])
    scores, boxes = np.concatenate(scores), np.concatenate(boxes)
    order = np.argsort(-scores, kind="stable")
    return Reranked(ids[order], scores[order], boxes[order])


def _rerank_batch(q, classes, feats, w, valid, whitening, dim, thresholds, min_cells, n_heat):
    """Best region scores (B,) and boxes (B, T, 4) of one batch of database maps."""
    r, h, wd = valid.shape
    x, cams = _query_cams(jnp.asarray(feats), w, classes, jnp.asarray(valid))
    heat = np.asarray(jnp.mean(cams[..., :n_heat], axis=-1))
    boxes = np.stack(
        [heatmap_boxes(heat[i], thresholds, min_cells=min_cells, valid=valid[i]) for i in range(r)]
    )  # (B, T, 4)
    scores = np.full(r, -np.inf, np.float32)
    yy, xx = np.arange(h)[None, :, None], np.arange(wd)[None, None, :]
    for t in range(boxes.shape[1]):
        y0, x0, bh, bw = (boxes[:, t, j][:, None, None] for j in range(4))
        inside = (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)
        region = np.logical_and(inside, valid)
        v = aggregate_class_vectors(
            np.asarray(_region_vectors(x, cams, jnp.asarray(region))), whitening, dim=dim
        )
        if v.shape[1] != q.shape[0]:
            raise InputError(
                f"query_vector has dimension {q.shape[0]}, the region descriptors {v.shape[1]}"
            )
        scores = np.maximum(scores, v @ q)
    return scores, boxes
