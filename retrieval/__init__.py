"""Patch and image retrieval with CKN descriptors: data sets, metrics, search.

Public API; implementation modules under ``retrieval._src`` are private.
"""
# RomePatches-style patch data sets (retrieval._src.regions / patchsets / contact_sheet).
from retrieval._src.contact_sheet import contact_sheet
from retrieval._src.patchsets import (
    PatchSet,
    PatchSetConfig,
    SkippedItemWarning,
    ViewParams,
    build_default,
    build_photos,
    build_sequences,
    build_stereo,
    default_config,
    format_stats,
    load_manual,
    load_patchset,
    patchset_stats,
    read_stereo_pairs,
    save_patchset,
)
from retrieval._src.regions import Regions, detect_regions, sample_patch, sample_patches, select_regions

# The TFDS builder imports tensorflow_datasets (~0.8 s): loaded on first use.
# `from retrieval import CknPatches` registers "ckn_patches" with TFDS.
_TFDS_NAMES = ("CknPatches", "export_npz", "tfds_to_patchset", "write_tfds")


def __getattr__(name: str):
    if name in _TFDS_NAMES:
        from retrieval._src import tfds_builder

        return getattr(tfds_builder, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


__all__ = [
    # patch data sets
    "PatchSet",
    "PatchSetConfig",
    "Regions",
    "SkippedItemWarning",
    "ViewParams",
    "build_default",
    "build_photos",
    "build_sequences",
    "build_stereo",
    "CknPatches",
    "contact_sheet",
    "default_config",
    "detect_regions",
    "export_npz",
    "format_stats",
    "load_manual",
    "load_patchset",
    "patchset_stats",
    "read_stereo_pairs",
    "sample_patch",
    "sample_patches",
    "save_patchset",
    "select_regions",
    "tfds_to_patchset",
    "write_tfds",
    # metrics, search, baselines, evaluation
    "AP_DEFINITION",
    "BASELINES",
    "ExactIndex",
    "FaissIndex",
    "Index",
    "PairSet",
    "RetrievalResult",
    "RetrievalSummary",
    "average_precision",
    "average_precision_from_ranking",
    "describe_baseline",
    "describe_with",
    "descriptor_info",
    "evaluate_descriptors",
    "exact_search",
    "fpr_at_recall",
    "nn_matching_accuracy",
    "pair_scores",
    "patch_retrieval_map",
    "pixel_descriptors",
    "precision_recall_curve",
    "resolve_model",
    "retrieval_summary",
    "roc_auc",
    "roc_curve",
    "sample_pairs",
    "sift_descriptors",
    "sift_keypoint_size",
]
