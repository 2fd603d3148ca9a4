"""Image retrieval as one pipeline (stage: images -> vectors -> rankings -> mAP).

Describers (images in, one vector each out: :class:`Describer`, built from one frozen config
by :func:`build_describer`; registry :data:`DESCRIBERS`): a pooling head over a backbone
(:class:`PoolingDescription`; heads in the registry :data:`POOLING_HEADS`: MAC, SPoC, GeM,
R-MAC, CroW, neural codes; multi-scale :func:`extract_global`), a learned head
(:class:`LearnedHeadDescription`, :func:`train_global_head`), CAM OfA
(:class:`CamDescription`), VLAD of local descriptors (:class:`VladDescription`).
Post-processing (PCA and learned whitening, database-side augmentation), scorers
(:class:`Scorer`: CAM OnA and re-ranking, :class:`SpatialVerification` of the shortlist
(:class:`VerifyConfig`), :class:`QueryExpansion`), and the one evaluation
:func:`evaluate` over folders of images (:func:`load_image_folder`) in the groups or the
revisited protocol. The backbones are in :mod:`retrieval.nets`, local descriptors and VLAD in
:mod:`retrieval.local`, the metrics in :mod:`retrieval.metrics`.
"""

from __future__ import annotations

from retrieval._src.cam import (
    CamVectors,
    aggregate_class_vectors,
    cam_class_vectors,
    cam_pool,
    class_activation_maps,
    online_aggregation,
)
from retrieval._src.cam_rerank import Reranked, cam_rerank, heatmap_boxes
from retrieval._src.cam_search import (
    CamConfig,
    CamDescriber,
    CamDescription,
    CamReranking,
    OnlineAggregation,
    cam_scorers,
)
from retrieval._src.data.io import read_image_any
from retrieval._src.describer import (
    BaseDescriber,
    Described,
    Describer,
    LearnedHeadDescriber,
    LearnedHeadDescription,
    PoolingDescriber,
    PoolingDescription,
    load_backbone_spec,
)
from retrieval._src.describers import DESCRIBERS, build_describer, describer_name
from retrieval._src.evaluate import SEARCHES, Evaluation, evaluate
from retrieval._src.expansion import (
    alpha_qe,
    database_augmentation,
    expand_queries,
    expand_with,
    query_expansion,
)
from retrieval._src.feature_maps import (
    DEFAULT_BATCH,
    DEFAULT_BATCH_ACCELERATOR,
    MULTI_SCALE,
    ScaleConfig,
    iter_feature_maps,
    scaled_sizes,
)
from retrieval._src.figures import (
    save_figure,
    thumbnail,
)
from retrieval._src.global_desc import (
    GlobalConfig,
    PerScale,
    combine_scales,
    extract_global,
    extract_global_heads,
    extract_per_scale,
)
from retrieval._src.global_head import (
    HEAD_KINDS,
    HEAD_MARGINS,
    MINING,
    GlobalHead,
    GlobalHeadConfig,
    GlobalHeadReport,
    HeadMaps,
    HeadParams,
    backbone_info,
    head_forward,
    load_global_head,
    maps_bytes,
    prepare_maps,
    save_global_head,
    train_global_head,
)
from retrieval._src.heads import HEADS, POOLING_HEADS, PoolingHead, pooling_head
from retrieval._src.image_folder import (
    ImageCollection,
    check_images,
    group_pairs,
    image_problem,
    list_images,
    load_image_folder,
    usable_images,
)
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
from retrieval._src.post import WHITENINGS, PostConfig, fit_global_whitening, postprocess
from retrieval._src.postprocess import (
    PCAWhitening,
    Whitening,
    apply_pca_whitening,
    apply_whitening,
    fit_learned_whitening,
    fit_pca_whitening,
    multiscale_combine,
)
from retrieval._src.scoring import (
    Block,
    QueryExpansion,
    Ranked,
    Scorer,
    ScoringContext,
    scores_of,
)
from retrieval._src.spatial import SpatialVerification, VerifyConfig, verified_scores
from retrieval._src.vlad_describer import VladDescriber, VladDescription

__all__ = [
    "BaseDescriber",
    "Block",
    "CamConfig",
    "CamDescriber",
    "CamDescription",
    "CamReranking",
    "CamVectors",
    "DEFAULT_BATCH",
    "DEFAULT_BATCH_ACCELERATOR",
    "DESCRIBERS",
    "Described",
    "Describer",
    "Evaluation",
    "GlobalConfig",
    "GlobalHead",
    "GlobalHeadConfig",
    "GlobalHeadReport",
    "HEADS",
    "HEAD_KINDS",
    "HEAD_MARGINS",
    "HeadMaps",
    "HeadParams",
    "ImageCollection",
    "LearnedHeadDescriber",
    "LearnedHeadDescription",
    "MINING",
    "MULTI_SCALE",
    "OnlineAggregation",
    "PCAWhitening",
    "POOLING_HEADS",
    "PerScale",
    "PoolingDescriber",
    "PoolingDescription",
    "PoolingHead",
    "PostConfig",
    "QueryExpansion",
    "Ranked",
    "Reranked",
    "SEARCHES",
    "ScaleConfig",
    "Scorer",
    "ScoringContext",
    "SpatialVerification",
    "VerifyConfig",
    "VladDescriber",
    "VladDescription",
    "WHITENINGS",
    "Whitening",
    "aggregate_class_vectors",
    "alpha_qe",
    "annotations",
    "apply_pca_whitening",
    "apply_whitening",
    "backbone_info",
    "build_describer",
    "cam_class_vectors",
    "cam_pool",
    "cam_rerank",
    "cam_scorers",
    "check_images",
    "class_activation_maps",
    "combine_scales",
    "crow",
    "database_augmentation",
    "describer_name",
    "evaluate",
    "expand_queries",
    "expand_with",
    "extract_global",
    "extract_global_heads",
    "extract_per_scale",
    "fit_global_whitening",
    "fit_learned_whitening",
    "fit_pca_whitening",
    "gem",
    "group_pairs",
    "head_forward",
    "heatmap_boxes",
    "image_problem",
    "iter_feature_maps",
    "l2_normalize",
    "list_images",
    "load_backbone_spec",
    "load_global_head",
    "load_image_folder",
    "mac",
    "maps_bytes",
    "multiscale_combine",
    "neural_codes",
    "online_aggregation",
    "pooling_head",
    "postprocess",
    "prepare_maps",
    "query_expansion",
    "read_image_any",
    "regional_mac",
    "rmac",
    "rmac_regions",
    "save_figure",
    "save_global_head",
    "scaled_sizes",
    "scores_of",
    "spoc",
    "thumbnail",
    "train_global_head",
    "usable_images",
    "verified_scores",
]
