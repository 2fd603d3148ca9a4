"""Patch files and atomic outputs.

A patch file is ``.npy`` holding an array (N, H, W) or (N, H, W, C), or ``.npz``
with key ``patches`` (same shapes) and optional ``labels`` (N,) plus any
metadata arrays. Outputs are written to a temporary sibling and renamed, so a
failure never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ckn._src.errors import InputError


def check_patches(patches: np.ndarray, *, name: str = "patches") -> np.ndarray:
    """Validates a patch batch (N, H, W) or (N, H, W, C); returns it unchanged.

    Raises:
      InputError: wrong rank, empty batch, non-numeric dtype, NaN or inf values.
    """
    if not isinstance(patches, np.ndarray):
        patches = np.asarray(patches)
    if patches.ndim not in (3, 4):
        raise InputError(f"{name} must be (N, H, W) or (N, H, W, C), got shape {patches.shape}")
    if patches.shape[0] == 0:
        raise InputError(f"{name} is empty (N = 0), shape {patches.shape}")
    if min(patches.shape[1:3]) == 0:
        raise InputError(f"{name} has an empty spatial size, shape {patches.shape}")
    if patches.ndim == 4 and patches.shape[3] not in (1, 3):
        raise InputError(f"{name} must have 1 or 3 channels, got shape {patches.shape}")
    if not (np.issubdtype(patches.dtype, np.integer) or np.issubdtype(patches.dtype, np.floating)):
        raise InputError(f"{name} must be an integer or float array, got dtype {patches.dtype}")
    if np.issubdtype(patches.dtype, np.floating) and not _all_finite(patches):
        raise InputError(f"{name} contains NaN or inf values")
    return patches


def _all_finite(a: np.ndarray, chunk: int = 4096) -> bool:
    # Chunked so that memory-mapped arrays are checked without loading them whole.
    return all(np.isfinite(a[i : i + chunk]).all() for i in range(0, a.shape[0], chunk))


SPLITS = {"train": 0, "test": 1}


def load_patch_file(
    path: str | os.PathLike, *, mmap: bool = True, split: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a patch file; returns (patches, labels or None).

    ``.npy`` files are memory-mapped (``mmap=True``) so large files stream.
    ``split`` ("train", "test" or "all") keeps the rows of that split of an
    .npz with a ``split`` array (0 or "train" = train, 1 or "test" = test);
    "train"/"test" on a file without one is an error, None or "all" keeps all.

    Raises:
      InputError: missing, unreadable or corrupt file; wrong content.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"patch file not found: {path}")
    if path.is_dir():
        raise InputError(f"patch file is a directory: {path}")
    labels = None
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "patches" not in z.files:
                    raise InputError(
                        f"{path}: .npz has no 'patches' array "
                        f"(keys: {', '.join(z.files) or 'none'})"
                    )
                patches = z["patches"]
                labels = z["labels"] if "labels" in z.files else None
                rows = _split_rows(path, z["split"] if "split" in z.files else None, split)
                if rows is not None:
                    patches = patches[rows]
                    labels = None if labels is None else labels[rows]
        elif path.suffix == ".npy":
            _split_rows(path, None, split)
            patches = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            raise InputError(f"{path}: patch file must be .npy or .npz")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(
            f"{path}: cannot read patch file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    check_patches(patches, name=f"{path.name}: patches")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != patches.shape[0]:
            raise InputError(
                f"{path.name}: labels must be (N,) with N = {patches.shape[0]}, "
                f"got shape {labels.shape}"
            )
    return patches, labels


def _split_rows(path: Path, split_array: np.ndarray | None, split: str | None) -> np.ndarray | None:
    if split in (None, "all"):
        return None
    if split not in SPLITS:
        raise InputError(f"split must be train, test or all, got {split!r}")
    if split_array is None:
        raise InputError(
            f"{path}: has no 'split' array, cannot select the {split} split (use --split all)"
        )
    if split_array.dtype.kind in "US":
        rows = split_array == split
    else:
        rows = split_array == SPLITS[split]
    if not rows.any():
        raise InputError(f"{path}: the {split} split is empty")
    return rows


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else ""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False):
    """Yields a temporary path beside ``final``; renames it to ``final`` on success.

    On any exception the temporary path is removed and ``final`` is untouched.
    Example::

        with atomic_path("out.npy") as tmp:
            np.save(tmp, x)
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"output folder does not exist: {parent}")
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix, dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, doc) -> None:
    """Writes ``doc`` as indented JSON, atomically (``atomic_path``).

    Raises:
      InputError: ``doc`` does not serialize as strict JSON (e.g. a NaN); nothing is written.
    """
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise InputError(f"results are not valid JSON ({e})") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text)
