"""The embedded default patch set: synthetic views of real scikit-image photos, cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import cache_dir
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.io import load_patchset, save_patchset
from retrieval._src.data.patchset import VERSION, PatchSet, SkippedItemWarning
from retrieval._src.data.photos import ViewParams, build_from_images

#: Real photographs shipped with scikit-image (they load offline), and their fixed
#: split by photo. Left out: cat (same photo as chelsea), horse (binary
#: silhouette), colorwheel and logo (synthetic graphics), microaneurysms
#: (102 x 102), clock and cell (smooth: 2 and 14 SIFT regions), hubble_deep_field
#: (a star field: isolated near-identical blobs would make near-duplicate
#: groups). stereo_motorcycle is its left image. The split balances patch counts
#: (about 10,200 / 10,300) and kinds (faces, textures, text, microscopy, objects
#: on both sides).
DEFAULT_TRAIN = ("astronaut", "chelsea", "coffee", "gravel", "text", "retina", "stereo_motorcycle")
DEFAULT_TEST = (
    "brick",
    "camera",
    "coins",
    "grass",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
)
#: The quick variant: 2 train and 2 test photos.
DEFAULT_QUICK_TRAIN = ("astronaut", "chelsea")
DEFAULT_QUICK_TEST = ("camera", "coins")


def default_photos(
    names: Sequence[str] = DEFAULT_TRAIN + DEFAULT_TEST,
) -> list[tuple[str, np.ndarray]]:
    """The named scikit-image photos as (name, uint8 image); stereo_motorcycle = its left image."""
    from skimage import data as skdata

    out = []
    for n in names:
        img = skdata.stereo_motorcycle()[0] if n == "stereo_motorcycle" else getattr(skdata, n)()
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (img.astype(np.float64) * (255.0 / max(float(img.max()), 1e-12))).astype(np.uint8)
        out.append((n, img))
    return out


def default_config(quick: bool = False, **overrides) -> PatchSetConfig:
    """The :class:`PatchSetConfig` of :func:`build_default` (quick: 40 regions per photo)."""
    if quick:
        overrides.setdefault("max_regions", 40)
    return PatchSetConfig(**overrides)


def _default_plan(quick, views, seed, config, view_params):
    cfg = config or default_config(quick)
    vp = view_params or ViewParams()
    if quick:
        names, test, max_side = DEFAULT_QUICK_TRAIN + DEFAULT_QUICK_TEST, DEFAULT_QUICK_TEST, 384
    else:
        names, test, max_side = DEFAULT_TRAIN + DEFAULT_TEST, DEFAULT_TEST, 640
    key_src = json.dumps(
        {
            "v": VERSION,
            "names": names,
            "test": test,
            "max_side": max_side,
            "views": views,
            "seed": seed,
            "cfg": dataclasses.asdict(cfg),
            "vp": dataclasses.asdict(vp),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / "patchsets" / f"default{'-quick' if quick else ''}-{key}.npz"
    return names, test, max_side, cfg, vp, path


def default_cache_path(
    *,
    quick: bool = False,
    views: int = 10,
    seed: int = 0,
    config: PatchSetConfig | None = None,
    view_params: ViewParams | None = None,
) -> Path:
    """Where :func:`build_default` caches the set built with these arguments."""
    return _default_plan(quick, views, seed, config, view_params)[-1]


def build_default(
    *,
    quick: bool = False,
    views: int = 10,
    seed: int = 0,
    config: PatchSetConfig | None = None,
    view_params: ViewParams | None = None,
    cache: bool = True,
    progress: bool = False,
    workers: int | None = None,
) -> PatchSet:
    """The embedded default: synthetic views of 15 real scikit-image photos.

    Photos and their split: ``DEFAULT_TRAIN`` / ``DEFAULT_TEST`` (7 / 8 photos),
    each resized to at most 640 pixels, ``views`` views per photo (view 0 the
    photo itself), up to 450 reference regions per photo: about 20,500 patches
    in groups of up to 10 (mean ~6.3), train and test about equal.
    ``quick=True``: 4 photos (``DEFAULT_QUICK_TRAIN`` / ``_TEST``), at most 40
    regions each (:func:`default_config`), long side 384 (about 1,000 patches,
    for tests and quick runs).

    The result is cached in :func:`cache_dir` under a key of all parameters and
    :data:`VERSION` (written atomically); ``cache=False`` rebuilds without
    reading or writing the cache.
    """
    names, test, max_side, cfg, vp, path = _default_plan(quick, views, seed, config, view_params)
    if cache and path.is_file():
        try:
            return load_patchset(path)
        except InputError:
            pass  # a corrupt cache entry is rebuilt
    t0 = time.perf_counter()
    ps = build_from_images(
        default_photos(names),
        views=views,
        seed=seed,
        config=cfg,
        view_params=vp,
        max_side=max_side,
        test_scenes=test,
        progress=progress,
        workers=workers,
        info={"default": True, "quick": quick},
    )
    ps.info["build_seconds"] = round(time.perf_counter() - t0, 2)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_patchset(ps, path)
        except OSError as e:
            warnings.warn(f"cannot write the cache {path}: {e}", SkippedItemWarning, stacklevel=2)
    return ps
