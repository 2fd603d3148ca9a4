"""Average precision of ranked lists, precision-recall curves, the metric input checks.

Items are ranked by decreasing score, **ties broken against the relevant
items** (see :mod:`retrieval._src.metrics`).

Two definitions of average precision (AP) per query, with ``R`` relevant items
at 1-based ranks ``r_1 < ... < r_R``:

- ``mode="noninterpolated"`` (default, the one we report):
  ``AP = (1/R) * sum_k k / r_k``, i.e. precision averaged at the rank of each
  relevant item (TREC / Oxford "non-interpolated" AP).
- ``mode="trapezoid"``: the Oxford buildings ``compute_ap.cpp`` variant, the
  area under the precision-recall curve by the trapezoid rule starting at
  (recall 0, precision 1): ``AP = (1/R) * sum_k (p(r_k - 1) + p(r_k)) / 2``
  with ``p(r) = (number relevant in the top r) / r`` and ``p(0) = 1``. So
  ``p(r_k - 1) = (k - 1) / (r_k - 1)`` (``= 1`` when ``r_k = 1``). It is never
  below the non-interpolated value.
"""

from __future__ import annotations

import numpy as np

from ckn import InputError
from retrieval._src.checks import check_matrix

MODES = ("noninterpolated", "trapezoid")


# --------------------------------------------------------------------------- checks


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def check_descriptors(descriptors, *, name: str = "descriptors") -> np.ndarray:
    d = check_matrix(descriptors, name)
    # Dot products must stay finite in float32.
    max_sq = float(np.max(np.einsum("nd,nd->n", d, d, dtype=np.float64)))
    if max_sq > 1e37:
        raise InputError(
            f"{name} are too large for float32 dot products (max squared norm {max_sq:.3g})"
        )
    return d


def check_labels(labels, n: int, *, name: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise InputError(f"{name} must be (N,) with N = {n}, got shape {lab.shape}")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all():
            raise InputError(f"{name} contains NaN or inf values")
    elif not (
        np.issubdtype(lab.dtype, np.integer)
        or np.issubdtype(lab.dtype, np.str_)
        or np.issubdtype(lab.dtype, np.bool_)
    ):
        raise InputError(f"{name} must be integer (or string) ids, got dtype {lab.dtype}")
    return lab


def _check_scores_relevant(scores, relevant) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    r = np.asarray(relevant)
    if s.ndim not in (1, 2):
        raise InputError(f"scores must be (M,) or (Q, M), got shape {s.shape}")
    if r.shape != s.shape:
        raise InputError(f"relevant must have the shape of scores {s.shape}, got {r.shape}")
    if s.shape[-1] == 0:
        raise InputError(f"scores is empty, shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise InputError(f"scores must be numeric, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise InputError("scores contains NaN values")
    if r.dtype != np.bool_:
        if not np.isin(r, (0, 1)).all():
            raise InputError("relevant must be a boolean mask (or 0/1 values)")
        r = r.astype(bool)
    return s, r


def _check_levels(recall_levels) -> np.ndarray:
    levels = np.arange(21) / 20.0 if recall_levels is None else np.asarray(recall_levels, float)
    if (
        levels.ndim != 1
        or levels.size == 0
        or not np.isfinite(levels).all()
        or ((levels < 0) | (levels > 1)).any()
    ):
        raise InputError("recall_levels must be a non-empty 1-D array in [0, 1]")
    return levels


# --------------------------------------------------------------------------- AP core


def _ap_terms(k: np.ndarray, r: np.ndarray, mode: str) -> np.ndarray:
    """Per relevant item contribution to R * AP; k, r are 1-based (position, rank)."""
    k = k.astype(np.float64)
    r = r.astype(np.float64)
    prec = k / r
    if mode == "noninterpolated":
        return prec
    prev = np.where(r > 1, (k - 1) / np.maximum(r - 1, 1), 1.0)
    return 0.5 * (prev + prec)


def _ranks_of_relevant(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks (ascending) of the relevant items of one list, ties against them.

    The k-th relevant item (by decreasing score) has rank
    ``k + #{non-relevant j : s_j >= s_k}``.
    """
    rel = np.sort(scores[relevant])[::-1]
    non = np.sort(scores[~relevant])
    n_ge = non.size - np.searchsorted(non, rel, side="left")
    return np.arange(1, rel.size + 1) + n_ge


def average_precision_from_ranking(
    ranked_relevant, *, num_relevant: int | None = None, mode: str = "noninterpolated"
) -> float:
    """AP of one ranked list given as relevance flags in rank order.

    Args:
      ranked_relevant: (M,) bool, ``ranked_relevant[r]`` tells whether the item
        at rank ``r + 1`` is relevant.
      num_relevant: total number of relevant items, if the list is truncated
        (relevant items missing from the list count as never retrieved). Default:
        the number of True entries.
      mode: ``"noninterpolated"`` (default, the one we report) or
        ``"trapezoid"`` (Oxford ``compute_ap.cpp``); see the module docstring.

    Returns:
      AP in [0, 1]; NaN when there is no relevant item.

    Examples:
      >>> average_precision_from_ranking([True, False, True])  # (1/1 + 2/3) / 2
      0.8333333333333333
    """
    _check_mode(mode)
    flags = np.asarray(ranked_relevant)
    if flags.ndim != 1:
        raise InputError(f"ranked_relevant must be (M,), got shape {flags.shape}")
    flags = flags.astype(bool)
    ranks = np.flatnonzero(flags) + 1
    total = ranks.size if num_relevant is None else int(num_relevant)
    if total < ranks.size:
        raise InputError(
            f"num_relevant = {total} is below the {ranks.size} relevant items in the list"
        )
    if total == 0:
        return float("nan")
    return float(_ap_terms(np.arange(1, ranks.size + 1), ranks, mode).sum() / total)


def average_precision(scores, relevant, *, mode: str = "noninterpolated"):
    """Average precision of one or several queries from scores and a relevance mask.

    Items are ranked by decreasing score; ties are broken against the relevant
    items (see the module docstring).

    Args:
      scores: (M,) or (Q, M) similarity of each item to the query (higher =
        closer). Exclude the query itself beforehand.
      relevant: bool mask with the shape of ``scores``.
      mode: ``"noninterpolated"`` (default, the one we report) or
        ``"trapezoid"`` (Oxford ``compute_ap.cpp``).

    Returns:
      A float for 1-D input, else (Q,) float64. NaN for a query without any
      relevant item.

    Raises:
      InputError: wrong shapes, NaN scores, a non-boolean mask, unknown mode.
    """
    _check_mode(mode)
    s, r = _check_scores_relevant(scores, relevant)
    rows_s = s[None] if s.ndim == 1 else s
    rows_r = r[None] if r.ndim == 1 else r
    out = np.full(rows_s.shape[0], np.nan)
    for q in range(rows_s.shape[0]):
        if not rows_r[q].any():
            continue
        ranks = _ranks_of_relevant(rows_s[q], rows_r[q])
        out[q] = _ap_terms(np.arange(1, ranks.size + 1), ranks, mode).mean()
    return float(out[0]) if s.ndim == 1 else out


# --------------------------------------------------------------------------- PR curves


def precision_recall_curve(scores, relevant, *, per_query: bool = False, recall_levels=None):
    """Precision-recall curve of a ranking, for plotting.

    Items are ranked by decreasing score, ties against relevant items.

    * ``per_query=False`` (pooled): ``scores``/``relevant`` of shape (M,) or
      (Q, M) are flattened into one ranked list (all query-item pairs pooled).
      Returns ``(precision, recall)``, each (M',) float64: the values after
      each rank cut-off 1..M'.
    * ``per_query=True``: ``scores`` (Q, M) are ranked per query; returns
      ``(precision, recall_levels)`` with precision (Q, L) the interpolated
      precision (max precision at any recall >= level) of each query at each
      of the L ``recall_levels`` (default 0, 0.05, ..., 1); rows of queries
      without a relevant item are NaN. Average over rows for a mean curve.

    Raises:
      InputError: wrong shapes, NaN scores, no relevant item in the pooled list.
    """
    s, r = _check_scores_relevant(scores, relevant)
    if not per_query:
        s, r = s.reshape(-1), r.reshape(-1)
        if not r.any():
            raise InputError("precision_recall_curve: no relevant item")
        # Sort by decreasing score; among equal scores non-relevant first.
        o = np.lexsort((r, -s.astype(np.float64)))
        hits = np.cumsum(r[o])
        ranks = np.arange(1, s.size + 1)
        return hits / ranks, hits / hits[-1]
    if s.ndim != 2:
        raise InputError(f"per_query=True needs scores (Q, M), got shape {s.shape}")
    levels = _check_levels(recall_levels)
    out = np.full((s.shape[0], levels.size), np.nan)
    for q in range(s.shape[0]):
        if not r[q].any():
            continue
        ranks = _ranks_of_relevant(s[q], r[q])
        k = np.arange(1, ranks.size + 1)
        prec = k / ranks
        rec = k / ranks.size
        # Interpolated precision: max precision at recall >= level; it is
        # attained at a relevant item's rank.
        best = np.maximum.accumulate(prec[::-1])[::-1]
        idx = np.searchsorted(rec, levels - 1e-12, side="left")
        out[q] = best[np.minimum(idx, ranks.size - 1)]
    return out, levels
