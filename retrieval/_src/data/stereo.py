"""Rectified stereo pairs with a left disparity map (``x_right = x_left - d``; Middlebury)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

import ckn
from ckn import InputError
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.geometry import Disparity
from retrieval._src.data.grouping import assemble, group_scene, prepare_image, run_scenes
from retrieval._src.data.io import IMAGE_EXTENSIONS, read_image
from retrieval._src.data.patchset import PatchSet

_STEREO_LEFT = ("im0", "left")
_STEREO_RIGHT = ("im1", "right")
_STEREO_DISPARITY = ("disp0", "disp0gt", "disparity", "disp")
_DISPARITY_EXTENSIONS = (".pfm", ".npy")


def read_disparity(path: str | os.PathLike) -> np.ndarray:
    """Reads a disparity map, (H, W) float32: ``.pfm`` (Middlebury; inf = unknown) or ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"disparity file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except ckn.files.CORRUPT_FILE_ERRORS as e:
            raise InputError(f"{path}: cannot read disparity ({type(e).__name__}: {e})") from None
    else:
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise InputError(f"{path}: cannot read disparity (unknown format or corrupt)")
    d = np.asarray(d)
    if d.ndim == 3 and d.shape[2] in (1, 3):
        d = d[..., 0]
    if d.ndim != 2 or not np.issubdtype(d.dtype, np.number):
        raise InputError(
            f"{path}: disparity must be an (H, W) number array, got {d.dtype} {d.shape}"
        )
    return d.astype(np.float32)


def _stereo_file(folder: Path, stems: Sequence[str], exts: Sequence[str]) -> Path | None:
    for stem in stems:
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.stem.lower() == stem and p.suffix.lower() in exts:
                return p
    return None


def _stereo_pair_files(folder: Path) -> tuple[Path, Path, Path] | None:
    left = _stereo_file(folder, _STEREO_LEFT, IMAGE_EXTENSIONS)
    right = _stereo_file(folder, _STEREO_RIGHT, IMAGE_EXTENSIONS)
    disp = _stereo_file(folder, _STEREO_DISPARITY, _DISPARITY_EXTENSIONS)
    if left is None and right is None and disp is None:
        return None
    missing = [
        n
        for n, f in (
            ("left image (im0.* / left.*)", left),
            ("right image (im1.* / right.*)", right),
            ("disparity (disp0.pfm / disparity.npy)", disp),
        )
        if f is None
    ]
    if missing:
        raise InputError(f"stereo pair {folder}: missing {', '.join(missing)}")
    return left, right, disp


def read_stereo_pairs(
    root: str | os.PathLike,
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Stereo pairs from a folder in the Middlebury layout.

    ``root`` is one pair folder or a folder of pair folders; a pair folder
    holds the rectified left and right images (``im0.png`` / ``im1.png``, or
    ``left.*`` / ``right.*``) and the left disparity map (``disp0.pfm`` or
    ``disparity.npy``, ``x_right = x_left - d``; inf, NaN or <= 0 = unknown).

    Returns:
      ``[(name, left (H, W, 3) uint8, right, disparity (H, W) float32)]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            f"stereo folder not found: {root}" if not root.exists() else f"not a folder: {root}"
        )
    own = _stereo_pair_files(root)
    folders = (
        [(root.name, own)]
        if own is not None
        else [
            (p.name, f)
            for p in sorted(root.iterdir())
            if p.is_dir() and (f := _stereo_pair_files(p)) is not None
        ]
    )
    if not folders:
        raise InputError(f"no stereo pairs in {root} (expected <pair>/im0.png, im1.png, disp0.pfm)")
    return [
        (name, read_image(left), read_image(right), read_disparity(disp))
        for name, (left, right, disp) in folders
    ]


def build_stereo(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]]
    | str
    | os.PathLike
    | None = None,
    *,
    config: PatchSetConfig | None = None,
    split_halves: bool | None = None,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
) -> PatchSet:
    """Groups (of 2 patches) from rectified stereo pairs with a left disparity map.

    Args:
      pairs: ``(name, left, right, disparity)`` with ``x_right = x_left -
        disparity[y, x]``, or a folder read by :func:`read_stereo_pairs`;
        default: scikit-image's ``stereo_motorcycle`` (Middlebury 2014).
      split_halves: make two scenes of each pair, ``<name>-left-half`` and
        ``<name>-right-half``, whose reference patches lie entirely in the left
        or right half of the left image (so no patch of one overlaps the other
        by more than ``max_outside``). Default: True when there is a single
        pair, so that a train/test split by scene exists.
    """
    cfg = config or PatchSetConfig()
    if pairs is None:
        from skimage import data as skdata

        left, right, disp = skdata.stereo_motorcycle()
        pairs = [("motorcycle", left, right, disp)]
    elif isinstance(pairs, (str, os.PathLike)):
        pairs = read_stereo_pairs(pairs)
    if split_halves is None:
        split_halves = len(pairs) == 1
    jobs = []
    for name, left, right, disp in pairs:
        left, right = np.asarray(left), np.asarray(right)
        if left.shape[:2] != np.shape(disp) or right.shape[:2] != left.shape[:2]:
            raise InputError(
                f"stereo pair {name}: left, right and disparity must have the same size"
            )
        geom = Disparity(disp)
        imgs = [prepare_image(left, cfg.color), prepare_image(right, cfg.color)]
        if split_halves:
            h, w = left.shape[:2]
            for half in ("left", "right"):
                m = np.zeros((h, w), np.uint8)
                if half == "left":
                    m[:, : w // 2] = 1
                else:
                    m[:, w // 2 :] = 1
                jobs.append(
                    lambda n=f"{name}-{half}-half", i=imgs, g=geom, m=m: group_scene(
                        n, i, [None, g], cfg, valid=[m, None]
                    )
                )
        else:
            jobs.append(lambda n=name, i=imgs, g=geom: group_scene(n, i, [None, g], cfg))
    results = run_scenes(jobs, progress=progress, desc="stereo", workers=None)
    return assemble(
        results, cfg, test_scenes=test_scenes, info={"source": "stereo"}, what="the stereo pairs"
    )
