"""Group statistics of a patch set: sizes, splits, scenes, and NCC within groups vs random pairs."""

from __future__ import annotations

import numpy as np

from retrieval._src.data.patchset import SPLIT_NAMES, PatchSet


def _normalized(p: np.ndarray) -> np.ndarray:
    # Gray float rows, zero mean, unit norm (flat patches -> zeros).
    p = p.astype(np.float32)
    if p.ndim == 4:
        p = p.mean(axis=3)
    p = p.reshape(p.shape[0], -1)
    p = p - p.mean(axis=1, keepdims=True)
    n = np.linalg.norm(p, axis=1, keepdims=True)
    return p / np.maximum(n, np.float32(1e-6))


def _pair_ncc(patches: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    # Each patch is normalized once (in chunks), then pairs are dotted in chunks: bounded memory.
    z = np.empty((patches.shape[0], int(np.prod(patches.shape[1:3]))), np.float32)
    for s in range(0, patches.shape[0], chunk):
        z[s : s + chunk] = _normalized(patches[s : s + chunk])
    out = np.empty(a.size, np.float32)
    for s in range(0, a.size, chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", z[a[s : s + chunk]], z[b[s : s + chunk]])
    return out


def patchset_stats(ps: PatchSet, *, max_pairs: int = 20000, seed: int = 0) -> dict:
    """Group statistics of a patch set, as a plain dict.

    Keys: ``groups``, ``patches``, ``group_size`` {mean, min, max, histogram},
    ``splits`` {train/test: {patches, groups, scenes}}, ``scenes`` {name:
    {split, groups, patches}}, ``ncc_intra`` (mean normalized
    cross-correlation of pairs of patches of the same group), ``ncc_random``
    (mean NCC of random pairs of patches of different groups), ``ncc_pairs``
    (pairs used for each mean: at most ``max_pairs``, sampled with ``seed``).
    """
    n = len(ps)
    _, inv, counts = np.unique(ps.labels, return_inverse=True, return_counts=True)
    hist = np.bincount(counts)
    stats: dict = {
        "groups": int(counts.size),
        "patches": int(n),
        "group_size": {
            "mean": float(counts.mean()) if counts.size else 0.0,
            "min": int(counts.min()) if counts.size else 0,
            "max": int(counts.max()) if counts.size else 0,
            "histogram": {int(k): int(v) for k, v in enumerate(hist) if v},
        },
    }
    splits = {}
    for s, name in enumerate(SPLIT_NAMES):
        m = ps.split == s
        splits[name] = {
            "patches": int(m.sum()),
            "groups": int(np.unique(ps.labels[m]).size),
            "scenes": int(np.unique(ps.scene[m]).size),
        }
    stats["splits"] = splits
    scenes = {}
    for i, name in enumerate(ps.scene_names):
        m = ps.scene == i
        if m.any():
            scenes[str(name)] = {
                "split": SPLIT_NAMES[int(ps.split[m][0])],
                "groups": int(np.unique(ps.labels[m]).size),
                "patches": int(m.sum()),
            }
    stats["scenes"] = scenes
    rng = np.random.default_rng(seed)
    # Intra-group pairs: all pairs (i < j) of each group, subsampled.
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ia, ib = [], []
    for st, c in zip(starts, counts):
        if c >= 2:
            a, b = np.triu_indices(c, 1)
            ia.append(order[st + a])
            ib.append(order[st + b])
    if ia:
        ia, ib = np.concatenate(ia), np.concatenate(ib)
        if ia.size > max_pairs:
            pick = rng.choice(ia.size, max_pairs, replace=False)
            ia, ib = ia[pick], ib[pick]
        stats["ncc_intra"] = float(_pair_ncc(ps.patches, ia, ib).mean())
    else:
        stats["ncc_intra"] = float("nan")
    if n >= 2:
        ra = rng.integers(0, n, size=2 * max_pairs)
        rb = rng.integers(0, n, size=2 * max_pairs)
        ok = ps.labels[ra] != ps.labels[rb]
        ra, rb = ra[ok][:max_pairs], rb[ok][:max_pairs]
        stats["ncc_random"] = (
            float(_pair_ncc(ps.patches, ra, rb).mean()) if ra.size else float("nan")
        )
    else:
        stats["ncc_random"] = float("nan")
    stats["ncc_pairs"] = int(max_pairs)
    return stats


def format_stats(stats: dict) -> str:
    """A short human-readable summary of :func:`patchset_stats`."""
    gs = stats["group_size"]
    lines = [
        f"groups: {stats['groups']}   patches: {stats['patches']}   "
        f"group size: mean {gs['mean']:.2f}, "
        f"min {gs['min']}, max {gs['max']}",
        "  ".join(
            f"{k}: {v['patches']} patches, {v['groups']} groups, {v['scenes']} scenes"
            for k, v in stats["splits"].items()
        ),
        f"mean NCC: intra-group {stats['ncc_intra']:.3f}   random pairs {stats['ncc_random']:.3f}",
        "per scene (split, groups, patches):",
    ]
    for name, s in stats["scenes"].items():
        lines.append(f"  {name:<28s} {s['split']:<5s} {s['groups']:6d} {s['patches']:7d}")
    return "\n".join(lines)
