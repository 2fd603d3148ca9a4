"""Files: reading images, and saving / loading a :class:`PatchSet` as one ``.npz`` (atomically)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from ckn.files import CORRUPT_FILE_ERRORS, atomic_path, load_patch_file
from retrieval._src.data.patchset import SPLIT_NAMES, PatchSet

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".ppm",
    ".pgm",
    ".pnm",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
)


#: Why a JPEG file without its end-of-image marker is refused (every reader says the same).
TRUNCATED_JPEG = "truncated JPEG (no end-of-image marker)"


def jpeg_truncated(path: str | os.PathLike) -> bool:
    """Whether a file starts as a JPEG but lacks the end-of-image marker (zero padding allowed).

    OpenCV decodes such a file half grey, saying so only in a libjpeg message on
    stderr; every image reader and :func:`retrieval.image.image_problem` refuse it
    by this one test.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 65536))
        tail = f.read()
    return not tail.rstrip(b"\x00").endswith(b"\xff\xd9")


#: Smallest image side :func:`image_problem` accepts (smaller images hold no useful region).
MIN_SIDE = 32


def image_problem(path: Path, min_side: int = MIN_SIDE) -> str | None:
    """Why ``path`` cannot be used (unreadable, truncated, too small), or None.

    A JPEG file without its end-of-image marker is refused first, by the test
    every image reader applies (``jpeg_truncated``: OpenCV would return it half
    grey with only a libjpeg message on stderr); then the image is decoded and
    its sides compared with ``min_side``.
    """
    try:
        if jpeg_truncated(path):  # the test of every image reader
            return TRUNCATED_JPEG
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read ({e.strerror or type(e).__name__})"
    buf = np.frombuffer(data, np.uint8)
    head = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if head is None or head.size == 0:
        return "not a readable image"
    h, w = head.shape[:2]
    if min(h, w) < min_side:
        return f"too small ({w}x{h} px, under {min_side} px)"
    return None


def _imread(path: str | os.PathLike, flags: int) -> np.ndarray:
    """An image file read by ``cv2.imread(path, flags)``: RGB uint8 (H, W, 3), or (H, W) where
    ``flags`` keeps gray; InputError if missing, unreadable or a truncated JPEG."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    if jpeg_truncated(path):
        raise InputError(f"cannot read image ({TRUNCATED_JPEG}): {path}")
    img = cv2.imread(str(path), flags)
    if img is None or img.size == 0:
        raise InputError(f"cannot read image (unknown format or corrupt): {path}")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image as RGB uint8 (H, W, 3); InputError if missing, unreadable or a
    truncated JPEG."""
    return _imread(path, cv2.IMREAD_COLOR)


def read_image_any(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3) or gray (H, W) (kept gray, so callers can say so).

    OpenCV's ``IMREAD_ANYCOLOR``: 16-bit images scaled to 8 bits, alpha dropped,
    EXIF orientation applied.
    """
    return _imread(path, cv2.IMREAD_ANYCOLOR)


def resize_max(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` shrunk (INTER_AREA) so that its long side is at most ``max_side`` (None: as is)."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    f = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def save_patchset(ps: PatchSet, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Writes one ``.npz`` (keys: :mod:`retrieval._src.data.patchset`), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output must be a .npz file, got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **ps.as_dict())
    return path


def load_patchset(path: str | os.PathLike, *, require_split: bool = False) -> PatchSet:
    """Reads a ``.npz`` patch file into a :class:`PatchSet`.

    ``patches`` and ``labels`` are required. Missing metadata is filled in:
    split 0 (train; InputError instead if ``require_split``), scene 0, image
    -1, x/y/scale/angle NaN. ``split`` may also hold the strings
    ``"train"``/``"test"``.
    """
    path = Path(path)
    patches, labels = load_patch_file(path, mmap=False)
    if labels is None:
        raise InputError(f"{path}: .npz has no 'labels' array (group labels are required)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if patches.dtype != np.uint8:
        raise InputError(f"{path}: patches must be uint8, got dtype {patches.dtype}")
    try:
        with np.load(path, allow_pickle=False) as z:
            ps = _patchset_from(z, path, patches, labels, require_split)
    except CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{path}: cannot read patch file ({type(e).__name__})") from None
    if ps.scene.min() < 0 or ps.scene.max() >= len(ps.scene_names):
        raise InputError(f"{path}: 'scene' indices out of range of 'scene_names'")
    return ps


def _patchset_from(z, path: Path, patches, labels, require_split: bool) -> PatchSet:
    """The :class:`PatchSet` of an open .npz whose patches and labels were read and checked."""
    n = patches.shape[0]
    files = set(z.files)

    def get(key, default, dtype):
        if key not in files:
            return np.full(n, default, dtype)
        a = z[key]
        if a.shape != (n,):
            raise InputError(f"{path}: '{key}' must be (N,) with N = {n}, got shape {a.shape}")
        return a.astype(dtype)

    if "split" in files:
        s = z["split"]
        if s.shape != (n,):
            raise InputError(f"{path}: 'split' must be (N,) with N = {n}, got shape {s.shape}")
        if s.dtype.kind in "US":
            s = s.astype(str)
            bad = set(np.unique(s)) - set(SPLIT_NAMES)
            if bad:
                raise InputError(
                    f"{path}: split values must be 'train' or 'test', got {sorted(bad)[:3]}"
                )
            split = (s == "test").astype(np.uint8)
        else:
            if not np.isin(s, (0, 1)).all():
                raise InputError(f"{path}: split values must be 0 (train) or 1 (test)")
            split = s.astype(np.uint8)
    elif require_split:
        raise InputError(f"{path}: .npz has no 'split' array (0 = train, 1 = test)")
    else:
        split = np.zeros(n, np.uint8)
    scene = get("scene", 0, np.int32)
    names = z["scene_names"].astype(str) if "scene_names" in files else None
    info = {}
    if "info" in files:
        try:
            info = json.loads(str(z["info"]))
        except ValueError:
            info = {}
    return PatchSet(
        patches=patches,
        labels=labels.astype(np.int64),
        split=split,
        scene=scene,
        image=get("image", -1, np.int32),
        x=get("x", np.nan, np.float32),
        y=get("y", np.nan, np.float32),
        scale=get("scale", np.nan, np.float32),
        angle=get("angle", np.nan, np.float32),
        scene_names=names
        if names is not None
        else np.asarray([f"scene{i}" for i in range(int(scene.max()) + 1)]),
        info=info,
    )
