"""Local descriptors and VLAD (stage: image -> regions -> local descriptors -> one VLAD vector).

Interest regions and oriented patch sampling (:func:`detect_regions`,
:func:`sample_patches`, :class:`RegionSpec`), local descriptors at those regions
(SIFT / RootSIFT / a CKN model: :func:`local_features`, :func:`make_describer`), the
VLAD encoding and its fitting (:func:`vlad_encode`, :func:`fit_vlad`) and the VLAD
evaluation on a folder of images (:func:`evaluate_vlad`).
"""

from __future__ import annotations

from retrieval._src.image_eval import (
    VladEvaluation,
    evaluate_vlad,
)
from retrieval._src.local import (
    Describer,
    LocalConfig,
    LocalFeatures,
    describe_images,
    local_features,
    make_describer,
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
    "Describer",
    "LocalConfig",
    "LocalFeatures",
    "MAGNIFICATION",
    "RegionSpec",
    "Regions",
    "VladConfig",
    "VladEvaluation",
    "VladModel",
    "VladNorm",
    "describe_images",
    "detect_regions",
    "encode_images",
    "evaluate_vlad",
    "fit_codebook",
    "fit_vlad",
    "local_features",
    "make_describer",
    "sample_patch",
    "sample_patches",
    "select_regions",
    "vlad_core",
    "vlad_encode",
    "vlad_encode_batch",
    "window_subsets",
]
