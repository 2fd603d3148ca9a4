"""Brown / PhotoTour patches (UBC liberty, notredame, yosemite): reader, patch file, FPR95.

The original files of one subset, in one folder:

* ``patch0000.bmp``, ``patch0001.bmp``, ...: 1024 x 1024 gray bitmaps, each
  holding 16 x 16 patches of 64 x 64 in row-major order: patch k is in file
  ``k // 256``, row ``(k % 256) // 16``, column ``k % 16`` (the last file may
  be partly empty);
* ``info.txt``: one line per patch, its 3D point id first (the number of
  lines is the number of patches);
* ``m50_N_N_0.txt``: pairs, one per line, ``patch1 point1 unused patch2 point2
  unused unused``; a pair matches when ``point1 == point2``. The standard test
  file is ``m50_100000_100000_0.txt`` (100,000 pairs, half matching).

:class:`PhotoTour` reads bitmaps lazily, one at a time (a liberty set is
450,092 patches in 1,759 bitmaps: 1.8 GB as uint8 at 64 x 64). The metric is
FPR95 (:func:`fpr95`): the false-positive rate, in percent, at the smallest
descriptor distance that accepts 95% of the matching pairs (pairs at that same
distance accepted together), as in Brown, Hua and Winder.

References:
  M. Brown, G. Hua, S. Winder, "Discriminative learning of local image
  descriptors", PAMI 2011; S. Winder, M. Brown, "Learning local image
  descriptors", CVPR 2007.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from retrieval._src.data.patchset import SPLIT_NAMES, VERSION, PatchSet
from retrieval._src.metrics.pairs import PairSet, fpr_at_recall
from retrieval._src.patch_describer import resize_patches
from retrieval._src.regions import PATCH_SIZE

#: Side of a bitmap, of a patch, and patches per bitmap.
BITMAP_SIDE = 1024
PHOTOTOUR_SIZE = 64
PER_ROW = BITMAP_SIDE // PHOTOTOUR_SIZE
PER_BITMAP = PER_ROW * PER_ROW
#: The standard test pairs (100,000 pairs, half matching).
STANDARD_PAIRS = "m50_100000_100000_0.txt"


def _bmp_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a BMP header, or None if the file is not a BMP."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as e:
        raise InputError(f"cannot read {path} ({type(e).__name__})") from None
    if len(head) < 26 or head[:2] != b"BM":
        return None
    w, h = struct.unpack("<ii", head[18:26])
    return abs(h), w


def _read_ints(path: Path, columns: int | None, what: str) -> np.ndarray:
    """Whitespace-separated integers, one row per non-empty line; InputError naming the line."""
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    rows = []
    with open(path, encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if columns is not None and len(parts) != columns:
                raise InputError(
                    f"{path}: line {number} has {len(parts)} fields, expected {columns}"
                )
            try:
                rows.append([int(p) for p in (parts if columns is not None else parts[:1])])
            except ValueError:
                raise InputError(
                    f"{path}: line {number} is not integers: {line.strip()[:60]!r}"
                ) from None
    if not rows:
        raise InputError(f"{path}: no {what} lines")
    return np.asarray(rows, np.int64)


class PhotoTour:
    """One PhotoTour subset, read lazily (one decoded bitmap at a time).

    Args:
      root: the folder holding ``patchNNNN.bmp`` and ``info.txt``.

    Attributes:
      root: the folder.
      points: (N,) int64 3D point id of each patch (``info.txt``).

    Raises:
      InputError: no ``info.txt`` or a malformed line, a missing bitmap, a
        bitmap that is not 1024 x 1024.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"PhotoTour folder not found: {self.root}")
        self.points = _read_ints(self.root / "info.txt", None, "info.txt")[:, 0]
        self._cache: tuple[int, np.ndarray] | None = None
        for b in range(self.num_bitmaps):
            path = self.bitmap_path(b)
            if not path.is_file():
                raise InputError(
                    f"{path}: missing ({len(self)} patches in info.txt need "
                    f"{self.num_bitmaps} bitmaps)"
                )
            size = _bmp_size(path)
            if size is not None and size != (BITMAP_SIDE, BITMAP_SIDE):
                raise InputError(
                    f"{path}: {size[1]} x {size[0]} pixels, expected {BITMAP_SIDE} x {BITMAP_SIDE}"
                )

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def num_bitmaps(self) -> int:
        """Bitmaps that hold the patches of ``info.txt``."""
        return -(-len(self) // PER_BITMAP)

    def bitmap_path(self, b: int) -> Path:
        """The path of bitmap ``b`` (``patch%04d.bmp``)."""
        return self.root / f"patch{b:04d}.bmp"

    def bitmap(self, b: int) -> np.ndarray:
        """(256, 64, 64) uint8: the patches of bitmap ``b`` (the last one decoded is cached)."""
        if self._cache is not None and self._cache[0] == b:
            return self._cache[1]
        path = self.bitmap_path(b)
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise InputError(f"cannot read bitmap {path}")
        if img.shape != (BITMAP_SIDE, BITMAP_SIDE):
            raise InputError(
                f"{path}: {img.shape[1]} x {img.shape[0]} pixels, "
                f"expected {BITMAP_SIDE} x {BITMAP_SIDE}"
            )
        tiles = (
            img.reshape(PER_ROW, PHOTOTOUR_SIZE, PER_ROW, PHOTOTOUR_SIZE)
            .transpose(0, 2, 1, 3)
            .reshape(PER_BITMAP, PHOTOTOUR_SIZE, PHOTOTOUR_SIZE)
        )
        self._cache = (b, tiles)
        return tiles

    def patches(self, index) -> np.ndarray:
        """(K, 64, 64) uint8 patches ``index`` (any order; each bitmap decoded once per call)."""
        index = np.asarray(index, np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise InputError(f"{self.root}: patch ids must be in [0, {len(self)})")
        out = np.empty((index.size, PHOTOTOUR_SIZE, PHOTOTOUR_SIZE), np.uint8)
        order = np.argsort(index, kind="stable")
        files = index[order] // PER_BITMAP
        bounds = np.flatnonzero(np.r_[True, files[1:] != files[:-1], True])
        for s, e in zip(bounds[:-1], bounds[1:]):
            rows = order[s:e]
            out[rows] = self.bitmap(int(files[s]))[index[rows] % PER_BITMAP]
        return out


def read_pairs(path: str | os.PathLike, num_patches: int) -> PairSet:
    """Reads an ``m50_*.txt`` pair file.

    Args:
      path: the file (lines ``patch1 point1 unused patch2 point2 unused unused``).
      num_patches: patches in the subset (``len(PhotoTour)``).

    Returns:
      A :class:`~retrieval._src.metrics.pairs.PairSet`: patch ids ``i``, ``j``
      and ``is_match = point1 == point2``, in file order.

    Raises:
      InputError: a line without 7 integers, patch ids beyond ``num_patches``
        (or negative).
    """
    path = Path(path)
    rows = _read_ints(path, 7, "pair")
    i, j = rows[:, 0], rows[:, 3]
    top = int(max(i.max(), j.max()))
    if min(i.min(), j.min()) < 0:
        raise InputError(f"{path}: negative patch ids")
    if top >= num_patches:
        raise InputError(f"{path}: patch id {top} is beyond the {num_patches} patches of info.txt")
    return PairSet(i, j, rows[:, 1] == rows[:, 4])


def find_pairs(root: str | os.PathLike, pairs: str | os.PathLike | None = None) -> Path:
    """The pair file: ``pairs`` (a path, or a name inside ``root``), else the standard
    ``m50_100000_100000_0.txt``, else the only ``m50_*.txt`` of ``root``."""
    root = Path(root)
    if pairs is not None:
        p = Path(pairs)
        if not p.is_file() and (root / p).is_file():
            p = root / p
        if not p.is_file():
            raise InputError(f"pair file not found: {pairs}")
        return p
    if (root / STANDARD_PAIRS).is_file():
        return root / STANDARD_PAIRS
    found = sorted(p for p in root.glob("m50_*.txt") if re.match(r"m50_\d+_\d+_\d+\.txt$", p.name))
    if len(found) != 1:
        raise InputError(
            f"{root}: {'no' if not found else 'several'} m50_*.txt pair files; name one"
        )
    return found[0]


def phototour_patchset(
    root: str | os.PathLike,
    *,
    size: int | None = PATCH_SIZE,
    split: str = "train",
    max_patches: int | None = None,
) -> PatchSet:
    """A PhotoTour subset as a :class:`PatchSet` (groups = 3D points), for training.

    Args:
      root: the subset folder.
      size: output side (default 51, resized from 64 with ``cv2.INTER_AREA``,
        the interpolation the project shrinks with); None keeps 64.
      split: ``"train"`` or ``"test"`` for every row (PhotoTour's protocol
        trains on one subset and tests on the others).
      max_patches: the first patches only (None: all).

    Returns:
      A PatchSet: one scene (the folder name), ``image`` -1, ``x``, ``y``,
      ``scale``, ``angle`` NaN; ``info`` records the size and interpolation.
    """
    if split not in SPLIT_NAMES:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if size is not None and size < 8:
        raise InputError(f"size must be >= 8, got {size}")
    if max_patches is not None and max_patches < 1:
        raise InputError(f"max_patches must be >= 1, got {max_patches}")
    pt = PhotoTour(root)
    n = len(pt) if max_patches is None else min(len(pt), max_patches)
    out_size = PHOTOTOUR_SIZE if size is None else int(size)
    patches = np.empty((n, out_size, out_size), np.uint8)
    for s in range(0, n, PER_BITMAP):
        e = min(n, s + PER_BITMAP)
        patches[s:e] = resize_patches(pt.bitmap(s // PER_BITMAP)[: e - s], out_size)
    resized = out_size != PHOTOTOUR_SIZE
    return PatchSet.without_frames(
        patches,
        pt.points[:n].copy(),
        np.full(n, SPLIT_NAMES.index(split)),
        np.zeros(n),
        np.full(n, -1),
        [pt.root.resolve().name],
        {
            "version": VERSION,
            "source": "phototour",
            "root": str(root),
            "size": out_size,
            "resized_from": PHOTOTOUR_SIZE if resized else None,
            "interpolation": "INTER_AREA" if resized else None,
        },
    )


def pair_distances(descriptors: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(P,) float64 L2 distances ``|descriptors[i] - descriptors[j]|``."""
    x = np.asarray(descriptors)
    if x.ndim != 2:
        raise InputError(f"descriptors must be (N, D), got shape {x.shape}")
    out = np.empty(i.shape[0])
    for c in range(0, i.shape[0], 65536):
        d = x[i[c : c + 65536]].astype(np.float64) - x[j[c : c + 65536]]
        out[c : c + 65536] = np.sqrt(np.einsum("pd,pd->p", d, d))
    if not np.isfinite(out).all():
        raise InputError("descriptors give non-finite distances (NaN or inf values)")
    return out


def fpr95(distances: np.ndarray, is_match: np.ndarray) -> float:
    """False-positive rate in percent at 95% recall, a pair accepted when its distance is
    at most the threshold (:func:`~retrieval._src.metrics.pairs.fpr_at_recall` on minus
    the distances: pairs at the threshold distance are accepted together)."""
    return 100.0 * fpr_at_recall(-np.asarray(distances, np.float64), is_match, 0.95)


def evaluate_phototour(
    root: str | os.PathLike,
    describe: Callable[[np.ndarray], np.ndarray],
    *,
    pairs: str | os.PathLike | None = None,
    chunk: int = 16384,
) -> dict:
    """FPR95 of a descriptor on a PhotoTour pair file.

    Only the patches that the pairs name are described, ``chunk`` at a time
    (memory: the descriptors of those patches, plus one chunk of patches).

    Args:
      root: the subset folder.
      describe: (B, 64, 64) uint8 patches -> (B, D) descriptors (e.g. a
        :class:`~retrieval._src.patch_describer.PatchDescriber`, which resizes
        for a model trained on 51 x 51 patches).
      pairs: the pair file (:func:`find_pairs`; default the standard 100k).
      chunk: patches per ``describe`` call.

    Returns:
      ``{"fpr95": percent, "pairs": file name, "num_pairs", "num_matching",
      "num_patches_described"}``.

    Raises:
      InputError: as :class:`PhotoTour`, :func:`find_pairs`, :func:`read_pairs`;
        descriptors of a bad shape or with non-finite distances.
    """
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    pt = PhotoTour(root)
    pair_file = find_pairs(root, pairs)
    ps = read_pairs(pair_file, len(pt))
    ids, inverse = np.unique(np.r_[ps.i, ps.j], return_inverse=True)
    desc = None
    for s in range(0, ids.size, chunk):
        batch = pt.patches(ids[s : s + chunk])
        d = np.asarray(describe(batch))
        if d.ndim != 2 or d.shape[0] != batch.shape[0]:
            raise InputError(
                f"describe must return ({batch.shape[0]}, D) descriptors, got shape {d.shape}"
            )
        if desc is None:
            desc = np.empty((ids.size, d.shape[1]), d.dtype)
        desc[s : s + batch.shape[0]] = d
    p = ps.i.shape[0]
    dist = pair_distances(desc, inverse[:p], inverse[p:])
    return {
        "fpr95": fpr95(dist, ps.is_match),
        "pairs": pair_file.name,
        "num_pairs": int(p),
        "num_matching": int(ps.is_match.sum()),
        "num_patches_described": int(ids.size),
    }
