"""Validation for supervised training: the split of training rows and the patch-retrieval mAP.

``validation_split`` holds whole scenes (or groups) out of the training rows; ``validation_map``
is the all-vs-all patch-retrieval mAP in plain NumPy that the epoch loop reads each epoch
(``ckn.finetune``; retrieval's global heads have their own on pooled maps).
"""

from __future__ import annotations

import numpy as np

from ckn._src.errors import InputError


def validation_map(descriptors: np.ndarray, labels: np.ndarray) -> float:
    """All-vs-all patch-retrieval mAP in [0, 1] (plain NumPy, for validation).

    The protocol of ``retrieval.metrics.patch_retrieval_map``: every patch queries the
    others by dot product, relevant = same label, non-interpolated AP, ties
    broken against the relevant items, queries without a relevant item
    skipped (NaN if none has one).

    Args:
      descriptors: (N, D) L2-normalized descriptors.
      labels: (N,) group ids.
    """
    x = np.asarray(descriptors, np.float32)
    lab = np.asarray(labels)
    if x.ndim != 2 or lab.shape != (x.shape[0],):
        raise InputError(
            f"descriptors must be (N, D) and labels (N,), got {x.shape} and {lab.shape}"
        )
    n = x.shape[0]
    aps = []
    for start in range(0, n, 256):  # a block of queries at a time
        q = np.arange(start, min(start + 256, n))
        sims = (x[q] @ x.T).astype(np.float64)
        rel = lab[q][:, None] == lab[None, :]
        rel[np.arange(q.size), q] = False
        # The k-th relevant item by decreasing score (relevant last among ties) has rank
        # k + #{non-relevant items scoring >= it}: one sort of each row's other items, and
        # the relevant scores looked up in it (rows side by side: each shifted by its index
        # times a span larger than all scores; the query and relevant items below every score).
        other = np.where(rel, -np.inf, sims)
        other[np.arange(q.size), q] = -np.inf
        finite = sims[np.isfinite(sims)]
        lo, hi = float(finite.min()) - 1.0, float(finite.max()) + 1.0
        span = hi - lo
        shift = np.arange(q.size)[:, None] * span
        keys = np.sort(np.where(np.isfinite(other), other, lo) + shift, axis=1).ravel()
        r, c = np.nonzero(rel)
        scores = sims[r, c] + shift[r, 0]
        below = np.searchsorted(keys, scores, side="left") - r * n  # entries of row r below
        at_least = n - below  # every padded entry scores below, so these are non-relevant
        n_rel = rel.sum(axis=1)
        order = np.lexsort((-scores, r))  # by query, then by decreasing score
        r, at_least = r[order], at_least[order]
        k = np.arange(r.size) - np.repeat(np.cumsum(n_rel) - n_rel, n_rel) + 1
        ranks = k + at_least
        ap = np.zeros(q.size)
        np.add.at(ap, r, k / ranks)
        keep = n_rel > 0
        aps.append(ap[keep] / n_rel[keep])
    aps = np.concatenate(aps)
    return float(np.mean(aps)) if aps.size else float("nan")


def validation_split(
    labels: np.ndarray, scenes: np.ndarray | None = None, *, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Splits training rows into fine-tuning and validation rows, by scene if possible.

    With two or more scenes, whole scenes are held out: the subset of scenes
    whose patch count is closest to ``fraction`` of the rows (never all of
    them; exhaustive up to 16 scenes, else scenes in a seeded random order
    until the fraction is reached). Otherwise (no scene ids, or one scene)
    whole groups are held out at random, about ``fraction`` of the rows.

    Args:
      labels: (N,) group ids.
      scenes: (N,) scene ids or None.
      fraction: target share of validation rows, in (0, 1).
      seed: order of the random choices.

    Returns:
      (train_rows (N_t,), val_rows (N_v,) sorted int64 indices, "scene" or "group").
    """
    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise InputError(f"fraction must be in (0, 1), got {fraction}")
    n = labels.shape[0]
    rng = np.random.default_rng(seed)
    if scenes is not None and np.shape(scenes) != (n,):
        raise InputError(f"scenes must be (N,) with N = {n}, got shape {np.shape(scenes)}")
    uniq = np.unique(scenes) if scenes is not None else np.zeros(0)
    if uniq.size >= 2:
        counts = np.array([(scenes == s).sum() for s in uniq])
        target = fraction * n
        if uniq.size <= 16:
            subsets = [m for m in range(1, 2**uniq.size - 1)]
            sums = [sum(counts[i] for i in range(uniq.size) if m >> i & 1) for m in subsets]
            best = subsets[int(np.argmin([abs(s - target) for s in sums]))]
            held = [uniq[i] for i in range(uniq.size) if best >> i & 1]
        else:
            held, total = [], 0
            for i in rng.permutation(uniq.size)[:-1]:
                held.append(uniq[i])
                total += counts[i]
                if total >= target:
                    break
        val = np.isin(scenes, held)
        by = "scene"
    else:
        groups = np.unique(labels)
        val_groups, total = [], 0
        for g in groups[rng.permutation(groups.size)]:
            if total >= fraction * n:
                break
            val_groups.append(g)
            total += int((labels == g).sum())
        val = np.isin(labels, val_groups)
        by = "group"
    return np.flatnonzero(~val), np.flatnonzero(val), by
