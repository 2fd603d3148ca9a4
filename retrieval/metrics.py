"""Retrieval metrics in plain NumPy (stage: scores -> mAP).

Average precision, patch retrieval mAP and nearest-neighbour accuracy, pairs and ROC
(FPR at 95% recall), image retrieval mAP over groups with junk images, the revisited
Oxford / Paris protocol (:func:`load_gnd`, :func:`revisited_map`), and the precision-recall
and ROC areas of the HPatches benchmark code (:func:`hpatches_pr`, :func:`hpatches_roc`).
"""

from __future__ import annotations

from retrieval._src.metrics import (
    ImageRetrievalResult,
    PairSet,
    RetrievalResult,
    RetrievalSummary,
    average_precision,
    average_precision_from_ranking,
    evaluate_rankings,
    evaluate_scores,
    fpr_at_recall,
    hpatches_pr,
    hpatches_roc,
    image_retrieval_map,
    nn_matching_accuracy,
    pair_scores,
    patch_retrieval_map,
    precision_recall_curve,
    retrieval_summary,
    roc_auc,
    roc_curve,
    sample_pairs,
)
from retrieval._src.revisited import (
    load_gnd,
    revisited_map,
)

__all__ = [
    "ImageRetrievalResult",
    "PairSet",
    "RetrievalResult",
    "RetrievalSummary",
    "average_precision",
    "average_precision_from_ranking",
    "evaluate_rankings",
    "evaluate_scores",
    "fpr_at_recall",
    "hpatches_pr",
    "hpatches_roc",
    "image_retrieval_map",
    "load_gnd",
    "nn_matching_accuracy",
    "pair_scores",
    "patch_retrieval_map",
    "precision_recall_curve",
    "retrieval_summary",
    "revisited_map",
    "roc_auc",
    "roc_curve",
    "sample_pairs",
]
