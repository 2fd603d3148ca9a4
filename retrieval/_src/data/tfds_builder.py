"""TensorFlow Datasets builder for RomePatches-style patch sets (array_record files).

The builder ``ckn_patches`` writes ``array_record`` files that
``tfds.data_source`` reads with NumPy only (TensorFlow is not needed to build
or to read). Configs (one per source of :mod:`retrieval._src.data`):

==============  ==========================================================
config          data
==============  ==========================================================
``default``     the embedded default (scikit-image photos, synthetic views);
                builder kwarg ``quick=True`` for the ~1,000-patch variant
``sequences``   homography sequences (Oxford / HPatches layout) under
                ``path`` or the manual dir
``photos``      synthetic views of every photo in ``path`` / the manual dir
``stereo``      stereo pairs (Middlebury layout) in ``path`` / the manual
                dir; without either, scikit-image's ``stereo_motorcycle``
``manual``      pre-cut patches with group labels: a ``.npz`` or a folder of
                ``[train|test/]<group>/<patch>.png`` (:func:`load_manual`),
                e.g. the original RomePatches when a user has them
==============  ==========================================================

Builder kwargs (``tfds.data_source(..., builder_kwargs=...)``): ``path``,
``size``, ``views``, ``seed``, ``quick``; ``patchset`` writes an in-memory
:class:`~retrieval.PatchSet` (as ``ckn patches --tfds`` does). A data set that
is already prepared is reused; asking for it again with different kwargs is an
error (use another ``data_dir``) rather than silently returning the old data.

Each example is one patch::

    {"patch": (S, S, C) uint8, "label": int64, "index": int64 (row in the .npz),
     "scene": int32, "scene_name": str, "image": int32,
     "x", "y", "scale", "angle": float32}

in the split ``train`` or ``test``; the scene names, the patch rank of the
source arrays and the ``info`` JSON are in ``builder.info.metadata``, so that
:func:`tfds_to_patchset` / :func:`export_npz` give back the ``.npz`` content
exactly.

Registration: TFDS knows a builder once its class is defined, i.e. once this
module is imported. ``import retrieval`` does not import it (it would load
tensorflow_datasets, +0.3 s on top of ~2 s, for every ``ckn`` command):
touching any of its names (``retrieval.patches.CknPatches``, ``retrieval.write_tfds``,
...) does, and so does ``import retrieval._src.data.tfds_builder``.

Example::

    import retrieval, tensorflow_datasets as tfds
    retrieval.patches.CknPatches  # registers "ckn_patches" (loaded lazily by `retrieval`)
    src = tfds.data_source("ckn_patches/default", data_dir="/tmp/tfds")  # builds once
    src["train"][0]["patch"].shape  # (51, 51, 1)
    retrieval.patches.export_npz("/tmp/tfds", "default.npz", config="default")
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ckn import InputError
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.default import build_default, default_config
from retrieval._src.data.io import save_patchset
from retrieval._src.data.manual import load_manual
from retrieval._src.data.patchset import SPLIT_NAMES, TEST, TRAIN, PatchSet
from retrieval._src.data.patchset import VERSION as PATCHSET_VERSION
from retrieval._src.data.photos import build_photos
from retrieval._src.data.sequences import build_sequences
from retrieval._src.data.stereo import build_stereo
from retrieval._src.regions import PATCH_SIZE

BUILDER_NAME = "ckn_patches"
CONFIG_NAMES = ("default", "sequences", "photos", "stereo", "manual")
_PARAM_NAMES = ("path", "size", "views", "seed", "quick")
#: The builder kwargs that each config takes, with their defaults (None: required or optional path).
_CONFIG_PARAMS = {
    "default": {"size": 51, "views": 10, "seed": 0, "quick": False},
    "sequences": {"path": None, "size": 51},
    "photos": {"path": None, "size": 51, "views": 10, "seed": 0},
    "stereo": {"path": None, "size": 51},
    "manual": {"path": None},
}
_CHUNK = 1024


class _LocalDatasetInfo(tfds.core.DatasetInfo):
    """DatasetInfo that never looks for pre-computed info on GCS.

    TFDS's ``initialize_from_bucket`` (called for every builder whose data is
    not prepared yet) creates a ``tmp...tfds`` folder in the system's temp dir
    and leaves it there when the data set is not on GCS, which ckn_patches
    never is: one empty folder per ``ckn patches --tfds`` run.
    """

    def initialize_from_bucket(self) -> None:
        pass


class CknPatches(tfds.core.GeneratorBasedBuilder):
    """RomePatches-style groups of normalized interest-region patches."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: default, sequences, photos, stereo, manual."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name="default", description="Synthetic views of 15 scikit-image photos."
        ),
        tfds.core.BuilderConfig(
            name="sequences", description="Oxford / HPatches homography sequences."
        ),
        tfds.core.BuilderConfig(
            name="photos", description="Synthetic views of a folder of photos."
        ),
        tfds.core.BuilderConfig(name="stereo", description="Stereo pairs with a disparity map."),
        tfds.core.BuilderConfig(name="manual", description="Pre-cut patches with group labels."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    sequences: put the sequence folders (<seq>/img1.ppm ... + H1to2p ..., or
    <seq>/1.ppm ... + H_1_2 ...) in the manual dir, or pass builder_kwargs={"path": DIR}.
    photos: put the photos in the manual dir (or "path"). stereo: Middlebury pair
    folders (im0.png, im1.png, disp0.pfm). manual: one .npz (patches, labels
    [, split, ...]) or [train|test/]<group>/<patch>.png folders.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds this through `importlib_resources`, a backport that it
        # only requires on Python < 3.9, and fails without it: give it directly.
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        path: str | os.PathLike | None = None,
        size: int | None = None,
        views: int | None = None,
        seed: int | None = None,
        quick: bool | None = None,
        patchset: PatchSet | None = None,
        file_format: str = "array_record",
        **kwargs: Any,
    ):
        given = {
            "path": None if path is None else str(Path(path).resolve()),
            "size": size,
            "views": views,
            "seed": seed,
            "quick": quick,
        }
        self._params = {k: v for k, v in given.items() if v is not None}
        self._patchset = patchset
        self._manual_path: str | None = None
        super().__init__(file_format=file_format, **kwargs)
        allowed = _CONFIG_PARAMS[self.builder_config.name]
        extra = sorted(set(self._params) - set(allowed))
        if extra:
            raise InputError(
                f"config {self.builder_config.name!r} takes builder kwargs {', '.join(allowed)}; "
                f"got {', '.join(extra)}"
            )

    def _info(self) -> tfds.core.DatasetInfo:
        return _LocalDatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    # (S, S, C) with a dynamic shape: one builder serves every size / colour.
                    "patch": tfds.features.Tensor(
                        shape=(None, None, None), dtype=np.uint8, encoding="zlib"
                    ),
                    "label": tfds.features.Scalar(
                        dtype=np.int64, doc="group id (same physical point)"
                    ),
                    "index": tfds.features.Scalar(dtype=np.int64, doc="row in the exported .npz"),
                    "scene": tfds.features.Scalar(dtype=np.int32),
                    "scene_name": tfds.features.Text(),
                    "image": tfds.features.Scalar(
                        dtype=np.int32, doc="image of the scene (0 = reference)"
                    ),
                    "x": tfds.features.Scalar(dtype=np.float32),
                    "y": tfds.features.Scalar(dtype=np.float32),
                    "scale": tfds.features.Scalar(
                        dtype=np.float32, doc="region size (OpenCV KeyPoint.size)"
                    ),
                    "angle": tfds.features.Scalar(dtype=np.float32, doc="orientation, degrees"),
                }
            ),
            supervised_keys=("patch", "label"),
            homepage="https://arxiv.org/abs/1603.00438",
            citation=(
                "Paulin et al., Convolutional patch representations for image retrieval, IJCV 2017."
            ),
            metadata=tfds.core.MetadataDict(),
        )

    def _prepared(self) -> bool:
        # Checked first: is_prepared() logs a warning for a missing folder.
        return os.path.isdir(self.data_path) and self.is_prepared()

    def download_and_prepare(self, **kwargs: Any) -> None:
        mode = getattr(kwargs.get("download_config"), "download_mode", None)
        reuse = mode in (None, tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
        if reuse and self._prepared():
            if self._patchset is not None:
                raise InputError(
                    f"{self.data_path} already exists; pass a new data_dir to write this patch set"
                )
            self._check_reused_params()
        super().download_and_prepare(**kwargs)

    def as_data_source(self, *args: Any, **kwargs: Any):
        # tfds.data_source skips download_and_prepare for a prepared data set.
        if self._prepared():
            self._check_reused_params()
        return super().as_data_source(*args, **kwargs)

    def _check_reused_params(self) -> None:
        stored = dict(_metadata(self.info).get("params", {}))
        diff = {k: (stored.get(k), v) for k, v in self._params.items() if stored.get(k) != v}
        if diff:
            text = ", ".join(
                f"{k}={'unknown' if old is None else repr(old)} (asked {new!r})"
                for k, (old, new) in sorted(diff.items())
            )
            raise InputError(f"{self.data_path} was built with {text}; use another data_dir")

    def _source_path(self, dl_manager, required: bool) -> str | None:
        if "path" in self._params:
            return self._params["path"]
        try:
            self._manual_path = str(Path(dl_manager.manual_dir).resolve())
            return self._manual_path
        except AssertionError:
            if not required:
                return None
            raise InputError(
                f"config {self.builder_config.name!r} needs builder_kwargs={{'path': DIR}} or a "
                "non-empty manual dir "
                "(DownloadConfig(manual_dir=...); default <data_dir>/downloads/manual)"
            ) from None

    def _build(self, dl_manager) -> PatchSet:
        name = self.builder_config.name
        p = self._params
        if name == "manual":
            return load_manual(self._source_path(dl_manager, True))
        if name == "default":
            cfg = default_config(p.get("quick", False), size=p.get("size", PATCH_SIZE))
            return build_default(
                quick=p.get("quick", False),
                views=p.get("views", 10),
                seed=p.get("seed", 0),
                config=cfg,
            )
        cfg = PatchSetConfig(size=p.get("size", PATCH_SIZE))
        if name == "sequences":
            return build_sequences(self._source_path(dl_manager, True), config=cfg)
        if name == "photos":
            return build_photos(
                self._source_path(dl_manager, True),
                views=p.get("views", 10),
                seed=p.get("seed", 0),
                config=cfg,
            )
        if name == "stereo":
            return build_stereo(self._source_path(dl_manager, False), config=cfg)
        raise InputError(f"unknown config {name!r}; one of {', '.join(CONFIG_NAMES)}")

    def _split_generators(self, dl_manager):
        if self._patchset is not None:
            ps, params = self._patchset, self._params  # the caller's record of how it was built
        else:
            ps = self._build(dl_manager)
            defaults = _CONFIG_PARAMS[self.builder_config.name]
            params = {k: v for k, v in {**defaults, **self._params}.items() if v is not None}
            if self._manual_path is not None:
                params["path"] = self._manual_path
        if ps.patches.ndim not in (3, 4) or len(ps) == 0:
            raise InputError(
                f"patches must be a non-empty (N, S, S[, C]) array, got {ps.patches.shape}"
            )
        self.info.metadata.update(
            {
                "params": params,
                "scene_names": [str(n) for n in ps.scene_names],
                "patch_rank": int(ps.patches.ndim),
                "info": json.dumps(ps.info, sort_keys=True),
                "version": PATCHSET_VERSION,
            }
        )
        return {
            SPLIT_NAMES[s]: self._generate_examples(ps, s)
            for s in (TRAIN, TEST)
            if np.any(ps.split == s)
        }

    def _generate_examples(self, ps: PatchSet, split: int):
        names = [str(n) for n in ps.scene_names]
        for i in np.flatnonzero(ps.split == split):
            patch = ps.patches[i]
            yield (
                int(i),
                {
                    "patch": patch if patch.ndim == 3 else patch[:, :, None],
                    "label": int(ps.labels[i]),
                    "index": int(i),
                    "scene": int(ps.scene[i]),
                    "scene_name": names[int(ps.scene[i])],
                    "image": int(ps.image[i]),
                    "x": ps.x[i],
                    "y": ps.y[i],
                    "scale": ps.scale[i],
                    "angle": ps.angle[i],
                },
            )


def write_tfds(
    ps: PatchSet,
    data_dir: str | os.PathLike,
    *,
    config: str = "default",
    params: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes an in-memory PatchSet as the TFDS data set ``ckn_patches/<config>`` in ``data_dir``.

    TFDS writes into a temporary folder and renames it when done, so a failure
    leaves no partial data set. TFDS's own messages go to stderr.

    Args:
      params: builder kwargs recorded in the metadata (``path``, ``size``,
        ``views``, ``seed``, ``quick``), so that a later
        ``tfds.data_source(..., builder_kwargs=params)`` finds this data set.
      overwrite: replace an existing data set of this config (else InputError).
      progress: TFDS progress bars; False turns them off for the rest of the
        process (``tfds.display_progress_bar`` is a global switch).

    Returns:
      The version folder (``<data_dir>/ckn_patches/<config>/<version>``).
    """
    if config not in CONFIG_NAMES:
        raise InputError(f"config must be one of {', '.join(CONFIG_NAMES)}, got {config!r}")
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise InputError(f"TFDS data_dir is not a folder: {data_dir}")
    params = {k: v for k, v in (params or {}).items() if k in _PARAM_NAMES and v is not None}
    builder = CknPatches(config=config, data_dir=str(data_dir), patchset=ps, **params)
    mode = (
        tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    if not progress:
        tfds.display_progress_bar(False)
    with contextlib.redirect_stdout(sys.stderr):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(download_mode=mode)
        )
    return Path(builder.data_dir)


def _metadata(info: tfds.core.DatasetInfo) -> dict:
    # items() (not get) makes TFDS's LazyMetadataDict read metadata.json.
    return dict(info.metadata.items()) if info.metadata is not None else {}


def _version_dir(path: Path, config: str | None) -> Path:
    if (path / "dataset_info.json").is_file():
        return path
    base = path / BUILDER_NAME / (config or "default")
    if not base.is_dir() and (path / (config or "default")).is_dir():
        base = path / (config or "default")  # given <data_dir>/ckn_patches
    versions = (
        sorted(
            (p for p in base.glob("*") if (p / "dataset_info.json").is_file()),
            key=lambda p: tuple(int(x) if x.isdigit() else -1 for x in p.name.split(".")),
        )
        if base.is_dir()
        else []
    )
    if not versions:
        raise InputError(f"no prepared {BUILDER_NAME}/{config or 'default'} data set under {path}")
    return versions[-1]


def tfds_to_patchset(path: str | os.PathLike, *, config: str | None = None) -> PatchSet:
    """Reads a prepared ``ckn_patches`` data set back into a :class:`~retrieval.PatchSet`.

    Args:
      path: the version folder (``.../ckn_patches/<config>/1.0.0``) or the
        TFDS ``data_dir`` (then ``config`` picks the config, default ``default``).

    Only NumPy and array_record are used (``tfds.builder_from_directory``):
    neither TensorFlow nor this module's builder class is needed to read.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"TFDS folder not found: {path}")
    builder = tfds.builder_from_directory(os.fspath(_version_dir(path, config)))
    meta = _metadata(builder.info)
    need = {"scene_names", "patch_rank", "info"}
    if not need <= set(meta.keys()):
        raise InputError(
            f"{builder.data_dir}: not a {BUILDER_NAME} data set (metadata lacks {sorted(need)})"
        )
    sources = builder.as_data_source()
    keys = ("patch", "label", "index", "scene", "image", "x", "y", "scale", "angle")
    rows: dict[str, list] = {k: [] for k in keys}
    split = []
    for name, src in sources.items():
        s = SPLIT_NAMES.index(str(name))
        for start in range(0, len(src), _CHUNK):
            for ex in src.__getitems__(range(start, min(len(src), start + _CHUNK))):
                for k in rows:
                    rows[k].append(ex[k])
                split.append(s)
    if not split:
        raise InputError(f"{builder.data_dir}: the data set is empty")
    index = np.asarray(rows["index"], np.int64)
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(index.size)):
        raise InputError(f"{builder.data_dir}: 'index' is not a permutation of 0..N-1")
    patches = np.stack(rows["patch"])[order]
    if int(meta["patch_rank"]) == 3:
        patches = patches[..., 0]
    col = lambda k, dt: np.asarray(rows[k], dt)[order]  # noqa: E731
    return PatchSet(
        patches=patches,
        labels=col("label", np.int64),
        split=np.asarray(split, np.uint8)[order],
        scene=col("scene", np.int32),
        image=col("image", np.int32),
        x=col("x", np.float32),
        y=col("y", np.float32),
        scale=col("scale", np.float32),
        angle=col("angle", np.float32),
        scene_names=np.asarray(list(meta["scene_names"]), dtype=str),
        info=json.loads(meta["info"]),
    )


def export_npz(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: str | None = None,
    compress: bool = False,
) -> Path:
    """Exports a prepared ``ckn_patches`` data set to one ``.npz`` (as :func:`save_patchset`)."""
    return save_patchset(tfds_to_patchset(path, config=config), out, compress=compress)
