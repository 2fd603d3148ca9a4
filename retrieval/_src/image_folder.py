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
from retrieval._src.data.io import MIN_SIDE, image_problem


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


def usable_images(
    paths, *, names=None, min_side: int = MIN_SIDE, strict: bool = False
) -> tuple[list[int], list[str]]:
    """The one bad-image policy of every command: which images can be used.

    Each image is checked by :func:`image_problem` (unreadable, truncated JPEG, too small).

    Args:
      paths: image files.
      names: how the lines name them (default: the paths as given).
      min_side: smallest image side kept.
      strict: raise on the first bad image instead of skipping it.

    Returns:
      (indices of the usable images, one ``"NAME: reason"`` line per skipped image), in
      path order.

    Raises:
      InputError: ``strict`` and a bad image (the first, named).
    """
    names = [str(p) for p in paths] if names is None else list(names)
    keep, skipped = [], []
    for i, (path, name) in enumerate(zip(paths, names)):
        why = image_problem(Path(path), min_side)
        if why is None:
            keep.append(i)
        elif strict:
            raise InputError(f"{name}: {why} (strict: no image is skipped)")
        else:
            skipped.append(f"{name}: {why}")
    return keep, skipped


def check_images(
    coll: ImageCollection, *, min_side: int = MIN_SIDE, strict: bool = False
) -> tuple[ImageCollection, list[str]]:
    """Drops unreadable, truncated or too small images from a collection (:func:`usable_images`).

    Returns the collection without them (labels and junk lists renumbered) and
    one ``"PATH: reason"`` line per skipped image, in path order.

    Raises:
      InputError: ``strict`` and a bad image (the first, named); or a group or
        the whole query set left empty by the skipped images.
    """
    keep, skipped = usable_images(coll.paths, min_side=min_side, strict=strict)
    if not skipped:
        return coll, []
    labels = coll.labels[keep]
    for g, group in enumerate(coll.groups):
        if not (labels == g).any():
            raise InputError(f"group {group}: every image was skipped ({'; '.join(skipped)})")
    new_index = {old: new for new, old in enumerate(keep)}
    junk = {
        new_index[q]: {new_index[j] for j in js if j in new_index}
        for q, js in coll.junk.items()
        if q in new_index
    }
    paths = [coll.paths[i] for i in keep]
    return ImageCollection(coll.root, paths, labels, coll.groups, junk), skipped


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


def group_pairs(labels) -> np.ndarray:
    """(P, 2) int64: every ordered pair (i, j), i != j, of images with the same label >= 0."""
    lab = np.asarray(labels, np.int64)
    pairs = []
    for g in np.unique(lab[lab >= 0]):
        idx = np.flatnonzero(lab == g)
        if idx.size >= 2:
            a, b = np.meshgrid(idx, idx, indexing="ij")
            off = a != b
            pairs.append(np.stack([a[off], b[off]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
