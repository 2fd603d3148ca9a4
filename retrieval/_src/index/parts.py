"""Index parts: the I-th of N deterministic slices of a collection, described apart.

A collection is split by its sorted list of image paths (relative, POSIX): shard I of N
holds rows ``floor(I * T / N)`` to ``floor((I + 1) * T / N)`` of the T images
(:func:`shard_bounds`), so the parts, merged in shard order, hold the rows of one
build in the same order, and any scheduler (a SLURM job array, Kubernetes indexed
jobs, a shell loop) can run shard I knowing only I and N. Shards are numbered from 0.

Every shard describes its slice with the same :class:`FittedState` (fitted once on a
sample, :mod:`~retrieval._src.index.fitted`) and writes a part folder
(:func:`save_part`). A bad image of the slice (unreadable, truncated, too small: the one
policy, :func:`retrieval.image.usable_images`) is left out and named in the part, as
``build_index`` leaves it out, so the merged parts hold the rows of one build::

    PART/
      vectors.npy    (n, dim) float32 searchable vectors of the slice's usable images
      paths.json     {"root", "root_abs", "paths"}: their paths, relative to root
      fitted.npz     an exact copy of the fitted file (its SHA-256 names it)
      ivfpq.faiss    IVF-PQ only: the trained index holding these vectors (ids = their rows
                     in the whole sorted list; the merge renumbers them when images were
                     left out)
      part.json      written last: format, version, shard, rows, the slice's images left
                     out, SHA-256 of the image list, settings, description, fitted
                     SHA-256, file sizes, vectors SHA-256

The folder is written under a temporary name and renamed, ``part.json`` last inside
it: a folder without ``part.json`` (a run killed mid-write, a partial copy) is not a
part, and :func:`read_part_header` refuses it, as it refuses files whose sizes differ
from the record (the vectors' SHA-256 is checked when a merge reads them).

Examples:
  >>> fitted = load_fitted("photos.fitted.npz")
  >>> save_part(build_part("photos/", fitted, (3, 8)), "parts/3")
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import ckn
from ckn import InputError
from ckn import __version__ as ckn_version
from ckn.files import atomic_path
from retrieval._src.index.build import _check_twice, _collect, _usable, describe_for_index
from retrieval._src.index.fitted import FittedState, load_fitted
from retrieval._src.index.ondisk import sha256_file, write_part_codes
from retrieval._src.index.settings import check_format

#: Format tag and version of ``part.json``; another version is refused. ``left_out`` (bad
#: images of the slice) is absent from parts written before it: none.
PART_FORMAT = "ckn-index-part"
PART_VERSION = 1
PART_JSON = "part.json"
VECTORS = "vectors.npy"
PATHS = "paths.json"
FITTED = "fitted.npz"
CODES = "ivfpq.faiss"


def check_shard(shard) -> tuple[int, int]:
    """``(I, N)`` as ints after checking ``0 <= I < N``.

    Raises:
      InputError: not a pair of integers, N < 1, or I out of range.
    """
    try:
        i, n = shard
    except (TypeError, ValueError):
        raise InputError(f"a shard is a pair (I, N), got {shard!r}") from None
    for v in (i, n):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InputError(f"a shard is a pair of integers (I, N), got {shard!r}")
    if n < 1:
        raise InputError(f"shard {i}/{n}: the number of shards N must be >= 1")
    if not 0 <= i < n:
        raise InputError(f"shard {i}/{n} is out of range: I must be 0 to {n - 1} for N = {n}")
    return int(i), int(n)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (e.g. ``"3/8"``) -> ``(3, 8)``, checked by :func:`check_shard`."""
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", str(text))
    if m is None:
        raise InputError(f"a shard is written I/N (e.g. 0/8), got {text!r}")
    return check_shard((int(m.group(1)), int(m.group(2))))


def shard_bounds(total: int, i: int, n: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``i`` of ``n`` over ``total`` rows (sizes differ by <= 1)."""
    i, n = check_shard((i, n))
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)) or total < 0:
        raise InputError(f"total must be a non-negative integer, got {total!r}")
    return (i * int(total)) // n, ((i + 1) * int(total)) // n


def shard_slice(paths: Sequence[str], i: int, n: int) -> list[str]:
    """The paths of shard ``i`` of ``n``: a slice of the sorted list (see the module docstring)."""
    ordered = sorted(paths)
    start, stop = shard_bounds(len(ordered), i, n)
    return ordered[start:stop]


def list_sha256(sorted_paths: Sequence[str]) -> str:
    """SHA-256 naming a sorted image list (parts of one collection share it)."""
    h = hashlib.sha256()
    for p in sorted_paths:
        h.update(p.encode("utf-8") + b"\n")
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class IndexPart:
    """The searchable vectors of one shard of a collection, with what a merge checks.

    Attributes:
      fitted: the :class:`FittedState` every shard shares (saved: ``sha256`` set).
      shard: ``(I, N)``.
      start: global row number of the first vector (``shard_bounds(total, I, N)[0]``).
      total: the number of images of the whole collection.
      list_sha256: SHA-256 of the collection's sorted path list (:func:`list_sha256`).
      root: the collection's root as given; root_abs: its absolute path.
      paths: the slice's described paths, relative to root, sorted.
      vectors: (n, dim) float32 searchable vectors of the slice, in path order.
      record: JSON-ready facts (describe seconds, provenance, ``skipped``: one
        ``"PATH: reason"`` line per bad image left out).
      left_out: the slice's paths not described (bad images), relative to root, sorted.
    """

    fitted: FittedState
    shard: tuple[int, int]
    start: int
    total: int
    list_sha256: str
    root: str
    root_abs: str
    paths: tuple[str, ...]
    vectors: np.ndarray
    record: dict
    left_out: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        return len(self.paths)


def part_from_vectors(
    vectors,
    paths: Sequence[str],
    fitted: FittedState,
    shard,
    *,
    root: str = "",
    root_abs: str = "",
    record: dict | None = None,
    left_out: Sequence[str] = (),
) -> IndexPart:
    """The part of shard ``(I, N)`` from searchable vectors of its slice.

    Args:
      vectors: (n, dim) searchable vectors of the slice's images but ``left_out``
        (``fitted.postprocess`` of their raw descriptors), in the slice's sorted order.
      paths: every image of the collection (relative paths, any order).
      fitted: the saved :class:`FittedState`.
      shard: ``(I, N)``.
      root, root_abs: the collection's root as given and its absolute path.
      record: JSON-ready facts kept in the part.
      left_out: images of the slice not described (bad images), relative paths.

    Raises:
      InputError: a bad shard, a fitted state not saved, vectors of another shape, a path
        left out that is not in the slice.
    """
    i, n = check_shard(shard)
    if not isinstance(fitted, FittedState) or fitted.sha256 is None:
        raise InputError("parts need a saved fitted state (save_fitted / load_fitted)")
    ordered = sorted(os.fspath(p) for p in paths)
    if len(set(ordered)) != len(ordered):
        raise InputError("paths: an image is listed twice")
    start, stop = shard_bounds(len(ordered), i, n)
    mine = ordered[start:stop]
    gone = {os.fspath(p) for p in left_out}
    stray = sorted(gone - set(mine))
    if stray:
        raise InputError(f"shard {i}/{n}: {stray[0]} is left out but is not in its slice")
    kept = [p for p in mine if p not in gone]
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2 or v.shape != (len(kept), fitted.dim) or not np.all(np.isfinite(v)):
        raise InputError(
            f"shard {i}/{n} needs finite ({len(kept)}, {fitted.dim}) vectors, got {v.shape}"
        )
    return IndexPart(
        fitted,
        (i, n),
        start,
        len(ordered),
        list_sha256(ordered),
        root,
        root_abs,
        tuple(kept),
        v,
        dict(record or {}),
        tuple(sorted(gone)),
    )


def build_part(
    images,
    fitted: FittedState,
    shard,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    record: dict | None = None,
    strict: bool = False,
) -> IndexPart:
    """Describes shard ``(I, N)`` of a collection with the fitted state.

    Bad images of the slice (:func:`retrieval.image.usable_images`) are left out and named
    in ``record["skipped"]`` (one ``"PATH: reason"`` line each), as :func:`build_index`
    leaves them out; ``strict`` raises on the first instead.

    Args:
      images: a folder (every image under it) or a list of image paths (relative to
        ``root`` when given): the whole collection, the same on every shard.
      fitted: the saved :class:`FittedState`.
      shard: ``(I, N)``.
      root, progress: as :func:`build_index`.
      record: extra JSON-ready facts (e.g. the command's provenance).
      strict: raise on a bad image instead of leaving it out.

    Raises:
      InputError: a bad shard, no image, a bad image with ``strict``, a changed backbone or
        model.
    """
    i, n = check_shard(shard)
    t0 = time.perf_counter()
    given, root_abs, files, rels = _collect(images, root)
    _check_twice(files)
    order = sorted(range(len(rels)), key=rels.__getitem__)
    start, stop = shard_bounds(len(order), i, n)
    slice_rows = [order[j] for j in range(start, stop)]
    mine, kept, skipped = _usable(
        given, [files[j] for j in slice_rows], [rels[j] for j in slice_rows], strict
    )
    if mine:
        vectors = describe_for_index(fitted, mine, progress=progress)
    else:
        vectors = np.zeros((0, fitted.dim), np.float32)
    left_out = sorted(set(rels[j] for j in slice_rows) - set(kept))
    rec = {
        "describe_seconds": round(time.perf_counter() - t0, 3),
        "skipped": list(skipped),
        **(record or {}),
    }
    return part_from_vectors(
        vectors, rels, fitted, (i, n), root=given or "", root_abs=str(root_abs), record=rec,
        left_out=left_out,
    )  # fmt: skip


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save_part(part: IndexPart, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes a part folder atomically (``part.json`` last); adds IVF-PQ codes if needed.

    An IVF-PQ part (``fitted.method == "ivfpq"``) adds its vectors to a copy of the
    fitted IVF-PQ index here, with their rows in the whole sorted list as ids.

    Raises:
      InputError: ``out`` exists and is not a part (or is one, without ``overwrite``).
    """
    if not isinstance(part, IndexPart):
        raise InputError(f"save_part needs an IndexPart, got {type(part).__name__}")
    out = Path(out)
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / PART_JSON).is_file()):
            raise InputError(f"{out} exists and is not an index part: choose another path")
        if (out / PART_JSON).is_file() and not overwrite:
            raise InputError(f"{out} holds a part already: overwrite it explicitly")
    t0 = time.perf_counter()
    with atomic_path(out, is_dir=True) as tmp:
        tmp = Path(tmp)
        np.save(tmp / VECTORS, np.ascontiguousarray(part.vectors, np.float32))
        text = json.dumps({"root": part.root, "root_abs": part.root_abs, "paths": list(part.paths)})
        (tmp / PATHS).write_text(text + "\n")
        (tmp / FITTED).write_bytes(part.fitted.source)
        t_add = time.perf_counter()
        if part.fitted.method == "ivfpq":
            write_part_codes(part.fitted.faiss_index(), part.vectors, _rows(part), tmp / CODES)
        add_seconds = time.perf_counter() - t_add
        files = sorted(f.name for f in tmp.iterdir())
        doc = _part_json(
            part,
            {f: (tmp / f).stat().st_size for f in files},
            sha256_file(tmp / VECTORS),
            add_seconds,
            time.perf_counter() - t0,
        )
        (tmp / PART_JSON).write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return out


def slice_paths(paths: Sequence[str], left_out: Sequence[str]) -> list[str]:
    """A part's slice of the whole sorted list: its described paths and those it left out."""
    return sorted([*paths, *left_out])


def _rows(part: IndexPart) -> np.ndarray:
    """(n,) int64: the rows of the part's images in the whole sorted list."""
    where = {p: k for k, p in enumerate(slice_paths(part.paths, part.left_out))}
    return part.start + np.array([where[p] for p in part.paths], np.int64)


def _versions() -> dict:
    import faiss

    return {"ckn": ckn_version, "numpy": np.__version__, "faiss": faiss.__version__}


def _part_json(part: IndexPart, sizes: dict, vectors_sha: str, add_s: float, total_s: float):
    f = part.fitted
    return {
        "format": PART_FORMAT,
        "version": PART_VERSION,
        "ckn_version": ckn_version,
        "shard": list(part.shard),
        "start": part.start,
        "count": part.count,
        "left_out": list(part.left_out),
        "total": part.total,
        "list_sha256": part.list_sha256,
        "dim": f.dim,
        "method": f.method,
        "settings": f.settings.to_json(),
        "description": f.description,
        "fitted_sha256": f.sha256,
        "files": sizes,
        "vectors_sha256": vectors_sha,
        "versions": _versions(),
        "host": platform.node(),
        "utc": _utc(),
        "add_seconds": round(add_s, 3),
        "write_seconds": round(total_s, 3),
        "record": part.record,
    }


def read_part_header(folder: str | os.PathLike) -> dict:
    """``part.json`` of a complete part, after checking its format and file sizes.

    Raises:
      InputError: not a folder, no ``part.json`` (an interrupted run), another format or
        version, a missing file or one whose size differs from the record.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: index part not found")
    path = folder / PART_JSON
    if not path.is_file():
        raise InputError(
            f"{folder} is not a complete index part (no {PART_JSON}: written by an "
            "interrupted run?): build it again"
        )
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path} does not parse ({type(e).__name__}): the part is damaged"
        ) from None
    check_format(doc, path, PART_FORMAT, PART_VERSION, "build the part again")
    try:
        for name, size in doc["files"].items():
            f = folder / name
            if not f.is_file():
                raise InputError(f"{f} is missing: the part is damaged")
            if f.stat().st_size != size:
                raise InputError(
                    f"{f}: {f.stat().st_size} bytes, {PART_JSON} says {size}: the part is "
                    "damaged or was copied incompletely"
                )
        check_shard(doc["shard"])
        int(doc["start"]), int(doc["count"]), int(doc["total"])
        doc["left_out"] = [str(p) for p in doc.get("left_out", [])]
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{path}: damaged part record ({type(e).__name__}: {e})") from None
    return doc


def load_part(folder: str | os.PathLike) -> IndexPart:
    """Reads a part written by :func:`save_part` (vectors memory-mapped, read-only).

    Raises:
      InputError: as :func:`read_part_header`; a fitted file that does not match the record.
    """
    folder = Path(folder)
    doc = read_part_header(folder)
    fitted = load_fitted(folder / FITTED)
    if fitted.sha256 != doc["fitted_sha256"]:
        raise InputError(f"{folder / FITTED} differs from the part's record: the part is damaged")
    try:
        meta = json.loads((folder / PATHS).read_text())
        root, root_abs = str(meta["root"]), str(meta["root_abs"])
        paths = tuple(str(x) for x in meta["paths"])
        vectors = np.load(folder / VECTORS, mmap_mode="r", allow_pickle=False)
    except (TypeError, *ckn.files.CORRUPT_FILE_ERRORS) as e:
        raise InputError(f"{folder}: damaged part ({type(e).__name__})") from None
    if vectors.shape != (doc["count"], doc["dim"]) or len(paths) != doc["count"]:
        raise InputError(f"{folder}: {vectors.shape} vectors for {doc['count']} images: damaged")
    return IndexPart(
        fitted,
        tuple(doc["shard"]),
        doc["start"],
        doc["total"],
        doc["list_sha256"],
        root,
        root_abs,
        paths,
        vectors,
        doc["record"],
        tuple(doc["left_out"]),
    )
