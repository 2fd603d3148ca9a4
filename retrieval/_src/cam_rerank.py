"""CAM re-ranking: the best region of each database image under the query's class maps.

Re-ranking (:func:`cam_rerank`), as the reference code: for each of the top R database images,
the CAMs of the query's classes are computed on the database image; the heatmap is the mean of
the CAMs of the query's first two classes; at each threshold t (1, 10, 20, 30 % of the heatmap's
maximum) the largest contour (OpenCV, by ``contourArea``) of ``heatmap > t * max`` gives a box
(:func:`heatmap_boxes`); the region's descriptor is class-weighted pooling of the map inside the
box (the whole-image CAMs cropped, not renormalized; CroW channel weights of the crop),
aggregated as :func:`retrieval._src.cam.aggregate_class_vectors` does; its cosine with the query
vector is the region's score and an image keeps its best region's. Two choices differ from the
reference: a box narrower or shorter than ``min_cells`` is enlarged to ``min_cells`` (centred,
kept inside the map) where the reference skips it (with a 32 px stride a 1024 px image has 32
cells, and small boxes are frequent); an all-zero heatmap gives the whole map as its box (the
reference crashes). The reference re-ranks with the first 6 of the query's classes, recomputing
the query vector from them too: pass ``aggregate_class_vectors(query_vectors[:, :6],
whitening)`` and ``classes[:6]``.

Thresholds are host-side Python floats (new values, or a new number of them, do not
recompile). The class maps and pooling are those of :mod:`retrieval._src.cam`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src.cam import (
    _cams_for,
    _check_classes,
    _check_weight,
    _pool_with_cams,
    _rows,
    _valid,
    aggregate_class_vectors,
)
from retrieval._src.pooling import _check_maps
from retrieval._src.postprocess import PCAWhitening, Whitening

#: Thresholds of the re-ranking boxes, fractions of the heatmap's maximum (the paper's).
THRESHOLDS = (0.01, 0.1, 0.2, 0.3)


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


@jax.jit
def _region_vectors(x: jax.Array, cams: jax.Array, region: jax.Array) -> jax.Array:
    return _pool_with_cams(x, cams, region)


@jax.jit
def _query_cams(features, weight, classes, mask):
    x, w = features.astype(jnp.float32), weight.astype(jnp.float32)
    return x, _cams_for(x, _rows(w, classes, x.shape[0]), _valid(features, mask))


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
