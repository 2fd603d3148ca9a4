"""Precision-recall and ROC areas with the semantics of the HPatches benchmark code.

The HPatches Python benchmark (``utils/metrics.py``: ``tpfp``, ``pr``, ``roc``) ranks by
decreasing score with a *stable* sort, so that equal scores keep their input order (not the
"ties against the relevant items" rule of :mod:`retrieval._src.metrics.ap`); items scored
``-inf`` are never retrieved; ``numpos`` adds relevant items that are never retrieved (scored
``-inf``), so that recall is taken over ``numpos``. The area is the trapezoid rule over the
whole curve, which starts at (recall 0, precision 1) and takes the precision of an empty
prefix of false positives as ``1e-10 / fp`` (the code's ``max(tp, 1e-10) / max(tp + fp,
1e-10)``).

So, with ``P`` relevant items (or ``numpos``) and the k-th retrieved relevant item at 1-based
rank ``r_k``, the PR area is ``(1/P) sum_k (p(r_k - 1) + p(r_k)) / 2`` with
``p(r) = k(r) / r`` (``p(0) = 1``; ``p(r) = 1e-10 / r`` before the first relevant item).

These are exact re-implementations (same values, checked against hand-computed cases in
``tests/test_hpatches.py`` and against the official code itself); the code is not copied.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckn import InputError

# The official code's floor on denominators and on an empty true-positive count.
_SMALL = 1e-10


class PRCurve(NamedTuple):
    """Precision and recall after each retrieved item (first point: none), and the area."""

    precision: np.ndarray
    recall: np.ndarray
    ap: float


class ROCCurve(NamedTuple):
    """False and true positive rates after each retrieved item, and the area under them."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def _counts(scores, labels, numpos):
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if lab.shape != s.shape:
        raise InputError(f"labels must have the shape of scores {s.shape}, got {lab.shape}")
    if np.isnan(s).any():
        raise InputError("scores contains NaN values")
    if not np.isin(lab, (0, 1)).all():
        raise InputError("labels must be 0/1 (or boolean)")
    lab = lab.astype(bool)
    p = int(lab.sum())
    n = lab.size - p
    if numpos is not None:
        if numpos < p:
            raise InputError(f"numpos = {numpos} is below the {p} positives in labels")
        p = int(numpos)
    # A stable sort by decreasing score; -inf scores (and the numpos extras) never retrieved.
    order = np.argsort(-s, kind="stable")
    order = order[s[order] > -np.inf]
    hits = lab[order]
    tp = np.concatenate(([0], np.cumsum(hits)))
    fp = np.concatenate(([0], np.cumsum(~hits)))
    return tp, fp, p, n


def hpatches_pr(scores, labels, *, numpos: int | None = None) -> PRCurve:
    """Precision-recall curve and its trapezoid area, as the HPatches code's ``metrics.pr``.

    Args:
      scores: (M,) scores, higher = more similar; ``-inf`` = never retrieved.
      labels: (M,) 0/1 or bool, 1 = relevant.
      numpos: total number of relevant items (>= the ones in ``labels``); the missing ones
        count as never retrieved. Default: the ones in ``labels``.

    Returns:
      ``PRCurve(precision, recall, ap)``: (K + 1,) precision and recall after each of the K
      retrieved items (first point: nothing retrieved), and the area (0 without positives).

    Examples:
      >>> hpatches_pr([3.0, 2.0, 1.0], [1, 0, 1]).ap  # (1 + 1) / 2 / 2 + (1/2 + 2/3) / 2 / 2
      0.7916666666666666
    """
    tp, fp, p, _ = _counts(scores, labels, numpos)
    recall = tp / max(p, _SMALL)
    precision = np.maximum(tp, _SMALL) / np.maximum(tp + fp, _SMALL)
    return PRCurve(precision, recall, _trapezoid(precision, recall))


def hpatches_roc(scores, labels, *, numpos: int | None = None) -> ROCCurve:
    """ROC curve and its trapezoid area, as the HPatches code's ``metrics.roc``.

    Args:
      scores, labels, numpos: as :func:`hpatches_pr`.

    Returns:
      ``ROCCurve(fpr, tpr, auc)``: (K + 1,) false and true positive rates after each retrieved
      item, and the area under the curve (its x axis is the false positive rate).

    Examples:
      >>> hpatches_roc([3.0, 2.0, 1.0], [1, 0, 1]).auc  # one positive of two above the negative
      0.5
    """
    tp, fp, p, n = _counts(scores, labels, numpos)
    tpr = tp / max(p, _SMALL)
    fpr = fp / max(n, _SMALL)
    return ROCCurve(fpr, tpr, _trapezoid(tpr, fpr))


def hpatches_ap_of_ranks(ranks, num_relevant: int) -> np.ndarray:
    """The area of :func:`hpatches_pr` from the ranks of the retrieved relevant items.

    The vectorized form used by the retrieval task (one row per query list); equal to
    ``hpatches_pr(...).ap`` up to float rounding (about 1e-16).

    Args:
      ranks: (..., K) 1-based ranks of the retrieved relevant items, increasing along the
        last axis.
      num_relevant: P, the number of relevant items (>= K).

    Returns:
      (...) float64 areas.
    """
    r = np.asarray(ranks, dtype=np.float64)
    k = np.arange(1, r.shape[-1] + 1, dtype=np.float64)
    here = k / r
    before = np.where(r > 1, np.maximum(k - 1, _SMALL) / np.maximum(r - 1, 1.0), 1.0)
    return np.sum(before + here, axis=-1) / (2.0 * num_relevant)
