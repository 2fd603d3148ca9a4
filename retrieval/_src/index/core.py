"""The index value (:class:`SavedIndex`, its :class:`Part` s) and its searchers.

Exact search below ``EXACT_LIMIT`` vectors, IVF-PQ from there on (``search="auto"``);
IVF-PQ candidates (``RERANK`` times k) are re-scored exactly with the stored vectors.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.index.ondisk import row_reader
from retrieval._src.index.settings import EXACT_LIMIT, NPROBE, RERANK, IndexSettings
from retrieval._src.ivfpq import FaissIndex, make_index
from retrieval._src.postprocess import PCAWhitening, Whitening
from retrieval._src.search import ExactIndex
from retrieval._src.vlad_fit import VladModel


class Part(NamedTuple):
    """Images added together: their root folder and paths (one ``part-<id>`` pair on disk).

    Attributes:
      id: hex name of the part's files.
      root: the root as given ("" for paths given one by one: the working folder).
      root_abs: the root's absolute path: where it was when added, or, for a loaded
        index, where it is now (see :func:`retrieval.index.load_index`).
      paths: image paths relative to ``root`` (POSIX separators).
    """

    id: str
    root: str
    root_abs: str
    paths: tuple[str, ...]


class IndexQueryResult(NamedTuple):
    """The top-k of one query (unpacks as ``scores, ids, paths``).

    scores: (k,) float32 inner products with the query, decreasing; ids: (k,) int64 row
    numbers in the index; paths: the images' absolute paths (:attr:`SavedIndex.paths`).
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
      vectors: (N, dim) float32 searchable vectors (whitened, L2-normalized); read-only and
        memory-mapped when loaded from a folder of one part.
      parts: the :class:`Part` of each build / add, in order (rows follow them).
      whitening: the fitted global whitening, or None (VLAD: in ``vlad.pca``).
      whitening_info: what was fitted on what, and why.
      vlad: the fitted :class:`retrieval.local.VladModel` (local descriptors), else None.
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
        """Every image's absolute path, by row: it opens from any working folder."""
        return [str(p) for p in self.resolved_paths()]

    def resolved_paths(self) -> list[Path]:
        """Every image as an absolute path (``Part.root_abs`` / relative path), by row."""
        return [Path(p.root_abs) / rel for p in self.parts for rel in p.paths]

    def path_of(self, ids) -> list[str]:
        """The absolute paths of rows ``ids`` (as :attr:`paths`, without building every path:
        a query of an index of 10^5 images built 10^5 paths to return 10)."""
        ends = np.cumsum([len(p.paths) for p in self.parts])
        out = []
        for i in np.asarray(ids, np.int64).reshape(-1):
            if not 0 <= i < self.ntotal:
                raise InputError(f"row {i} is not in the index (0 to {self.ntotal - 1})")
            k = int(np.searchsorted(ends, i, side="right"))
            start = int(ends[k - 1]) if k else 0
            out.append(str(Path(self.parts[k].root_abs) / self.parts[k].paths[int(i) - start]))
        return out

    def with_nprobe(self, nprobe: int) -> SavedIndex:
        """The index searching ``nprobe`` IVF-PQ cells per query (checked as
        ``IndexSettings.nprobe``; the same arrays, nothing re-read; exact search unchanged)."""
        settings = dataclasses.replace(self.settings, nprobe=nprobe)
        searcher, info = self.searcher, dict(self.search_info)
        if info.get("method") == "ivfpq":
            searcher = copy.copy(self.searcher)
            searcher.nprobe = min(int(nprobe), int(info["ivfpq"]["nlist"]))
            info["ivfpq"] = dict(info["ivfpq"], nprobe=searcher.nprobe)
        return dataclasses.replace(self, settings=settings, searcher=searcher, search_info=info)

    def search(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search only: (Q, k') scores and ids of searchable (Q, dim) vectors, k' = min(k, N)."""
        return _search(self, vectors, k)


def _join(root: str, rel: str) -> str:
    return rel if not root else f"{root.rstrip('/')}/{rel}"


# --------------------------------------------------------------------------- search


def _method(settings: IndexSettings, n: int) -> str:
    if settings.search == "auto":
        return "exact" if n < EXACT_LIMIT else "ivfpq"
    return settings.search


def _make_searcher(
    vectors: np.ndarray, method: str, faiss_index=None, options=None, nprobe: int = NPROBE
):
    """(searcher, search_info) over the vectors; IVF-PQ visits ``nprobe`` cells (at most nlist)."""
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
            nprobe=min(nprobe, options["nlist"]),
        )
        s._index = faiss_index  # the trained, filled index read from disk
        if s.ntotal != vectors.shape[0]:
            raise InputError(
                f"the IVF-PQ file holds {s.ntotal} vectors but the index {vectors.shape[0]}: "
                "the index folder is damaged"
            )
    else:
        s = make_index(vectors, "ivfpq", nprobe=nprobe)
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
    with row_reader(index.vectors) as take:
        for r in range(q.shape[0]):
            c = np.unique(cand[r][cand[r] >= 0])
            exact = take(c) @ q[r]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[r, : order.size] = exact[order]
            ids[r, : order.size] = c[order]
    return scores, ids


def _grow(index: SavedIndex, new: np.ndarray, vectors: np.ndarray, opts: dict):
    """A copy of the index's trained IVF-PQ searcher with ``new`` added."""
    import faiss

    from retrieval._src.ivfpq import _faiss_threads

    clone = faiss.clone_index(index.searcher._index)
    s = FaissIndex(vectors.shape[1], nlist=opts["nlist"], m=opts["m"], nbits=opts["nbits"],
                   nprobe=index.searcher.nprobe)  # fmt: skip
    s._index = clone
    with _faiss_threads(1):
        s.add(new)
    return s, {"method": "ivfpq", "ivfpq": dict(s.options), "rerank": RERANK}
