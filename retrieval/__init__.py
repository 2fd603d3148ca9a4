"""Patch and image retrieval with CKN descriptors: data sets, metrics, search.

Public API; implementation modules under ``retrieval._src`` are private.
"""

# RomePatches-style patch data sets (retrieval._src.regions / data / figures).
# Patch metrics, baselines, evaluation, search, the reproduce pipeline.
from retrieval._src.baselines import (
    BASELINES,
    describe_baseline,
    pixel_descriptors,
    sift_descriptors,
    sift_keypoint_size,
)

# Class-weighted (CAM) pooling, OfA / OnA aggregation, CAM re-ranking (retrieval._src.cam).
from retrieval._src.cam import (
    CamVectors,
    Reranked,
    aggregate_class_vectors,
    cam_class_vectors,
    cam_pool,
    cam_rerank,
    class_activation_maps,
    heatmap_boxes,
    online_aggregation,
)
from retrieval._src.cam_eval import CamConfig, evaluate_cam
from retrieval._src.data import (
    EmptySplitWarning,
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
from retrieval._src.evaluation import (
    AP_DEFINITION,
    describe_with,
    descriptor_info,
    evaluate_descriptors,
    resolve_model,
)
from retrieval._src.figures import contact_sheet

# Global image descriptors and their retrieval pipeline (retrieval._src.global_desc / global_eval).
from retrieval._src.global_desc import (
    GlobalConfig,
    PerScale,
    combine_scales,
    extract_global,
    extract_global_heads,
    extract_per_scale,
    iter_feature_maps,
)
from retrieval._src.global_eval import (
    GlobalEvaluation,
    PostConfig,
    evaluate_global,
    expand_queries,
    fit_global_whitening,
    load_backbone_spec,
)

# Learned global heads on a frozen backbone (retrieval._src.global_head).
from retrieval._src.global_head import (
    GlobalHead,
    GlobalHeadConfig,
    GlobalHeadReport,
    HeadMaps,
    HeadParams,
    head_forward,
    load_global_head,
    prepare_maps,
    save_global_head,
    train_global_head,
)

# VLAD / image retrieval (retrieval._src.local / vlad / vlad_fit / image_eval / image_folder).
from retrieval._src.image_eval import VladEvaluation, evaluate_vlad
from retrieval._src.image_folder import ImageCollection, list_images, load_image_folder

# A saved, searchable image index (retrieval._src.index).
from retrieval._src.index import (
    IndexQueryResult,
    IndexSettings,
    SavedIndex,
    add_to_index,
    build_index,
    check_index_settings,
    describe_for_index,
    index_info,
    load_index,
    query_index,
    save_index,
)
from retrieval._src.local import (
    Describer,
    LocalConfig,
    LocalFeatures,
    describe_images,
    local_features,
    make_describer,
)
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

# ImageNet CNN backbones read from weight files without torch (retrieval._src.nets).
from retrieval._src.nets.backbone import BACKBONE_NAMES, BACKBONES, Backbone, load_backbone
from retrieval._src.nets.ckn_backbone import CknBackbone
from retrieval._src.nets.weights import read_state_dict, write_state_dict

# Global-descriptor pooling heads (retrieval._src.pooling).
from retrieval._src.pooling import (
    crow,
    gem,
    l2_normalize,
    mac,
    neural_codes,
    regional_mac,
    rmac,
    rmac_regions,
    spoc,
)

# Post-processing of global descriptors (retrieval._src.postprocess).
from retrieval._src.postprocess import (
    PCAWhitening,
    Whitening,
    alpha_qe,
    apply_pca_whitening,
    apply_whitening,
    database_augmentation,
    fit_learned_whitening,
    fit_pca_whitening,
    multiscale_combine,
    query_expansion,
)
from retrieval._src.regions import (
    Regions,
    detect_regions,
    sample_patch,
    sample_patches,
    select_regions,
)
from retrieval._src.reproduce import DEFAULT_DESCRIPTORS, PAPER_ROMEPATCHES, format_table, reproduce

# Revisited Oxford / Paris protocol (retrieval._src.revisited).
from retrieval._src.revisited import load_gnd, revisited_map
from retrieval._src.search import (
    ExactIndex,
    FaissIndex,
    Index,
    exact_search,
    make_index,
    recall_at,
)
from retrieval._src.vlad import (
    VladNorm,
    fit_codebook,
    vlad_core,
    vlad_encode,
    vlad_encode_batch,
)
from retrieval._src.vlad_fit import VladConfig, VladModel, encode_images, fit_vlad

# The TFDS builder imports tensorflow_datasets: loaded on first use of one of
# these names. Measured: +0.26 to 0.48 s on top of 1.9 to 3.2 s for `import
# retrieval` (2 shared CPU cores), paid by every `ckn` command if eager; so
# `import retrieval` alone does NOT register "ckn_patches" with TFDS:
# `retrieval.CknPatches` (or any name below) does. `dir(retrieval)` lists them.
_TFDS_NAMES = ("CknPatches", "export_npz", "tfds_to_patchset", "write_tfds")


def __getattr__(name: str):
    if name in _TFDS_NAMES:
        from retrieval._src.data import tfds_builder

        return getattr(tfds_builder, name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TFDS_NAMES})


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
    "EmptySplitWarning",
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
    # VLAD / image retrieval
    "Describer",
    "ImageCollection",
    "ImageRetrievalResult",
    "LocalConfig",
    "LocalFeatures",
    "PCAWhitening",
    "VladConfig",
    "VladEvaluation",
    "VladModel",
    "VladNorm",
    "apply_pca_whitening",
    "describe_images",
    "encode_images",
    "evaluate_rankings",
    "evaluate_scores",
    "evaluate_vlad",
    "fit_codebook",
    "fit_pca_whitening",
    "fit_vlad",
    "image_retrieval_map",
    "list_images",
    "load_image_folder",
    "local_features",
    "make_describer",
    "make_index",
    "recall_at",
    "vlad_core",
    "vlad_encode",
    "vlad_encode_batch",
    # saved image index
    "IndexQueryResult",
    "IndexSettings",
    "SavedIndex",
    "add_to_index",
    "build_index",
    "check_index_settings",
    "describe_for_index",
    "index_info",
    "load_index",
    "query_index",
    "save_index",
    # ImageNet CNN backbones and weight files
    "BACKBONE_NAMES",
    "BACKBONES",
    "Backbone",
    "CknBackbone",
    "load_backbone",
    "read_state_dict",
    "write_state_dict",
    # global-descriptor post-processing
    "Whitening",
    "alpha_qe",
    "apply_whitening",
    "database_augmentation",
    "fit_learned_whitening",
    "multiscale_combine",
    "query_expansion",
    # revisited Oxford / Paris protocol
    "load_gnd",
    "revisited_map",
    # class-weighted (CAM) pooling and re-ranking
    "CamVectors",
    "Reranked",
    "aggregate_class_vectors",
    "cam_class_vectors",
    "cam_pool",
    "cam_rerank",
    "class_activation_maps",
    "heatmap_boxes",
    "online_aggregation",
    "CamConfig",
    "evaluate_cam",
    # global image descriptors and their retrieval pipeline
    "GlobalConfig",
    "GlobalEvaluation",
    "PerScale",
    "PostConfig",
    "combine_scales",
    "evaluate_global",
    "expand_queries",
    "extract_global",
    "extract_global_heads",
    "extract_per_scale",
    "iter_feature_maps",
    "fit_global_whitening",
    "load_backbone_spec",
    # learned global heads
    "GlobalHead",
    "GlobalHeadConfig",
    "GlobalHeadReport",
    "HeadMaps",
    "HeadParams",
    "head_forward",
    "load_global_head",
    "prepare_maps",
    "save_global_head",
    "train_global_head",
    # global-descriptor pooling heads
    "crow",
    "gem",
    "l2_normalize",
    "mac",
    "neural_codes",
    "regional_mac",
    "rmac",
    "rmac_regions",
    "spoc",
    # metrics, search, baselines, evaluation
    "AP_DEFINITION",
    "DEFAULT_DESCRIPTORS",
    "PAPER_ROMEPATCHES",
    "format_table",
    "reproduce",
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
