"""Pre-cut patches with group labels (e.g. the original RomePatches): a ``.npz`` or folders."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from retrieval._src.data.io import IMAGE_EXTENSIONS, load_patchset
from retrieval._src.data.patchset import SPLIT_NAMES, TRAIN, VERSION, PatchSet, SkippedItemWarning


def _read_patch_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise InputError(f"cannot read patch image (unknown format or corrupt): {path}")
    if img.dtype != np.uint8:
        raise InputError(f"patch image must be 8-bit, got {img.dtype}: {path}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def load_manual(path: str | os.PathLike) -> PatchSet:
    """Pre-cut patches with group labels (e.g. the original RomePatches), as a PatchSet.

    ``path`` is either

    * a ``.npz`` patch file (``patches`` + ``labels``; the other keys of
      :mod:`retrieval._src.data.patchset` are optional), or a folder holding
      exactly one; or
    * a folder of patch images, one sub-folder per group
      (``<group>/<patch>.png``), optionally under ``train/`` and ``test/``
      (``train/<group>/...``). Groups are numbered in sorted order (train
      first); the scene of a patch is its split folder (or ``manual``). All
      patches must have the same size; they are gray if every file is gray.
      Unreadable images are skipped with a SkippedItemWarning.

    Raises:
      InputError: a missing path, no patches, mixed sizes, no labels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"manual patches not found: {path}")
    if path.is_file():
        return load_patchset(path)
    npz = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".npz")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if npz:
        if len(npz) > 1:
            raise InputError(
                f"{path}: more than one .npz file ({', '.join(p.name for p in npz[:3])}); pass one"
            )
        return load_patchset(npz[0])
    names = {p.name for p in subdirs}
    if names and names <= set(SPLIT_NAMES):
        roots = [(SPLIT_NAMES.index(p.name), p.name, p) for p in subdirs]
        roots.sort()
    else:
        roots = [(TRAIN, "manual", path)]
    patches, labels, split, scene, scene_names, label = [], [], [], [], [], 0
    for sp, scene_name, root in roots:
        groups = sorted(p for p in root.iterdir() if p.is_dir())
        scene_names.append(scene_name)
        for g in groups:
            files = sorted(
                f for f in g.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            got = 0
            for f in files:
                try:
                    patches.append(_read_patch_image(f))
                except InputError as e:
                    warnings.warn(f"{e}; skipped", SkippedItemWarning, stacklevel=2)
                    continue
                labels.append(label)
                split.append(sp)
                scene.append(len(scene_names) - 1)
                got += 1
            if got:
                label += 1
    if not patches:
        raise InputError(
            f"no patch images in {path} "
            "(expected <group>/<patch>.png or [train|test]/<group>/<patch>.png)"
        )
    shapes = {p.shape[:2] for p in patches}
    if len(shapes) > 1:
        raise InputError(f"{path}: patches have different sizes: {sorted(shapes)[:3]}")
    if any(p.ndim == 3 for p in patches):
        patches = [p if p.ndim == 3 else np.repeat(p[:, :, None], 3, axis=2) for p in patches]
    return PatchSet.without_frames(
        np.stack(patches),
        labels,
        split,
        scene,
        np.full(len(patches), -1),
        scene_names,
        {"version": VERSION, "source": "manual", "path": str(path)},
    )
