"""Scorers: what re-scores a query's ranking after the search (the last stage of the pipeline).

The pipeline (:func:`retrieval.image.evaluate`) scores every query against the database by
inner product (float64, the query's own row at -inf in the groups protocol) and hands each
block of queries to its scorers in order. A :class:`Scorer` has:

* ``rescore(block, ranked, ctx) -> Ranked``: the new scores (and, when it changes them, the
  query's vectors or the database vectors they come from) of the queries of ``block``;
* ``per_query``: True when it works one query at a time (CAM OnA, re-ranking: the pipeline then
  hands it blocks of one query; otherwise one block holds every query);
* ``keeps``: what the database's description must keep for it (CAM: ``{"maps"}``);
* ``check(describer, post)``: refuses, before any image is described, a describer or a
  post-processing it cannot work with; optionally ``check_size(num_database)`` (a shortlist
  longer than the database: spatial verification).

A scorer that keeps ``"images"`` gets the images themselves as the extra ``"images"`` of the
database and of the queries (a (N,) object array: paths, or arrays such as the revisited
query crops): spatial verification (:mod:`retrieval._src.spatial`) reads them.

Query expansion (:class:`QueryExpansion`, ``PostConfig.qe``) is the scorer every mode shares:
the formula of :func:`retrieval.image.expand_with` over the top k of the current scores with the
vectors those scores come from, then the scorers before it run again with the expanded query.
CAM's OnA and re-ranking are in :mod:`retrieval._src.cam_search`.

A new scorer (spatial verification, say): a class with those four members, a test against a
direct reference, and its name in the command's table of modes (``retrieval/cli``); nothing
else changes. Its ``rescore`` typically takes the shortlist
``np.argsort(-ranked.scores[0], kind="stable")[:R]`` of a one-query block, scores it from the
database's extras (``ctx.database.extras``, e.g. local features kept by the describer) and the
query's (``block.extras``), and writes the new scores above the others (2 + score, as CAM
re-ranking does) so that the shortlist comes first in its new order.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from retrieval._src.expansion import expand_with


class Block(NamedTuple):
    """The queries a scorer re-scores at once.

    Attributes:
      ids: (B,) int64 query numbers (rows of the query set).
      self_ids: (B,) int64 database row of each query (groups protocol: the query is a
        database image, excluded from its own ranking), or None (revisited protocol).
      extras: the queries' rows of their description's extras (CAM: ``"classes"``).
    """

    ids: np.ndarray
    self_ids: np.ndarray | None
    extras: dict


class Ranked(NamedTuple):
    """Where the queries of a block stand.

    Attributes:
      vectors: {"query": (B, D) float32, and any other query vector a scorer uses (CAM
        re-ranking: "rerank")}.
      database: (N, D) the database vectors the scores come from (OnA: the query's own).
      scores: (B, N) float64, -inf at each query's own row.
    """

    vectors: dict
    database: np.ndarray
    scores: np.ndarray


class ScoringContext(NamedTuple):
    """What every scorer may read.

    Attributes:
      describer: the describer of the database and the queries.
      database: its :class:`retrieval.image.Described` database (vectors after DBA, extras).
      post: the :class:`retrieval.image.PostConfig`.
      record: a dict a scorer may fill (CAM re-ranking: the boxes of a few queries); it ends
        in the evaluation's ``info``.
    """

    describer: object
    database: object
    post: object
    record: dict


@runtime_checkable
class Scorer(Protocol):
    """Re-scores the ranking of a block of queries (see the module docstring)."""

    keeps: frozenset
    per_query: bool

    def check(self, describer, post) -> None: ...

    def rescore(self, block: Block, ranked: Ranked, ctx: ScoringContext) -> Ranked: ...


def scores_of(queries, database, block: Block) -> np.ndarray:
    """(B, N) float64 inner products, -inf at each query's own row."""
    s = np.asarray(queries).astype(np.float64) @ np.asarray(database).T.astype(np.float64)
    if block.self_ids is not None:
        s[np.arange(len(block.self_ids)), block.self_ids] = -np.inf
    return s


class QueryExpansion:
    """Query expansion over the current top k, then the scorers before it again.

    q' = L2(q + sum_j w_j x_j) over the k best-scored database vectors x_j (those the query
    was scored with), w_j = max(q . x_j, 0)^alpha (1 for alpha = 0: average QE); every vector
    of the query (CAM: its re-ranking vector too) is expanded with the same neighbours.

    Args:
      k: neighbours (``PostConfig.qe``).
      alpha: weight exponent (``PostConfig.alpha``).
      again: the scorers that ran before it (run again on the expanded query).
    """

    keeps = frozenset()
    name = "query expansion"

    def __init__(self, k: int, alpha: float = 0.0, again: tuple = ()):
        self.k, self.alpha, self.again = int(k), float(alpha), tuple(again)
        self.per_query = any(s.per_query for s in self.again)

    def check(self, describer, post) -> None:
        """Nothing to refuse (k is checked against the database by the pipeline)."""

    def rescore(self, block: Block, ranked: Ranked, ctx: ScoringContext) -> Ranked:
        """The expanded queries, scored again (and re-scored by ``again``)."""
        top = np.argsort(-ranked.scores, axis=1, kind="stable")[:, : self.k]
        db = np.asarray(ranked.database, np.float64)
        vectors = {
            name: expand_with(np.asarray(v, np.float64), db, top, self.alpha)
            for name, v in ranked.vectors.items()
        }
        out = Ranked(vectors, ranked.database, scores_of(vectors["query"], ranked.database, block))
        for scorer in self.again:
            out = scorer.rescore(block, out, ctx)
        return out
