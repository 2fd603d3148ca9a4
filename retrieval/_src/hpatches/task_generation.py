"""Seeded HPatches task definitions for data without official task files.

The sampling follows the official generator (``utils/tasks.py``: ``gen_verif``,
``gen_retrieval``) and ``docs/tasks.md``, with its quirks fixed where the documentation says
otherwise; the random streams are NumPy's ``default_rng``, not the official legacy seed 42
stream, so the files are of the same kind, not the same files.

Verification (``n_pairs`` of each part), over the test sequences of the split:

- a positive: a sequence uniformly at random, a patch index uniformly in it, and two
  *different* image ids among 0-5 (0 = ref, 1-5 = the target images; the official generator
  draws among 0-4 only, although its documentation says 0-5);
- its intra-sequence negative: the same sequence and images, the first patch paired with
  another patch of the sequence;
- its inter-sequence negative: the same first patch and images, the second patch uniformly in
  another sequence (the official generator may draw the same sequence again).

Retrieval: reference patches drawn as the official generator does (a sequence uniformly, then
a patch uniformly; duplicates and flat patches, gray-level standard deviation at most
``min_patch_std``, rejected), the first ``n_queries`` as queries and the next
``n_distractors`` as distractors. Done here as a weighted random order without replacement
(Efraimidis and Spirakis, 2006: weight 1 / N of the patch's sequence), which is the same
distribution and ends.
"""

from __future__ import annotations

import numpy as np

from ckn import InputError
from retrieval._src.hpatches.config import HPatchesConfig
from retrieval._src.hpatches.data import HPatchesData
from retrieval._src.hpatches.task_files import NUM_IMAGES, HPatchesTasks, Pairs, PatchList


def generate_pairs(data: HPatchesData, config: HPatchesConfig) -> tuple[Pairs, Pairs, Pairs]:
    """Verification positives, intra- and inter-sequence negatives (see the module docstring).

    Raises:
      InputError: fewer than 2 test sequences, or a test sequence with fewer than 2 patches.
    """
    names = np.array(data.sequences, dtype=str)
    counts = np.array([data.counts[s] for s in names], dtype=np.int64)
    if names.size < 2:
        raise InputError("verification needs at least 2 test sequences (inter-sequence negatives)")
    if (counts < 2).any():
        raise InputError(f"verification needs 2 patches per sequence; {names[counts < 2][0]} has 1")
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_pairs
    s = rng.integers(0, names.size, n)
    i = rng.integers(0, counts[s])
    j = rng.integers(0, counts[s] - 1)
    j += j >= i
    t1 = rng.integers(0, NUM_IMAGES, n)
    t2 = rng.integers(0, NUM_IMAGES - 1, n)
    t2 += t2 >= t1
    s2 = rng.integers(0, names.size - 1, n)
    s2 += s2 >= s
    k = rng.integers(0, counts[s2])
    seq = names[s]
    return (
        Pairs(seq, t1, i, seq, t2, i),
        Pairs(seq, t1, i, seq, t2, j),
        Pairs(seq, t1, i, names[s2], t2, k),
    )


def textured_patches(data: HPatchesData, min_std: float) -> PatchList:
    """Reference patches of the test sequences with gray-level std above ``min_std``."""
    seqs, idxs = [], []
    for name in data.sequences:
        ref = data.patches(name, ("ref",))[0]
        std = ref.reshape(ref.shape[0], -1).astype(np.float64).std(axis=1)
        keep = np.flatnonzero(std > min_std)
        seqs.append(np.full(keep.size, name, dtype=object))
        idxs.append(keep)
    return PatchList(np.concatenate(seqs).astype(str), np.concatenate(idxs).astype(np.int64))


def generate_lists(data: HPatchesData, config: HPatchesConfig) -> tuple[PatchList, PatchList]:
    """Retrieval queries and distractors (see the module docstring).

    Raises:
      InputError: fewer than 2 textured reference patches in the test sequences.
    """
    cand = textured_patches(data, config.min_patch_std)
    total = cand.seq.size
    if total < 2:
        raise InputError(
            f"retrieval needs 2 reference patches with gray-level std > {config.min_patch_std}; "
            f"the test sequences hold {total}"
        )
    n_q, n_d = config.n_queries, config.n_distractors
    if total < n_q + n_d:
        n_q = max(1, n_q * total // (n_q + n_d))
        n_d = total - n_q
    rng = np.random.default_rng([config.seed, 1])
    weight_inv = np.array([data.counts[s] for s in cand.seq], dtype=np.float64)
    order = np.argsort(rng.exponential(size=total) * weight_inv, kind="stable")
    q, d = order[:n_q], order[n_q : n_q + n_d]
    return PatchList(cand.seq[q], cand.idx[q]), PatchList(cand.seq[d], cand.idx[d])


def generate_tasks(data: HPatchesData, config: HPatchesConfig | None = None) -> HPatchesTasks:
    """Seeded task definitions of ``data``'s split for the tasks of ``config`` that need files.

    ``config`` defaults to ``HPatchesConfig()``.

    Write them with ``write_tasks`` to run the official code on the same definitions.
    """
    config = HPatchesConfig() if config is None else config
    parts = {}
    if "verification" in config.tasks:
        parts.update(zip(("positives", "intra", "inter"), generate_pairs(data, config)))
    if "retrieval" in config.tasks:
        parts.update(zip(("queries", "distractors"), generate_lists(data, config)))
    return HPatchesTasks(data.split.name, **parts)
