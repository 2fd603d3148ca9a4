"""Approximate search with faiss IVF-PQ, and building an index for a collection.

:class:`FaissIndex` implements :class:`retrieval._src.search.Index` with a faiss IVF-PQ
index for collections too large to scan (optional dependency ``faiss-cpu``).
:func:`make_index` builds an exact or an IVF-PQ index over a database of global vectors,
with IVF-PQ sizes chosen for the collection; :func:`train_ivfpq` trains an empty one;
:func:`recall_at` compares an approximate top-r with the exact one.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ckn import InputError
from retrieval._src.checks import check_matrix
from retrieval._src.search import (
    METRICS,
    ExactIndex,
    SearchResult,
    _as_matrix,
    _check_search_args,
)


class FaissIndex:
    """Approximate search with a faiss IVF-PQ index (``faiss-cpu``, optional).

    ``IVF{nlist},PQ{m}x{nbits}``: a coarse k-means quantizer with ``nlist``
    cells, residuals product-quantized to ``m`` codes of ``nbits`` bits;
    ``nprobe`` cells are visited per query. Same interface and score
    conventions as :class:`ExactIndex` (inner products for ``"ip"``, squared
    distances for ``"l2"``); ids are -1 (scores -inf for ``"ip"``, +inf for
    ``"l2"``) where fewer than k vectors were found. ``train`` must be called
    (on representative vectors) before ``add``. ``options`` holds the sizes
    (``nlist``, ``m``, ``nbits``, ``nprobe``).
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "ip",
        nlist: int = 1024,
        m: int = 16,
        nbits: int = 8,
        nprobe: int = 16,
    ):
        try:
            import faiss
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("FaissIndex needs faiss: pip install faiss-cpu") from e
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if dim % m:
            raise ValueError(f"dim = {dim} must be a multiple of m = {m}")
        self._faiss = faiss
        self._dim = int(dim)
        self.metric = metric
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self._index = faiss.index_factory(self._dim, f"IVF{nlist},PQ{m}x{nbits}", faiss_metric)
        # index_factory turns on polysemous training for 8-bit codes; it only
        # serves Hamming-filtered search (polysemous_ht), which is not used
        # here, and it multiplies training time (50 s instead of 2 s for 4,000
        # vectors of dimension 32).
        faiss.downcast_index(self._index).do_polysemous_training = False
        self.nprobe = int(nprobe)
        self._sizes = {"nlist": int(nlist), "m": int(m), "nbits": int(nbits)}

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def options(self) -> dict:
        """The index sizes: ``{"nlist", "m", "nbits", "nprobe"}``."""
        return {**self._sizes, "nprobe": self.nprobe}

    def train(self, x) -> None:
        self._index.train(np.ascontiguousarray(_as_matrix(x, "x", dim=self._dim)))

    def add(self, x) -> None:
        if not self._index.is_trained:
            raise InputError("FaissIndex.add before train: call train(x) first")
        self._index.add(np.ascontiguousarray(_as_matrix(x, "x", dim=self._dim)))

    def reset(self) -> None:
        self._index.reset()

    def search(self, queries, k: int) -> SearchResult:
        """(Q, k) scores and int64 ids (-1 where fewer than k were found)."""
        k = _check_search_args(k, self.metric, 1, 1)
        if self.ntotal == 0:
            raise InputError("search on an empty index: add vectors first")
        q = np.ascontiguousarray(_as_matrix(queries, "queries", dim=self._dim))
        self._faiss.extract_index_ivf(self._index).nprobe = self.nprobe
        scores, ids = self._index.search(q, k)
        missing = -np.inf if self.metric == "ip" else np.inf
        return SearchResult(
            np.where(ids < 0, missing, scores).astype(np.float32), ids.astype(np.int64)
        )


# --------------------------------------------------------------------------- building an index


def _ivfpq_defaults(n: int, d: int, n_train: int) -> dict:
    """IVF-PQ sizes for a collection of n vectors of dimension d (faiss guidelines)."""
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n_train // 39))
    m = max(x for x in range(1, min(64, max(1, d // 4)) + 1) if d % x == 0)
    nbits = int(max(1, min(8, math.floor(math.log2(max(2, n_train // 4))))))
    return {"nlist": nlist, "m": m, "nbits": nbits}


@contextlib.contextmanager
def _faiss_threads(n: int):
    """faiss' OpenMP threads set to n inside the block (restored after).

    Training IVF-PQ with 2 OpenMP threads on the 2-core CPU of this project
    took 4.5 times longer than with 1 (1.8 s vs 0.4 s for 2,000 vectors of
    dimension 32): the threads spin against each other and JAX's.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def make_index(
    database,
    method: str = "exact",
    *,
    train=None,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    nprobe: int = 16,
) -> ExactIndex | FaissIndex:
    """An inner-product :class:`Index` over a database of global vectors, filled.

    ``method="exact"``: an :class:`ExactIndex` (jitted blocked matmul + top-k,
    ties to the lower id). ``method="ivfpq"``: a :class:`FaissIndex` (faiss
    IVF-PQ), trained on ``train`` (default: the database) with one OpenMP
    thread, with sizes for the collection unless given: nlist about 4 sqrt(n)
    (at most n_train / 39), m the largest divisor of d that is at most
    min(64, d / 4), nbits at most 8 with 2**nbits <= n_train / 4, nprobe at
    most nlist.

    Args:
      database: (N, D) vectors.
      method: "exact" or "ivfpq".
      train: (T, D) IVF-PQ training vectors.
      nlist, m, nbits, nprobe: IVF-PQ options.

    Returns:
      The index; ``index.search(queries, k)`` gives a :class:`SearchResult`
      (k at most N for exact search).

    Raises:
      InputError: bad vectors, an unknown method, IVF-PQ sizes that do not fit
        the dimension or the training vectors, faiss not installed.

    Examples:
      >>> make_index(db).search(queries, 10).ids  # db (N, D), queries (Q, D)
    """
    db = check_matrix(database, "database")
    n, d = db.shape
    if method == "exact":
        index = ExactIndex(d, metric="ip")
        index.add(db)
        return index
    if method != "ivfpq":
        raise InputError(f"unknown search method {method!r}; expected exact or ivfpq")
    t = db if train is None else check_matrix(train, "training vectors", dim=d)
    index = train_ivfpq(t, n, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe)
    with _faiss_threads(1):
        index.add(db)
    return index


def train_ivfpq(
    train,
    count: int,
    *,
    nlist: int | None = None,
    m: int | None = None,
    nbits: int | None = None,
    nprobe: int = 16,
) -> FaissIndex:
    """An inner-product :class:`FaissIndex` (IVF-PQ) trained on ``train``, still empty.

    Sizes for a collection of ``count`` vectors unless given (see :func:`make_index`);
    trained with one OpenMP thread.

    Args:
      train: (T, D) training vectors.
      count: number of vectors the index will hold (sets nlist).
      nlist, m, nbits, nprobe: IVF-PQ options.

    Raises:
      InputError: bad vectors, sizes that do not fit the dimension or the training
        vectors, faiss not installed.
    """
    t = check_matrix(train, "training vectors")
    d = t.shape[1]
    opts = _ivfpq_defaults(int(count), d, t.shape[0])
    opts.update({k: v for k, v in (("nlist", nlist), ("m", m), ("nbits", nbits)) if v is not None})
    if d % opts["m"]:
        raise InputError(f"m = {opts['m']} sub-quantizers must divide the dimension {d}")
    need = max(opts["nlist"], 2 ** opts["nbits"])
    if t.shape[0] < need:
        raise InputError(
            f"IVF-PQ with nlist = {opts['nlist']} and {opts['nbits']}-bit codes needs at least "
            f"{need} training vectors, got {t.shape[0]}: use exact search"
        )
    try:
        index = FaissIndex(d, metric="ip", nprobe=min(nprobe, opts["nlist"]), **opts)
    except ImportError:
        raise InputError("IVF-PQ search needs faiss (pip install faiss-cpu)") from None
    with _faiss_threads(1):
        index.train(t)
    return index


def recall_at(approx_ids: np.ndarray, exact_ids: np.ndarray, r: int = 10) -> float:
    """Mean fraction of the exact top-r found in the approximate top-r."""
    a, e = np.asarray(approx_ids)[:, :r], np.asarray(exact_ids)[:, :r]
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, e)]))
