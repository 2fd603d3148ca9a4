"""Retrieval and matching metrics in plain NumPy (no JAX).

Conventions used throughout:

* Higher score = more similar. Descriptors are compared by dot product; they
  are expected to be L2-normalized, in which case ranking by dot product is the
  same as ranking by Euclidean distance (``|x - y|^2 = 2 - 2 x.y``), up to
  float32 rounding of the computed similarities.
* **Ties are broken against the relevant items**: a relevant item whose score
  equals that of non-relevant items ranks after all of them. A constant (or
  otherwise uninformative) descriptor therefore gets the *lowest* AP its ranking
  allows, never 1.0. (HPatches' Python retrieval task puts positives first
  among equal distances, so a constant descriptor scores mAP 1.0 there; see
  CKN_NOTES section 6.) The order of relevant items tied with each other does
  not change AP.
* Two definitions of average precision (:mod:`.ap`): the non-interpolated AP
  (``mode="noninterpolated"``, precision averaged at the rank of each relevant
  item; the one we report) and the Oxford ``compute_ap.cpp`` trapezoid AP
  (``mode="trapezoid"``), never below it.

Modules:

* :mod:`.ap`: average precision of one ranked list or of score rows, the
  precision-recall curve, the metric input checks;
* :mod:`.patch`: patch retrieval, all vs all in blocks of queries (mAP, NN
  accuracy, mean PR curve in one pass; RomePatches protocol);
* :mod:`.pairs`: pair metrics (ROC, AUC, FPR at 95% recall) and pair sampling;
* :mod:`.image`: image retrieval mAP with distractors and junk images;
* :mod:`.hpatches_ap`: the precision-recall and ROC areas of the HPatches benchmark code
  (stable ranking, ``numpos``).
"""

from retrieval._src.checks import check_matrix  # re-exported for existing callers
from retrieval._src.metrics.ap import (
    MODES,
    average_precision,
    average_precision_from_ranking,
    check_descriptors,
    check_labels,
    precision_recall_curve,
)
from retrieval._src.metrics.hpatches_ap import PRCurve, ROCCurve, hpatches_pr, hpatches_roc
from retrieval._src.metrics.image import (
    ImageRetrievalResult,
    evaluate_rankings,
    evaluate_scores,
    image_retrieval_map,
    junk_sets,
)
from retrieval._src.metrics.pairs import (
    PairSet,
    fpr_at_recall,
    pair_scores,
    roc_auc,
    roc_curve,
    sample_pairs,
)
from retrieval._src.metrics.patch import (
    RetrievalResult,
    RetrievalSummary,
    nn_matching_accuracy,
    patch_retrieval_map,
    retrieval_summary,
)

__all__ = [
    "MODES",
    "ImageRetrievalResult",
    "PRCurve",
    "PairSet",
    "ROCCurve",
    "RetrievalResult",
    "RetrievalSummary",
    "average_precision",
    "average_precision_from_ranking",
    "check_descriptors",
    "check_labels",
    "check_matrix",
    "evaluate_rankings",
    "evaluate_scores",
    "fpr_at_recall",
    "hpatches_pr",
    "hpatches_roc",
    "image_retrieval_map",
    "junk_sets",
    "nn_matching_accuracy",
    "pair_scores",
    "patch_retrieval_map",
    "precision_recall_curve",
    "retrieval_summary",
    "roc_auc",
    "roc_curve",
    "sample_pairs",
]
