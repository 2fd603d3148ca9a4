"""The ``hpatches-release`` folder layout: one folder per sequence, one PNG per patch type.

``<root>/<sequence>/<type>.png`` for the 16 types of :data:`TYPES` (``ref``, ``e1..e5``,
``h1..h5``, ``t1..t5``); each PNG is a column of 65 x 65 gray patches, patch ``i`` in rows
``65 i .. 65 i + 64``, and patch ``i`` of every type shows the same scene point. Sequence
names start with ``i_`` (illumination changes, fixed camera) or ``v_`` (viewpoint changes).

Reading is lazy: :func:`sequence_count` reads the PNG headers only (sizes, checked before any
work), :func:`read_sequence` decodes one sequence, (16, N, 65, 65) uint8, about 1 MB per
15 patches, so a whole release (about 10 GB decoded) is never held at once.

References:
  V. Balntas, K. Lenc, A. Vedaldi, K. Mikolajczyk, "HPatches: A benchmark and evaluation of
  handcrafted and learned local descriptors", CVPR 2017, Sec. 3.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from ckn.files import atomic_path

#: Side of an HPatches patch, in pixels.
PATCH_SIZE = 65

#: Noise levels of the target types (Balntas et al. 2017, Sec. 3), and their file prefixes.
LEVELS = ("easy", "hard", "tough")
NOISE_LEVELS = ("e", "h", "t")

#: Target images per noise level (images 2-6 of a sequence -> 1-5).
TARGETS = 5

#: The patch types of a sequence, in the order of the (16, N, 65, 65) arrays: the reference
#: image, then the easy, hard and tough target images 1-5.
TYPES = ("ref",) + tuple(f"{p}{i}" for p in NOISE_LEVELS for i in range(1, TARGETS + 1))

#: Sequence kinds by name prefix: ``i_`` illumination, ``v_`` viewpoint.
KINDS = {"i_": "illum", "v_": "view"}

_NAME = re.compile(r"[iv]_[A-Za-z0-9._-]+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def type_index(noise: str, image: int) -> int:
    """Row of the (16, N, ...) arrays holding image ``image`` (0 = ref, 1-5) of a noise level.

    Image 0 is the reference for every noise level (as in the official task files).
    """
    if image == 0:
        return 0
    return 1 + TARGETS * NOISE_LEVELS.index(noise) + (image - 1)


def sequence_kind(name: str) -> str:
    """``"illum"`` for an ``i_*`` sequence, ``"view"`` for a ``v_*`` one."""
    return KINDS[name[:2]]


def check_sequence_name(name: str) -> str:
    """The name if it is an HPatches sequence name (``i_*`` or ``v_*``); InputError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"{name!r} is not an HPatches sequence name (i_* or v_*, letters, digits, . _ -)"
        )
    return name


def sequence_folders(root: str | os.PathLike) -> dict[str, Path]:
    """The sequence folders of an ``hpatches-release`` root, by name (sorted).

    Files beside the folders (a README, ...) and hidden folders are ignored.

    Raises:
      InputError: the root is not a folder, holds no sequence folder, or holds a folder that
        is not named as a sequence.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"HPatches folder not found: {root}")
    folders = {}
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith("."):
            continue
        try:
            check_sequence_name(p.name)
        except InputError:
            raise InputError(
                f"{p}: not an HPatches sequence folder (names start with i_ or v_)"
            ) from None
        folders[p.name] = p
    if not folders:
        raise InputError(f"{root}: no HPatches sequence folder (i_* or v_*) in it")
    return folders


def _png_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG header, without decoding the image."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__})") from None
    if len(head) < 24 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return height, width


def _check_size(path: Path, height: int, width: int) -> int:
    if width != PATCH_SIZE:
        raise InputError(f"{path}: width {width}, HPatches patch columns are {PATCH_SIZE} wide")
    if height == 0 or height % PATCH_SIZE:
        raise InputError(f"{path}: height {height} is not a positive multiple of {PATCH_SIZE}")
    return height // PATCH_SIZE


def _type_paths(folder: Path) -> list[Path]:
    paths = [folder / f"{t}.png" for t in TYPES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{folder}: missing patch types {', '.join(missing)}")
    return paths


def sequence_count(folder: str | os.PathLike) -> int:
    """Number N of patches of a sequence folder, from the PNG headers (all 16 types checked).

    Raises:
      InputError (naming the file): a missing type, a file that is not a PNG, a width other
        than 65, a height that is not a positive multiple of 65, types of differing counts.
    """
    folder = Path(folder)
    counts = {}
    for p in _type_paths(folder):
        counts[p] = _check_size(p, *_png_size(p))
    ref = folder / "ref.png"
    for p, n in counts.items():
        if n != counts[ref]:
            raise InputError(f"{p}: {n} patches, but ref.png has {counts[ref]}")
    return counts[ref]


def read_sequence(folder: str | os.PathLike, types: tuple[str, ...] = TYPES) -> np.ndarray:
    """Decodes the patches of one sequence folder.

    Colour PNGs are converted to gray as the official code reads them (OpenCV, flag 0).

    Args:
      folder: the sequence folder.
      types: the types to decode (default: all 16; every type is checked anyway).

    Returns:
      (len(types), N, 65, 65) uint8: (16, N, 65, 65) in the order of :data:`TYPES` by default.

    Raises:
      InputError (naming the file): as :func:`sequence_count`, or an unreadable PNG.
    """
    folder = Path(folder)
    n = sequence_count(folder)
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise InputError(f"unknown patch types {', '.join(map(str, unknown))}")
    out = np.empty((len(types), n, PATCH_SIZE, PATCH_SIZE), np.uint8)
    for k, p in enumerate(folder / f"{t}.png" for t in types):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise InputError(f"{p}: cannot decode the PNG")
        if img.shape != (n * PATCH_SIZE, PATCH_SIZE):
            raise InputError(f"{p}: decoded size {img.shape} differs from its header")
        out[k] = img.reshape(n, PATCH_SIZE, PATCH_SIZE)
    return out


def _stack_types(patches_by_type) -> np.ndarray:
    if isinstance(patches_by_type, Mapping):
        missing = [t for t in TYPES if t not in patches_by_type]
        extra = sorted(set(patches_by_type) - set(TYPES))
        if missing or extra:
            raise InputError(
                f"patches_by_type must have the keys {', '.join(TYPES)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(map(str, extra))}" if extra else "")
            )
        arrays = [np.asarray(patches_by_type[t]) for t in TYPES]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise InputError(
                "patches_by_type: every type must hold (N, 65, 65) patches of one N, got "
                + ", ".join(f"{t} {a.shape}" for t, a in zip(TYPES, arrays))
            )
        stacked = np.stack(arrays)
    else:
        stacked = np.asarray(patches_by_type)
    size = (PATCH_SIZE, PATCH_SIZE)
    if stacked.ndim != 4 or stacked.shape[0] != len(TYPES) or stacked.shape[2:] != size:
        raise InputError(f"patches must be (16, N, 65, 65), got {stacked.shape}")
    if stacked.shape[1] == 0:
        raise InputError("patches: a sequence needs at least one patch (N = 0)")
    if stacked.dtype != np.uint8:
        raise InputError(f"patches must be uint8, got {stacked.dtype}")
    return stacked


def write_sequence(root: str | os.PathLike, name: str, patches_by_type) -> Path:
    """Writes one sequence in the ``hpatches-release`` layout, atomically.

    Args:
      root: the release folder (created if missing).
      name: the sequence name, ``i_*`` or ``v_*``.
      patches_by_type: a mapping from each of the 16 :data:`TYPES` to (N, 65, 65) uint8
        patches, or one (16, N, 65, 65) uint8 array in the order of :data:`TYPES`.

    Returns:
      The sequence folder ``root/name``; an existing one is replaced as a whole.

    Raises:
      InputError: a bad name, missing or extra types, bad shapes or dtype, differing counts.
    """
    check_sequence_name(name)
    patches = _stack_types(patches_by_type)
    n = patches.shape[1]
    final = Path(root) / name
    with atomic_path(final, is_dir=True) as tmp:
        for t, p in zip(TYPES, patches):
            column = np.ascontiguousarray(p.reshape(n * PATCH_SIZE, PATCH_SIZE))
            if not cv2.imwrite(str(tmp / f"{t}.png"), column):
                raise InputError(f"cannot write {final / f'{t}.png'}")
    return final
