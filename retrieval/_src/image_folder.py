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

import cv2
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


#: Smallest image side kept by :func:`check_images` (smaller images hold no useful region).
MIN_SIDE = 32


def image_problem(path: Path, min_side: int = MIN_SIDE) -> str | None:
    """Why ``path`` cannot be used (unreadable, truncated, too small), or None.

    Decodes a reduced copy (libjpeg scales by 1/8 while decoding, so an 8000 px
    photo is cheap) and, for JPEG files, checks the end-of-image marker: OpenCV
    returns a truncated JPEG half grey with only a libjpeg message on stderr.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read ({e.strerror or type(e).__name__})"
    buf = np.frombuffer(data, np.uint8)
    head = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if head is None or head.size == 0:
        return "not a readable image"
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated JPEG (no end-of-image marker)"
    h, w = head.shape[:2]
    if min(h, w) < min_side:
        return f"too small ({w}x{h} px, under {min_side} px)"
    return None


def check_images(
    coll: ImageCollection, *, min_side: int = MIN_SIDE, strict: bool = False
) -> tuple[ImageCollection, list[str]]:
    """Drops unreadable, truncated or too small images from a collection.

    Returns the collection without them (labels and junk lists renumbered) and
    one ``"NAME: reason"`` line per skipped image, in path order.

    Raises:
      InputError: ``strict`` and a bad image (the first, named); or a group or
        the whole query set left empty by the skipped images.
    """
    keep, skipped = [], []
    for i, (path, name) in enumerate(zip(coll.paths, coll.names)):
        why = image_problem(path, min_side)
        if why is None:
            keep.append(i)
            continue
        if strict:
            raise InputError(f"{name}: {why}")
        skipped.append(f"{name}: {why}")
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
