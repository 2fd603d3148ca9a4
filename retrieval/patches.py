"""Patch data sets and the patch benchmarks (stage: patches -> descriptors -> patch mAP).

RomePatches-style patch sets built from photos, image sequences or stereo pairs
(:class:`PatchSet`, :func:`build_default`, :func:`load_patchset`, ...), the SIFT /
RootSIFT / pixel baselines, the patch evaluation (:func:`evaluate_descriptors`) and
``ckn reproduce``'s benchmark (:func:`reproduce`). The TensorFlow Datasets builder
(:class:`CknPatches`, :func:`write_tfds`, ...) loads ``tensorflow_datasets`` on first use
of one of its names.
"""

from __future__ import annotations

from retrieval._src.baselines import (
    BASELINES,
    describe_baseline,
    pixel_descriptors,
    sift_descriptors,
    sift_keypoint_size,
)
from retrieval._src.data import (
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    VERSION,
    EmptySplitWarning,
    PatchSet,
    PatchSetConfig,
    SkippedItemWarning,
    ViewParams,
    build_default,
    build_photos,
    build_sequences,
    build_stereo,
    default_cache_path,
    default_config,
    default_photos,
    format_stats,
    load_manual,
    load_patchset,
    patchset_stats,
    photometric,
    random_homography,
    read_image,
    read_stereo_pairs,
    save_patchset,
    synthetic_view,
)
from retrieval._src.evaluation import (
    AP_DEFINITION,
    RESULT_KEYS,
    describe_with,
    descriptor_info,
    evaluate_descriptors,
    resolve_model,
)
from retrieval._src.figures import (
    contact_sheet,
)
from retrieval._src.regions import (
    PATCH_SIZE,
)
from retrieval._src.reproduce import (
    DEFAULT_DESCRIPTORS,
    FINETUNE_FROM,
    FINETUNED,
    FINETUNED_DIR,
    PAPER_ROMEPATCHES,
    QUICK_FINETUNE_EPOCHS,
    ckn_config,
    finetune_rows,
    format_table,
    load_data,
    make_figure,
    reproduce,
)

# The TFDS builder imports tensorflow_datasets: loaded on first use of one of these names
# (+0.26 to 0.48 s measured on 2 shared cores, paid by every `ckn` command if eager), so
# importing this module does NOT register "ckn_patches" with TFDS; `CknPatches` (or any
# name below) does. `dir()` lists them.
_TFDS_NAMES = ("CknPatches", "export_npz", "tfds_to_patchset", "write_tfds")


def __getattr__(name: str):
    if name in _TFDS_NAMES:
        from retrieval._src.data import tfds_builder

        return getattr(tfds_builder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_TFDS_NAMES})


__all__ = [
    "AP_DEFINITION",
    "BASELINES",
    "CknPatches",  # noqa: F822 - lazy, see __getattr__
    "DEFAULT_DESCRIPTORS",
    "DEFAULT_TEST",
    "DEFAULT_TRAIN",
    "EmptySplitWarning",
    "FINETUNED",
    "FINETUNED_DIR",
    "FINETUNE_FROM",
    "PAPER_ROMEPATCHES",
    "PATCH_SIZE",
    "PatchSet",
    "PatchSetConfig",
    "QUICK_FINETUNE_EPOCHS",
    "RESULT_KEYS",
    "SkippedItemWarning",
    "VERSION",
    "ViewParams",
    "build_default",
    "build_photos",
    "build_sequences",
    "build_stereo",
    "ckn_config",
    "contact_sheet",
    "default_cache_path",
    "default_config",
    "default_photos",
    "describe_baseline",
    "describe_with",
    "descriptor_info",
    "evaluate_descriptors",
    "export_npz",  # noqa: F822 - lazy, see __getattr__
    "finetune_rows",
    "format_stats",
    "format_table",
    "load_data",
    "load_manual",
    "load_patchset",
    "make_figure",
    "patchset_stats",
    "photometric",
    "pixel_descriptors",
    "random_homography",
    "read_image",
    "read_stereo_pairs",
    "reproduce",
    "resolve_model",
    "save_patchset",
    "sift_descriptors",
    "sift_keypoint_size",
    "synthetic_view",
    "tfds_to_patchset",  # noqa: F822 - lazy, see __getattr__
    "write_tfds",  # noqa: F822 - lazy, see __getattr__
]
