"""What an evaluation describes and how it is scored: the groups or the revisited protocol.

:func:`plan_collection` lists (and checks) the database and the queries of a folder before any
network runs: a folder of groups (:func:`retrieval.image.load_image_folder`: every grouped
image a query, itself excluded) or, with a revisitop ground truth, the flat folder of
``<name>.jpg`` images (queries: the ``qimlist`` images cropped to their boxes).
:func:`whitening_images` does the same for the images a whitening is fitted on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.data.io import read_image_any
from retrieval._src.image_folder import (
    check_images,
    group_pairs,
    list_images,
    load_image_folder,
    usable_images,
)
from retrieval._src.revisited import load_gnd


class Plan(NamedTuple):
    """The images of an evaluation, listed and checked.

    Attributes:
      db: database image paths; names: their names.
      labels: (N,) int64 group ids, -1 for distractors (None with gnd).
      junk: {query: set of junk ids} (None with gnd).
      queries: the query image paths of the revisited protocol ([] for groups).
      query_names: their names.
      gnd: the ground truth (None for groups).
      skipped: "NAME: reason" of images left out (unreadable, truncated, too small).
    """

    db: list
    names: list[str]
    labels: np.ndarray | None
    junk: dict | None
    queries: list
    query_names: list[str]
    gnd: dict | None
    skipped: tuple = ()

    def check_post(self, post) -> None:
        """Checks that DBA and QE fit the database (groups protocol: the query is in it)."""
        n_db = len(self.db)
        if post.dba and post.dba > n_db:
            raise InputError(f"DBA k = {post.dba} exceeds the {n_db} database images")
        if post.qe and post.qe > n_db - (1 if self.gnd is None else 0):
            raise InputError(f"QE k = {post.qe} exceeds the {n_db} database images")

    def query_images(self, min_size: int) -> list:
        """The revisited queries cropped to their boxes; [] in the groups protocol."""
        if self.gnd is None:
            return []
        return [
            _crop(p, g["bbx"], n, min_size)
            for p, g, n in zip(self.queries, self.gnd["gnd"], self.query_names)
        ]

    def evaluation(self, result, revisited, queries, database, ranking, info) -> tuple:
        """The fields of an evaluation, with the collection's counts added to ``info``."""
        lab = self.labels
        info.update(
            num_groups=None if lab is None else len(np.unique(lab[lab >= 0])),
            num_distractors=None if lab is None else int((lab < 0).sum()),
        )
        return (
            result, revisited, queries, database, np.asarray(ranking, np.int64), self.names,
            self.query_names if self.gnd is not None else self.names, list(self.db), lab,
            self.junk, info,
        )  # fmt: skip


def _crop(path: Path, bbx: np.ndarray, name: str, min_size: int) -> np.ndarray:
    """The query crop (x1, y1, x2, y2), rounded as PIL's crop, clipped to the image."""
    img = read_image_any(path)
    x1, y1, x2, y2 = (int(round(float(v))) for v in bbx)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, img.shape[1]), min(y2, img.shape[0])
    if min(x2 - x1, y2 - y1) < min_size:
        raise InputError(
            f"query {name}: its box {bbx.tolist()} in the {img.shape[1]}x{img.shape[0]} px "
            f"image is smaller than the {min_size} px the describer needs"
        )
    return np.ascontiguousarray(img[y1:y2, x1:x2])


def plan_collection(images, gnd, strict: bool = False) -> Plan:
    """Lists (and checks) what will be described, before any network runs."""
    root = Path(images)
    if gnd is None:
        coll, skipped = check_images(load_image_folder(root), strict=strict)
        return Plan(coll.paths, coll.names, coll.labels, coll.junk, [], [], None, tuple(skipped))
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    g = load_gnd(gnd)
    db = [root / f"{n}.jpg" for n in g["imlist"]]
    qs = [root / f"{n}.jpg" for n in g["qimlist"]]
    missing = [p for p in db + qs if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} images of the ground truth {gnd} are missing from {root}, "
            f"e.g. {missing[0].name}"
        )
    return Plan(db, list(g["imlist"]), None, None, qs, list(g["qimlist"]), g)


def whitening_images(whiten_images, whiten: str, plan: Plan, *, strict: bool = False,
                     whiten_dim: int | None = None):  # fmt: skip
    """Training images of a whitening (and their groups for "learned"), checked: bad images
    skipped (:func:`retrieval.image.usable_images`), none of them an evaluated image.

    Returns:
      (paths, labels or None, one "PATH: reason" line per skipped image); (None, None, [])
      without whitening.
    """
    if whiten == "none":
        if whiten_images is not None:
            raise InputError("whiten_images is given but whiten is 'none'")
        return None, None, []
    if whiten_images is None:
        raise InputError(
            f"whiten {whiten} needs whiten_images: a folder of other images to fit it on "
            "(never the evaluated ones)"
        )
    if whiten == "pca":
        paths, labels = list_images(whiten_images), None
    else:
        try:
            coll = load_image_folder(whiten_images)
        except InputError as e:
            raise InputError(
                f"learned whitening needs groups (one subfolder per group) in {whiten_images}: {e}"
            ) from None
        paths, labels = coll.paths, coll.labels
    evaluated = {Path(p).resolve() for p in plan.db} | {
        Path(q).resolve() for q in plan.queries if isinstance(q, (str, os.PathLike))
    }
    shared = sorted(str(p) for p in paths if Path(p).resolve() in evaluated)
    if shared:
        raise InputError(
            f"the whitening images {whiten_images} share {len(shared)} image(s) with the "
            f"evaluated ones, e.g. {shared[0]}: fit the whitening on other images"
        )
    keep, skipped = usable_images(paths, strict=strict)
    paths = [paths[i] for i in keep]
    if whiten_dim is not None and whiten_dim > len(paths) - 1:
        raise InputError(
            f"whiten_dim {whiten_dim}: a whitening fitted on {len(paths)} images keeps at "
            f"most {len(paths) - 1} dimensions: give a whiten_dim <= {len(paths) - 1} or more "
            "whitening images"
        )
    labels = None if labels is None else labels[keep]
    if labels is not None and group_pairs(labels).shape[0] == 0:
        raise InputError(
            f"learned whitening needs groups in {whiten_images}: no subfolder holds two images"
        )
    if len(paths) < 2:
        raise InputError(f"whitening needs at least 2 usable images in {whiten_images}")
    return paths, labels, skipped
