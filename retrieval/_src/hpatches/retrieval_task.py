"""HPatches patch retrieval: find a reference patch's 5 target views among distractors.

For each query (a reference patch of a test sequence) and noise level (easy, hard, tough), as
the official ``eval_retrieval``: the list is the 5 target patches of the query's index in its
sequence (images 1-5 of that level: the positives), then the distractor list (reference
patches) without the distractors of the query's own sequence, in file order. Scores are minus
the L2 distances (``scipy.spatial.distance.cdist`` on float32 descriptors, as the official code
on a CPU). For each list size k, the AP of the first k items (``hpatches_pr``, no numpos: the
5 positives are always inside). A stable sort keeps the positives, listed first, ahead of
distractors at equal distance.

The mean over queries gives a (3 levels, K sizes) table; the official results script prints it
with a mean row over levels, and the single figure reported with it (e.g. in the HardNet
repository) is the mean of that row over the list sizes.

Computed from ranks, a block of queries at a time: the rank of the j-th closest positive in a
list of size k is ``j + #{distractors among the first k - 5 of the list closer than it}``;
``hpatches_ap_of_ranks`` turns the ranks into the area of ``hpatches_pr``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrieval._src.hpatches.layout import NOISE_LEVELS, type_index
from retrieval._src.hpatches.task_files import PatchList
from retrieval._src.metrics.hpatches_ap import hpatches_ap_of_ranks

#: Positives of a query: its 5 target views at the noise level.
NUM_POSITIVES = 5

_BLOCK = 32


@dataclasses.dataclass(frozen=True)
class HPatchesRetrieval:
    """Retrieval figures.

    Attributes:
      queries: the query patches (sequence, index).
      list_sizes: (K,) the list sizes k.
      ap: (Q, 3, K) AP per query, noise level (easy / hard / tough) and list size.
    """

    queries: PatchList
    list_sizes: tuple[int, ...]
    ap: np.ndarray


def _reference_rows(descriptors: dict, plist: PatchList) -> np.ndarray:
    dim = next(iter(descriptors.values())).shape[2]
    out = np.empty((plist.seq.shape[0], dim), np.float32)
    for name in np.unique(plist.seq):
        at = np.flatnonzero(plist.seq == name)
        out[at] = descriptors[name][0, plist.idx[at]]
    return out


def _positive_distances(descriptors: dict, queries: PatchList, q_desc: np.ndarray) -> np.ndarray:
    """(Q, 3, 5) distances from each query to its 5 target views per noise level."""
    from scipy.spatial.distance import cdist  # lazy: ~1 s of every ckn command's start

    rows = [type_index(noise, image) for noise in NOISE_LEVELS for image in range(1, 6)]
    out = np.empty((q_desc.shape[0], len(rows)))
    for q, (name, idx) in enumerate(zip(queries.seq, queries.idx)):
        out[q] = cdist(q_desc[q : q + 1], descriptors[name][rows, idx])[0]
    return out.reshape(-1, len(NOISE_LEVELS), NUM_POSITIVES)


def retrieval_task(
    descriptors: dict, queries: PatchList, distractors: PatchList, list_sizes
) -> HPatchesRetrieval:
    """The retrieval figures of descriptors on a query and a distractor list.

    Args:
      descriptors: sequence name -> (16, N, D) float32 (``check_descriptors``).
      queries: (Q,) query reference patches.
      distractors: (M,) distractor reference patches.
      list_sizes: (K,) increasing list sizes k > 5.

    Returns:
      The per-query APs.
    """
    from scipy.spatial.distance import cdist  # lazy: ~1 s of every ckn command's start

    sizes = np.asarray(list_sizes, dtype=np.int64)
    q_desc = _reference_rows(descriptors, queries)
    d_desc = _reference_rows(descriptors, distractors)
    positives = np.sort(_positive_distances(descriptors, queries, q_desc), axis=2)
    j = np.arange(1, NUM_POSITIVES + 1)
    ap = np.empty((q_desc.shape[0], len(NOISE_LEVELS), sizes.size))
    for start in range(0, q_desc.shape[0], _BLOCK):
        sl = slice(start, start + _BLOCK)
        dist = cdist(q_desc[sl], d_desc)  # (B, M)
        kept = distractors.seq[None, :] != queries.seq[sl, None]  # (B, M)
        # Original position just past the first (k - 5) kept distractors, per query and size.
        seen = np.cumsum(kept, axis=1)
        end = (seen[:, None, :] < (sizes - NUM_POSITIVES)[None, :, None]).sum(axis=2)  # (B, K)
        end = np.minimum(end + 1, dist.shape[1])  # at most the whole list
        pos = positives[sl].reshape(dist.shape[0], -1)  # (B, 15)
        closer = (dist[:, None, :] < pos[:, :, None]) & kept[:, None, :]  # (B, 15, M)
        closer = np.concatenate([np.zeros_like(closer[:, :, :1]), closer], axis=2)
        count = np.cumsum(closer, axis=2, dtype=np.int32)  # count[..., e] = over the first e
        b = np.arange(dist.shape[0])[:, None, None]
        before = count[b, np.arange(pos.shape[1])[None, :, None], end[:, None, :]]  # (B, 15, K)
        before = before.reshape(dist.shape[0], len(NOISE_LEVELS), NUM_POSITIVES, sizes.size)
        ranks = j[None, None, :, None] + before
        ap[sl] = hpatches_ap_of_ranks(np.moveaxis(ranks, 2, 3), NUM_POSITIVES)
    return HPatchesRetrieval(queries, tuple(int(k) for k in sizes), ap)
