"""Image retrieval metrics: mAP from a similarity matrix or from ranked lists, junk images.

Every image of a group is a query against all other images (itself
excluded); relevant = the other images of its group; images with label -1 are
distractors (in the database, never queries, relevant to nothing); images in
a query's junk list are removed from its ranking; a query without any
relevant image is skipped and said. AP is the plain non-interpolated AP
(precision averaged at the rank of each relevant image; ties broken against
the relevant images), and the Oxford trapezoidal AP is reported beside it
(see :mod:`retrieval._src.metrics`).

References:
  Philbin et al., Oxford buildings (junk images, ``compute_ap``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.checks import check_matrix
from retrieval._src.metrics.ap import average_precision, average_precision_from_ranking


class ImageRetrievalResult(NamedTuple):
    """mAP over queries, with the two AP definitions (see :mod:`retrieval._src.metrics`).

    Attributes:
      mean_ap: mean non-interpolated AP (the one we report), NaN without query.
      mean_ap_trapezoid: mean Oxford trapezoidal AP.
      num_queries: images evaluated as queries.
      skipped: one message per image that is not a query (no relevant image).
      per_query: (N,) non-interpolated AP per image, NaN for non-queries.
    """

    mean_ap: float
    mean_ap_trapezoid: float
    num_queries: int
    skipped: tuple[str, ...]
    per_query: np.ndarray


def _check_eval_labels(labels, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise InputError(f"labels must be (N,) with N = {n}, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(
            f"labels must be integer group ids (-1 = distractor), got dtype {lab.dtype}"
        )
    return lab.astype(np.int64)


def junk_sets(junk, n: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    if junk is None:
        return out
    items = junk.items() if isinstance(junk, Mapping) else enumerate(junk)
    for q, js in items:
        if not 0 <= int(q) < n:
            raise InputError(f"junk list for image {q}, outside 0..{n - 1}")
        for j in js:
            if not 0 <= int(j) < n:
                raise InputError(f"junk image {j} of query {q} outside 0..{n - 1}")
            out[int(q)].add(int(j))
    return out


def _query_plan(
    labels: np.ndarray,
    junk: list[set[int]],
    names: Sequence[str] | None,
    queries: Iterable[int] | None = None,
):
    """(query index, relevant mask without self / junk, kept mask) per query, and skip messages."""
    n = labels.shape[0]
    plan, skipped = [], []
    for q in range(n) if queries is None else queries:
        q = int(q)
        if labels[q] < 0:
            continue  # distractor: never a query
        keep = np.ones(n, bool)
        keep[q] = False
        if junk[q]:
            keep[list(junk[q])] = False
        rel = (labels == labels[q]) & keep
        if not rel.any():
            who = names[q] if names is not None else f"image {q}"
            why = (
                "the only image of its group"
                if (labels == labels[q]).sum() == 1
                else "all other images of its group are junk"
            )
            skipped.append(
                f"{who}: {why}, no relevant image; skipped as a query (kept in the database)"
            )
            continue
        plan.append((q, rel, keep))
    return plan, skipped


def evaluate_scores(
    scores, labels, *, junk=None, names: Sequence[str] | None = None
) -> ImageRetrievalResult:
    """mAP from an all-vs-all similarity matrix.

    Args:
      scores: (N, N), higher = more similar; the diagonal is ignored.
      labels: (N,) int group ids, -1 for distractors (never queries).
      junk: per query image, the images removed from its ranking: a mapping
        {query: iterable of ids} or a length-N sequence of iterables.
      names: image names for the skip messages.

    Returns:
      :class:`ImageRetrievalResult`; ties are broken against the relevant images.
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise InputError(f"scores must be (N, N), got shape {s.shape}")
    if np.isnan(s).any():
        raise InputError("scores contains NaN values")
    n = s.shape[0]
    lab = _check_eval_labels(labels, n)
    plan, skipped = _query_plan(lab, junk_sets(junk, n), names)
    per = np.full(n, np.nan)
    trap = []
    for q, rel, keep in plan:
        per[q] = average_precision(s[q, keep], rel[keep])
        trap.append(average_precision(s[q, keep], rel[keep], mode="trapezoid"))
    valid = per[~np.isnan(per)]
    return ImageRetrievalResult(
        float(valid.mean()) if valid.size else float("nan"),
        float(np.mean(trap)) if trap else float("nan"),
        len(plan),
        tuple(skipped),
        per,
    )


def evaluate_rankings(
    rankings, labels, *, query_ids=None, junk=None, names: Sequence[str] | None = None
) -> ImageRetrievalResult:
    """mAP from ranked lists (e.g. a top-k search), possibly truncated.

    Args:
      rankings: (Q, M) int database ids in rank order; the query itself, junk
        ids and -1 (no result) are removed; relevant images missing from a
        truncated list count as never retrieved.
      labels: (N,) int group ids of the database, -1 for distractors.
      query_ids: (Q,) database index of each query (default 0..Q-1).
      junk, names: as :func:`evaluate_scores`.

    Returns:
      :class:`ImageRetrievalResult` (per_query over the N database images).
    """
    r = np.asarray(rankings)
    if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer):
        raise InputError(f"rankings must be (Q, M) integer ids, got {r.dtype} {r.shape}")
    lab = np.asarray(labels)
    n = lab.shape[0] if lab.ndim == 1 else -1
    lab = _check_eval_labels(labels, n)
    qids = np.arange(r.shape[0]) if query_ids is None else np.asarray(query_ids, np.int64)
    if qids.shape != (r.shape[0],):
        raise InputError(f"query_ids must be (Q,) with Q = {r.shape[0]}, got shape {qids.shape}")
    if r.size and (r.max() >= n or r.min() < -1):
        raise InputError(f"rankings hold ids outside -1..{n - 1}")
    if qids.size and (qids.min() < 0 or qids.max() >= n):
        raise InputError(f"query_ids outside 0..{n - 1}")
    plan, skipped = _query_plan(lab, junk_sets(junk, n), names, queries=qids)
    by_q = {q: (rel, keep) for q, rel, keep in plan}
    per = np.full(n, np.nan)
    trap = []
    for row, q in zip(r, qids):
        if q not in by_q:
            continue
        rel, keep = by_q[q]
        ids = row[row >= 0]
        ids = ids[keep[ids]]
        _, first = np.unique(ids, return_index=True)
        ids = ids[np.sort(first)]  # a repeated id counts once, at its first rank
        flags = rel[ids]
        per[q] = average_precision_from_ranking(flags, num_relevant=int(rel.sum()))
        trap.append(
            average_precision_from_ranking(flags, num_relevant=int(rel.sum()), mode="trapezoid")
        )
    valid = per[~np.isnan(per)]
    return ImageRetrievalResult(
        float(valid.mean()) if valid.size else float("nan"),
        float(np.mean(trap)) if trap else float("nan"),
        len(trap),
        tuple(skipped),
        per,
    )


def image_retrieval_map(
    vectors, labels, *, junk=None, names: Sequence[str] | None = None
) -> ImageRetrievalResult:
    """mAP of global image vectors compared by inner product (all vs all)."""
    v = check_matrix(vectors, "vectors")
    return evaluate_scores(
        v.astype(np.float64) @ v.T.astype(np.float64), labels, junk=junk, names=names
    )
