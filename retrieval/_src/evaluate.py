"""The one image-retrieval evaluation: describe, post-process, search, re-score, score.

:func:`evaluate` runs every mode of ``ckn eval-images`` (VLAD of local descriptors, a pooling
head, a learned head, CAM) the same way, on an image folder, in one of two protocols:

* **groups** (:func:`retrieval.image.load_image_folder`): one subfolder per group, images
  directly in the folder are distractors, optional ``junk.txt`` per group. Every image of a
  group is a query against all other images (itself excluded from its ranking, junk removed),
  scored with the image mAP of :mod:`retrieval._src.metrics.image` (non-interpolated AP, ties
  against the relevant images; the Oxford trapezoidal mAP beside it).
* **revisited** (``gnd``: a revisitop ground-truth pickle, :func:`retrieval.metrics.load_gnd`):
  the database is the ``imlist`` images of the folder (``<name>.jpg``), the queries are the
  ``qimlist`` images cropped to their ``bbx``; rankings of the whole database are scored with
  :func:`retrieval.metrics.revisited_map` (easy / medium / hard mAP and mP@k).

The stages, in this order (Gordo et al. IJCV 2017, section 5.3; cirtorch):

1. **train** the describer when it learns from images (VLAD: codebook and PCAs), on
   ``codebook_images`` or else on the evaluated database images;
2. **whitening** (``PostConfig.whiten``): "pca" (:func:`retrieval.image.fit_pca_whitening`) or
   "learned" (:func:`retrieval.image.fit_learned_whitening`, matching pairs = every ordered pair
   of images of one group; see :func:`retrieval.image.fit_global_whitening`), fitted on
   ``describer.whitening_vectors`` of OTHER images (``whiten_images``), never the evaluated
   ones; the describer applies it itself when it can (CAM: to every class vector), else the
   pipeline applies it to database and queries; output dimension ``whiten_dim`` (default
   min(D, n - 1) for n training images: beyond n - 1 directions the training vectors have no
   variance, and whitening would only amplify noise there);
3. **describe** the database (keeping what the scorers need) and the queries;
4. **database-side augmentation** (``dba`` = k, counting the vector itself;
   :func:`retrieval.image.database_augmentation`, rank weights (k - r) / k, or alpha weights when
   ``alpha`` > 0);
5. **search**: exact inner products (float64), each query's own row excluded in the groups
   protocol; or, with ``search="ivfpq"`` (groups protocol, no re-scoring), faiss IVF-PQ scored on
   its ranked lists of min(N, 100);
6. **scorers**, in order (:mod:`retrieval._src.scoring`: CAM OnA and re-ranking, ...), then
   query expansion (``qe`` = k: q' = L2(q + sum_j max(q . x_j, 0)^alpha x_j) over the top k,
   :class:`retrieval.image.QueryExpansion`; the scorers run again on q');
7. **score** the rankings with the protocol.

References:
  F. Radenovic, G. Tolias, O. Chum, TPAMI 2018 (learned whitening, alpha-QE);
  A. Gordo et al., IJCV 2017, section 5.3 (QE, DBA); F. Radenovic et al., CVPR 2018
  (revisited Oxford / Paris).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src.collection import Plan, plan_collection, whitening_images
from retrieval._src.describer import Described, Describer, checked_vectors
from retrieval._src.image_folder import list_images, usable_images
from retrieval._src.ivfpq import make_index
from retrieval._src.metrics.image import (
    ImageRetrievalResult,
    evaluate_rankings,
    evaluate_scores,
)
from retrieval._src.post import PostConfig, _dba, fit_global_whitening, whitening_record
from retrieval._src.postprocess import (
    apply_whitening,
)
from retrieval._src.revisited import revisited_map
from retrieval._src.scoring import Block, QueryExpansion, Ranked, ScoringContext, scores_of

SEARCHES = ("exact", "ivfpq")
#: Ranked list length of the IVF-PQ search (``search="ivfpq"``).
IVFPQ_DEPTH = 100


# --------------------------------------------------------------------------- the pipeline


class Evaluation(NamedTuple):
    """Result of :func:`evaluate`.

    Attributes:
      result: the groups protocol's :class:`retrieval.metrics.ImageRetrievalResult` (None with gnd).
      revisited: :func:`retrieval.metrics.revisited_map`'s dict (None without gnd).
      queries: (Q, d) float32 final query vectors (after whitening and query expansion;
        groups: Q = N).
      database: (N, d) float32 database vectors after post-processing (CAM OnA: the OfA ones;
        OnA database vectors depend on the query).
      ranking: (Q, depth) int64 top database ids of each query (itself excluded in the
        groups protocol; -1 pads).
      names: N database image names; query_names: Q query names.
      paths: N database image files.
      labels: (N,) int64 group ids, -1 for distractors (None with gnd).
      junk: {query: set of junk ids} of the groups protocol (None with gnd).
      info: sizes, training, whitening, the describer's records (``extract``) and ``seconds``
        ({"train", "describe", "describe_per_image" (first call, compilation included),
        "whiten_describe", "whiten_fit", "postprocess", "search"}).
      describer: the describer as used (trained, with its whitening).
    """

    result: ImageRetrievalResult | None
    revisited: dict | None
    queries: np.ndarray
    database: np.ndarray
    ranking: np.ndarray
    names: list[str]
    query_names: list[str]
    paths: list[Path]
    labels: np.ndarray | None
    junk: dict | None
    info: dict
    describer: Describer


def _merge(a: dict, b: dict) -> dict:
    """Two describers' records of one run: counts added, lists joined, dicts merged."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float, list, dict)):
            continue
        elif isinstance(v, dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = out[k] + v
    return out


def _chain(scorers: Sequence, post: PostConfig) -> tuple:
    """The scorers in order, then query expansion (running them again) when ``post.qe``."""
    for s in scorers:
        if not all(hasattr(s, a) for a in ("rescore", "check", "keeps", "per_query")):
            raise InputError(f"a scorer needs rescore, check, keeps and per_query: got {s!r}")
    chain = tuple(scorers)
    if post.qe:
        chain += (QueryExpansion(post.qe, post.alpha, again=chain),)
    return chain


def _close(d: Described | None) -> None:
    for v in d.extras.values() if d is not None else ():
        if hasattr(v, "close"):
            v.close()


def _with_images(d: Described, images, keep) -> Described:
    """``d`` with its images as the extra "images" (a (N,) object array) when a scorer keeps
    them (spatial verification: database paths, query paths or crops)."""
    if "images" not in keep:
        return d
    arr = np.empty(len(images), dtype=object)
    for i, im in enumerate(images):
        arr[i] = im
    return d._replace(extras={**d.extras, "images": arr})


def _described(describer, images, progress, keep=frozenset()) -> Described:
    d = describer.describe(images, progress=progress, keep=keep)
    v = checked_vectors(d.vectors, len(images), f"the {describer.label} describer")
    return d._replace(vectors=v)


def _train(describer, codebook_images, plan: Plan, progress: bool, strict: bool, info: dict):
    if not describer.trains:
        if codebook_images is not None:
            raise InputError(f"codebook_images is given but the {describer.label} describer "
                             "learns nothing from images")  # fmt: skip
        return describer
    if codebook_images is None:
        paths, where = list(plan.db), "evaluated images"
    else:  # bad images skipped as everywhere (retrieval.image.usable_images)
        paths, where = list_images(codebook_images), str(codebook_images)
        keep, skipped = usable_images(paths, strict=strict)
        paths = [paths[i] for i in keep]
        info["skipped_images"] += skipped
    t0 = time.perf_counter()
    out = describer.train(paths, progress=progress)
    info["seconds"]["train"] = time.perf_counter() - t0
    info["train"] = {"on": where, "num_images": len(paths)}
    return out


def _whiten(describer, w_paths, w_labels, post, whiten_images, progress, info):
    """(describer, whitening the pipeline applies or None)."""
    sec = info["seconds"]
    t0 = time.perf_counter()
    w_extract: dict = {}
    wv = describer.whitening_vectors(w_paths, progress=progress, info=w_extract)
    sec["whiten_describe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    whitening = fit_global_whitening(wv, post.whiten, labels=w_labels, dim=post.whiten_dim)
    sec["whiten_fit"] = time.perf_counter() - t0
    inside = describer.with_whitening(whitening)
    info["whitening"] = whitening_record(
        whitening, post, w_paths, w_labels, whiten_images, gray=w_extract.get("gray", 0)
    )
    if inside is not None:
        info["whitening"]["fitted_on"] = getattr(describer, "whitening_input", "vectors")
        return inside, None
    return describer, whitening


def _rank(chain, qd: Described, db: Described, describer, post, self_ids, progress, record):
    """(scores (Q, N) float64, final query vectors (Q, d)) after the scorers."""
    qv = qd.vectors
    ids = np.arange(len(qv))
    block = Block(ids, self_ids, qd.extras)
    base = scores_of(qv, db.vectors, block)
    if not chain:
        return base, qv
    ctx = ScoringContext(describer, db, post, record)
    names = getattr(describer, "vector_extras", ())
    vectors = {"query": qv, **{k: qd.extras[k] for k in names if k in qd.extras}}
    if not any(s.per_query for s in chain):
        ranked = Ranked(vectors, db.vectors, base)
        for s in chain:
            ranked = s.rescore(block, ranked, ctx)
        return ranked.scores, ranked.vectors["query"]
    scores = np.empty_like(base)
    final = np.empty_like(qv)
    for i in tqdm(ids, desc="searching", unit="query", disable=not progress):
        sl = slice(i, i + 1)
        extras = {k: v[sl] if isinstance(v, np.ndarray) else v for k, v in qd.extras.items()}
        one = Block(ids[sl], None if self_ids is None else self_ids[sl], extras)
        ranked = Ranked({k: v[sl] for k, v in vectors.items()}, db.vectors, base[sl])
        for s in chain:
            ranked = s.rescore(one, ranked, ctx)
        scores[i], final[i] = ranked.scores[0], ranked.vectors["query"][0]
    return scores, final


def _check_search(search: str, options, gnd, chain) -> None:
    if search not in SEARCHES:
        raise InputError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if options and search != "ivfpq":
        raise InputError("search_options are IVF-PQ sizes: they need search 'ivfpq'")
    unknown = sorted(set(options or ()) - {"nlist", "m", "nbits", "nprobe"})
    if unknown:
        raise InputError(f"unknown search_options {', '.join(unknown)}; known: nlist, m, nbits, "
                         "nprobe")  # fmt: skip
    if search == "ivfpq" and (gnd is not None or chain):
        raise InputError(
            "search 'ivfpq' ranks a shortlist of each query: it does not combine with gnd, "
            "qe or scorers"
        )


def evaluate(
    describer: Describer,
    images: str | os.PathLike,
    post: PostConfig = PostConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    scorers: Sequence = (),
    whiten_images: str | os.PathLike | None = None,
    codebook_images: str | os.PathLike | None = None,
    gnd: str | os.PathLike | None = None,
    search: str = "exact",
    search_options: dict | None = None,
    depth: int = 10,
    progress: bool = False,
    strict: bool = False,
) -> Evaluation:
    """Describes a folder, post-processes, searches, re-scores and scores (module docstring).

    Everything that can be checked without describing (folders, ground truth, the
    whitening's groups, what the scorers need, QE / DBA sizes) is checked before the first
    image is described.

    Args:
      describer: a :class:`retrieval.image.Describer` (``build_describer(config)``).
      images: the folder (groups layout, or the flat ``<name>.jpg`` folder with ``gnd``).
      post: whitening, DBA, QE (:class:`PostConfig`).
      scorers: re-scorers in order (:func:`retrieval.image.cam_scorers`, ...); query
        expansion (``post.qe``) comes after them.
      whiten_images: folder of other images the whitening is fitted on (groups
        subfolders for "learned").
      codebook_images: folder of images a training describer (VLAD) learns from (default:
        the evaluated database images).
      gnd: a revisitop ground-truth pickle: the revisited protocol.
      search: "exact", or "ivfpq" (groups protocol without re-scoring).
      search_options: IVF-PQ sizes (``nlist``, ``m``, ``nbits``, ``nprobe`` of
        :func:`retrieval.index.make_index`; default: sized for the collection).
      depth: length of the returned rankings.
      progress: progress bars.
      strict: fail on the first unreadable, truncated or too small image instead of
        skipping it (skipped images are listed in ``info["skipped_images"]``).

    Returns:
      An :class:`Evaluation`.

    Raises:
      InputError: a missing folder or image, no group, a corrupt ground truth or one
        naming images beyond imlist, whitening without other images or groups, images
        too small for the describer, a bad QE / DBA k, a scorer that does not fit the
        describer, a describer returning other than (N, D) finite values.
    """
    if not isinstance(describer, Describer):
        raise InputError(f"describer must be a Describer, got {type(describer).__name__}")
    if not isinstance(post, PostConfig):
        raise InputError(f"post must be a PostConfig, got {type(post).__name__}")
    plan = plan_collection(images, gnd, strict)
    w_paths, w_labels, w_skipped = whitening_images(
        whiten_images, post.whiten, plan, strict=strict, whiten_dim=post.whiten_dim
    )
    n_db = len(plan.db)
    plan.check_post(post)
    chain = _chain(scorers, post)
    for s in chain:
        s.check(describer, post)
        if hasattr(s, "check_size"):
            s.check_size(n_db)
    _check_search(search, search_options, gnd, chain)
    queries = plan.query_images(describer.min_size)
    info: dict = {"seconds": {}, "skipped_images": [*plan.skipped, *w_skipped]}
    sec = info["seconds"]
    describer = _train(describer, codebook_images, plan, progress, strict, info)
    whitening = None
    if w_paths is not None:
        describer, whitening = _whiten(
            describer, w_paths, w_labels, post, whiten_images, progress, info
        )
    keep = frozenset().union(*(s.keeps for s in chain))
    t0 = time.perf_counter()
    db = _with_images(_described(describer, plan.db, progress, keep), plan.db, keep)
    qd = None
    try:
        extract = db.info
        if gnd is not None:
            qd = _with_images(_described(describer, queries, progress), queries, keep)
            extract = _merge(extract, qd.info)
        sec["describe"] = time.perf_counter() - t0
        sec["describe_per_image"] = sec["describe"] / (n_db + len(queries))
        info["extract"] = extract
        t0 = time.perf_counter()
        dbv = db.vectors
        qv = dbv if qd is None else qd.vectors
        if whitening is not None:
            qv, dbv = apply_whitening(whitening, qv), apply_whitening(whitening, dbv)
        if post.dba:
            dbv = _dba(dbv, post)
        db = db._replace(vectors=dbv)
        qd = (db if qd is None else qd)._replace(vectors=qv)
        sec["postprocess"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        record: dict = {}
        self_ids = np.arange(n_db) if gnd is None else None
        result = revisited = None
        if search == "ivfpq":
            top = (
                make_index(dbv, "ivfpq", **(search_options or {}))
                .search(qv, min(n_db, IVFPQ_DEPTH))
                .ids
            )
            result = evaluate_rankings(top, plan.labels, junk=plan.junk, names=plan.names)
            width = max(1, min(n_db - 1, depth))
            ranking = np.stack([np.concatenate([r[r != q], np.full(width, -1)])[:width]
                                for q, r in enumerate(top)])  # fmt: skip
            final = qv
        else:
            scores, final = _rank(chain, qd, db, describer, post, self_ids, progress, record)
            order = np.argsort(-scores, axis=1, kind="stable")
            if gnd is None:
                result = evaluate_scores(scores, plan.labels, junk=plan.junk, names=plan.names)
                ranking = order[:, : min(depth, n_db - 1)]  # itself (-inf) is last
            else:
                revisited = revisited_map(order.T, plan.gnd["gnd"])
                ranking = order[:, :depth]
        sec["search"] = time.perf_counter() - t0
    finally:
        _close(db)
        _close(qd)
    info.update(
        num_database=n_db, num_queries=len(qv), dim=int(dbv.shape[1]),
        gray=extract.get("gray", 0), **record,
    )  # fmt: skip
    db_vectors = np.asarray(dbv, np.float32)
    return Evaluation(*plan.evaluation(result, revisited, final, db_vectors, ranking, info),
                      describer)  # fmt: skip
