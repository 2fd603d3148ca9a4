"""HPatches patch verification: are two patches the same scene point? (balanced AUC, imbalanced AP)

For each noise level (easy, hard, tough) the image ids of the pairs name that level's images
(0 = ref). A pair's score is minus the L2 distance of its descriptors. Two protocols, each with
intra- and inter-sequence negatives, as the official ``eval_verification``:

- balanced: positives and as many negatives; the area under the ROC curve
  (``hpatches_roc``), reported as ``auc``;
- imbalanced: all negatives and the first ``int(0.2 P)`` positives (negatives listed first);
  the area under the precision-recall curve (``hpatches_pr``), reported as ``ap``.

Equal distances keep the input order (negatives before positives), as the official stable sort.

The official code measures each pair with ``scipy.spatial.distance.euclidean`` on float32
descriptors: BLAS ``snrm2`` of the float32 difference, which the OpenBLAS builds that NumPy
and SciPy ship compute in double precision and round to float32. The distances here are that
value: the float32 difference, its norm in float64, rounded to float32. The rounding matters:
it makes distances tie that differ in float64, and a tie orders a negative first.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from retrieval._src.hpatches.layout import NOISE_LEVELS, type_index
from retrieval._src.hpatches.task_files import HPatchesTasks, Pairs
from retrieval._src.metrics.hpatches_ap import hpatches_pr, hpatches_roc

#: Fraction of the positives kept by the imbalanced protocol (official: 0.2 M of 1 M).
IMBALANCED_FRACTION = 0.2

#: Negative kinds, in the order of the result arrays.
NEGATIVES = ("inter", "intra")

_BLOCK = 1 << 16


@dataclasses.dataclass(frozen=True)
class HPatchesVerification:
    """Verification figures.

    Attributes:
      auc: (3, 2) balanced protocol, ROC AUC; rows easy / hard / tough, columns inter / intra.
      ap: (3, 2) imbalanced protocol, PR AP; same layout.
      n_pairs: positives (as many negatives of each kind).
    """

    auc: np.ndarray
    ap: np.ndarray
    n_pairs: int


def _rows(descriptors, names, codes, image, idx, noise: str) -> np.ndarray:
    """(M, D) float32 descriptors of the patches (names[codes], image, idx) at a noise level."""
    rows = np.where(image == 0, 0, type_index(noise, 1) + image - 1)
    dim = next(iter(descriptors.values())).shape[2]
    out = np.empty((codes.shape[0], dim), np.float32)
    for c in np.unique(codes):
        at = np.flatnonzero(codes == c)
        out[at] = descriptors[names[c]][rows[at], idx[at]]
    return out


class _Coded:
    """Pairs with sequence names as integer codes (string comparisons are slow)."""

    def __init__(self, pairs: Pairs):
        self.names, codes = np.unique(np.concatenate([pairs.seq1, pairs.seq2]), return_inverse=True)
        self.codes1, self.codes2 = np.split(codes, 2)
        self.pairs = pairs


def _distances(descriptors: dict, coded: _Coded, noise: str) -> np.ndarray:
    p = coded.pairs
    out = np.empty(p.seq1.shape[0], np.float64)
    for start in range(0, out.size, _BLOCK):
        sl = slice(start, start + _BLOCK)
        a = _rows(descriptors, coded.names, coded.codes1[sl], p.image1[sl], p.idx1[sl], noise)
        b = _rows(descriptors, coded.names, coded.codes2[sl], p.image2[sl], p.idx2[sl], noise)
        diff = (a - b).astype(np.float64)
        out[sl] = np.sqrt(np.einsum("md,md->m", diff, diff)).astype(np.float32)
    return out


def pair_distances(descriptors: dict, pairs: Pairs, noise: str) -> np.ndarray:
    """(M,) float64 L2 distances of the pairs under a noise level, float32-rounded values.

    Args:
      descriptors: sequence name -> (16, N, D) float32.
      pairs: the pairs (image ids 0-5).
      noise: ``"e"``, ``"h"`` or ``"t"``.
    """
    return _distances(descriptors, _Coded(pairs), noise)


def verification_task(descriptors: dict, tasks: HPatchesTasks) -> HPatchesVerification:
    """The verification figures of descriptors on the pairs of ``tasks``.

    Args:
      descriptors: sequence name -> (16, N, D) float32 (``check_descriptors``).
      tasks: positives, intra and inter negatives of one length P (``check_tasks``).
    """
    n = tasks.positives.seq1.shape[0]
    n_imb = n + int(n * IMBALANCED_FRACTION)
    labels = np.concatenate([np.zeros(n), np.ones(n)])
    auc = np.zeros((len(NOISE_LEVELS), len(NEGATIVES)))
    ap = np.zeros_like(auc)
    coded = {part: _Coded(getattr(tasks, part)) for part in ("positives", *NEGATIVES)}
    for i, noise in enumerate(NOISE_LEVELS):
        pos = _distances(descriptors, coded["positives"], noise)
        for j, kind in enumerate(NEGATIVES):
            neg = _distances(descriptors, coded[kind], noise)
            dist = np.concatenate([neg, pos])
            auc[i, j] = hpatches_roc(-dist, labels).auc
            ap[i, j] = hpatches_pr(-dist[:n_imb], labels[:n_imb]).ap
    return HPatchesVerification(auc, ap, n)
