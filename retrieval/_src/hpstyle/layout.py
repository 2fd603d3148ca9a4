"""The ``hpatches-release`` file layout: a minimal writer and reader.

``<root>/<sequence>/{ref,e1..e5,h1..h5,t1..t5}.png``: each file a column of
``S x S`` uint8 gray patches (HPatches: S = 65), patch i in rows
``S*i .. S*i + S - 1``; patch i of every file shows the same scene point.

(A stopgap beside the HPatches reader of ``retrieval/_src/hpatches/``: the two
are to share one reader and writer.)
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from retrieval._src.hpstyle.config import LEVEL_PREFIX, LEVELS, TARGETS

#: The 16 patch files of a sequence, in HPatches' order.
TYPES = ("ref",) + tuple(f"{LEVEL_PREFIX[lv]}{k}" for lv in LEVELS for k in range(1, TARGETS + 1))


def write_sequence(folder: str | os.PathLike, patches: np.ndarray) -> Path:
    """Writes one sequence: ``patches[k]`` -> ``<folder>/<TYPES[k]>.png``.

    Args:
      folder: the sequence folder (created).
      patches: (16, N, S, S) uint8, in :data:`TYPES` order.
    """
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[0] != len(TYPES) or patches.shape[2] != patches.shape[3]:
        raise ValueError(f"patches must be (16, N, S, S), got {patches.shape}")
    if patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8, got {patches.dtype}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, n, s, _ = patches.shape
    for name, column in zip(TYPES, patches):
        path = folder / f"{name}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(column.reshape(n * s, s))):
            raise InputError(f"cannot write {path}")
    return folder


def png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG header, without decoding; InputError if not a PNG."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise InputError(f"cannot read {path} ({type(e).__name__})") from None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG file")
    w, h = struct.unpack(">II", head[16:24])
    return h, w


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """The sequence folders of an HPatches-layout root (sub-folders holding ``ref.png``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"HPatches folder not found: {root}")
    seqs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "ref.png").is_file())
    if not seqs:
        raise InputError(f"{root}: no HPatches sequence (expected <seq>/ref.png, e1.png, ...)")
    return seqs


def sequence_length(folder: str | os.PathLike, size: int = 65) -> int:
    """Patches per file of one sequence, from the PNG headers; every layout error is an InputError.

    Raises:
      InputError: a missing type, a file that is not a PNG, not ``size`` wide,
        not a multiple of ``size`` high, or files of differing patch counts.
    """
    folder = Path(folder)
    counts = {}
    for name in TYPES:
        path = folder / f"{name}.png"
        if not path.is_file():
            raise InputError(f"{folder}: missing {name}.png (an HPatches sequence has {TYPES})")
        h, w = png_size(path)
        if w != size or h % size or h == 0:
            raise InputError(f"{path}: {w} x {h} pixels is not a column of {size} x {size} patches")
        counts[name] = h // size
    if len(set(counts.values())) > 1:
        odd = ", ".join(f"{k} {v}" for k, v in counts.items() if v != counts["ref"])
        raise InputError(
            f"{folder}: patch counts differ between files (ref {counts['ref']}, {odd})"
        )
    return counts["ref"]


def read_sequence(folder: str | os.PathLike, size: int = 65) -> np.ndarray:
    """Reads one sequence: (16, N, size, size) uint8 in :data:`TYPES` order (checks as
    :func:`sequence_length`)."""
    folder = Path(folder)
    n = sequence_length(folder, size)
    out = np.empty((len(TYPES), n, size, size), np.uint8)
    for k, name in enumerate(TYPES):
        path = folder / f"{name}.png"
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if img is None or img.shape != (n * size, size):
            raise InputError(f"cannot read {path} as a {size} x {n * size} gray image")
        out[k] = img.reshape(n, size, size)
    return out
