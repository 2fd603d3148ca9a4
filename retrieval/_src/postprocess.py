"""Post-processing of global descriptors: whitening (PCA, learned), multi-scale, QE, DBA.

PCA-whitening (Jegou & Chum, ECCV 2012) projects a vector on its top principal
directions and divides each coordinate by the square root of its variance on
the training vectors (variance with 1/n, so that the training vectors get unit
variance exactly), then L2-normalizes. (faiss' ``PCAMatrix`` with
``eigen_power=-0.5`` leaves a variance of 1/n instead of 1: harmless only when
an L2 normalization follows. This module does not use it.)

References:
  H. Jegou and O. Chum, "Negative evidences and co-occurrences in image
  retrieval: the benefit of PCA and whitening", ECCV 2012.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.metrics import check_matrix

#: Norm floor of the L2 normalizations (VLFeat's value, as in vlad.py).
NORM_FLOOR = 1e-12


def _check_matrix(x, name: str, *, dim: int | None = None, dim_name: str = "") -> np.ndarray:
    """(N, D) float32 (N = 0 allowed: the callers say what an empty set means)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be (N, D), got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise InputError(f"{name} have dimension {a.shape[1]} but {dim_name} has dimension {dim}")
    if a.shape[0] == 0:
        return a.astype(np.float32)
    return check_matrix(a, name)


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


def fit_pca_whitening(
    x,
    dim: int,
    *,
    whiten: bool = True,
    eps: float = 1e-9,
    rank_tol: float = 1e-10,
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

    Returns:
      A :class:`PCAWhitening`; apply it with :func:`apply_pca_whitening`.

    Raises:
      InputError: bad shapes or values, dim < 1, or dim above the number of
        directions the training vectors span (at most n - 1).
    """
    a = _check_matrix(x, "PCA training vectors").astype(np.float64)
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

    Args:
      pca: from :func:`fit_pca_whitening`.
      x: (n, D) or (D,) vectors.
      l2_norm: L2-normalize the outputs (floor 1e-12).

    Returns:
      (n, dim) or (dim,) float32.
    """
    a = np.asarray(x)
    single = a.ndim == 1
    a = _check_matrix(a[None] if single else a, "vectors", dim=pca.input_dim, dim_name="the PCA")
    y = ((a.astype(np.float64) - pca.mean) @ pca.components.T) * pca.scale
    if l2_norm:
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), NORM_FLOOR)
    y = y.astype(np.float32)
    return y[0] if single else y
