"""Retrieval and matching metrics in plain NumPy (no JAX).

Conventions used throughout:

* Higher score = more similar. Descriptors are compared by dot product; they
  are expected to be L2-normalized, in which case ranking by dot product is the
  same as ranking by Euclidean distance (``|x - y|^2 = 2 - 2 x.y``), up to
  float32 rounding of the computed similarities.
* **Ties are broken against the relevant items**: a relevant item whose score
  equals that of non-relevant items ranks after all of them. A constant (or
  otherwise uninformative) descriptor therefore gets the *lowest* AP its ranking
  allows, never 1.0. (HPatches' Python retrieval task puts positives first
  among equal distances, so a constant descriptor scores mAP 1.0 there; see
  CKN_NOTES section 6.) The order of relevant items tied with each other does
  not change AP.
* Two definitions of average precision (AP) per query, with ``R`` relevant items
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

from typing import NamedTuple

import numpy as np

from ckn import InputError

MODES = ("noninterpolated", "trapezoid")

# Elements of the float32 similarity block held at once by the blocked retrieval
# pass (2**24 floats = 64 MiB); the block of queries is sized from it.
_BLOCK_ELEMENTS = 2**24


class RetrievalResult(NamedTuple):
    """Result of :func:`patch_retrieval_map`.

    Attributes:
      mean_ap: mean AP over the evaluated queries, in [0, 1] (NaN if none).
      num_queries: queries evaluated (those with at least one relevant item).
      num_skipped: queries skipped because no other item shares their label.
      per_query: (N,) float64 AP of each query, NaN for skipped queries; only
        when ``return_per_query=True``, else None.
    """

    mean_ap: float
    num_queries: int
    num_skipped: int
    per_query: np.ndarray | None = None


class PairSet(NamedTuple):
    """Index pairs for pair metrics: ``i``, ``j`` (P,) int64 and ``is_match`` (P,) bool."""

    i: np.ndarray
    j: np.ndarray
    is_match: np.ndarray


# --------------------------------------------------------------------------- checks


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def check_matrix(x, name: str, *, rows: str = "N", dim: int | None = None) -> np.ndarray:
    """Validates a (rows, D) numeric matrix and returns it as float32.

    The shared input check of the retrieval code (metrics, search, evaluation).

    Args:
      x: array-like, expected (rows, D) with rows >= 1 and D >= 1.
      name: the argument's name, for messages.
      rows: the docstring name of the first dimension ("N", "Q").
      dim: the required D, if any.

    Raises:
      InputError: wrong rank, empty, non-numeric dtype, wrong D, NaN or inf.
    """
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(f"{name} must be ({rows}, D), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(f"{name} is empty, shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name} must be a float array, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise InputError(f"{name} must have D = {dim} columns, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name} contains NaN or inf values")
    return a


def _check_descriptors(descriptors, *, name: str = "descriptors") -> np.ndarray:
    d = check_matrix(descriptors, name)
    # Dot products must stay finite in float32.
    max_sq = float(np.max(np.einsum("nd,nd->n", d, d, dtype=np.float64)))
    if max_sq > 1e37:
        raise InputError(f"{name} are too large for float32 dot products (max squared norm {max_sq:.3g})")
    return d


def _check_labels(labels, n: int, *, name: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise InputError(f"{name} must be (N,) with N = {n}, got shape {lab.shape}")
    if np.issubdtype(lab.dtype, np.floating):
        if not np.isfinite(lab).all():
            raise InputError(f"{name} contains NaN or inf values")
    elif not (np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.str_)
              or np.issubdtype(lab.dtype, np.bool_)):
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


def average_precision_from_ranking(ranked_relevant, *, num_relevant: int | None = None,
                                   mode: str = "noninterpolated") -> float:
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
        raise InputError(f"num_relevant = {total} is below the {ranks.size} relevant items in the list")
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


# --------------------------------------------------------------------------- blocked retrieval


def _ordered_int64(x: np.ndarray) -> np.ndarray:
    """Maps float32 values to int64 keys with the same order (-0.0 equal to +0.0)."""
    x = np.ascontiguousarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    b = x.view(np.int32).astype(np.int64)
    # Negative floats: reverse the order of their bit patterns.
    return np.where(b < 0, -(b & 0x7FFFFFFF), b)


class _PassResult(NamedTuple):
    ap: np.ndarray  # (N,) non-interpolated AP, NaN where no relevant item
    ap_trapezoid: np.ndarray  # (N,)
    nn_correct: np.ndarray  # (N,) bool, False where no relevant item
    has_relevant: np.ndarray  # (N,) bool
    precision_at: np.ndarray | None  # (N, L) interpolated precision at recall levels, NaN rows


def _group_index(labels: np.ndarray):
    """Returns (order, start, size): members of query q's group are
    ``order[start[q] : start[q] + size[q]]`` (q itself included)."""
    _, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, group_start[inv], counts[inv]


def _retrieval_pass(descriptors: np.ndarray, labels: np.ndarray, *,
                    block_size: int | None = None, count_method: str = "auto",
                    recall_levels: np.ndarray | None = None) -> _PassResult:
    """All-vs-all retrieval, blocked over queries; validated inputs.

    For each query the k-th relevant item (by decreasing score) has rank
    ``k + #{non-relevant j != q : s_j >= s_k}`` (ties against relevant), with
    the counts from :func:`_count_at_least`. All compared scores come from the
    same float32 product ``x[block] @ x.T``, so equal descriptors give exactly
    equal scores and the tie rule holds.
    """
    x = descriptors
    n = x.shape[0]
    order, gstart, gsize = _group_index(labels)
    nrel = gsize - 1
    if block_size is None:
        block_size = max(1, min(n, _BLOCK_ELEMENTS // max(n, 1)))
    ap = np.full(n, np.nan)
    ap_t = np.full(n, np.nan)
    nn_ok = np.zeros(n, dtype=bool)
    prec_at = None if recall_levels is None else np.full((n, recall_levels.size), np.nan)
    xt = np.ascontiguousarray(x.T)
    for b0 in range(0, n, block_size):
        b1 = min(n, b0 + block_size)
        rows = np.arange(b0, b1)
        qsel = rows[nrel[rows] > 0]
        if qsel.size == 0:
            continue
        nb = b1 - b0
        s = x[b0:b1] @ xt  # (B, N) float32
        s[np.arange(nb), rows] = -np.inf  # the query itself: never counted
        # Relevant pairs (query, item), grouped by query in row order.
        cnt = gsize[qsel]
        q_rep = np.repeat(qsel, cnt)
        pos = np.arange(q_rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        items = order[np.repeat(gstart[qsel], cnt) + pos]
        keep = items != q_rep
        q_rep, items = q_rep[keep], items[keep]
        rel_s = s[q_rep - b0, items]
        # Sort relevant scores by (query, decreasing score); k = position within query.
        rel_key = _ordered_int64(rel_s)
        o = np.lexsort((-rel_key, q_rep))
        q_rep, rel_key = q_rep[o], rel_key[o]
        r_q = nrel[qsel]
        first = np.repeat(np.cumsum(r_q) - r_q, r_q)
        k = np.arange(q_rep.size) - first + 1
        # Lowest relevant score of each query = its last entry.
        thr = np.full(nb, np.inf, dtype=np.float32)
        last = np.cumsum(r_q) - 1
        thr[qsel - b0] = rel_s[o][last]
        count_ge = _count_at_least(s, thr, q_rep - b0, k, rel_s[o], rel_key, method=count_method)
        # Relevant items >= s_k: index of the last relevant tied with s_k, + 1.
        rel_ge = _last_tie_position(q_rep, rel_key)
        rank = k + (count_ge - rel_ge)
        ap[qsel] = np.bincount(q_rep - b0, weights=_ap_terms(k, rank, "noninterpolated"),
                               minlength=nb)[qsel - b0] / r_q
        ap_t[qsel] = np.bincount(q_rep - b0, weights=_ap_terms(k, rank, "trapezoid"),
                                 minlength=nb)[qsel - b0] / r_q
        nn_ok[qsel] = rank[np.cumsum(r_q) - r_q] == 1  # top relevant item ranked first
        if prec_at is not None:
            prec_at[qsel] = _interpolated_precision(k, rank, r_q, recall_levels)
    return _PassResult(ap, ap_t, nn_ok, nrel > 0, prec_at)


def _interpolated_precision(k: np.ndarray, rank: np.ndarray, r_q: np.ndarray,
                            levels: np.ndarray) -> np.ndarray:
    """(Q, L) interpolated precision of Q queries at recall ``levels``.

    ``k``, ``rank``: (P,) 1-based position and rank of each relevant item,
    grouped by query (``r_q[q]`` consecutive entries each, k ascending). The
    interpolated precision at level l is the largest precision at a recall
    ``k / R >= l``, found at the ``max(1, ceil(l R))``-th relevant item.
    """
    prec = k / rank.astype(np.float64)
    nq = r_q.size
    first = np.cumsum(r_q) - r_q
    # Reverse cumulative max within each query: offsets of 2 (> any precision)
    # per query, growing in traversal order, keep the max from crossing queries.
    offset = 2.0 * np.repeat(np.arange(nq)[::-1], r_q)
    best = np.maximum.accumulate((prec + offset)[::-1])[::-1] - offset
    pos = np.maximum(1, np.ceil(levels[None, :] * r_q[:, None] - 1e-9)).astype(np.int64) - 1
    return best[first[:, None] + np.minimum(pos, r_q[:, None] - 1)]


def _count_at_least(s: np.ndarray, thr: np.ndarray, q_local: np.ndarray, k: np.ndarray,
                    rel_s: np.ndarray, rel_key: np.ndarray, *, method: str = "auto") -> np.ndarray:
    """For each relevant pair p: ``#{j : s[q_local[p], j] >= rel_s[p]}``.

    Args:
      s: (B, N) float32 scores of a block (the query itself at -inf).
      thr: (B,) lowest relevant score of each row (+inf for rows without one).
      q_local, k: (P,) row in the block and 1-based position of the pair among
        its row's relevant items, sorted by (row, decreasing score).
      rel_s, rel_key: (P,) the pair's score and its order-preserving int key.
      method: "sort": sort the candidates ``s >= thr`` keyed by (row, score),
        cheap when few items score above a query's worst relevant item (a good
        descriptor); "passes": one comparison pass over the block per relevant
        position, cheap when the candidates are many but groups are small;
        "auto" picks between them.
    """
    mask = s >= thr[:, None]
    if method == "auto":
        n_cand = int(np.count_nonzero(mask))
        method = "sort" if (4 * n_cand <= s.size or int(k.max()) > 64) else "passes"
    if method == "passes":
        table = np.full((s.shape[0], int(k.max())), np.inf, dtype=np.float32)
        table[q_local, k - 1] = rel_s
        counts = np.stack([np.count_nonzero(s >= table[:, c : c + 1], axis=1)
                           for c in range(table.shape[1])], axis=1)
        return counts[q_local, k - 1]
    if method != "sort":
        raise ValueError(f"unknown count method {method!r}")
    ci, cj = np.nonzero(mask)
    del mask
    ckey = (ci.astype(np.int64) << 33) + (_ordered_int64(s[ci, cj]) + (1 << 31))
    del ci, cj
    ckey.sort()
    qkey = (q_local.astype(np.int64) << 33) + (rel_key + (1 << 31))
    row_end = np.searchsorted(ckey, (q_local.astype(np.int64) + 1) << 33, side="left")
    return row_end - np.searchsorted(ckey, qkey, side="left")


def _last_tie_position(group: np.ndarray, key_desc: np.ndarray) -> np.ndarray:
    """For entries sorted by (group, key descending): 1-based position within the
    group of the last entry equal to each entry (count of entries >= it)."""
    m = group.size
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    new_group = np.ones(m, dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    run_end = np.ones(m, dtype=bool)  # entry ends a run of equal (group, key)
    run_end[:-1] = (group[1:] != group[:-1]) | (key_desc[1:] != key_desc[:-1])
    idx = np.arange(m)
    group_first = np.maximum.accumulate(np.where(new_group, idx, 0))
    # Position of the run end at or after each entry: reverse cumulative minimum.
    end_idx = np.where(run_end, idx, m)
    end_idx = np.minimum.accumulate(end_idx[::-1])[::-1]
    return end_idx - group_first + 1


def patch_retrieval_map(descriptors, labels, *, mode: str = "noninterpolated",
                        return_per_query: bool = False,
                        block_size: int | None = None) -> RetrievalResult:
    """Mean average precision of all-vs-all patch retrieval (RomePatches protocol).

    Every patch is a query against all other patches of the set (the query is
    excluded from its own ranking); the relevant items are those with the same
    label. Similarity is the dot product of the given descriptors, computed in
    float32: descriptors are expected to be L2-normalized, which makes this
    ranking the same as by Euclidean distance. Ties are broken against the
    relevant items, so a constant descriptor scores the lowest possible AP (for
    a query with ``R`` relevant among ``M = N - 1`` others, ``(1/R) sum_k k /
    (M - R + k)``), never 1.0. Queries whose label occurs once are skipped and
    counted.

    The N x N similarity is computed in blocks of queries of ``block_size``
    rows (default: as many as fit in 2**24 float32 values, 64 MiB), so
    N = 20,000 runs in bounded memory.

    Args:
      descriptors: (N, D) float descriptors, L2-normalized.
      labels: (N,) integer (or string) ids; equal label = relevant.
      mode: ``"noninterpolated"`` (default, the one we report) or
        ``"trapezoid"`` (Oxford ``compute_ap.cpp``).
      return_per_query: also return the (N,) AP of each query.
      block_size: number of queries per block (memory vs speed).

    Returns:
      A :class:`RetrievalResult` ``(mean_ap, num_queries, num_skipped, per_query)``.

    Raises:
      InputError: wrong shapes, empty input, NaN/inf values, mismatched labels.
    """
    _check_mode(mode)
    x = _check_descriptors(descriptors)
    lab = _check_labels(labels, x.shape[0])
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")
    res = _retrieval_pass(x, lab, block_size=block_size)
    per_q = res.ap if mode == "noninterpolated" else res.ap_trapezoid
    nq = int(res.has_relevant.sum())
    mean = float(np.mean(per_q[res.has_relevant])) if nq else float("nan")
    return RetrievalResult(mean, nq, x.shape[0] - nq, per_q if return_per_query else None)


class RetrievalSummary(NamedTuple):
    """Result of :func:`retrieval_summary` (one all-vs-all pass).

    Attributes:
      mean_ap: mean non-interpolated AP over the evaluated queries (reported).
      mean_ap_trapezoid: the same with the Oxford trapezoid AP.
      nn_accuracy: fraction of evaluated queries whose nearest neighbour is relevant.
      num_queries: queries evaluated (with at least one relevant item).
      num_skipped: queries skipped: no other item shares their label.
      recall_levels: (L,) recall levels of the precision-recall summary.
      mean_precision: (L,) interpolated precision at each level, averaged
        over the evaluated queries (a mean precision-recall curve).
      per_query_ap: (N,) non-interpolated AP of each query, NaN if skipped.
    """

    mean_ap: float
    mean_ap_trapezoid: float
    nn_accuracy: float
    num_queries: int
    num_skipped: int
    recall_levels: np.ndarray
    mean_precision: np.ndarray
    per_query_ap: np.ndarray


def retrieval_summary(descriptors, labels, *, recall_levels=None,
                      block_size: int | None = None) -> RetrievalSummary:
    """mAP (both AP definitions), NN accuracy and a mean PR curve in one pass.

    Same protocol as :func:`patch_retrieval_map` (query excluded, ties against
    the relevant items, singleton labels skipped and counted), computing the
    N x N similarities once instead of once per metric.

    Args:
      descriptors: (N, D) float descriptors, L2-normalized.
      labels: (N,) ids; equal label = relevant.
      recall_levels: (L,) levels in [0, 1] of the precision-recall summary
        (default 0, 0.05, ..., 1).
      block_size: number of queries per block (memory vs speed).

    Returns:
      A :class:`RetrievalSummary`; the means are NaN when no query has a
      relevant item (``num_queries == 0``).
    """
    x = _check_descriptors(descriptors)
    lab = _check_labels(labels, x.shape[0])
    levels = _check_levels(recall_levels)
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")
    res = _retrieval_pass(x, lab, block_size=block_size, recall_levels=levels)
    has = res.has_relevant
    nq = int(has.sum())

    def mean(v):
        return float(np.mean(v[has])) if nq else float("nan")

    mean_prec = res.precision_at[has].mean(axis=0) if nq else np.full(levels.size, np.nan)
    return RetrievalSummary(mean(res.ap), mean(res.ap_trapezoid), mean(res.nn_correct), nq,
                            x.shape[0] - nq, levels, mean_prec, res.ap)


def _check_levels(recall_levels) -> np.ndarray:
    levels = np.arange(21) / 20.0 if recall_levels is None else np.asarray(recall_levels, float)
    if levels.ndim != 1 or levels.size == 0 or not np.isfinite(levels).all() or (
            (levels < 0) | (levels > 1)).any():
        raise InputError("recall_levels must be a non-empty 1-D array in [0, 1]")
    return levels


def nn_matching_accuracy(descriptors, labels, *, block_size: int | None = None) -> float:
    """Fraction of queries whose nearest neighbour has the same label.

    The query is excluded; the nearest neighbour is the highest dot product,
    with ties broken against the correct items (a query whose best relevant
    score ties with a non-relevant one counts as wrong). Queries whose label
    occurs once are skipped, as in :func:`patch_retrieval_map`.

    Args:
      descriptors: (N, D) float descriptors, L2-normalized.
      labels: (N,) ids.

    Returns:
      Accuracy in [0, 1] (NaN if no query has a relevant item).
    """
    x = _check_descriptors(descriptors)
    lab = _check_labels(labels, x.shape[0])
    res = _retrieval_pass(x, lab, block_size=block_size)
    nq = int(res.has_relevant.sum())
    return float(res.nn_correct[res.has_relevant].mean()) if nq else float("nan")


# --------------------------------------------------------------------------- PR curves


def precision_recall_curve(scores, relevant, *, per_query: bool = False,
                           recall_levels=None):
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


# --------------------------------------------------------------------------- pair metrics


def _check_pairs(scores, is_match) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    m = np.asarray(is_match)
    if s.ndim != 1 or m.shape != s.shape:
        raise InputError(f"scores and is_match must be (P,) of equal length, got {s.shape} and {m.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise InputError(f"scores must be numeric, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise InputError("scores contains NaN values")
    if m.dtype != np.bool_:
        if not np.isin(m, (0, 1)).all():
            raise InputError("is_match must be a boolean mask (or 0/1 values)")
        m = m.astype(bool)
    if not m.any() or m.all():
        raise InputError("pair metrics need both matching and non-matching pairs")
    return s.astype(np.float64), m


def roc_curve(scores, is_match):
    """ROC curve of a pair classifier ``score >= threshold -> match``.

    Args:
      scores: (P,) similarity of each pair (higher = more likely a match).
      is_match: (P,) bool.

    Returns:
      ``(fpr, tpr, thresholds)``, each (T + 1,): one point per distinct score
      (all pairs with equal scores are accepted together, so ties cost), in
      decreasing threshold order, preceded by (0, 0) at threshold +inf.
    """
    s, m = _check_pairs(scores, is_match)
    o = np.argsort(-s, kind="stable")
    s, m = s[o], m[o]
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each distinct score
    tp = np.cumsum(m)[last]
    fp = (last + 1) - tp
    tpr = np.r_[0.0, tp / m.sum()]
    fpr = np.r_[0.0, fp / (~m).sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores, is_match) -> float:
    """Area under the ROC curve (trapezoid; a tie between a match and a
    non-match counts one half)."""
    fpr, tpr, _ = roc_curve(scores, is_match)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def fpr_at_recall(scores, is_match, recall: float = 0.95) -> float:
    """False-positive rate at the first threshold reaching ``recall`` (FPR95).

    The threshold is lowered one distinct score at a time (tied pairs are
    accepted together) until at least ``recall`` of the matching pairs are
    accepted; returns the fraction of non-matching pairs accepted there (Brown,
    Hua, Winder: "FPR at 95% recall", lower is better).

    Args:
      scores: (P,) pair similarity, higher = match.
      is_match: (P,) bool.
      recall: target true-positive rate in (0, 1].
    """
    if not 0.0 < float(recall) <= 1.0:
        raise InputError(f"recall must be in (0, 1], got {recall}")
    fpr, tpr, _ = roc_curve(scores, is_match)
    n_pos = int(np.asarray(is_match).astype(bool).sum())
    # Integer-safe comparison: tp >= recall * P, with rounding slack.
    idx = int(np.argmax(tpr * n_pos >= float(recall) * n_pos - 1e-9))
    return float(fpr[idx])


def sample_pairs(labels, *, max_positive: int = 100_000, seed: int = 0) -> PairSet:
    """Matching pairs and as many random non-matching pairs, deterministically.

    Positives are all unordered pairs ``i < j`` with equal labels, or
    ``max_positive`` of them drawn at random (uniformly over pairs) when there
    are more. Negatives are drawn uniformly among ordered pairs with different
    labels (with replacement, so a pair may repeat). The same ``seed`` gives the
    same pairs.

    Args:
      labels: (N,) ids.
      max_positive: cap on the number of matching pairs.
      seed: seed of ``numpy.random.default_rng``.

    Returns:
      A :class:`PairSet` ``(i, j, is_match)``, positives first.

    Raises:
      InputError: no matching pair, or all labels equal (no non-matching pair).
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size < 2:
        raise InputError(f"labels must be (N,) with N >= 2, got shape {lab.shape}")
    if max_positive < 1:
        raise InputError(f"max_positive must be >= 1, got {max_positive}")
    rng = np.random.default_rng(seed)
    _, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    if counts.size < 2:
        raise InputError("all labels are equal: no non-matching pair")
    order = np.argsort(inv, kind="stable")
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    npairs = counts * (counts - 1) // 2
    total = int(npairs.sum())
    if total == 0:
        raise InputError("no two items share a label: no matching pair")
    if total <= max_positive:
        gi, gj = [], []
        for c in np.unique(counts[counts > 1]):
            groups = np.flatnonzero(counts == c)
            a, b = np.triu_indices(int(c), k=1)
            base = start[groups][:, None]
            gi.append(order[(base + a[None]).reshape(-1)])
            gj.append(order[(base + b[None]).reshape(-1)])
        pi, pj = np.concatenate(gi), np.concatenate(gj)
        o = np.lexsort((pj, pi))
        pi, pj = pi[o], pj[o]
    else:
        g = rng.choice(counts.size, size=max_positive, p=npairs / total)
        a = rng.integers(0, counts[g])
        b = rng.integers(0, counts[g] - 1)
        b = b + (b >= a)
        pi, pj = order[start[g] + a], order[start[g] + b]
    num = pi.size
    ni = np.empty(0, dtype=np.int64)
    nj = np.empty(0, dtype=np.int64)
    while ni.size < num:
        need = num - ni.size
        ci = rng.integers(0, lab.size, size=2 * need + 16)
        cj = rng.integers(0, lab.size, size=2 * need + 16)
        ok = inv[ci] != inv[cj]
        ni = np.concatenate([ni, ci[ok]])[:num]
        nj = np.concatenate([nj, cj[ok]])[:num]
    i = np.concatenate([pi, ni]).astype(np.int64)
    j = np.concatenate([pj, nj]).astype(np.int64)
    is_match = np.r_[np.ones(num, dtype=bool), np.zeros(num, dtype=bool)]
    return PairSet(i, j, is_match)


def pair_scores(descriptors, i, j) -> np.ndarray:
    """(P,) float64 dot products ``descriptors[i[p]] . descriptors[j[p]]``."""
    x = _check_descriptors(descriptors)
    i = np.asarray(i)
    j = np.asarray(j)
    if i.shape != j.shape or i.ndim != 1:
        raise InputError(f"i and j must be (P,) of equal length, got {i.shape} and {j.shape}")
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= x.shape[0]):
        raise InputError(f"pair indices out of range for N = {x.shape[0]}")
    out = np.empty(i.size)
    for c in range(0, i.size, 65536):
        out[c : c + 65536] = np.einsum("pd,pd->p", x[i[c : c + 65536]], x[j[c : c + 65536]],
                                       dtype=np.float64)
    return out
