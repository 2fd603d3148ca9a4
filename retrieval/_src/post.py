"""The post-processing settings of the image pipeline and its vector-level stages.

:class:`PostConfig` (whitening, DBA, QE: the settings of ``ckn eval-images``), the whitening fit
on other images' descriptors (:func:`fit_global_whitening`) and what the evaluation records of
it (:func:`whitening_record`), and :func:`postprocess`: whitening, DBA and QE of vectors held in
memory. :func:`retrieval._src.evaluate.evaluate` runs them in its stages 2, 4 and 6.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ckn import InputError
from retrieval._src.expansion import database_augmentation, expand_queries
from retrieval._src.image_folder import group_pairs
from retrieval._src.postprocess import (
    PCAWhitening,
    Whitening,
    apply_whitening,
    fit_learned_whitening,
    fit_pca_whitening,
)
from retrieval._src.settings import check_settings, setting, whiten_dim_setting

WHITENINGS = ("none", "pca", "learned")


@dataclasses.dataclass(frozen=True)
class PostConfig:
    """Post-processing of :func:`retrieval._src.evaluate.evaluate` (see its module docstring).

    Attributes:
      whiten: "none", "pca" or "learned" (needs ``whiten_images``; "learned" needs groups
        there).
      whiten_dim: output dimension of the whitening (None: min(D, n - 1)).
      qe: query-expansion neighbours (0: none).
      alpha: QE / DBA weight exponent; 0: average QE and rank-weighted DBA.
      dba: database-side augmentation neighbourhood, the vector itself included (0: none).
    """

    whiten: str = setting(
        "none", choices=WHITENINGS,
        help="whitening fitted on other images (never the evaluated ones); learned needs group "
        "subfolders there",
    )  # fmt: skip
    whiten_dim: int | None = whiten_dim_setting("min(D, images - 1)")
    qe: int = setting(0, minimum=0, help="query expansion with the top K (0: none)")
    alpha: float = setting(
        0.0, minimum=0,
        help="alpha-QE / alpha-DBA weight exponent (0: average QE, rank-weighted DBA)",
    )  # fmt: skip
    dba: int = setting(
        0, minimum=0,
        help="database-side augmentation over K neighbours, itself included (0: none)",
    )  # fmt: skip

    def __post_init__(self):
        check_settings(self)

    @property
    def label(self) -> str:
        """Short description, e.g. "pca-whitened, DBA 10, alpha-QE 5 (alpha 3)"."""
        parts = [
            {"none": "not whitened", "pca": "PCA-whitened", "learned": "Lw-whitened"}[self.whiten]
        ]
        if self.dba:
            parts.append(f"DBA {self.dba}")
        if self.qe:
            parts.append(f"alpha-QE {self.qe} (alpha {self.alpha:g})" if self.alpha else
                         f"QE {self.qe}")  # fmt: skip
        return ", ".join(parts)


# --------------------------------------------------------------------------- whitening


def fit_global_whitening(
    vectors, kind: str, *, labels=None, dim: int | None = None
) -> PCAWhitening | Whitening:
    """Fits a PCA or learned whitening on training descriptors (not the evaluated ones).

    PCA-whitening: :func:`retrieval.image.fit_pca_whitening`. Learned whitening (Lw):
    :func:`retrieval.image.fit_learned_whitening` with every ordered pair of images of one group
    as a matching pair, as cirtorch's ``whitenlearn``. cirtorch fits it on ~10^5 pairs of
    2048-D vectors; with a few hundred pairs the covariance of matching differences is
    singular (rank at most the sum of group sizes - 1) and is jittered. Measured on the
    benchmark (``benchmarks/global_retrieval.py``, 48 Oxford images in 8 groups as
    training set): Lw lowers mAP a lot (tiles set, GeM: 81.5 -> 38.6). Fitting Lw only in
    the subspace that the pairs constrain was tried and is worse (27.5): with 8 groups it
    learns those 8 scenes' discriminant; the jittered full-space fit at least keeps the
    unconstrained directions nearly as they were.

    Args:
      vectors: (n, D) training descriptors.
      kind: "pca" or "learned".
      labels: (n,) int group ids, -1 for images of no group (used by "learned").
      dim: output dimension (None: min(D, n - 1): beyond n - 1 directions the training
        vectors have no variance, and whitening would only amplify noise there).

    Returns:
      A :class:`retrieval.image.PCAWhitening` or :class:`retrieval.image.Whitening`; apply it with
      :func:`retrieval.image.apply_whitening`.

    Raises:
      InputError: fewer than 2 vectors, no group of two images for "learned", a bad dim.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 3.3.
    """
    if kind not in ("pca", "learned"):
        raise InputError(f"whitening kind must be 'pca' or 'learned', got {kind!r}")
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"whitening needs (n, D) training vectors with n >= 2, got {x.shape}")
    d = min(x.shape[1], x.shape[0] - 1) if dim is None else int(dim)
    if kind == "pca":
        return fit_pca_whitening(x, d)
    if labels is None:
        raise InputError("learned whitening needs group labels of the training images")
    pairs = group_pairs(labels)
    if pairs.shape[0] == 0:
        raise InputError("learned whitening needs groups: no group holds two training images")
    return fit_learned_whitening(x, pairs, dim=d)


def postprocess(
    queries, database, post: PostConfig, *, whitening=None, queries_in_db: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Whitening, DBA and QE of query and database vectors held in memory (no scorer).

    The vector-level stages of :func:`evaluate` for callers that hold the vectors (benchmarks):
    QE with :func:`retrieval.image.expand_queries`.

    Args:
      queries: (Q, D) descriptors; database: (N, D).
      post: a :class:`PostConfig` (its ``whiten`` only names what ``whitening`` is).
      whitening: a fitted whitening or None.
      queries_in_db: query i is database row i (groups protocol): QE leaves it out of its
        own neighbours.

    Returns:
      (queries (Q, d), database (N, d)) float32, L2-normalized.
    """
    q = np.asarray(queries, np.float32)
    db = np.asarray(database, np.float32)
    if whitening is not None:
        q, db = apply_whitening(whitening, q), apply_whitening(whitening, db)
    if post.dba:
        db = _dba(db, post)
    if post.qe:
        q = expand_queries(q, db, post.qe, post.alpha, exclude_self=queries_in_db)
    return q, db


def _dba(db: np.ndarray, post: PostConfig) -> np.ndarray:
    weighting = "alpha" if post.alpha > 0 else "rank"
    return database_augmentation(db, post.dba, weighting=weighting, alpha=post.alpha or 3.0)


def whitening_record(whitening, post: PostConfig, paths, labels, whiten_images, **extra) -> dict:
    """What the evaluation's ``info["whitening"]`` says of a fitted whitening; ``capped``: a
    sentence when the training images span fewer dimensions than the default asks for."""
    rec = {
        "kind": post.whiten,
        **extra,
        "images": str(whiten_images),
        "num_images": len(paths),
        "num_pairs": int(group_pairs(labels).shape[0]) if labels is not None else 0,
        "dim": whitening.dim,
        "input_dim": whitening.input_dim,
        "capped": None,
    }
    if post.whiten_dim is None and whitening.dim < whitening.input_dim:
        rec["capped"] = (
            f"whitening to {whitening.dim}-D, not {whitening.input_dim}: {len(paths)} "
            f"whitening images span at most {len(paths) - 1} directions"
        )
    return rec
