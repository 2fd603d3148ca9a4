"""Query expansion and database-side augmentation of global descriptors.

Row vectors, ``(N, D)`` arrays, on the host; outputs are float32. The nearest-neighbour
searches run in the jitted, blocked :func:`retrieval.index.exact_search` (inner product; ties
to the smaller index).

Query expansion (:func:`query_expansion`, :func:`alpha_qe`, :func:`expand_queries`) and
database-side augmentation (:func:`database_augmentation`) follow cirtorch / dirtorch / Gordo
et al.; see each function. Query expansion has one formula, :func:`expand_with`: every caller
(the functions here, database augmentation, the pipeline's query-expansion scorer after CAM
re-ranking) chooses the neighbours and calls it.

References:
  O. Chum et al., "Total recall", ICCV 2007 (average QE). F. Radenovic, G. Tolias, O. Chum,
  "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018, section 5
  (alpha-QE). A. Gordo et al., "End-to-end learning of deep visual representations for image
  retrieval", IJCV 2017, section 5.3 (QE, DBA). R. Arandjelovic and A. Zisserman, "Three
  things everyone should know to improve object retrieval", CVPR 2012 (DBA).
"""

from __future__ import annotations

import numpy as np

from ckn import InputError
from retrieval._src.postprocess import NORM_FLOOR, _as_float64
from retrieval._src.search import exact_search


def _check_k(k, available: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be an int >= 1, got {k!r}")
    if k > available:
        raise InputError(f"k = {k} exceeds the {available} {what}")
    return int(k)


def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not (np.isfinite(alpha) and alpha >= 0):
        raise InputError(f"alpha must be a finite float >= 0, got {alpha}")
    return alpha


def _neighbours(queries: np.ndarray, db: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """(Q, k) int64 top-k database rows by inner product (jitted exact search)."""
    _, idx = exact_search(queries, db, k, exclude_self=exclude_self)
    return idx


def expand_with(q, db, neighbours, alpha: float | None = None) -> np.ndarray:
    """The query-expansion formula: L2(q + sum_j w_j db[neighbours_j]), in float64.

    w_j = 1 (alpha None: average QE), else max(q . db_j, 0)^alpha (alpha-QE; alpha = 0
    weighs every neighbour 1, as 0^0 = 1).

    Args:
      q: (Q, D) float64 queries.
      db: (N, D) float64 database vectors.
      neighbours: (Q, k) int ids of each query's neighbours in ``db`` (k may be 0).
      alpha: weight exponent >= 0, or None.

    Returns:
      (Q, D) float32, L2-normalized (floor 1e-12).
    """
    nb = db[neighbours]  # (Q, k, D)
    if alpha is None:
        w = np.ones(np.shape(neighbours))
    else:
        w = np.power(np.maximum(np.einsum("qd,qkd->qk", q, nb), 0.0), alpha)
    out = q + np.einsum("qk,qkd->qd", w, nb)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), NORM_FLOOR)
    return out.astype(np.float32)


def _qe_inputs(q, db, k) -> tuple[np.ndarray, np.ndarray, int]:
    d = _as_float64(db, "database")
    qq = np.asarray(q)
    if qq.ndim == 2 and qq.shape[1:] != d.shape[1:]:
        raise InputError(
            f"queries have dimension {qq.shape[1]} but the database has dimension {d.shape[1]}"
        )
    qq = _as_float64(qq, "queries", rows="Q")
    return qq, d, _check_k(k, d.shape[0], "database vectors")


def query_expansion(q, db, k: int = 1) -> np.ndarray:
    """Average query expansion: q' = L2(q + sum of its top-k database vectors).

    Neighbours by inner product (descriptors L2-normalized: cosine), ties to
    the smaller index. Dividing by k + 1 (Chum et al.'s average) does not
    change the normalized result.

    Args:
      q: (Q, D) queries.
      db: (N, D) database vectors.
      k: neighbours added, 1 <= k <= N (Gordo et al. use 1, cirtorch 10 in
        its alpha-QE experiments).

    Returns:
      (Q, D) float32 expanded queries, L2-normalized; search the database
      again with them.

    Raises:
      InputError: bad shapes, NaN, dimension mismatch, bad k.

    References:
      Chum et al., ICCV 2007; Gordo et al., IJCV 2017, section 5.3.
    """
    qq, d, k = _qe_inputs(q, db, k)
    return expand_with(qq, d, _neighbours(qq, d, k, False), None)


def alpha_qe(q, db, k: int = 10, alpha: float = 3.0) -> np.ndarray:
    """alpha-weighted query expansion: q' = L2(q + sum_j db_j max(q . db_j, 0)^alpha).

    Over the top-k database vectors by inner product. ``alpha`` is a float
    (dirtorch parses it as an int: a bug). alpha = 0 weighs every neighbour
    1 (0^0 = 1), i.e. :func:`query_expansion`.

    Args:
      q: (Q, D) queries.
      db: (N, D) database vectors.
      k: neighbours, 1 <= k <= N.
      alpha: weight exponent >= 0 (3 in Radenovic et al.).

    Returns:
      (Q, D) float32, L2-normalized.

    Raises:
      InputError: bad shapes, NaN, dimension mismatch, bad k or alpha.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 5 (alpha-QE).
    """
    alpha = _check_alpha(alpha)
    qq, d, k = _qe_inputs(q, db, k)
    return expand_with(qq, d, _neighbours(qq, d, k, False), alpha)


def expand_queries(queries, database, k: int, alpha: float = 0.0, *, exclude_self=False):
    """Query expansion: q' = L2(q + sum_j max(q . x_j, 0)^alpha x_j) over the top-k database x_j.

    alpha = 0 weighs every neighbour 1 (average QE). With ``exclude_self`` query i
    is database row i and is left out of its neighbours; otherwise this is
    :func:`alpha_qe` (= :func:`query_expansion` for alpha = 0).

    Args:
      queries: (Q, D); database: (N, D); k: neighbours, 1..N (N - 1 with exclude_self).

    Returns:
      (Q, D) float32, L2-normalized.
    """
    if not exclude_self:
        return alpha_qe(queries, database, k, alpha)
    db = np.asarray(database, np.float64)
    q = np.asarray(queries, np.float64)
    if not isinstance(k, int) or not 1 <= k <= db.shape[0] - 1:
        raise InputError(f"QE k must be in 1..{db.shape[0] - 1} (the other images), got {k!r}")
    _, idx = exact_search(q.astype(np.float32), db.astype(np.float32), k, exclude_self=True)
    return expand_with(q, db, idx, _check_alpha(alpha))


WEIGHTINGS = ("rank", "alpha")


def database_augmentation(
    db, k: int = 10, *, weighting: str = "rank", alpha: float = 3.0
) -> np.ndarray:
    """Database-side augmentation (DBA): each vector becomes a weighted sum of its neighbourhood.

    ``k`` counts the vector itself (Gordo et al.'s convention): vector i and
    its k - 1 nearest other database vectors (inner product, ties to the
    smaller index), ranked r = 0 (itself), 1, ..., k - 1, are summed with
    weights

    * ``"rank"`` (Gordo et al.): (k - r) / k, i.e. 1 for itself, decreasing
      linearly;
    * ``"alpha"`` (as :func:`alpha_qe`): 1 for itself, max(x_i . x_j, 0)^alpha
      for neighbour j;

    then L2-normalized. k = 1 only normalizes. Queries are not augmented;
    search the augmented database with the (optionally expanded) queries.

    Args:
      db: (N, D) database vectors.
      k: neighbourhood size including the vector itself, 1 <= k <= N
        (Gordo et al. use 20 with rank weights).
      weighting: "rank" or "alpha".
      alpha: exponent of the "alpha" weighting, >= 0.

    Returns:
      (N, D) float32, L2-normalized.

    Raises:
      InputError: bad shape, NaN, bad k, weighting or alpha.

    References:
      Arandjelovic and Zisserman, CVPR 2012, section 4; Gordo et al., IJCV
      2017, section 5.3 (weights (k - r) / k).
    """
    if weighting not in WEIGHTINGS:
        raise InputError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    alpha = _check_alpha(alpha)
    d = _as_float64(db, "database")
    k = _check_k(k, d.shape[0], "database vectors (k counts the vector itself)")
    if k == 1:
        idx = np.zeros((d.shape[0], 0), np.int64)
    else:
        idx = _neighbours(d, d, k - 1, True)
    if weighting == "alpha":
        return expand_with(d, d, idx, alpha)
    w = (k - np.arange(1, k, dtype=np.float64)) / k  # ranks 1..k-1; rank 0 weighs k / k = 1
    out = d + np.einsum("k,nkd->nd", w, d[idx])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), NORM_FLOOR)
    return out.astype(np.float32)
