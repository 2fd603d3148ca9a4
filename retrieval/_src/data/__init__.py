"""RomePatches-style patch data sets: groups of patches of one physical point.

RomePatches (Paulin et al., IJCV 2017, Sec. 5; CKN_NOTES.md Sec. 3) groups
affine- and orientation-normalized 51 x 51 patches of the same 3D point seen in
different photos, 10 patches per group, split into train and test by scene. We
build data of the same kind from real images whose geometry is known, one
module per source:

* homography sequences (Oxford affine layout ``<seq>/img1..imgN`` +
  ``H1toNp``; HPatches layout ``1.ppm..6.ppm`` + ``H_1_N``):
  :func:`build_sequences` (:mod:`.sequences`);
* stereo pairs with a disparity map (``x_right = x_left - disparity``;
  Middlebury folders ``im0.png``, ``im1.png``, ``disp0.pfm``): :func:`build_stereo`
  (:mod:`.stereo`);
* any folder of ordinary photos, under known random homographies and
  photometric changes: :func:`build_photos` (:mod:`.photos`); the embedded
  default set (real photos shipped with scikit-image): :func:`build_default`
  (:mod:`.default`);
* pre-cut patches with group labels (e.g. the original RomePatches):
  :func:`load_manual` (:mod:`.manual`).

The sources share :mod:`.geometry` (maps between the views of a scene),
:mod:`.grouping` (matching detections into groups, splits by scene) and
:mod:`.config` (:class:`PatchSetConfig`); :mod:`.patchset` defines the result
and its ``.npz`` keys, :mod:`.io` reads and writes it, :mod:`.stats` summarizes
it and :mod:`.tfds_builder` (imported on demand: it loads tensorflow_datasets)
writes it as a TFDS data set.

Bad input is an :class:`~ckn.InputError` with a one-line message (a missing or
unreadable image, a homography that does not parse or is singular, a folder
without images or sequences, no group at all), or, for an item that can be
left out (one unreadable photo, one sequence without matches), a
:class:`SkippedItemWarning` naming it; an empty train or test split gives an
:class:`EmptySplitWarning`. Outputs are written atomically.
"""

from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.default import (
    DEFAULT_QUICK_TEST,
    DEFAULT_QUICK_TRAIN,
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    build_default,
    cache_dir,
    default_cache_path,
    default_config,
    default_photos,
)
from retrieval._src.data.geometry import (
    Disparity,
    Geometry,
    Homography,
    map_regions,
    read_homography,
)
from retrieval._src.data.grouping import SceneResult, assemble, group_scene, prepare_image
from retrieval._src.data.io import (
    IMAGE_EXTENSIONS,
    load_patchset,
    read_image,
    resize_max,
    save_patchset,
)
from retrieval._src.data.manual import load_manual
from retrieval._src.data.patchset import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VERSION,
    EmptySplitWarning,
    PatchSet,
    SkippedItemWarning,
)
from retrieval._src.data.photos import (
    ViewParams,
    build_from_images,
    build_photos,
    photo_scene,
    photometric,
    random_homography,
    synthetic_view,
)
from retrieval._src.data.sequences import build_sequences, find_sequences, load_sequence
from retrieval._src.data.stats import format_stats, patchset_stats
from retrieval._src.data.stereo import build_stereo, read_disparity, read_stereo_pairs

__all__ = [
    "DEFAULT_QUICK_TEST",
    "DEFAULT_QUICK_TRAIN",
    "DEFAULT_TEST",
    "DEFAULT_TRAIN",
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "TEST",
    "TRAIN",
    "VERSION",
    "Disparity",
    "EmptySplitWarning",
    "Geometry",
    "Homography",
    "PatchSet",
    "PatchSetConfig",
    "SceneResult",
    "SkippedItemWarning",
    "ViewParams",
    "assemble",
    "build_default",
    "build_from_images",
    "build_photos",
    "build_sequences",
    "build_stereo",
    "cache_dir",
    "default_cache_path",
    "default_config",
    "default_photos",
    "find_sequences",
    "format_stats",
    "group_scene",
    "load_manual",
    "load_patchset",
    "load_sequence",
    "map_regions",
    "patchset_stats",
    "photo_scene",
    "photometric",
    "prepare_image",
    "random_homography",
    "read_disparity",
    "read_homography",
    "read_image",
    "read_stereo_pairs",
    "resize_max",
    "save_patchset",
    "synthetic_view",
]
