"""Patch retrieval metrics: the block-wise all-vs-all pass (RomePatches protocol).

Every item is a query against all other items of the set (itself excluded);
relevant = same label; similarity = float32 dot product; ties against the
relevant items (see :mod:`retrieval._src.metrics`). The N x N similarities are
computed in blocks of queries, so N = 20,000 runs in bounded memory, and one
pass gives every metric (:func:`retrieval_summary`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.metrics.ap import (
    _ap_terms,
    _check_levels,
    _check_mode,
    check_descriptors,
    check_labels,
)

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


def _retrieval_pass(
    descriptors: np.ndarray,
    labels: np.ndarray,
    *,
    block_size: int | None = None,
    count_method: str = "auto",
    recall_levels: np.ndarray | None = None,
) -> _PassResult:
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
        ap[qsel] = (
            np.bincount(q_rep - b0, weights=_ap_terms(k, rank, "noninterpolated"), minlength=nb)[
                qsel - b0
            ]
            / r_q
        )
        ap_t[qsel] = (
            np.bincount(q_rep - b0, weights=_ap_terms(k, rank, "trapezoid"), minlength=nb)[
                qsel - b0
            ]
            / r_q
        )
        nn_ok[qsel] = rank[np.cumsum(r_q) - r_q] == 1  # top relevant item ranked first
        if prec_at is not None:
            prec_at[qsel] = _interpolated_precision(k, rank, r_q, recall_levels)
    return _PassResult(ap, ap_t, nn_ok, nrel > 0, prec_at)


def _interpolated_precision(
    k: np.ndarray, rank: np.ndarray, r_q: np.ndarray, levels: np.ndarray
) -> np.ndarray:
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


def _count_at_least(
    s: np.ndarray,
    thr: np.ndarray,
    q_local: np.ndarray,
    k: np.ndarray,
    rel_s: np.ndarray,
    rel_key: np.ndarray,
    *,
    method: str = "auto",
) -> np.ndarray:
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
        counts = np.stack(
            [np.count_nonzero(s >= table[:, c : c + 1], axis=1) for c in range(table.shape[1])],
            axis=1,
        )
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


def patch_retrieval_map(
    descriptors,
    labels,
    *,
    mode: str = "noninterpolated",
    return_per_query: bool = False,
    block_size: int | None = None,
) -> RetrievalResult:
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
    x = check_descriptors(descriptors)
    lab = check_labels(labels, x.shape[0])
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


def retrieval_summary(
    descriptors, labels, *, recall_levels=None, block_size: int | None = None
) -> RetrievalSummary:
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
    x = check_descriptors(descriptors)
    lab = check_labels(labels, x.shape[0])
    levels = _check_levels(recall_levels)
    if block_size is not None and int(block_size) < 1:
        raise InputError(f"block_size must be >= 1, got {block_size}")
    res = _retrieval_pass(x, lab, block_size=block_size, recall_levels=levels)
    has = res.has_relevant
    nq = int(has.sum())

    def mean(v):
        return float(np.mean(v[has])) if nq else float("nan")

    mean_prec = res.precision_at[has].mean(axis=0) if nq else np.full(levels.size, np.nan)
    return RetrievalSummary(
        mean(res.ap),
        mean(res.ap_trapezoid),
        mean(res.nn_correct),
        nq,
        x.shape[0] - nq,
        levels,
        mean_prec,
        res.ap,
    )


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
    x = check_descriptors(descriptors)
    lab = check_labels(labels, x.shape[0])
    res = _retrieval_pass(x, lab, block_size=block_size)
    nq = int(res.has_relevant.sum())
    return float(res.nn_correct[res.has_relevant].mean()) if nq else float("nan")
