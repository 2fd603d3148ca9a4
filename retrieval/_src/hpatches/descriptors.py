"""HPatches descriptors: computed from a describe function, written and read in the official layout.

In memory, the descriptors of a sequence are one (16, N, D) float32 array, types in the order of
``TYPES``; a set of sequences is a dict from sequence name to that array.

On disk, the layout the official benchmark reads (``hpatches_eval.py --descr-dir``):
``<out_dir>/<sequence>/<type>.csv``, one row per patch, no header, values separated by the
delimiter (``,`` by default). Values are written with 9 significant digits, which a float32
survives exactly, so the official tool (which reads them as float32) and the project see the
same numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.hpatches.data import HPatchesData
from retrieval._src.hpatches.layout import PATCH_SIZE, TYPES, check_sequence_name

#: printf format of one value in the CSV files: float32 round-trips through 9 digits.
CSV_FORMAT = "%.9g"


def check_sequence_descriptors(name: str, descriptors, count: int | None = None) -> np.ndarray:
    """(16, N, D) float32 descriptors of one sequence, checked.

    Raises:
      InputError: a bad shape, N other than ``count``, non-numeric or non-finite values
        (also values beyond float32).
    """
    d = np.asarray(descriptors)
    if d.ndim != 3 or d.shape[0] != len(TYPES) or d.shape[1] == 0 or d.shape[2] == 0:
        raise InputError(f"descriptors of {name} must be (16, N, D) with N, D >= 1, got {d.shape}")
    if count is not None and d.shape[1] != count:
        raise InputError(f"descriptors of {name} have {d.shape[1]} patches per type, not {count}")
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise InputError(f"descriptors of {name} must be numeric, got dtype {d.dtype}")
    with np.errstate(over="ignore"):
        d = np.ascontiguousarray(d, dtype=np.float32)
    if not np.isfinite(d).all():
        raise InputError(f"descriptors of {name} hold NaN or inf values (in float32)")
    return d


def check_descriptors(descriptors: Mapping, data: HPatchesData) -> dict[str, np.ndarray]:
    """The descriptors of every test sequence of ``data``, checked (one dimension D for all).

    Raises:
      InputError: a test sequence without descriptors, or as
        :func:`check_sequence_descriptors`; a dimension that differs between sequences.
    """
    missing = [s for s in data.sequences if s not in descriptors]
    if missing:
        raise InputError(
            f"no descriptors for {len(missing)} test sequences: {', '.join(missing[:5])}"
        )
    out = {s: check_sequence_descriptors(s, descriptors[s], data.counts[s]) for s in data.sequences}
    dims = {d.shape[2] for d in out.values()}
    if len(dims) > 1:
        raise InputError(f"descriptors of several dimensions: {sorted(dims)}")
    return out


def iter_descriptors(
    data: HPatchesData, describe: Callable[[np.ndarray], np.ndarray], names=None
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, (16, N, D) float32) for each sequence, one sequence decoded and described at a time.

    Args:
      data: the release (:func:`load_hpatches`).
      describe: (M, 65, 65) uint8 patches -> (M, D) descriptors; called once per sequence with
        its 16 N patches.
      names: the sequences (default: the test sequences of the split).
    """
    for name, patches in data.iter_patches(names):
        n = patches.shape[1]
        flat = describe(patches.reshape(len(TYPES) * n, PATCH_SIZE, PATCH_SIZE))
        flat = np.asarray(flat)
        if flat.ndim != 2 or flat.shape[0] != len(TYPES) * n:
            raise InputError(
                f"describe must return ({len(TYPES) * n}, D) descriptors for the "
                f"{len(TYPES) * n} patches of {name}, got shape {flat.shape}"
            )
        yield name, check_sequence_descriptors(name, flat.reshape(len(TYPES), n, -1), n)


def describe_hpatches(
    data: HPatchesData, describe: Callable[[np.ndarray], np.ndarray], names=None
) -> dict[str, np.ndarray]:
    """Descriptors of the sequences (default: the test ones), as :func:`iter_descriptors`."""
    return dict(iter_descriptors(data, describe, names))


def _check_delimiter(delimiter: str) -> None:
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "0123456789.-+eE\n":
        raise InputError(f"delimiter must be one character other than digits, got {delimiter!r}")


def write_descriptors(
    out_dir: str | os.PathLike,
    descriptors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    *,
    delimiter: str = ",",
) -> Path:
    """Writes descriptors in the official layout ``<out_dir>/<sequence>/<type>.csv``, atomically.

    Args:
      out_dir: the descriptor folder (``DESCR_DIR/NAME`` for the official tool); an existing
        one is replaced as a whole, only once everything is written.
      descriptors: a dict from sequence name to (16, N, D) descriptors, or an iterable of
        (name, descriptors) pairs (e.g. :func:`iter_descriptors`: one sequence in memory at a
        time).
      delimiter: the value separator (the official tool's ``--delimiter``).

    Returns:
      ``out_dir``.

    Raises:
      InputError: bad descriptors (see :func:`check_sequence_descriptors`), a bad sequence
        name or delimiter, no sequence at all; nothing is written then.
    """
    _check_delimiter(delimiter)
    items = descriptors.items() if isinstance(descriptors, Mapping) else descriptors
    out_dir = Path(out_dir)
    written = 0
    with atomic_path(out_dir, is_dir=True) as tmp:
        for name, d in items:
            check_sequence_name(name)
            d = check_sequence_descriptors(name, d)
            (tmp / name).mkdir()
            for t, rows in zip(TYPES, d):
                np.savetxt(tmp / name / f"{t}.csv", rows, fmt=CSV_FORMAT, delimiter=delimiter)
            written += 1
        if not written:
            raise InputError(f"no descriptors to write to {out_dir}")
    return out_dir


def _read_csv(path: Path, delimiter: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path}: descriptor file missing")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty descriptor file")
    try:
        d = np.loadtxt(path, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(
            f"{path}: not a {delimiter!r}-separated table of numbers ({first})"
        ) from None
    with np.errstate(over="ignore"):
        d = d.astype(np.float32)
    if not np.isfinite(d).all():
        raise InputError(f"{path}: NaN or inf values (in float32)")
    return d


def read_sequence_descriptors(folder: str | os.PathLike, *, delimiter: str = ",") -> np.ndarray:
    """(16, N, D) float32 descriptors from ``<folder>/<type>.csv`` (the official layout).

    Raises:
      InputError (naming the file): a missing, empty or unparsable file, files of differing
        row counts or widths.
    """
    _check_delimiter(delimiter)
    folder = Path(folder)
    arrays = [_read_csv(folder / f"{t}.csv", delimiter) for t in TYPES]
    for t, a in zip(TYPES, arrays):
        if a.shape != arrays[0].shape:
            raise InputError(
                f"{folder / f'{t}.csv'}: {a.shape[0]} rows of {a.shape[1]} values, but ref.csv "
                f"has {arrays[0].shape[0]} rows of {arrays[0].shape[1]}"
            )
    return np.stack(arrays)


def read_descriptors(
    folder: str | os.PathLike, names: Iterable[str] | None = None, *, delimiter: str = ","
) -> dict[str, np.ndarray]:
    """Descriptors in the official layout, by sequence: (16, N, D) float32 each.

    Args:
      folder: ``<folder>/<sequence>/<type>.csv``, as written by :func:`write_descriptors` or
        by any tool writing for the official benchmark.
      names: the sequences to read (e.g. ``data.sequences``); default: every subfolder.
      delimiter: the value separator.

    Raises:
      InputError: a missing folder or sequence, or as :func:`read_sequence_descriptors`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"descriptor folder not found: {folder}")
    if names is None:
        names = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not names:
            raise InputError(f"{folder}: no sequence folder of descriptors in it")
    out = {}
    for name in names:
        if not (folder / name).is_dir():
            raise InputError(f"{folder / name}: descriptors of sequence {name} missing")
        out[name] = read_sequence_descriptors(folder / name, delimiter=delimiter)
    return out
