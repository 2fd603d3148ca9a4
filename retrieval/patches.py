"""Patch data sets and the patch benchmarks (stage: patches -> descriptors -> patch mAP).

RomePatches-style patch sets built from photos, image sequences or stereo pairs
(:class:`PatchSet`, :func:`build_default`, :func:`load_patchset`, ...), the SIFT /
RootSIFT / pixel baselines, the patch evaluation (:func:`evaluate_descriptors`) and
``ckn reproduce``'s benchmark (:func:`reproduce`); the standard patch benchmarks: HPatches
(the release layout, official splits and task files, the three tasks as the official Python
benchmark computes them: :func:`load_hpatches`, :func:`evaluate_hpatches`), HPatches-style data
from any homography sequences (:func:`build_hpatches_style`), Brown / PhotoTour FPR95
(:class:`PhotoTour`, :func:`evaluate_phototour`), and a describer of their native patch sides
(:func:`patch_describer`). The TensorFlow Datasets builder
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
from retrieval._src.hpatches import (
    PATCH_SIZE as HPATCHES_SIZE,
)
from retrieval._src.hpatches import (
    PUBLISHED as HPATCHES_PUBLISHED,
)
from retrieval._src.hpatches import (
    SPLIT_NAMES as HPATCHES_SPLITS,
)
from retrieval._src.hpatches import (
    TYPES as HPATCHES_TYPES,
)
from retrieval._src.hpatches import (
    HPatchesConfig,
    HPatchesData,
    HPatchesResult,
    HPatchesTasks,
    describe_hpatches,
    evaluate_hpatches,
    format_hpatches,
    load_hpatches,
)
from retrieval._src.hpatches import (
    generate_tasks as generate_hpatches_tasks,
)
from retrieval._src.hpatches import (
    iter_descriptors as iter_hpatches_descriptors,
)
from retrieval._src.hpatches import (
    read_descriptors as read_hpatches_descriptors,
)
from retrieval._src.hpatches import (
    read_sequence as read_hpatches_sequence,
)
from retrieval._src.hpatches import (
    read_tasks as read_hpatches_tasks,
)
from retrieval._src.hpatches import (
    write_descriptors as write_hpatches_descriptors,
)
from retrieval._src.hpatches import (
    write_sequence as write_hpatches_sequence,
)
from retrieval._src.hpatches import (
    write_tasks as write_hpatches_tasks,
)
from retrieval._src.hpstyle import (
    HPatchesStyleConfig,
    HPatchesStyleReport,
    build_hpatches_style,
    hpatches_to_patchset,
)
from retrieval._src.patch_describer import PatchDescriber, patch_describer, resize_patches
from retrieval._src.phototour import (
    PHOTOTOUR_SIZE,
    PhotoTour,
    evaluate_phototour,
    fpr95,
    phototour_patchset,
)
from retrieval._src.phototour import read_pairs as read_phototour_pairs
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
    "HPATCHES_PUBLISHED",
    "HPATCHES_SIZE",
    "HPATCHES_SPLITS",
    "HPATCHES_TYPES",
    "HPatchesConfig",
    "HPatchesData",
    "HPatchesResult",
    "HPatchesStyleConfig",
    "HPatchesStyleReport",
    "HPatchesTasks",
    "PAPER_ROMEPATCHES",
    "PATCH_SIZE",
    "PHOTOTOUR_SIZE",
    "PatchDescriber",
    "PatchSet",
    "PatchSetConfig",
    "PhotoTour",
    "QUICK_FINETUNE_EPOCHS",
    "RESULT_KEYS",
    "SkippedItemWarning",
    "VERSION",
    "ViewParams",
    "build_default",
    "build_hpatches_style",
    "build_photos",
    "build_sequences",
    "build_stereo",
    "ckn_config",
    "contact_sheet",
    "default_cache_path",
    "default_config",
    "default_photos",
    "describe_baseline",
    "describe_hpatches",
    "describe_with",
    "descriptor_info",
    "evaluate_descriptors",
    "evaluate_hpatches",
    "evaluate_phototour",
    "export_npz",  # noqa: F822 - lazy, see __getattr__
    "finetune_rows",
    "format_hpatches",
    "format_stats",
    "format_table",
    "fpr95",
    "generate_hpatches_tasks",
    "hpatches_to_patchset",
    "iter_hpatches_descriptors",
    "load_data",
    "load_hpatches",
    "load_manual",
    "load_patchset",
    "make_figure",
    "patch_describer",
    "patchset_stats",
    "photometric",
    "phototour_patchset",
    "pixel_descriptors",
    "random_homography",
    "read_hpatches_descriptors",
    "read_hpatches_sequence",
    "read_hpatches_tasks",
    "read_image",
    "read_phototour_pairs",
    "read_stereo_pairs",
    "reproduce",
    "resize_patches",
    "resolve_model",
    "save_patchset",
    "sift_descriptors",
    "sift_keypoint_size",
    "synthetic_view",
    "tfds_to_patchset",  # noqa: F822 - lazy, see __getattr__
    "write_hpatches_descriptors",
    "write_hpatches_sequence",
    "write_hpatches_tasks",
    "write_tfds",  # noqa: F822 - lazy, see __getattr__
]
