"""Homography sequences: Oxford (``img1..N`` + ``H1toNp``), HPatches (``1..6`` + ``H_1_N``)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ckn import InputError
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.geometry import Homography, read_homography
from retrieval._src.data.grouping import assemble, group_scene, prepare_image, run_scenes
from retrieval._src.data.io import IMAGE_EXTENSIONS, read_image
from retrieval._src.data.patchset import PatchSet, SkippedItemWarning

_OXFORD_IMG = re.compile(r"^img(\d+)$")
_HPATCHES_IMG = re.compile(r"^(\d+)$")


def sequence_files(seq: Path) -> tuple[dict[int, Path], dict[int, Path]] | None:
    """(images by number, homography files by target number) or None if not a sequence."""
    images: dict[int, Path] = {}
    for p in seq.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            m = _OXFORD_IMG.match(p.stem) or _HPATCHES_IMG.match(p.stem)
            if m:
                images.setdefault(int(m.group(1)), p)
    homs: dict[int, Path] = {}
    for p in seq.iterdir():
        m = re.match(r"^H1to(\d+)p$", p.name) or re.match(r"^H_1_(\d+)$", p.name)
        if m and p.is_file():
            homs[int(m.group(1))] = p
    if not homs and not images:
        return None
    return images, homs


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """``root`` itself if it is a sequence, else its sub-folders that are sequences (sorted)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"sequences folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"sequences path is not a folder: {root}")
    own = sequence_files(root)
    if own is not None and own[1]:
        return [root]
    seqs = [
        p
        for p in sorted(root.iterdir())
        if p.is_dir() and (f := sequence_files(p)) is not None and f[1]
    ]
    if not seqs:
        raise InputError(
            f"no image sequences in {root} "
            "(expected <seq>/img1.ppm + H1to2p ... or <seq>/1.ppm + H_1_2 ...)"
        )
    return seqs


def load_sequence(
    seq: str | os.PathLike,
) -> tuple[list[np.ndarray], list[Homography | None], list[int]]:
    """Images (RGB), homographies from image 1 and 0-based image ids of one sequence."""
    seq = Path(seq)
    found = sequence_files(seq)
    if found is None or not found[1]:
        raise InputError(f"{seq}: no homography files (H1toNp or H_1_N)")
    images, homs = found
    if 1 not in images:
        raise InputError(f"{seq}: reference image missing (img1.* or 1.*)")
    for n in sorted(images):
        if n != 1 and n not in homs:
            warnings.warn(
                f"{images[n]}: no homography from image 1, image skipped",
                SkippedItemWarning,
                stacklevel=2,
            )
    nums = [1] + [n for n in sorted(homs) if n != 1]
    imgs, geoms = [], []
    for n in nums:
        if n not in images:
            raise InputError(f"{seq}: image {n} missing (homography {homs[n].name} has no image)")
        imgs.append(read_image(images[n]))
        geoms.append(None if n == 1 else Homography(read_homography(homs[n])))
    return imgs, geoms, [n - 1 for n in nums]


def build_sequences(
    root: str | os.PathLike,
    *,
    config: PatchSetConfig | None = None,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> PatchSet:
    """Groups from homography sequences (Oxford ``img1..N`` + ``H1toNp``, HPatches ``H_1_N``).

    Args:
      root: one sequence folder or a folder of sequence folders.
      config: parameters (default :class:`PatchSetConfig`).
      test_scenes: sequence names for the test split; default: balanced greedy.

    Raises:
      InputError: missing folder, no sequence, missing/unreadable image, a
        homography that does not parse or is singular, no group at all.
        A sequence without any group is skipped with a SkippedItemWarning.
    """
    cfg = config or PatchSetConfig()
    seqs = find_sequences(root)
    loaded = [(s.name, *load_sequence(s)) for s in seqs]  # errors early, before any work

    def job(name, imgs, geoms, ids):
        return lambda: group_scene(
            name, [prepare_image(i, cfg.color) for i in imgs], geoms, cfg, image_ids=ids
        )

    results = run_scenes(
        [job(*item) for item in loaded], progress=progress, desc="sequences", workers=workers
    )
    for r in results:
        if r.group.size == 0:
            warnings.warn(
                f"sequence {r.name}: no matching regions, skipped", SkippedItemWarning, stacklevel=2
            )
    return assemble(
        results,
        cfg,
        test_scenes=test_scenes,
        info={"source": "sequences", "root": str(root)},
        what=str(root),
    )
