"""A saved, searchable image index: descriptors, image paths, fitted models and settings on disk.

:func:`build_index` describes a collection of images once (a pooling head, a learned
head or CAM OfA over a backbone, or VLAD of local descriptors: any describer of
:data:`retrieval.image.DESCRIBERS`), fits what the description needs (PCA-whitening; the
VLAD codebook and PCAs) and returns a :class:`SavedIndex`; :func:`save_index`
writes it, :func:`load_index` reads it back without describing anything again,
:func:`add_to_index` appends images described and whitened exactly as the indexed ones
(the fitted models are kept, never refitted), :func:`query_index` describes one image
the same way and returns its nearest indexed images.

Settings (:class:`IndexSettings`: ONE describer config of :data:`retrieval.image.DESCRIBERS`,
whitening, search) are fixed at build and saved with the index; a query or an add that
would describe images differently is refused with a message naming the difference
(:func:`check_index_settings`), and so is a backbone weights file, CKN model or learned
head whose content changed since the build (SHA-256).

Whitening. ``whiten="auto"`` (the default) PCA-whitens when the fitting images
number at least ``WHITEN_MIN_RATIO`` times the whitened dimension (global: the
descriptor dimension D unless ``whiten_dim``; VLAD: ``whiten_dim`` or 256),
else it does not whiten; ``"pca"`` always whitens (global: to ``min(D, n / 2)``
dimensions for n fitting images, VLAD: to 256, unless ``whiten_dim``; a PCA
to n - 1 dimensions would make all fitting vectors equidistant), ``"none"``
never. It is fitted on the
indexed images unless ``whiten_images`` names other ones; ``index.json`` says
which, on how many, and why (``whitening.reason``).

Search. Exact (:class:`retrieval.index.ExactIndex`) below ``EXACT_LIMIT`` vectors,
faiss IVF-PQ (:func:`retrieval.index.make_index`) from there on (``search="auto"``),
or as asked (``"exact"`` / ``"ivfpq"``). IVF-PQ candidates (``RERANK`` times k)
are re-scored exactly with the stored float32 vectors, so the scores of a
query are true inner products in every mode. The trained IVF-PQ index is
saved (``faiss.write_index``): reading it back took milliseconds where
training it again took seconds (``benchmarks/bench_index.py`` measures both).

On disk (``DIR/``)::

    index.json              format tag "ckn-image-index", version 1, uid, generation,
                            count, dim, settings (as requested), description (as resolved:
                            backbone name, weights path + SHA-256, GlobalConfig; or local
                            descriptor + model SHA-256, LocalConfig, VladConfig),
                            whitening, vlad, search, parts, history
    part-<id>.npy           (n, dim) float32 searchable (whitened, L2-normalized) vectors
    part-<id>.json          {"root": as given, "root_abs", "root_rel": root_abs relative to
                            DIR, "paths": [relative to root]}
    whitening.npz           the fitted PCA-whitening (global descriptors; absent if none)
    vlad.npz                codebook, local PCA, VLAD PCA (local descriptors)
    ivfpq-<generation>.faiss  the trained IVF-PQ index (absent for exact search)

Image paths. The paths of an index (:attr:`SavedIndex.paths`, ``query_index(...).paths``)
are absolute, so they open from any working folder. On disk each part keeps its root
twice: absolute (``root_abs``) and relative to the index folder (``root_rel``);
:func:`load_index` takes the relative one when that folder exists (an index moved
together with its images, or reached through another mount point) and the absolute one
otherwise (an index moved alone).

Writes are atomic. :func:`save_index` of a new index writes a temporary sibling
folder and renames it. Saving an index grown by :func:`add_to_index` over the folder it
was loaded from writes only the new parts (and a new IVF-PQ file) under new
names, then replaces ``index.json`` (one rename, under a lock): an
interrupted add leaves the previous ``index.json``, which names only the
previous files, so the previous index loads unchanged; files that no
``index.json`` names are removed by the next save. A save whose folder changed
since the index was loaded (another add) is refused.

The package: :mod:`~retrieval._src.index.settings` (:class:`IndexSettings`, the limits),
:mod:`~retrieval._src.index.check` (claimed settings checked against the index's),
:mod:`~retrieval._src.index.models` (the describer and its files by SHA-256),
:mod:`~retrieval._src.index.core` (:class:`SavedIndex` and its searchers),
:mod:`~retrieval._src.index.build` (build, add), :mod:`~retrieval._src.index.query`
(query, summary); this module reads and writes the folder.

Examples:
  >>> s = IndexSettings(PoolingDescription(global_config=GlobalConfig(head="gem")))
  >>> save_index(build_index("photos/", s), "photos.index")
  >>> idx = add_to_index(load_index("photos.index"), "more_photos/")
  >>> save_index(idx, "photos.index")
  >>> scores, ids, paths = query_index(idx, "q.jpg", k=10)
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
from pathlib import Path

import numpy as np

import ckn
from ckn import InputError
from ckn.files import atomic_path
from retrieval._src.describer import DEFAULT_BACKBONE
from retrieval._src.index.build import add_to_index, build_index, describe_for_index
from retrieval._src.index.check import (
    CLAIMS,
    Mismatch,
    check_index_settings,
    mismatch_text,
    settings_mismatch,
)
from retrieval._src.index.core import (
    IndexQueryResult,
    Part,
    SavedIndex,
    _make_searcher,
)
from retrieval._src.index.models import LOCAL_BASELINES
from retrieval._src.index.ondisk import open_ondisk
from retrieval._src.index.query import index_info, query_images, query_index
from retrieval._src.index.settings import (
    EXACT_LIMIT,
    FORMAT,
    NPROBE,
    RERANK,
    SEARCH_MODES,
    VERSION,
    VLAD_WHITEN_DIM,
    WHITEN_MIN_RATIO,
    WHITEN_MODES,
    IndexSettings,
    check_format,
)
from retrieval._src.postprocess import PCAWhitening, Whitening
from retrieval._src.vlad_fit import VladConfig, VladModel

__all__ = [
    "CLAIMS",
    "DEFAULT_BACKBONE",
    "EXACT_LIMIT",
    "NPROBE",
    "FORMAT",
    "LOCAL_BASELINES",
    "RERANK",
    "SEARCH_MODES",
    "VERSION",
    "VLAD_WHITEN_DIM",
    "WHITEN_MIN_RATIO",
    "WHITEN_MODES",
    "IndexQueryResult",
    "IndexSettings",
    "Mismatch",
    "Part",
    "SavedIndex",
    "add_to_index",
    "build_index",
    "check_index_settings",
    "describe_for_index",
    "index_info",
    "load_index",
    "query_images",
    "mismatch_text",
    "query_index",
    "save_index",
    "settings_mismatch",
]

_JSON = "index.json"
_LOCK = ".lock"
_WHITENING_FILE = "whitening.npz"
_VLAD_FILE = "vlad.npz"


def _npz_whitening(w) -> dict:
    if isinstance(w, PCAWhitening):
        return {"type": np.array("pca"), **w._asdict()}
    return {"type": np.array("whitening"), **w._asdict()}


def _whitening_from(z, prefix: str = ""):
    kind = str(z[prefix + "type"])
    if kind == "pca":
        return PCAWhitening(*(z[prefix + f] for f in PCAWhitening._fields))
    return Whitening(*(z[prefix + f] for f in Whitening._fields))


def _write_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _write_npy(path: Path, a: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, a)


def _write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _write_faiss(path: Path, searcher) -> None:
    import faiss

    with atomic_path(path) as tmp:
        faiss.write_index(searcher._index, str(tmp))


def _header(index: SavedIndex) -> dict:
    doc = index_info(index)
    doc["parts"] = [
        {"id": p.id, "count": len(p.paths), "vectors": f"part-{p.id}.npy",
         "paths": f"part-{p.id}.json"} for p in index.parts
    ]  # fmt: skip
    doc["whitening"] = dict(
        index.whitening_info, file=_WHITENING_FILE if index.whitening is not None else None
    )
    if index.vlad is not None:
        doc["vlad"] = {
            "file": _VLAD_FILE,
            "config": dataclasses.asdict(index.vlad.config),
            "info": index.vlad.info,
        }
    else:
        doc["vlad"] = None
    search = dict(index.search_info)
    search["file"] = f"ivfpq-{index.generation}.faiss" if search["method"] == "ivfpq" else None
    doc["search"] = search
    return _json_ready(doc)


def _json_ready(x):
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_part(folder: Path, index: SavedIndex, i: int, start: int, home: Path) -> None:
    """Writes part ``i`` into ``folder``; ``home``: the index folder its root is relative to."""
    p = index.parts[i]
    n = len(p.paths)
    _write_npy(folder / f"part-{p.id}.npy", index.vectors[start : start + n])
    _write_json(folder / f"part-{p.id}.json", _part_meta(p, home))


def _part_meta(p: Part, home: Path) -> dict:
    """``part-<id>.json``: the root as given, absolute and relative to the index folder
    ``home`` (None for vectors without images), and the paths."""
    rel = Path(os.path.relpath(p.root_abs, home.resolve())).as_posix() if p.root_abs else None
    return {"root": p.root, "root_abs": p.root_abs, "root_rel": rel, "paths": list(p.paths)}


def _root_now(folder: Path, meta: dict) -> str:
    """A part's root as it is now: relative to the index folder if that folder exists."""
    rel = meta.get("root_rel")
    if rel is not None:
        here = (folder / rel).resolve()
        if here.is_dir():
            return str(here)
    return meta["root_abs"]


def _write_all(folder: Path, index: SavedIndex, home: Path) -> None:
    start = 0
    for i, p in enumerate(index.parts):
        _write_part(folder, index, i, start, home)
        start += len(p.paths)
    if index.whitening is not None:
        _write_npz(folder / _WHITENING_FILE, _npz_whitening(index.whitening))
    if index.vlad is not None:
        _write_npz(folder / _VLAD_FILE, _npz_vlad(index.vlad))
    head = _header(index)
    if head["search"]["file"]:
        _write_faiss(folder / head["search"]["file"], index.searcher)
    _write_json(folder / _JSON, head)


def _npz_vlad(v: VladModel) -> dict:
    out = {"centers": v.centers}
    for name in ("local_pca", "pca"):
        w = getattr(v, name)
        if w is not None:
            out.update({f"{name}.{k}": a for k, a in _npz_whitening(w).items()})
    return out


def _vlad_from(z, config: dict, info_: dict) -> VladModel:
    def pca(name):
        if f"{name}.type" not in z.files:
            return None
        return _whitening_from(z, f"{name}.")

    return VladModel(VladConfig(**config), z["centers"], pca("local_pca"), pca("pca"), info_)


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder/.lock`` (one add at a time)."""
    with open(folder / _LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_index(folder: Path) -> dict | None:
    try:
        doc = json.loads((folder / _JSON).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None


def save_index(index: SavedIndex, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes an index to a folder, atomically (see the module docstring).

    Over the folder the index was loaded from (same uid, whose parts the index extends),
    only the new parts and a new ``index.json`` are written. Otherwise the folder is
    written whole to a temporary sibling and renamed; an existing folder is replaced
    only with ``overwrite`` and only if it holds an index (or nothing).

    Raises:
      InputError: the folder exists (without ``overwrite``), is not an index folder, or
        holds this index changed by someone else since it was loaded.
    """
    if not isinstance(index, SavedIndex):
        raise InputError(f"save needs a SavedIndex, got {type(index).__name__}")
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file, not an index folder")
    old = _is_index(folder) if folder.is_dir() else None
    if old is not None and old.get("uid") == index.uid:
        with _locked(folder):
            old = _is_index(folder) or {}
            ids = [p["id"] for p in old.get("parts", [])]
            mine = [p.id for p in index.parts]
            if mine[: len(ids)] != ids or old.get("version") != VERSION:
                raise InputError(
                    f"{folder} changed since this index was loaded (another add?): "
                    "load it again and repeat the add"
                )
            start = sum(len(p.paths) for p in index.parts[: len(ids)])
            for i in range(len(ids), len(index.parts)):
                _write_part(folder, index, i, start, folder)
                start += len(index.parts[i].paths)
            head = _header(index)
            if head["search"]["file"]:
                _write_faiss(folder / head["search"]["file"], index.searcher)
            _write_json(folder / _JSON, head)  # the commit point
            _remove_unnamed(folder, head)
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        if old is None:
            raise InputError(f"{folder} exists and is not an index folder: choose another path")
        if not overwrite:
            raise InputError(f"{folder} holds another index: pass overwrite to replace it")
    with atomic_path(folder, is_dir=True) as tmp:
        _write_all(Path(tmp), index, folder)
    return folder


def _remove_unnamed(folder: Path, head: dict) -> None:
    """Deletes part / IVF-PQ files that ``index.json`` does not name (interrupted adds)."""
    named = {_JSON, _LOCK, _WHITENING_FILE, _VLAD_FILE, head["search"]["file"],
             head["search"].get("ivfdata")}  # fmt: skip
    for p in head["parts"]:
        named.update((p["vectors"], p["paths"]))
    for f in folder.iterdir():
        if f.is_file() and f.name not in named and f.name.startswith(("part-", "ivfpq-")):
            with contextlib.suppress(OSError):
                f.unlink()


def load_index(directory: str | os.PathLike) -> SavedIndex:
    """Reads an index written by :func:`save_index` (nothing is described again).

    Each part's images are found relative to the index folder when they are there,
    else at their absolute path (see "Image paths" in the module docstring).

    Raises:
      InputError: not an index folder, another format version, missing or damaged files.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise InputError(f"index folder not found: {folder}")
    path = folder / _JSON
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{folder} is not an image index (no {_JSON})") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path} does not parse ({type(e).__name__}: {e})") from None
    check_format(doc, path, FORMAT, VERSION, "rebuild the index")
    try:
        settings = IndexSettings.from_json(doc["settings"])
        dim = int(doc["dim"])
        ondisk = doc["search"].get("storage") == "ondisk"  # merged parts: map, do not read
        parts, chunks = [], []
        for p in doc["parts"]:
            v = _load_npy(folder / p["vectors"])
            meta = json.loads((folder / p["paths"]).read_text())
            if v.ndim != 2 or v.shape != (int(p["count"]), dim) or v.dtype != np.float32:
                raise InputError(
                    f"{folder / p['vectors']}: shape {v.shape} {v.dtype}, expected "
                    f"({p['count']}, {dim}) float32: the index folder is damaged"
                )
            if len(meta["paths"]) != v.shape[0]:
                raise InputError(f"{folder / p['paths']}: {len(meta['paths'])} paths for "
                                 f"{v.shape[0]} vectors: the index folder is damaged")  # fmt: skip
            parts.append(Part(p["id"], meta["root"], _root_now(folder, meta), tuple(meta["paths"])))
            chunks.append(v)
        # One part stays memory-mapped (an IVF-PQ query reads only its candidates' rows:
        # loading 10^5 x 1280 floats took about half a second of a query process); several
        # are joined in memory.
        if len(chunks) == 1:
            vectors = chunks[0]
        else:
            vectors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        if vectors.shape[0] != int(doc["count"]):
            raise InputError(f"{path}: count {doc['count']} but {vectors.shape[0]} vectors")
        w = doc["whitening"]
        whitening = None
        if w.get("file"):
            with np.load(folder / w["file"]) as z:
                whitening = _whitening_from(z)
        vlad = None
        if doc.get("vlad"):
            with np.load(folder / doc["vlad"]["file"]) as z:
                vlad = _vlad_from(z, doc["vlad"]["config"], doc["vlad"]["info"])
        search = dict(doc["search"])
        fidx = None
        if search["method"] == "ivfpq":
            try:
                import faiss
            except ImportError:
                raise InputError("this index searches with IVF-PQ: pip install faiss-cpu") from None
            fpath = folder / search["file"]
            if not fpath.is_file():
                raise InputError(f"{fpath} is missing: the index folder is damaged")
            if ondisk:
                fidx = open_ondisk(fpath, folder / search["ivfdata"])
            else:
                fidx = faiss.read_index(str(fpath))
        searcher, _ = _make_searcher(
            vectors, search["method"], fidx, search.get("ivfpq"), nprobe=settings.nprobe
        )
        search.pop("file", None)
        whitening_info = {k: v for k, v in w.items() if k != "file"}
        return SavedIndex(
            settings=settings,
            description=doc["description"],
            vectors=vectors,
            parts=tuple(parts),
            whitening=whitening,
            whitening_info=whitening_info,
            vlad=vlad,
            search_info=search,
            uid=doc["uid"],
            generation=int(doc["generation"]),
            history=tuple(doc["history"]),
            searcher=searcher,
        )
    except (TypeError, *ckn.files.CORRUPT_FILE_ERRORS) as e:
        raise InputError(
            f"{folder}: damaged index ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
        ) from None


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path} is missing: the index folder is damaged")
    return np.load(path, allow_pickle=False, mmap_mode="r")
