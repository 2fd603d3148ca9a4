"""Image collections on disk: a folder of group folders, distractors, junk lists.

Folder layout (:func:`load_image_folder`): ``ROOT/<group>/<image>``, one
subfolder per scene or object; images directly in ROOT are distractors (in the
database, never queries, relevant to nothing). An optional ``junk.txt`` in a
group folder lists images (paths relative to ROOT, or bare names in that
group) removed from the rankings of that group's queries; ``#`` starts a
comment. :func:`list_images` lists every image under a folder (e.g. the
training images of a codebook).

References:
  Philbin et al., Oxford buildings (junk images).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.data import IMAGE_EXTENSIONS


class ImageCollection(NamedTuple):
    """Images of a folder of folders.

    Attributes:
      root: the folder.
      paths: (N,) image files, group by group (sorted), then root-level distractors.
      labels: (N,) int64 group index, -1 for distractors.
      groups: group (subfolder) names, by label.
      junk: {query index: set of junk image indices} from the junk.txt files.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray
    groups: list[str]
    junk: dict[int, set[int]]

    @property
    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_image_folder(root: str | os.PathLike) -> ImageCollection:
    """Lists ``ROOT/<group>/<image>`` groups, root-level distractors and junk lists.

    Raises:
      InputError: a missing folder, no group at all, an empty group folder, a
        junk list naming an unknown image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    groups = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for g, folder in enumerate(groups):
        files = _image_files(folder)
        if not files:
            raise InputError(
                f"group folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += files
        labels += [g] * len(files)
        names.append(folder.name)
    distractors = _image_files(root)
    paths += distractors
    labels += [-1] * len(distractors)
    if not groups:
        raise InputError(f"{root} has no group subfolder (expected ROOT/<group>/<image>)")
    index = {p.relative_to(root).as_posix(): i for i, p in enumerate(paths)}
    lab = np.asarray(labels, np.int64)
    junk: dict[int, set[int]] = {}
    for g, folder in enumerate(groups):
        jf = folder / "junk.txt"
        if not jf.is_file():
            continue
        ids = set()
        for line in jf.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key = line if line in index else f"{folder.name}/{line}"
            if key not in index:
                raise InputError(f"{jf}: unknown image {line!r}")
            ids.add(index[key])
        for q in np.flatnonzero(lab == g):
            junk[int(q)] = set(ids) - {int(q)}
    return ImageCollection(root, paths, lab, names, junk)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image under a folder, recursively (sorted); InputError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise InputError(f"no image under {folder}")
    return files
