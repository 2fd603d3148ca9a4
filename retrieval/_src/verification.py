"""Spatial verification of a pair of images: matches of local descriptors, one geometric model.

The pieces the spatial-verification scorer re-ranks a shortlist with (Philbin et al. 2007;
Noh et al. 2017, DELG's re-ranking), each usable alone:

1. **Local features** of each image: :func:`retrieval.local.local_features` (SIFT / DoG
   regions, oriented patches described by SIFT, RootSIFT or a CKN model).
2. **Tentative matches** (:func:`mutual_matches`): query descriptor i and database descriptor j
   match when each is the other's nearest neighbour (Euclidean distance) and i passes Lowe's
   ratio test, ``d(i, j) < ratio * d(i, j2)`` with j2 its second nearest neighbour.
3. **Geometry** (:func:`fit_geometry`, models in :data:`GEOMETRIC_MODELS`): RANSAC of an
   affine map (OpenCV ``estimateAffine2D``) or a homography (``findHomography``) from the
   query's region centres to the database image's, with OpenCV's random generator seeded
   (``cv2.setRNGSeed``) before each fit so that a pair always gives the same answer.
4. **Inliers** (:func:`verify_pair`): the matches the fitted model maps within
   ``threshold`` pixels; their number is the pair's verification score.

:class:`FeatureCache` keeps the local features of database images for a run within a bound
on memory (least recently used first out).

Matching: one NumPy computation per pair of images (each image's distances one BLAS product),
in float64 for :func:`mutual_matches` and in float32 for :func:`batch_matches`, which matches
one query against many images (used by :func:`verify_pair` and the scorer); the tests hold it
to plain Python loops. RANSAC is OpenCV's, one pair at a time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from ckn import InputError


class Matches(NamedTuple):
    """Tentative matches between two images' local descriptors.

    Attributes:
      query: (M,) int64 rows of the first (query) image's descriptors.
      database: (M,) int64 rows of the second image's descriptors.
      distance: (M,) float64 Euclidean distances of the matched pairs.
    """

    query: np.ndarray
    database: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.query.shape[0])


class _Query(NamedTuple):
    """A query's terms of the squared distances, computed once for many images: ``qt`` =
    -2 q^T (D, n) and ``qn`` = |q_i|^2 (n,), in the dtype of the computation."""

    qt: np.ndarray
    qn: np.ndarray

    @classmethod
    def of(cls, q: np.ndarray) -> _Query:
        return cls(np.ascontiguousarray(-2.0 * q.T), np.einsum("nd,nd->n", q, q))


def _image_matches(query: _Query, b: np.ndarray, ratio: float) -> Matches:
    """The mutual ratio-test matches (:func:`mutual_matches`) of a query against one image's
    m >= 1 rows ``b`` (m, D), in ``b``'s dtype: its (m, n) squared distances are one matrix
    product, then plain reductions; ties go to the first row, as NumPy's argmin."""
    cols = np.arange(query.qn.shape[0])
    d2 = b @ query.qt  # (m, n)
    d2 += np.einsum("md,md->m", b, b)[:, None]
    d2 += query.qn[None, :]
    nn = d2.argmin(0)  # nearest database row of each query row
    keep = d2.argmin(1)[nn] == cols  # mutual
    dist = np.sqrt(np.maximum(d2[nn, cols], 0.0))
    if len(b) > 1:  # Lowe's ratio against the second nearest
        d2[nn, cols] = np.inf
        keep &= dist < ratio * np.sqrt(np.maximum(d2.min(0), 0.0))
    i = np.flatnonzero(keep)
    return Matches(i.astype(np.int64), nn[i].astype(np.int64), dist[i].astype(np.float64))


def _no_match() -> Matches:
    return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


def mutual_matches(a, b, ratio: float = 0.9) -> Matches:
    """Mutual nearest neighbours of two descriptor sets that pass the ratio test (float64).

    Args:
      a: (n, D) descriptors of the query image.
      b: (m, D) descriptors of the database image.
      ratio: Lowe's ratio in (0, 1]: i's nearest neighbour j is kept when
        ``d(i, j) < ratio * d(i, j2)`` (j2: the second nearest; with m = 1 every nearest
        neighbour passes). 1 keeps every mutual nearest neighbour that is not a tie.

    Returns:
      :class:`Matches` in increasing order of query row.

    Raises:
      InputError: descriptors of different dimension, or a ratio outside (0, 1].
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"descriptors must be (n, D) and (m, D), got {a.shape} and {b.shape}")
    if not 0.0 < float(ratio) <= 1.0:
        raise InputError(f"ratio must be in (0, 1], got {ratio}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        return _no_match()
    return _image_matches(_Query.of(a.astype(np.float64)), b.astype(np.float64), ratio)


def batch_matches(query, images, ratio: float) -> list[Matches]:
    """:func:`mutual_matches` of a query against several images, in float32 with BLAS.

    Image by image, on the host: the (m, n) squared distances are one matrix product of the
    image's descriptors as they are stored (no padding, no copy of the shortlist into one
    array, no compilation), then plain NumPy reductions. Measured on a shortlist of 100 images
    of 80-400 regions against a 60-region query (2-core Xeon): 128-D 22 ms, 1024-D (ckn-grad)
    55 ms; a jitted batched version, the shortlist padded into (B, m, D) calls, took 34 and
    514 ms: XLA's CPU product of that skinny shape read the descriptors at ~1.3 GB/s and the
    padded copy cost as much again.

    Args:
      query: (n, D) descriptors; images: a list of (m_b, D) descriptors; ratio: Lowe's.

    Returns:
      One :class:`Matches` per image, in order (float32 distances, ties broken as NumPy's
      argmin: the first row).
    """
    q = np.asarray(query, np.float32)
    terms = _Query.of(q)
    out = []
    for b in images:
        b = np.asarray(b, np.float32)
        empty = len(b) == 0 or len(q) == 0
        out.append(_no_match() if empty else _image_matches(terms, b, ratio))
    return out


class Geometry(NamedTuple):
    """A fitted geometric model and its inliers.

    Attributes:
      model: (3, 3) float64 map from query to database pixel coordinates (homogeneous; the
        last row of an affine map is (0, 0, 1)), or None when no model was found.
      inliers: (M,) bool, the matches the model maps within the threshold.
    """

    model: np.ndarray | None
    inliers: np.ndarray

    @property
    def count(self) -> int:
        """The number of inliers."""
        return int(self.inliers.sum())


def _affine(src, dst, threshold, max_iters, confidence):
    m, mask = cv2.estimateAffine2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
        maxIters=max_iters, confidence=confidence, refineIters=10,
    )  # fmt: skip
    return (None if m is None else np.vstack([m, [0.0, 0.0, 1.0]])), mask


def _homography(src, dst, threshold, max_iters, confidence):
    return cv2.findHomography(
        src, dst, cv2.RANSAC, threshold, maxIters=max_iters, confidence=confidence
    )


class GeometricModel(NamedTuple):
    """A RANSAC-fitted model family: ``fit(src, dst, threshold, max_iters, confidence)`` ->
    ((3, 3) model or None, OpenCV's inlier mask), and the fewest matches it needs."""

    fit: Callable
    min_matches: int


#: The geometric models: name -> :class:`GeometricModel`.
GEOMETRIC_MODELS: dict[str, GeometricModel] = {
    "affine": GeometricModel(_affine, 3),
    "homography": GeometricModel(_homography, 4),
}


def transfer_error(model: np.ndarray, src, dst) -> np.ndarray:
    """(M,) pixel distances between ``model`` applied to ``src`` (M, 2) and ``dst`` (M, 2)."""
    src = np.asarray(src, np.float64)
    p = np.concatenate([src, np.ones((len(src), 1))], axis=1) @ np.asarray(model, np.float64).T
    w = p[:, 2:3]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = p[:, :2] / np.where(np.abs(w) < 1e-12, np.nan, w)
    err = np.linalg.norm(xy - np.asarray(dst, np.float64), axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def fit_geometry(
    src,
    dst,
    model: str = "affine",
    *,
    threshold: float = 8.0,
    max_iters: int = 2000,
    confidence: float = 0.999,
    seed: int = 0,
) -> Geometry:
    """RANSAC of one geometric model mapping ``src`` onto ``dst`` (OpenCV, seeded).

    The inliers returned are those of the final (refined) model recomputed here: the
    matches it maps within ``threshold`` pixels (OpenCV's own mask can disagree with its
    refined model by a few points).

    Args:
      src: (M, 2) query pixel coordinates (x, y) of the matches.
      dst: (M, 2) database pixel coordinates.
      model: a name of :data:`GEOMETRIC_MODELS`.
      threshold: largest transfer error of an inlier, pixels.
      max_iters: RANSAC iterations at most.
      confidence: RANSAC's stopping confidence.
      seed: OpenCV's generator seed, set before the fit.

    Returns:
      :class:`Geometry` (no model and no inlier with fewer matches than the model needs).

    Raises:
      InputError: an unknown model, or src and dst of different shapes.
    """
    if model not in GEOMETRIC_MODELS:
        raise InputError(f"model must be one of {', '.join(GEOMETRIC_MODELS)}, got {model!r}")
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if src.shape != dst.shape:
        raise InputError(f"src and dst must have the same shape, got {src.shape} and {dst.shape}")
    spec = GEOMETRIC_MODELS[model]
    none = Geometry(None, np.zeros(len(src), bool))
    if len(src) < spec.min_matches:
        return none
    cv2.setRNGSeed(int(seed))
    m, _ = spec.fit(src.astype(np.float32), dst.astype(np.float32), float(threshold),
                    int(max_iters), float(confidence))  # fmt: skip
    if m is None or not np.isfinite(m).all():
        return none
    m = np.asarray(m, np.float64)
    return Geometry(m, transfer_error(m, src, dst) <= threshold)


class Verification(NamedTuple):
    """The spatial verification of one pair of images.

    Attributes:
      inliers: the number of matches consistent with the fitted model (0 without a model).
      matches: :class:`Matches` (tentative, before geometry).
      geometry: :class:`Geometry` of the matches.
    """

    inliers: int
    matches: Matches
    geometry: Geometry


def verify_pair(
    query,
    database,
    *,
    ratio: float = 0.9,
    model: str = "affine",
    threshold: float = 8.0,
    max_iters: int = 2000,
    seed: int = 0,
) -> Verification:
    """Matches two images' local features and counts the matches one model explains.

    Args:
      query, database: :class:`retrieval.local.LocalFeatures` (or anything with
        ``descriptors`` (n, D) and ``regions.xy`` (n, 2)).
      ratio: Lowe's ratio (:func:`mutual_matches`, computed by :func:`batch_matches`).
      model, threshold, max_iters, seed: :func:`fit_geometry`.

    Returns:
      :class:`Verification`.
    """
    (m,) = batch_matches(query.descriptors, [database.descriptors], ratio)
    src = np.asarray(query.regions.xy)[m.query]
    dst = np.asarray(database.regions.xy)[m.database]
    g = fit_geometry(src, dst, model, threshold=threshold, max_iters=max_iters, seed=seed)
    return Verification(g.count, m, g)


class FeatureCache:
    """Local features of database images for one run, within ``max_bytes`` (LRU).

    ``get(key, make)`` returns the cached value of ``key`` or ``make()`` (stored, then the
    least recently used entries are dropped until the total size fits; one entry larger than
    the bound is returned but not kept). The size of a value is the sum of the ``nbytes`` of
    its arrays (a :class:`retrieval.local.LocalFeatures`: descriptors and regions).

    Attributes:
      hits, misses: lookups served from the cache / computed.
      nbytes: bytes held now; peak: the most held at once.
    """

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise InputError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._items: collections.OrderedDict = collections.OrderedDict()
        self.hits = self.misses = self.nbytes = self.peak = 0

    @staticmethod
    def size_of(value) -> int:
        """Bytes of the arrays in ``value`` (nested tuples and NamedTuples walked)."""
        if isinstance(value, np.ndarray):
            return int(value.nbytes)
        if isinstance(value, tuple):
            return sum(FeatureCache.size_of(v) for v in value)
        return 0

    def get(self, key, make: Callable):
        """The value of ``key``, from the cache or ``make()``."""
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]
        self.misses += 1
        value = make()
        size = self.size_of(value)
        if size <= self.max_bytes:
            self._items[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, s) = self._items.popitem(last=False)
                self.nbytes -= s
            self.peak = max(self.peak, self.nbytes)
        return value

    def __len__(self) -> int:
        return len(self._items)
