"""HPatches image matching: the nearest neighbour of each reference patch in a target image.

For each test sequence, noise level (easy, hard, tough) and target image 1-5, as the official
``eval_matching``: the L2 distance matrix between the N reference descriptors and the N target
descriptors (``scipy.spatial.distance.cdist``, as the official code on a CPU); each reference
patch is matched to its nearest target patch (the first on ties); a match is correct when it is
the same patch index; the AP of the matches ranked by increasing distance (stable on ties) with
``numpos = N`` (``hpatches_pr``), so a wrong nearest neighbour costs recall.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrieval._src.hpatches.layout import NOISE_LEVELS, type_index
from retrieval._src.metrics.hpatches_ap import hpatches_pr


@dataclasses.dataclass(frozen=True)
class HPatchesMatching:
    """Matching figures.

    Attributes:
      sequences: (S,) the test sequences, sorted.
      ap: (S, 3, 5) AP per sequence, noise level (easy / hard / tough) and target image 1-5.
      accuracy: (S, 3, 5) fraction of reference patches whose nearest neighbour is correct.
    """

    sequences: tuple[str, ...]
    ap: np.ndarray
    accuracy: np.ndarray


def match_image(ref: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """AP and nearest-neighbour accuracy of one reference / target image pair.

    Args:
      ref: (N, D) float32 reference descriptors.
      target: (N, D) float32 target descriptors, patch i matching reference patch i.

    Returns:
      (ap, accuracy).
    """
    from scipy.spatial.distance import cdist  # lazy: ~1 s of every ckn command's start

    dist = cdist(ref, target, "euclidean")
    nn = np.argmin(dist, axis=1)
    rows = np.arange(ref.shape[0])
    correct = nn == rows
    ap = hpatches_pr(-dist[rows, nn], correct, numpos=ref.shape[0]).ap
    return ap, float(correct.mean())


def matching_task(descriptors: dict, sequences) -> HPatchesMatching:
    """The matching figures of descriptors on the test sequences.

    Args:
      descriptors: sequence name -> (16, N, D) float32 (``check_descriptors``).
      sequences: the test sequence names.
    """
    sequences = tuple(sorted(sequences))
    ap = np.zeros((len(sequences), len(NOISE_LEVELS), 5))
    accuracy = np.zeros_like(ap)
    for s, name in enumerate(sequences):
        d = descriptors[name]
        for i, noise in enumerate(NOISE_LEVELS):
            for image in range(1, 6):
                ap[s, i, image - 1], accuracy[s, i, image - 1] = match_image(
                    d[0], d[type_index(noise, image)]
                )
    return HPatchesMatching(sequences, ap, accuracy)
