"""Local descriptors and VLAD (stage: image -> regions -> local descriptors -> one VLAD vector).

Interest regions and oriented patch sampling (:func:`detect_regions`,
:func:`sample_patches`, :class:`RegionSpec`), local descriptors at those regions
(SIFT / RootSIFT / a CKN model: :func:`local_features`, :func:`make_local_describer`), the
VLAD encoding and its fitting (:func:`vlad_encode`, :func:`fit_vlad`); spatial verification of a
pair (:func:`mutual_matches`, :func:`fit_geometry` over :data:`GEOMETRIC_MODELS`,
:func:`verify_pair`) and the bounded :class:`FeatureCache` of database features. VLAD as a
describer of the image pipeline (``VladDescription``) and its evaluation (``evaluate``) are in
:mod:`retrieval.image`.
"""

from __future__ import annotations

from retrieval._src.local import (
    PATCH_BATCH,
    LocalConfig,
    LocalDescriber,
    LocalFeatures,
    describe_images,
    iter_local_features,
    local_features,
    make_local_describer,
)
from retrieval._src.regions import (
    MAGNIFICATION,
    Regions,
    RegionSpec,
    detect_regions,
    sample_patch,
    sample_patches,
    select_regions,
)
from retrieval._src.verification import (
    GEOMETRIC_MODELS,
    FeatureCache,
    GeometricModel,
    Geometry,
    Matches,
    Verification,
    batch_matches,
    fit_geometry,
    mutual_matches,
    transfer_error,
    verify_pair,
)
from retrieval._src.vlad import (
    VladNorm,
    fit_codebook,
    vlad_core,
    vlad_encode,
    vlad_encode_batch,
)
from retrieval._src.vlad_fit import (
    VladConfig,
    VladModel,
    encode_images,
    fit_vlad,
    window_subsets,
)

__all__ = [
    "PATCH_BATCH",
    "FeatureCache",
    "GEOMETRIC_MODELS",
    "GeometricModel",
    "Geometry",
    "LocalConfig",
    "LocalDescriber",
    "LocalFeatures",
    "MAGNIFICATION",
    "Matches",
    "RegionSpec",
    "Regions",
    "Verification",
    "VladConfig",
    "VladModel",
    "VladNorm",
    "describe_images",
    "detect_regions",
    "encode_images",
    "fit_codebook",
    "batch_matches",
    "fit_geometry",
    "fit_vlad",
    "iter_local_features",
    "local_features",
    "make_local_describer",
    "mutual_matches",
    "sample_patch",
    "sample_patches",
    "select_regions",
    "transfer_error",
    "verify_pair",
    "vlad_core",
    "vlad_encode",
    "vlad_encode_batch",
    "window_subsets",
]
