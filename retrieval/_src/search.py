"""Nearest-neighbour search: exact blocked search in JAX, and an index interface.

:func:`exact_search` scans the database in blocks of ``block_size`` rows with
``jax.lax.scan``: each step scores one block against a chunk of queries with a
matrix product, masks padded rows (and the query itself with
``exclude_self``), and merges the block's candidates with the running top-k by
``jax.lax.top_k``. The database is padded to a multiple of ``block_size`` and
its true length is a traced scalar, so a new N within the same number of blocks
does not recompile; queries run in fixed-size padded chunks for the same reason
(big_vision's retrieval evaluator pads and masks the same way).

Ties are deterministic: among equal scores the smaller database index comes
first (``lax.top_k`` puts the lower position first on ties, and the running
top-k always sits before the block, whose indices are larger).

:class:`Index` is the one interface of a searchable collection (``train``,
``add``, ``search`` -> :class:`SearchResult`, ``reset``, ``ntotal``);
:class:`ExactIndex` implements it with :func:`exact_search`; the faiss IVF-PQ
index and :func:`retrieval._src.ivfpq.make_index`, which builds either, are in
:mod:`retrieval._src.ivfpq`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src.checks import check_matrix

METRICS = ("ip", "l2")

# Number of times the blocked kernel has been traced (compiled); read by tests
# to check that same-shaped calls do not recompile.
_trace_count = 0


class SearchResult(NamedTuple):
    """Top-k of each query: ``scores`` (Q, k) float32 and ``ids`` (Q, k) int64.

    Scores are in the order of the index's metric (inner products decreasing,
    squared distances increasing); an id of -1 (an approximate index that found
    fewer than k vectors) has score -inf (``"ip"``) or +inf (``"l2"``).
    Unpacks as ``scores, ids = index.search(queries, k)``.
    """

    scores: np.ndarray
    ids: np.ndarray


def _as_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    return check_matrix(x, name, rows="Q" if name == "queries" else "N", dim=dim)


@functools.partial(jax.jit, static_argnames=("k", "metric", "exclude_self"))
def _search_chunk(
    queries,
    db_blocks,
    db_sqnorms,
    n_valid,
    query_offset,
    *,
    k: int,
    metric: str,
    exclude_self: bool,
):
    """Top-k of one query chunk over the blocked database.

    Args:
      queries: (Qc, D) float32.
      db_blocks: (B, S, D) float32, the database padded to B blocks of S rows.
      db_sqnorms: (B, S) float32 squared norms (used by ``metric="l2"``).
      n_valid: () int32, number of real database rows.
      query_offset: () int32, database index of query row 0 (``exclude_self``).

    Returns:
      (Qc, k) float32 scores (larger = closer; ``-squared distance`` for l2)
      and (Qc, k) int32 indices.
    """
    global _trace_count
    _trace_count += 1
    num_q = queries.shape[0]
    block = db_blocks.shape[1]
    q_sq = jnp.sum(queries * queries, axis=1)
    self_idx = query_offset + jnp.arange(num_q, dtype=jnp.int32)

    def step(carry, xs):
        best_s, best_i = carry
        xb, xb_sq, b = xs
        # HIGHEST: full float32 products on GPUs too (TF32 by default there), so
        # scores and ties equal the brute-force ones.
        s = jax.lax.dot_general(
            queries, xb, (((1,), (1,)), ((), ())), precision=jax.lax.Precision.HIGHEST
        )  # (Qc, S)
        if metric == "l2":
            s = 2.0 * s - q_sq[:, None] - xb_sq[None, :]
        s = jnp.where(s == 0.0, jnp.float32(0.0), s)  # one zero (-0.0 == +0.0 for ties)
        idx = b * block + jnp.arange(block, dtype=jnp.int32)  # (S,)
        valid = jnp.broadcast_to((idx < n_valid)[None, :], s.shape)
        if exclude_self:
            valid = valid & (idx[None, :] != self_idx[:, None])
        s = jnp.where(valid, s, -jnp.inf)
        cat_s = jnp.concatenate([best_s, s], axis=1)
        cat_i = jnp.concatenate([best_i, jnp.broadcast_to(idx[None, :], s.shape)], axis=1)
        top_s, pos = jax.lax.top_k(cat_s, k)
        return (top_s, jnp.take_along_axis(cat_i, pos, axis=1)), None

    init = (
        jnp.full((num_q, k), -jnp.inf, dtype=jnp.float32),
        jnp.full((num_q, k), -1, dtype=jnp.int32),
    )
    blocks = jnp.arange(db_blocks.shape[0], dtype=jnp.int32)
    (top_s, top_i), _ = jax.lax.scan(step, init, (db_blocks, db_sqnorms, blocks))
    return top_s, top_i


def _query_chunk_size(num_queries: int, query_block: int) -> int:
    # Fixed sizes (powers of two up to query_block) bound the number of compiled shapes.
    # The floor of 32 rows keeps small query sets (13, 20, 32 queries) on one shape.
    return min(query_block, max(32, 1 << (num_queries - 1).bit_length()))


class _PaddedDatabase:
    """A database padded to whole blocks, on device."""

    def __init__(self, database: np.ndarray, block_size: int):
        n, d = database.shape
        nb = -(-n // block_size)
        padded = np.zeros((nb * block_size, d), dtype=np.float32)
        padded[:n] = database
        self.n = n
        self.blocks = jnp.asarray(padded.reshape(nb, block_size, d))
        self.sqnorms = jnp.sum(self.blocks * self.blocks, axis=2)


def _search_padded(
    queries: np.ndarray,
    db: _PaddedDatabase,
    k: int,
    *,
    metric: str,
    exclude_self: bool,
    query_block: int,
) -> tuple[np.ndarray, np.ndarray]:
    nq, d = queries.shape
    chunk = _query_chunk_size(nq, query_block)
    scores = np.empty((nq, k), dtype=np.float32)
    indices = np.empty((nq, k), dtype=np.int64)
    n_valid = jnp.asarray(db.n, dtype=jnp.int32)
    for c0 in range(0, nq, chunk):
        c1 = min(nq, c0 + chunk)
        qc = np.zeros((chunk, d), dtype=np.float32)
        qc[: c1 - c0] = queries[c0:c1]
        s, i = _search_chunk(
            jnp.asarray(qc),
            db.blocks,
            db.sqnorms,
            n_valid,
            jnp.asarray(c0, dtype=jnp.int32),
            k=k,
            metric=metric,
            exclude_self=exclude_self,
        )
        scores[c0:c1] = np.asarray(s)[: c1 - c0]
        indices[c0:c1] = np.asarray(i)[: c1 - c0]
    if metric == "l2":
        scores = np.maximum(-scores, 0.0)  # squared distances, rounding kept >= 0
    return scores, indices


def _check_search_args(k, metric: str, block_size: int, query_block: int) -> int:
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    for name, v in (("block_size", block_size), ("query_block", query_block)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    return int(k)


def exact_search(
    queries,
    database,
    k: int,
    *,
    block_size: int = 4096,
    metric: str = "ip",
    exclude_self: bool = False,
    query_block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-nearest-neighbour search, jitted and blocked over the database.

    Args:
      queries: (Q, D) float queries.
      database: (N, D) float database vectors.
      k: number of neighbours, ``1 <= k <= N`` (``N - 1`` with ``exclude_self``).
      block_size: database rows per scan step; the database is padded to a
        multiple of it, so N changing within the same number of blocks reuses
        the compiled kernel.
      metric: ``"ip"`` (inner product, larger first; for L2-normalized vectors
        the same order as Euclidean distance) or ``"l2"`` (squared Euclidean
        distance, smaller first, computed as ``|q|^2 - 2 q.x + |x|^2`` in
        float32).
      exclude_self: query ``i`` is database row ``i`` (``queries`` are the first
        Q rows of ``database``, usually all of it) and is left out of its own
        result.
      query_block: queries per compiled chunk (padded).

    Returns:
      ``(scores, indices)``: (Q, k) float32 inner products (``"ip"``, decreasing)
      or squared distances (``"l2"``, increasing), and (Q, k) int64 database
      indices. Ties: smaller index first.

    Raises:
      InputError: wrong shapes, NaN/inf, dimension mismatch, bad k or metric.

    Examples:
      >>> x = np.eye(3, dtype=np.float32)
      >>> exact_search(x[:1], x, 2)[1]
      array([[0, 1]])
    """
    k = _check_search_args(k, metric, block_size, query_block)
    db = _as_matrix(database, "database")
    q = _as_matrix(queries, "queries", dim=db.shape[1])
    if exclude_self and q.shape[0] > db.shape[0]:
        raise InputError(
            f"exclude_self needs queries to be database rows: Q = {q.shape[0]} > N = {db.shape[0]}"
        )
    available = db.shape[0] - (1 if exclude_self else 0)
    if k > available:
        raise InputError(f"k = {k} exceeds the {available} searchable database vectors")
    return _search_padded(
        q,
        _PaddedDatabase(db, int(block_size)),
        k,
        metric=metric,
        exclude_self=exclude_self,
        query_block=int(query_block),
    )


@runtime_checkable
class Index(Protocol):
    """A searchable vector collection (the faiss ``Index`` shape, minimal).

    ``train`` fits any quantizer (no-op for exact search), ``add`` appends
    vectors (ids are consecutive from 0 in insertion order), ``search`` returns
    a :class:`SearchResult` ``(scores, ids)`` of shape (Q, k) with the
    conventions of :func:`exact_search` for the index's ``metric``; an
    approximate index may return id -1 where it found fewer than k vectors.
    """

    metric: str

    @property
    def dim(self) -> int: ...

    @property
    def ntotal(self) -> int: ...

    def train(self, x) -> None: ...

    def add(self, x) -> None: ...

    def search(self, queries, k: int) -> SearchResult: ...

    def reset(self) -> None: ...


class ExactIndex:
    """Exact search over everything added, with :func:`exact_search`.

    Example::

        index = ExactIndex(128, metric="ip")
        index.add(database)           # (N, 128)
        scores, ids = index.search(queries, 10)
    """

    def __init__(
        self, dim: int, *, metric: str = "ip", block_size: int = 4096, query_block: int = 1024
    ):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        _check_search_args(1, metric, block_size, query_block)
        self._dim = int(dim)
        self.metric = metric
        self.block_size = int(block_size)
        self.query_block = int(query_block)
        self._chunks: list[np.ndarray] = []
        self._padded: _PaddedDatabase | None = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def ntotal(self) -> int:
        return sum(c.shape[0] for c in self._chunks)

    def train(self, x) -> None:
        """No-op (nothing to fit); checks the shape for interface symmetry."""
        _as_matrix(x, "x", dim=self._dim)

    def add(self, x) -> None:
        """Appends (n, D) vectors; their ids continue from ``ntotal``."""
        self._chunks.append(_as_matrix(x, "x", dim=self._dim).copy())
        self._padded = None

    def reset(self) -> None:
        self._chunks = []
        self._padded = None

    def search(self, queries, k: int, *, exclude_self: bool = False) -> SearchResult:
        """(Q, k) scores and int64 ids; see :func:`exact_search`."""
        k = _check_search_args(k, self.metric, self.block_size, self.query_block)
        q = _as_matrix(queries, "queries", dim=self._dim)
        n = self.ntotal
        available = n - (1 if exclude_self else 0)
        if n == 0:
            raise InputError("search on an empty index: add vectors first")
        if exclude_self and q.shape[0] > n:
            raise InputError(
                f"exclude_self needs queries to be database rows: Q = {q.shape[0]} > N = {n}"
            )
        if k > available:
            raise InputError(f"k = {k} exceeds the {available} searchable vectors in the index")
        if self._padded is None:
            self._padded = _PaddedDatabase(np.concatenate(self._chunks, axis=0), self.block_size)
        return SearchResult(
            *_search_padded(
                q,
                self._padded,
                k,
                metric=self.metric,
                exclude_self=exclude_self,
                query_block=self.query_block,
            )
        )
