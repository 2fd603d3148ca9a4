"""A saved, searchable image index: descriptors, image paths, fitted models and settings on disk.

:func:`build_index` describes a collection of images once (global CNN descriptors,
:mod:`retrieval._src.global_desc`, or VLAD of local descriptors,
:mod:`retrieval._src.vlad_fit`), fits what the description needs (PCA-whitening;
the VLAD codebook and PCAs) and returns a :class:`SavedIndex`; :func:`save_index`
writes it, :func:`load_index` reads it back without describing anything again,
:func:`add_to_index` appends images described and whitened exactly as the indexed ones
(the fitted models are kept, never refitted), :func:`query_index` describes one image
the same way and returns its nearest indexed images.

Settings (:class:`IndexSettings`) are fixed at build and saved with the index;
a query or an add that would describe images differently is refused with a
message naming the difference (:func:`check_index_settings`), and so is a backbone
weights file or CKN model whose content changed since the build (SHA-256).

Whitening. ``whiten="auto"`` (the default) PCA-whitens when the fitting images
number at least ``WHITEN_MIN_RATIO`` times the whitened dimension (global: the
descriptor dimension D unless ``whiten_dim``; VLAD: ``whiten_dim`` or 256),
else it does not whiten; ``"pca"`` always whitens (global: to ``min(D, n / 2)``
dimensions for n fitting images, VLAD: to 256, unless ``whiten_dim``; a PCA
to n - 1 dimensions would make all fitting vectors equidistant), ``"none"``
never. It is fitted on the
indexed images unless ``whiten_images`` names other ones; ``index.json`` says
which, on how many, and why (``whitening.reason``).

Search. Exact (:class:`retrieval.ExactIndex`) below ``EXACT_LIMIT`` vectors,
faiss IVF-PQ (:func:`retrieval.make_index`) from there on (``search="auto"``),
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
    part-<id>.json          {"root": as given, "root_abs", "paths": [relative to root]}
    whitening.npz           the fitted PCA-whitening (global descriptors; absent if none)
    vlad.npz                codebook, local PCA, VLAD PCA (local descriptors)
    ivfpq-<generation>.faiss  the trained IVF-PQ index (absent for exact search)

Writes are atomic. :func:`save_index` of a new index writes a temporary sibling
folder and renames it. Saving an index grown by :func:`add_to_index` over the folder it
was loaded from writes only the new parts (and a new IVF-PQ file) under new
names, then replaces ``index.json`` (one rename, under a lock): an
interrupted add leaves the previous ``index.json``, which names only the
previous files, so the previous index loads unchanged; files that no
``index.json`` names are removed by the next save. A save whose folder changed
since the index was loaded (another add) is refused.

Examples:
  >>> s = IndexSettings(global_config=GlobalConfig(head="gem"))
  >>> save_index(build_index("photos/", s), "photos.index")
  >>> idx = add_to_index(load_index("photos.index"), "more_photos/")
  >>> save_index(idx, "photos.index")
  >>> scores, ids, paths = query_index(idx, "q.jpg", k=10)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ckn import InputError, atomic_path
from retrieval._src.data import IMAGE_EXTENSIONS
from retrieval._src.global_desc import GlobalConfig, extract_global, read_image_any
from retrieval._src.image_folder import list_images
from retrieval._src.local import LocalConfig, describe_images, make_describer
from retrieval._src.postprocess import PCAWhitening, Whitening, apply_whitening, fit_pca_whitening
from retrieval._src.search import ExactIndex, FaissIndex, make_index
from retrieval._src.vlad_fit import VladConfig, VladModel, encode_images, fit_vlad

#: Format tag and version of ``index.json``; an index of another version is refused.
FORMAT = "ckn-image-index"
VERSION = 1
#: Collections of at least this many vectors are searched with IVF-PQ under ``search="auto"``.
EXACT_LIMIT = 50_000
#: IVF-PQ candidates per requested neighbour, re-scored exactly (benchmarks/bench_index.py:
#: recall@10 0.90 with 4, 1.00 with 10 at 100,000 vectors; latency about the same).
RERANK = 10
#: ``whiten="auto"`` whitens when fitting images >= this times the whitened dimension.
WHITEN_MIN_RATIO = 2
#: Whitened dimension of VLADs when ``whiten_dim`` is None.
VLAD_WHITEN_DIM = 256
WHITEN_MODES = ("auto", "none", "pca")
SEARCH_MODES = ("auto", "exact", "ivfpq")
DEFAULT_BACKBONE = "efficientnet-lite0"
LOCAL_BASELINES = ("sift", "rootsift", "pixels")

_JSON = "index.json"
_LOCK = ".lock"
_WHITENING_FILE = "whitening.npz"
_VLAD_FILE = "vlad.npz"
# GlobalConfig fields that change the descriptors (batch_size does not).
_GLOBAL_FIELDS = ("head", "p", "levels", "scales", "max_side", "bucket")


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class IndexSettings:
    """How an index describes, whitens and searches images (fixed at build).

    Exactly one of ``global_config`` and ``local`` is set.

    Attributes:
      global_config: global CNN descriptors with this :class:`retrieval.GlobalConfig`.
      backbone: the CNN, "NAME" or "NAME:FILE" (``ckn eval-images --backbone``);
        global descriptors only.
      local: VLAD of local descriptors: "sift", "rootsift", "pixels" or a model
        directory (``ckn train``).
      local_config: interest regions of the local descriptors.
      vlad: codebook and VLAD normalizations (its ``pca_dim`` is set by ``whiten``).
      whiten: "auto", "pca" or "none" (see the module docstring).
      whiten_dim: whitened dimension (None: see the module docstring).
      search: "auto", "exact" or "ivfpq".
    """

    global_config: GlobalConfig | None = None
    backbone: str = DEFAULT_BACKBONE
    local: str | None = None
    local_config: LocalConfig = LocalConfig()
    vlad: VladConfig = VladConfig(pca_dim=None)
    whiten: str = "auto"
    whiten_dim: int | None = None
    search: str = "auto"

    def __post_init__(self):
        if (self.global_config is None) == (self.local is None):
            raise InputError("index settings need exactly one of global_config and local")
        if self.global_config is not None and not isinstance(self.global_config, GlobalConfig):
            raise InputError(
                f"global_config must be a GlobalConfig, got {type(self.global_config).__name__}"
            )
        if self.local is not None:
            object.__setattr__(self, "local", os.fspath(self.local))
        if self.whiten not in WHITEN_MODES:
            raise InputError(
                f"whiten must be one of {', '.join(WHITEN_MODES)}, got {self.whiten!r}"
            )
        if self.search not in SEARCH_MODES:
            raise InputError(
                f"search must be one of {', '.join(SEARCH_MODES)}, got {self.search!r}"
            )
        d = self.whiten_dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise InputError(f"whiten_dim must be None or an int >= 1, got {d!r}")
        if self.whiten == "none" and d is not None:
            raise InputError("whiten_dim needs whiten 'pca' or 'auto'")

    @property
    def kind(self) -> str:
        """The kind of descriptors: "global" or "local"."""
        return "global" if self.global_config is not None else "local"

    def to_json(self) -> dict:
        out = {
            "kind": self.kind,
            "whiten": self.whiten,
            "whiten_dim": self.whiten_dim,
            "search": self.search,
        }
        if self.kind == "global":
            gc = dataclasses.asdict(self.global_config)
            out["global"] = {k: gc[k] for k in _GLOBAL_FIELDS}
            out["backbone"] = self.backbone
        else:
            out["local"] = self.local
            out["local_config"] = dataclasses.asdict(self.local_config)
            out["vlad"] = dataclasses.asdict(self.vlad)
        return out

    @classmethod
    def from_json(cls, doc: dict) -> IndexSettings:
        try:
            common = {k: doc[k] for k in ("whiten", "whiten_dim", "search")}
            if doc["kind"] == "global":
                g = dict(doc["global"])
                g["scales"] = tuple(g["scales"])
                return cls(global_config=GlobalConfig(**g), backbone=doc["backbone"], **common)
            if doc["kind"] == "local":
                return cls(
                    local=doc["local"],
                    local_config=LocalConfig(**doc["local_config"]),
                    vlad=VladConfig(**doc["vlad"]),
                    **common,
                )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"index settings do not parse ({type(e).__name__}: {e})") from None
        raise InputError(f"index settings of unknown kind {doc.get('kind')!r}")


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _flat(settings: IndexSettings) -> dict[str, Any]:
    """The command-line view of the settings: {flag: value}."""
    if settings.kind == "global":
        gc = settings.global_config
        return {
            "--global": gc.head,
            "--backbone": settings.backbone.partition(":")[0],
            "--scales": tuple(gc.scales),
            "--max-side": gc.max_side,
            "--p": gc.p,
            "--levels": gc.levels,
            "--bucket": gc.bucket,
        }
    return {
        "--local": settings.local,
        "--max-regions": settings.local_config.max_regions,
        "--k": settings.vlad.k,
        "--local-dim": settings.vlad.local_dim,
    }


def check_index_settings(index: SavedIndex, **claimed) -> None:
    """Refuses settings that differ from the index's.

    Args:
      index: a :class:`SavedIndex`.
      claimed: any of ``global_head``, ``backbone`` ("NAME" or "NAME:FILE"), ``local``,
        ``scales``, ``max_side`` (None values are not checked).

    Raises:
      InputError: naming the first difference, e.g. "the index was built with --global
        rmac, not --global gem".
    """
    have = _flat(index.settings)
    built = "the index was built with"
    names = {"global_head": "--global", "local": "--local", "scales": "--scales",
             "max_side": "--max-side", "backbone": "--backbone"}  # fmt: skip
    for key, value in claimed.items():
        if key not in names:
            raise TypeError(f"check_settings: unknown setting {key!r}")
        if value is None:
            continue
        flag = names[key]
        if flag in ("--global", "--local") and flag not in have:
            other = "--local" if flag == "--global" else "--global"
            raise InputError(
                f"{built} {other} {have[other]}, not {flag} {value}: its descriptors are "
                f"{index.settings.kind} ones"
            )
        if flag == "--backbone":
            name, _, path = str(value).partition(":")
            if name != have["--backbone"]:
                raise InputError(f"{built} --backbone {have['--backbone']}, not {name}")
            if path:
                want = index.description.get("weights_sha256")
                if _sha256_any(path) != want:
                    raise InputError(
                        f"{path} holds other weights than the index was built with "
                        f"(SHA-256 {want[:12]}...)"
                    )
            continue
        if flag == "--local":
            same = _local_key(value) == _local_key(index.settings.local)
        elif flag == "--scales":
            same = tuple(float(s) for s in value) == tuple(have[flag])
        else:
            same = value == have[flag]
        if not same:
            raise InputError(f"{built} {flag} {_fmt(have[flag])}, not {flag} {_fmt(value)}")


def _local_key(spec: str) -> str:
    return spec if spec in LOCAL_BASELINES else str(Path(spec).resolve())


# --------------------------------------------------------------------------- hashes / models


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for the process."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"file not found: {p}")
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _sha256_any(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, or of a model folder's files (a CKN backbone)."""
    return _sha256_tree(Path(path)) if Path(path).is_dir() else _sha256_file(path)


def _sha256_tree(folder: Path) -> str:
    """SHA-256 over a folder's files (relative names and contents, sorted)."""
    h = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(_sha256_file(p).encode())
    return h.hexdigest()


def _weights_path(spec: str) -> Path:
    from retrieval._src.nets.backbone import efficientnet_lite0_weights

    name, _, path = spec.partition(":")
    if path:
        return Path(path)
    if name == DEFAULT_BACKBONE:
        return Path(efficientnet_lite0_weights())
    what = "MODEL_DIR" if name == "ckn" else "FILE"
    raise InputError(f"{name} needs weights: --backbone {name}:{what}")


_BACKBONES: dict[tuple[str, str], Any] = {}


def _backbone(spec: str, sha: str | None = None):
    """The backbone of "NAME[:FILE]" and its weights file's SHA-256 (checked against ``sha``)."""
    from retrieval._src.global_eval import load_backbone_spec

    path = _weights_path(spec)
    got = _sha256_any(path)
    if sha is not None and got != sha:
        raise InputError(
            f"the weights file {path} changed since the index was built "
            f"(SHA-256 {got[:12]}... instead of {sha[:12]}...): rebuild the index"
        )
    key = (spec.partition(":")[0], got)
    if key not in _BACKBONES:
        _BACKBONES.clear()  # one network in memory at a time
        _BACKBONES[key] = load_backbone_spec(f"{key[0]}:{path}")
    return _BACKBONES[key], path, got


def _describer(spec: str, sha: str | None = None):
    if spec in LOCAL_BASELINES:
        return make_describer(spec), None
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"--local: not sift, rootsift, pixels nor a model folder: {spec}")
    got = _sha256_tree(folder)
    if sha is not None and got != sha:
        raise InputError(
            f"the model {folder} changed since the index was built "
            f"(SHA-256 {got[:12]}... instead of {sha[:12]}...): rebuild the index"
        )
    return make_describer(str(folder)), got


# --------------------------------------------------------------------------- the index value


class Part(NamedTuple):
    """Images added together: their root folder and paths (one ``part-<id>`` pair on disk).

    Attributes:
      id: hex name of the part's files.
      root: the root as given ("" for paths given one by one).
      root_abs: the root's absolute path when it was added.
      paths: image paths relative to ``root`` (POSIX separators).
    """

    id: str
    root: str
    root_abs: str
    paths: tuple[str, ...]


class IndexQueryResult(NamedTuple):
    """The top-k of one query (unpacks as ``scores, ids, paths``).

    scores: (k,) float32 inner products with the query, decreasing; ids: (k,) int64 row
    numbers in the index; paths: the images, as ``root/relative path``.
    """

    scores: np.ndarray
    ids: np.ndarray
    paths: list[str]


@dataclasses.dataclass(frozen=True, eq=False)
class SavedIndex:
    """A searchable image collection with everything needed to describe a query the same way.

    Built by :func:`build_index`, :func:`add_to_index` and :func:`load_index` (module docstring).

    Attributes:
      settings: the :class:`IndexSettings`.
      description: resolved description: dim, backbone name, weights path and SHA-256 (global)
        or local descriptor, model SHA-256, VLAD dimension (local).
      vectors: (N, dim) float32 searchable vectors (whitened, L2-normalized).
      parts: the :class:`Part` of each build / add, in order (rows follow them).
      whitening: the fitted global whitening, or None (VLAD: in ``vlad.pca``).
      whitening_info: what was fitted on what, and why.
      vlad: the fitted :class:`retrieval.VladModel` (local descriptors), else None.
      search_info: method ("exact" / "ivfpq"), IVF-PQ sizes, re-ranking.
      uid: identity of the index (kept by :func:`add_to_index`).
      generation: number of builds and adds.
      history: one entry per build / add.
    """

    settings: IndexSettings
    description: dict
    vectors: np.ndarray
    parts: tuple[Part, ...]
    whitening: PCAWhitening | Whitening | None
    whitening_info: dict
    vlad: VladModel | None
    search_info: dict
    uid: str
    generation: int
    history: tuple[dict, ...]
    searcher: Any = dataclasses.field(default=None, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def paths(self) -> list[str]:
        """Every image as ``root/relative path`` (as given), by row."""
        return [_join(p.root, rel) for p in self.parts for rel in p.paths]

    def resolved_paths(self) -> list[Path]:
        """Every image as an absolute path (the root's absolute path when added)."""
        return [Path(p.root_abs) / rel for p in self.parts for rel in p.paths]

    def search(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search only: (Q, k') scores and ids of searchable (Q, dim) vectors, k' = min(k, N)."""
        return _search(self, vectors, k)


def _join(root: str, rel: str) -> str:
    return rel if not root else f"{root.rstrip('/')}/{rel}"


# --------------------------------------------------------------------------- images


def _collect(images, root) -> tuple[str, Path, list[Path], list[str]]:
    """(root as given, root absolute, absolute image paths, paths relative to root)."""
    if isinstance(images, (str, os.PathLike)):
        folder = Path(images)
        files = list_images(folder)
        given = os.fspath(images)
        return (
            given,
            folder.resolve(),
            [f.resolve() for f in files],
            [f.relative_to(folder).as_posix() for f in files],
        )
    if not isinstance(images, Sequence) or isinstance(images, (bytes, np.ndarray)):
        raise InputError(
            f"images must be a folder or a list of image paths, got {type(images).__name__}"
        )
    if len(images) == 0:
        raise InputError("images: empty list, nothing to index")
    base = Path(root) if root is not None else None
    out, rels = [], []
    for p in images:
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"images must be image paths, got a {type(p).__name__}")
        p = Path(p)
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InputError(f"not an image file ({', '.join(IMAGE_EXTENSIONS)}): {p}")
        full = (base / p) if base is not None and not p.is_absolute() else p
        if not full.is_file():
            raise InputError(f"image not found: {full}")
        out.append(full.resolve())
        rels.append(p.as_posix())
    given = "" if root is None else os.fspath(root)
    return given, (base.resolve() if base is not None else Path.cwd()), out, rels


def _check_new(index: SavedIndex | None, files: list[Path]) -> None:
    seen = {}
    for f in files:
        if f in seen:
            raise InputError(f"image given twice: {f}")
        seen[f] = True
    if index is not None:
        have = set(index.resolved_paths())
        for f in files:
            if f in have:
                raise InputError(f"already in the index: {f} (nothing added)")


# --------------------------------------------------------------------------- describing


def _describe_global(index_like: dict, files: list[Path], progress: bool) -> np.ndarray:
    settings = index_like["settings"]
    net, _, _ = _backbone(settings.backbone, index_like["description"].get("weights_sha256"))
    return extract_global(net, [str(f) for f in files], settings.global_config, progress=progress)


def _local_feats(settings: IndexSettings, describer, files: list[Path], progress: bool):
    return describe_images(
        [str(f) for f in files], describer, config=settings.local_config, progress=progress
    )


def _whiten_plan(settings: IndexSettings, n_fit: int, d: int, where: str) -> tuple[int | None, str]:
    """(whitened dimension or None, reason) for ``n_fit`` fitting images."""
    if settings.whiten == "none":
        return None, "whiten none"
    if settings.whiten == "auto":
        dim = settings.whiten_dim or (VLAD_WHITEN_DIM if settings.kind == "local" else d)
        need = WHITEN_MIN_RATIO * dim
        if n_fit < need:
            return None, (
                f"whiten auto: {n_fit} images ({where}) < {need} = {WHITEN_MIN_RATIO} x {dim} "
                "dimensions: not whitened"
            )
        return dim, (
            f"whiten auto: {n_fit} images ({where}) >= {need} = {WHITEN_MIN_RATIO} x {dim} "
            f"dimensions: PCA-whitened to {dim}-D"
        )
    if n_fit < 2:
        raise InputError(f"PCA-whitening needs at least 2 images ({where}), got {n_fit}")
    if settings.kind == "local":
        dim = settings.whiten_dim or VLAD_WHITEN_DIM
    else:
        dim = settings.whiten_dim or min(d, max(1, n_fit // WHITEN_MIN_RATIO))
    return dim, f"whiten pca: PCA-whitened to {dim}-D, fitted on {n_fit} images ({where})"


# --------------------------------------------------------------------------- search


def _method(settings: IndexSettings, n: int) -> str:
    if settings.search == "auto":
        return "exact" if n < EXACT_LIMIT else "ivfpq"
    return settings.search


def _make_searcher(vectors: np.ndarray, method: str, faiss_index=None, options=None):
    """(searcher, search_info) over the vectors."""
    if method == "exact":
        s = ExactIndex(vectors.shape[1], metric="ip")
        s.add(vectors)
        return s, {"method": "exact"}
    if faiss_index is not None:
        s = FaissIndex(
            vectors.shape[1],
            nlist=options["nlist"],
            m=options["m"],
            nbits=options["nbits"],
            nprobe=options["nprobe"],
        )
        s._index = faiss_index  # the trained, filled index read from disk
        if s.ntotal != vectors.shape[0]:
            raise InputError(
                f"the IVF-PQ file holds {s.ntotal} vectors but the index {vectors.shape[0]}: "
                "the index folder is damaged"
            )
    else:
        s = make_index(vectors, "ivfpq")
    return s, {"method": "ivfpq", "ivfpq": dict(s.options), "rerank": RERANK}


def _search(index: SavedIndex, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(vectors, np.float32)
    if q.ndim == 1:
        q = q[None]
    if q.ndim != 2 or q.shape[1] != index.dim:
        raise InputError(f"query vectors must be (Q, {index.dim}), got {q.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), index.ntotal)
    s = index.searcher
    if isinstance(s, ExactIndex):
        return s.search(q, k)
    # IVF-PQ candidates, re-scored with the stored vectors (ties: smaller id first).
    kc = min(index.ntotal, k * RERANK)
    _, cand = s.search(q, kc)
    scores = np.full((q.shape[0], k), -np.inf, np.float32)
    ids = np.full((q.shape[0], k), -1, np.int64)
    for r in range(q.shape[0]):
        c = np.unique(cand[r][cand[r] >= 0])
        exact = index.vectors[c] @ q[r]
        order = np.argsort(-exact, kind="stable")[:k]
        scores[r, : order.size] = exact[order]
        ids[r, : order.size] = c[order]
    return scores, ids


# --------------------------------------------------------------------------- build / add / query


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def build_index(
    images,
    settings: IndexSettings,
    *,
    root: str | os.PathLike | None = None,
    whiten_images=None,
    progress: bool = False,
    record: dict | None = None,
) -> SavedIndex:
    """Describes a collection, fits whitening / VLAD, and returns a searchable index.

    Args:
      images: a folder (every image under it, recursively) or a list of image paths
        (relative to ``root`` when given).
      settings: an :class:`IndexSettings`.
      root: base folder of a list of paths.
      whiten_images: a folder (or list of paths) of other images to fit the whitening
        (and for VLAD the codebook) on; default: the indexed images.
      progress: progress bars.
      record: extra JSON-ready facts for the history entry (e.g. the command's provenance).

    Returns:
      A :class:`SavedIndex` (not written: :func:`save_index` it).

    Raises:
      InputError: no image, an unreadable image, bad settings, too few images to whiten.
    """
    if not isinstance(settings, IndexSettings):
        raise InputError(f"settings must be IndexSettings, got {type(settings).__name__}")
    t0 = time.perf_counter()
    given, root_abs, files, rels = _collect(images, root)
    _check_new(None, files)
    fit_files = None
    where = "the indexed images"
    if whiten_images is not None:
        _, _, fit_files, _ = _collect(whiten_images, None)
        where = os.fspath(whiten_images) if isinstance(whiten_images, (str, os.PathLike)) else (
            f"{len(fit_files)} other images")  # fmt: skip
    whitening, vlad = None, None
    if settings.kind == "global":
        net, wpath, sha = _backbone(settings.backbone)
        description = {
            "kind": "global",
            "backbone": net.name,
            "weights": str(wpath.resolve()),
            "weights_sha256": sha,
        }
        ctx = {"settings": settings, "description": description}
        raw = _describe_global(ctx, files, progress)
        fit = raw if fit_files is None else _describe_global(ctx, fit_files, progress)
        wdim, reason = _whiten_plan(settings, fit.shape[0], raw.shape[1], where)
        if wdim is not None:
            whitening = fit_pca_whitening(fit, min(wdim, raw.shape[1]))
            vectors = apply_whitening(whitening, raw)
        else:
            vectors = np.asarray(raw, np.float32)
        description["raw_dim"] = int(raw.shape[1])
    else:
        describer, sha = _describer(settings.local)
        description = {
            "kind": "local",
            "local": settings.local if sha is None else str(Path(settings.local).resolve()),
            "model_sha256": sha,
            "local_dim": describer.dim,
        }
        feats = _local_feats(settings, describer, files, progress)
        train = (
            feats if fit_files is None else _local_feats(settings, describer, fit_files, progress)
        )
        wdim, reason = _whiten_plan(settings, len(train), 0, where)
        config = dataclasses.replace(settings.vlad, pca_dim=wdim)
        vlad = fit_vlad(train, config)
        vectors = encode_images(vlad, feats, names=rels)
        description["vlad_dim"] = int(vlad.centers.size)
    whitening_info = {
        "kind": "none" if wdim is None else "pca",
        "requested": settings.whiten,
        "dim": wdim,
        "fitted_on": where if wdim is not None else None,
        "fit_images": int(len(fit_files) if fit_files is not None else len(files)),
        "reason": reason,
    }
    vectors = np.ascontiguousarray(vectors, np.float32)
    description["dim"] = int(vectors.shape[1])
    method = _method(settings, vectors.shape[0])
    searcher, search_info = _make_searcher(vectors, method)
    search_info.update(requested=settings.search, exact_limit=EXACT_LIMIT)
    part = Part(uuid.uuid4().hex[:16], given, str(root_abs), tuple(rels))
    entry = {
        "op": "build",
        "images": given or f"{len(files)} paths",
        "count": len(files),
        "utc": _utc(),
        "seconds": round(time.perf_counter() - t0, 3),
        **(record or {}),
    }
    return SavedIndex(
        settings=settings,
        description=description,
        vectors=vectors,
        parts=(part,),
        whitening=whitening,
        whitening_info=whitening_info,
        vlad=vlad,
        search_info=search_info,
        uid=uuid.uuid4().hex,
        generation=1,
        history=(entry,),
        searcher=searcher,
    )


def describe_for_index(index: SavedIndex, images, *, progress: bool = False) -> np.ndarray:
    """Searchable (N, dim) vectors of images (paths or uint8 arrays), as the index describes.

    Raises:
      InputError: an unreadable image, a backbone weights file or CKN model that changed.
    """
    items = list(images)
    if not items:
        raise InputError("images: empty list, nothing to describe")
    s = index.settings
    if s.kind == "global":
        net, _, _ = _backbone(s.backbone, index.description["weights_sha256"])
        imgs = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else x for x in items]
        raw = extract_global(net, imgs, s.global_config, progress=progress)
        if index.whitening is not None:
            return apply_whitening(index.whitening, raw)
        return np.asarray(raw, np.float32)
    describer, _ = _describer(s.local, index.description.get("model_sha256"))
    arrays = [
        read_image_any(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x) for x in items
    ]
    names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image {i}"
             for i, x in enumerate(items)]  # fmt: skip
    feats = describe_images(
        arrays, describer, config=s.local_config, names=names, progress=progress
    )
    return encode_images(index.vlad, feats, names=names)


def add_to_index(
    index: SavedIndex,
    images,
    *,
    root: str | os.PathLike | None = None,
    progress: bool = False,
    record: dict | None = None,
) -> SavedIndex:
    """A new index with more images, described and whitened as the indexed ones.

    The fitted whitening / VLAD models are kept (never refitted); an IVF-PQ index
    keeps its trained quantizer and gets the new vectors; under ``search="auto"``
    an exact index that reaches ``EXACT_LIMIT`` vectors becomes IVF-PQ, trained on
    all of them. ``index`` itself is unchanged.

    Args:
      index: a :class:`SavedIndex`.
      images: a folder or a list of image paths (relative to ``root`` when given).
      root, progress, record: as :func:`build_index`.

    Raises:
      InputError: no image, an image already indexed, an unreadable image, a changed
        weights file / model.
    """
    t0 = time.perf_counter()
    given, root_abs, files, rels = _collect(images, root)
    _check_new(index, files)
    new = describe_for_index(index, files, progress=progress)
    vectors = np.ascontiguousarray(np.concatenate([index.vectors, new]), np.float32)
    method = _method(index.settings, vectors.shape[0])
    search_info = dict(index.search_info)
    if method == "exact":
        searcher, info = _make_searcher(vectors, "exact")
    elif index.search_info["method"] == "ivfpq":
        searcher, info = _grow(index, new, vectors, index.search_info["ivfpq"])
    else:
        searcher, info = _make_searcher(vectors, "ivfpq")
    search_info.update(info)
    part = Part(uuid.uuid4().hex[:16], given, str(root_abs), tuple(rels))
    entry = {
        "op": "add",
        "images": given or f"{len(files)} paths",
        "count": len(files),
        "utc": _utc(),
        "seconds": round(time.perf_counter() - t0, 3),
        **(record or {}),
    }
    return dataclasses.replace(
        index,
        vectors=vectors,
        parts=(*index.parts, part),
        search_info=search_info,
        generation=index.generation + 1,
        history=(*index.history, entry),
        searcher=searcher,
    )


def _grow(index: SavedIndex, new: np.ndarray, vectors: np.ndarray, opts: dict):
    """A copy of the index's trained IVF-PQ searcher with ``new`` added."""
    import faiss

    from retrieval._src.search import _faiss_threads

    clone = faiss.clone_index(index.searcher._index)
    s = FaissIndex(vectors.shape[1], nlist=opts["nlist"], m=opts["m"], nbits=opts["nbits"],
                   nprobe=opts["nprobe"])  # fmt: skip
    s._index = clone
    with _faiss_threads(1):
        s.add(new)
    return s, {"method": "ivfpq", "ivfpq": dict(s.options), "rerank": RERANK}


def query_index(index: SavedIndex, image, k: int = 10) -> IndexQueryResult:
    """The k nearest indexed images of one image (a path or a uint8 array).

    k is capped at the number of indexed images.

    Raises:
      InputError: an unreadable image, a bad k, a changed weights file / model.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    v = describe_for_index(index, [image])
    scores, ids = _search(index, v, k)
    keep = ids[0] >= 0
    ids0 = ids[0][keep]
    paths = index.paths
    return IndexQueryResult(scores[0][keep], ids0, [paths[i] for i in ids0])


def index_info(index: SavedIndex) -> dict:
    """A JSON-ready summary: counts, dims, settings, whitening, search, history."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "uid": index.uid,
        "generation": index.generation,
        "count": index.ntotal,
        "dim": index.dim,
        "settings": index.settings.to_json(),
        "description": index.description,
        "whitening": index.whitening_info,
        "search": index.search_info,
        "parts": [{"id": p.id, "root": p.root, "count": len(p.paths)} for p in index.parts],
        "history": list(index.history),
    }


# --------------------------------------------------------------------------- save / load


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


def _write_part(folder: Path, index: SavedIndex, i: int, start: int) -> None:
    p = index.parts[i]
    n = len(p.paths)
    _write_npy(folder / f"part-{p.id}.npy", index.vectors[start : start + n])
    _write_json(
        folder / f"part-{p.id}.json",
        {"root": p.root, "root_abs": p.root_abs, "paths": list(p.paths)},
    )


def _write_all(folder: Path, index: SavedIndex) -> None:
    start = 0
    for i, p in enumerate(index.parts):
        _write_part(folder, index, i, start)
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
                _write_part(folder, index, i, start)
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
            raise InputError(f"{folder} holds another index: use --overwrite to replace it")
    with atomic_path(folder, is_dir=True) as tmp:
        _write_all(Path(tmp), index)
    return folder


def _remove_unnamed(folder: Path, head: dict) -> None:
    """Deletes part / IVF-PQ files that ``index.json`` does not name (interrupted adds)."""
    named = {_JSON, _LOCK, _WHITENING_FILE, _VLAD_FILE, head["search"]["file"]}
    for p in head["parts"]:
        named.update((p["vectors"], p["paths"]))
    for f in folder.iterdir():
        if f.is_file() and f.name not in named and f.name.startswith(("part-", "ivfpq-")):
            with contextlib.suppress(OSError):
                f.unlink()


def load_index(directory: str | os.PathLike) -> SavedIndex:
    """Reads an index written by :func:`save_index` (nothing is described again).

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
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} file (format {doc.get('format')!r})")
    if doc.get("version") != VERSION:
        raise InputError(
            f"{folder} is a {FORMAT} of version {doc.get('version')!r}; this ckn reads version "
            f"{VERSION}: rebuild the index"
        )
    try:
        settings = IndexSettings.from_json(doc["settings"])
        dim = int(doc["dim"])
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
            parts.append(Part(p["id"], meta["root"], meta["root_abs"], tuple(meta["paths"])))
            chunks.append(v)
        vectors = np.ascontiguousarray(np.concatenate(chunks) if chunks else np.zeros((0, dim)))
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
            fidx = faiss.read_index(str(fpath))
        searcher, _ = _make_searcher(vectors, search["method"], fidx, search.get("ivfpq"))
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
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise InputError(
            f"{folder}: damaged index ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{path} is missing: the index folder is damaged")
    return np.load(path, allow_pickle=False)
