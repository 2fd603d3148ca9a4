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
    load_patchset,
    patchset_stats,
    save_patchset,
)
from retrieval._src.regions import Regions, detect_regions, sample_patch, sample_patches, select_regions

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
    "contact_sheet",
    "detect_regions",
    "load_patchset",
    "patchset_stats",
    "sample_patch",
    "sample_patches",
    "save_patchset",
    "select_regions",
]
