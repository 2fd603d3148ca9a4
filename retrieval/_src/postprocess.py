"""Post-processing of global descriptors: whitening (PCA, learned) and multi-scale.

All functions take and return row vectors, ``(N, D)`` arrays, on the host:
fitting runs in NumPy float64, outputs are float32.

Whitening. Both kinds are an affine map ``y = P (x - m)`` followed by an L2
normalization, applied by one function, :func:`apply_whitening`:

* PCA-whitening (Jegou & Chum, ECCV 2012), :func:`fit_pca_whitening`, projects
  a vector on its top principal directions and divides each coordinate by the
  square root of its variance on the training vectors (variance with 1/n, so
  that the training vectors get unit variance exactly), then L2-normalizes.
  (faiss' ``PCAMatrix`` with ``eigen_power=-0.5`` leaves a variance of 1/n
  instead of 1: harmless only when an L2 normalization follows. This module
  does not use it.) Its :class:`PCAWhitening` keeps the components and scales
  apart; ``PCAWhitening.projection`` is P.
* Learned whitening Lw (Radenovic et al.), :func:`fit_learned_whitening`,
  from matching pairs: P makes the (query - positive) differences white and
  then decorrelates all vectors (see the function), as cirtorch's
  ``whitenlearn``. Returns a :class:`Whitening` (m, P).

Multi-scale (:func:`multiscale_combine`) follows cirtorch; query expansion and database-side
augmentation are in :mod:`retrieval._src.expansion`.

References:
  H. Jegou and O. Chum, "Negative evidences and co-occurrences in image
  retrieval: the benefit of PCA and whitening", ECCV 2012. F. Radenovic, G.
  Tolias, O. Chum, "Fine-tuning CNN image retrieval with no human annotation",
  TPAMI 2018, sections 3.3 (Lw) and 5 (multi-scale).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.checks import check_matrix

#: Norm floor of the L2 normalizations (VLFeat's value, as in vlad.py).
NORM_FLOOR = 1e-12


# --------------------------------------------------------------------------- PCA-whitening


class PCAWhitening(NamedTuple):
    """A fitted PCA (+ whitening) of row vectors.

    Attributes:
      mean: (D,) float64 training mean.
      components: (dim, D) float64 orthonormal principal directions, by
        decreasing variance (sign fixed: the largest-magnitude entry is positive).
      variances: (dim,) float64 variance of the training vectors along each
        direction (1/n normalization).
      scale: (dim,) float64 multiplier of each projected coordinate:
        1 / sqrt(max(variance, eps * variances[0])) when whitening, else 1.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    scale: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def projection(self) -> np.ndarray:
        """(dim, D) float64 P = diag(scale) components: y = P (x - mean)."""
        return self.components * self.scale[:, None]


def fit_pca_whitening(
    x,
    dim: int,
    *,
    whiten: bool = True,
    eps: float = 1e-9,
    rank_tol: float = 1e-10,
    cap: bool = False,
) -> PCAWhitening:
    """Fits PCA to ``dim`` dimensions, with whitening by default.

    Computed in float64 from the n x n Gram matrix when n < D (the usual case
    for VLAD vectors), else from the D x D covariance.

    Args:
      x: (n, D) training vectors (VLADs of images other than the queries when
        possible: whitening fitted on the evaluation set itself is
        transductive, and with dim >= n - 1 it makes all centred training
        vectors equidistant).
      dim: output dimension, at most the rank of the centred training vectors.
      whiten: divide each coordinate by its training standard deviation.
      eps: variance floor, relative to the largest variance, for the whitening
        scale (the training vectors get unit variance exactly on every
        direction whose variance is above it).
      rank_tol: directions with variance <= rank_tol * largest are rank-deficient.
      cap: fit as many dimensions as the vectors span when that is fewer than ``dim``
        (the result's ``projection`` has fewer rows) instead of raising.

    Returns:
      A :class:`PCAWhitening`; apply it with :func:`apply_pca_whitening`.

    Raises:
      InputError: bad shapes or values, dim < 1, or dim above the number of
        directions the training vectors span (at most n - 1).
    """
    a = check_matrix(x, "PCA training vectors", empty=True).astype(np.float64)
    n, big_d = a.shape
    if dim < 1:
        raise InputError(f"PCA dimension must be >= 1, got {dim}")
    if n < 2:
        raise InputError(f"PCA needs at least 2 training vectors, got {n}")
    mean = a.mean(axis=0)
    a -= mean
    # Eigenvectors of the smaller of the n x n Gram and D x D covariance matrices.
    small = a @ a.T / n if n < big_d else a.T @ a / n
    lam, vec = np.linalg.eigh(small)
    lam, vec = np.maximum(lam[::-1], 0.0), vec[:, ::-1]
    rank = int(np.sum(lam > rank_tol * max(lam[0], 1e-300)))
    if cap:
        dim = max(1, min(dim, rank))
    if dim > rank:
        raise InputError(
            f"PCA to {dim} dimensions needs training vectors spanning {dim} directions; "
            f"the {n} vectors given span {rank} (at most n - 1): "
            "use more vectors or a smaller dimension"
        )
    lam, vec = lam[:dim], vec[:, :dim]
    # Gram eigenvector w gives the principal direction a^T w / sqrt(n lam).
    comps = (a.T @ vec / np.sqrt(n * lam)[None, :]).T if n < big_d else vec.T
    comps = comps / np.linalg.norm(comps, axis=1, keepdims=True)
    big = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(dim), big])[:, None]
    if whiten:
        scale = 1.0 / np.sqrt(np.maximum(lam, eps * lam[0]))
    else:
        scale = np.ones(dim)
    return PCAWhitening(mean, comps, lam, scale)


def apply_pca_whitening(pca: PCAWhitening, x, *, l2_norm: bool = True) -> np.ndarray:
    """Projects (and whitens) row vectors, then L2-normalizes them by default.

    Same as :func:`apply_whitening` (kept for existing callers).

    Args:
      pca: from :func:`fit_pca_whitening`.
      x: (n, D) or (D,) vectors.
      l2_norm: L2-normalize the outputs (floor 1e-12).

    Returns:
      (n, dim) or (dim,) float32.
    """
    return apply_whitening(pca, x, l2_norm=l2_norm)


# --------------------------------------------------------------------------- shared apply


class Whitening(NamedTuple):
    """An affine whitening y = projection (x - mean), from :func:`fit_learned_whitening`.

    Attributes:
      mean: (D,) float64 centre m.
      projection: (d, D) float64 matrix P, rows by decreasing importance (its
        first rows alone are a dimensionality reduction).
    """

    mean: np.ndarray
    projection: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.projection.shape[1])


def apply_whitening(
    whitening: Whitening | PCAWhitening, x, *, dim: int | None = None, l2_norm: bool = True
) -> np.ndarray:
    """y = L2(P[:dim] (x - m)) for a learned or a PCA whitening.

    Args:
      whitening: a :class:`Whitening` or a :class:`PCAWhitening`.
      x: (n, D) or (D,) vectors.
      dim: keep the first ``dim`` output coordinates (None: all).
      l2_norm: L2-normalize the outputs (floor 1e-12).

    Returns:
      (n, dim) or (dim,) float32.

    Raises:
      InputError: a dimension that differs from the whitening's, NaN values,
        dim outside 1..d.
    """
    name = "the PCA" if isinstance(whitening, PCAWhitening) else "the whitening"
    d = whitening.dim if dim is None else int(dim)
    if not 1 <= d <= whitening.dim:
        raise InputError(f"dim must be in 1..{whitening.dim}, got {dim}")
    a = np.asarray(x)
    single = a.ndim == 1
    a = check_matrix(
        a[None] if single else a, "vectors", dim=whitening.input_dim, dim_name=name, empty=True
    )
    a = a.astype(np.float64) - whitening.mean
    if isinstance(whitening, PCAWhitening):
        # Components and scales apart, as fitted (and as vlad.py always applied them).
        y = (a @ whitening.components[:d].T) * whitening.scale[:d]
    else:
        y = a @ whitening.projection[:d].T
    if l2_norm:
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), NORM_FLOOR)
    y = y.astype(np.float32)
    return y[0] if single else y


# --------------------------------------------------------------------------- learned whitening


def _as_float64(x, name: str, rows: str = "N") -> np.ndarray:
    """A (rows, D) finite numeric matrix as float64 (no float32 round trip)."""
    return check_matrix(x, name, rows=rows, dtype=np.float64)


def _pair_indices(pairs, n: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pairs, tuple) and len(pairs) == 2:
        q, p = (np.asarray(v) for v in pairs)
        if q.ndim != 1 or q.shape != p.shape:
            raise InputError(
                f"pairs as (queries, positives) must be two (P,) index arrays, "
                f"got shapes {q.shape} and {p.shape}"
            )
    else:
        a = np.asarray(pairs)
        if a.ndim != 2 or a.shape[1] != 2:
            raise InputError(f"pairs must be (P, 2) indices (query, positive), got shape {a.shape}")
        q, p = a[:, 0], a[:, 1]
    if q.size == 0:
        raise InputError("pairs is empty: learned whitening needs matching pairs")
    if not (np.issubdtype(q.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        raise InputError(f"pair indices must be integers, got dtypes {q.dtype} and {p.dtype}")
    for v in (q, p):
        bad = (v < 0) | (v >= n)
        if bad.any():
            j = int(np.argmax(bad))
            raise InputError(f"pair {j} names vector {int(v[j])}, outside 0..{n - 1}")
    return q.astype(np.int64), p.astype(np.int64)


def _jittered_cholesky(s: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of s + a I, a = 0 or the smallest of 1e-10, 1e-9, ... times
    the mean diagonal that makes it positive definite (cirtorch jitters the same way,
    with absolute steps from 1e-10)."""
    scale = max(float(np.trace(s)) / s.shape[0], 1e-300)
    for a in [0.0] + [scale * 10.0**e for e in range(-10, 1)]:
        try:
            return np.linalg.cholesky(s + a * np.eye(s.shape[0]))
        except np.linalg.LinAlgError:
            continue
    raise InputError("the (query - positive) covariance is not positive definite even jittered")


def fit_learned_whitening(x, pairs, *, dim: int | None = None) -> Whitening:
    """Learned whitening Lw from matching pairs (Radenovic et al.; cirtorch ``whitenlearn``).

    With X the (N, D) training vectors and P pairs (q_i, p_i) of matching images:

    1. m = mean of the query vectors x[q_i] (over the pairs, repeats counted);
    2. S = (1/P) sum_i (x[q_i] - x[p_i]) (x[q_i] - x[p_i])^T, the covariance of
       matching differences (no centring);
    3. P1 = L^-1 with S = L L^T (Cholesky; the diagonal jittered by
       1e-10, 1e-9, ... times its mean if S is singular, e.g. P < D pairs), so
       that matching differences become white: P1 S P1^T = I;
    4. V, eigenvectors of P1 (X - m)^T (X - m) P1^T (all N vectors) by
       decreasing eigenvalue, each signed so that its largest-magnitude entry
       is positive;
    5. P = V^T P1, keeping the first ``dim`` rows.

    Apply with :func:`apply_whitening`: L2(P[:d] (x - m)).

    Args:
      x: (N, D) training vectors (descriptors of a training set, not the
        evaluated images).
      pairs: (P, 2) int array of (query, positive) row indices of x, or a
        tuple (queries (P,), positives (P,)).
      dim: output dimension d in 1..D (None: D).

    Returns:
      :class:`Whitening` with mean (D,) and projection (d, D), float64.

    Raises:
      InputError: bad shapes, NaN values, indices outside x, dim out of range.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 3.3 ("Learned
      whitening"); Mikolajczyk and Matas, ICCV 2007 (linear discriminant
      projections).
    """
    a = _as_float64(x, "training vectors")
    n, big_d = a.shape
    d = big_d if dim is None else int(dim)
    if not 1 <= d <= big_d:
        raise InputError(f"dim must be in 1..{big_d} (the vector dimension D), got {dim}")
    q, p = _pair_indices(pairs, n)
    mean = a[q].mean(axis=0)
    diff = a[q] - a[p]
    s = diff.T @ diff / diff.shape[0]
    p1 = np.linalg.inv(_jittered_cholesky(s))
    y = (a - mean) @ p1.T
    lam, vec = np.linalg.eigh(y.T @ y)
    vec = vec[:, ::-1]
    big = np.argmax(np.abs(vec), axis=0)
    vec = vec * np.sign(vec[big, np.arange(big_d)])[None, :]
    return Whitening(mean, (vec.T @ p1)[:d])


# --------------------------------------------------------------------------- multi-scale


def multiscale_combine(vectors, p: float = 1.0) -> np.ndarray:
    """Combines the descriptors of one image at several scales (cirtorch ``extract_ms``).

    v = L2((mean over scales of v_s^p)^(1/p)), elementwise powers; p = 1 is
    the plain mean, p = the GeM exponent is cirtorch's choice with GeM
    (scales 1, 1/sqrt 2, 1/2 there).

    Args:
      vectors: (S, N, D) descriptors of N images at S scales (or a sequence
        of S arrays (N, D)); >= 0 when p != 1 (GeM / MAC outputs are).
      p: power > 0.

    Returns:
      (N, D) float32, L2-normalized (floor 1e-12).

    Raises:
      InputError: not (S, N, D), NaN, p <= 0, negative entries with p != 1.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 5 (multi-scale representation).
    """
    v = np.asarray(vectors)
    if v.ndim != 3 or 0 in v.shape:
        raise InputError(f"vectors must be (S, N, D) with S, N, D >= 1, got shape {v.shape}")
    v = _as_float64(v.reshape(-1, v.shape[2]), "vectors").reshape(v.shape)
    p = float(p)
    if not (np.isfinite(p) and p > 0):
        raise InputError(f"p must be > 0, got {p}")
    if p == 1.0:
        m = v.mean(axis=0)
    else:
        if (v < 0).any():
            raise InputError(
                f"vectors has negative entries: the power mean with p = {p} needs >= 0"
            )
        m = np.power(np.power(v, p).mean(axis=0), 1.0 / p)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), NORM_FLOOR)
    return m.astype(np.float32)
