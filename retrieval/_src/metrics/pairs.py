"""Pair metrics: ROC curve and AUC, FPR at 95% recall, deterministic pair sampling.

A pair classifier accepts ``score >= threshold`` as a match; pairs with equal
scores are accepted together, so ties cost (Brown, Hua, Winder's FPR95).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.metrics.ap import check_descriptors


class PairSet(NamedTuple):
    """Index pairs for pair metrics: ``i``, ``j`` (P,) int64 and ``is_match`` (P,) bool."""

    i: np.ndarray
    j: np.ndarray
    is_match: np.ndarray


def _check_pairs(scores, is_match) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores)
    m = np.asarray(is_match)
    if s.ndim != 1 or m.shape != s.shape:
        raise InputError(
            f"scores and is_match must be (P,) of equal length, got {s.shape} and {m.shape}"
        )
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
    x = check_descriptors(descriptors)
    i = np.asarray(i)
    j = np.asarray(j)
    if i.shape != j.shape or i.ndim != 1:
        raise InputError(f"i and j must be (P,) of equal length, got {i.shape} and {j.shape}")
    if i.size and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= x.shape[0]):
        raise InputError(f"pair indices out of range for N = {x.shape[0]}")
    out = np.empty(i.size)
    for c in range(0, i.size, 65536):
        out[c : c + 65536] = np.einsum(
            "pd,pd->p", x[i[c : c + 65536]], x[j[c : c + 65536]], dtype=np.float64
        )
    return out
