"""Class-weighted (CAM) image retrieval: OfA / OnA descriptors, CAM re-ranking, QE, scores.

:func:`evaluate_cam` is :func:`retrieval._src.global_eval.evaluate_global` for the method of
Jimenez, Alvarez and Giro-i-Nieto (BMVC 2017), on the same folders and protocols (groups, or
revisited with ``gnd``), with the pieces of :mod:`retrieval._src.cam`:

1. **Whitening** (``PostConfig.whiten``, "pca" in the paper): fitted on the top-1 class vector
   of each image of ``whiten_images`` (never the evaluated ones), applied to every class vector
   before the sum (:func:`retrieval.image.aggregate_class_vectors`).
2. **Descriptors.** Each image at one scale (long side ``GlobalConfig.max_side``, the paper's
   1024), the backbone's last map pooled per predicted class (:func:`retrieval.image.cam_pool`, top
   ``CamConfig.top_classes``), whitened, summed: the OfA vector. Database images are aggregated
   on the fly (only (N, D) vectors and (N, N_C) class ids are kept); their maps are kept on disk
   in float16 (a temporary ``np.memmap``, removed at the end) when OnA or re-ranking needs them.
3. **Search.** OfA: every query against the OfA database. OnA: per query, every database map is
   pooled again with the QUERY's classes (:func:`retrieval.image.online_aggregation`): exact, and
   Q x N poolings (the paper's OnA over the whole database; for a large one, re-rank a shortlist).
   DBA (``PostConfig.dba``) applies to OfA only (OnA database vectors depend on the query).
4. **Re-ranking** (``CamConfig.rerank`` = R): the top R database images are scored by their best
   CAM region (:func:`retrieval.image.cam_rerank`, heatmap of the query's first 2 classes, boxes at
   1 / 10 / 20 / 30 % of its maximum) with the query vector aggregated from its first
   ``rerank_classes`` classes (6, the reference code's), and put first in that order (their
   score becomes 2 + region cosine, above any global cosine).
5. **Query expansion** (``PostConfig.qe`` = k, ``alpha``): q' = L2(q + sum_j max(q . x_j, 0)^alpha
   x_j) over the top k of the (re-ranked) list, x_j the database vectors the query was scored
   with (OfA, or OnA with the query's classes); q' scores the database again, and with
   re-ranking its top R are re-ranked again (with q' built the same way from the re-ranking
   query vector). The paper's "re-ranking + QE" is this order; it does not say whether the
   expanded query is re-ranked again, the reference code does re-rank with it.

The groups protocol leaves each query out of its own ranking (and of its QE neighbours).

References:
  A. Jimenez, J. M. Alvarez, X. Giro-i-Nieto, "Class-weighted convolutional features for visual
  instance search", BMVC 2017 (arXiv:1707.02581); code github.com/imatge-upc/retrieval-2017-cam.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src.cam import (
    THRESHOLDS,
    aggregate_class_vectors,
    cam_pool,
    cam_rerank,
    online_aggregation,
)
from retrieval._src.global_desc import GlobalConfig, iter_feature_maps
from retrieval._src.global_eval import (
    GlobalEvaluation,
    PostConfig,
    _plan,
    _whiten_plan,
    fit_global_whitening,
    whitening_record,
)
from retrieval._src.metrics.image import evaluate_scores
from retrieval._src.nets.backbone import Backbone
from retrieval._src.pooling import NORM_FLOOR
from retrieval._src.postprocess import database_augmentation
from retrieval._src.revisited import revisited_map

#: Aggregation variants: offline (each image's own classes) and online (the query's).
VARIANTS = ("ofa", "ona")
#: Database maps per jitted call of OnA and re-ranking (bounds memory: 16 Lite0 maps of
#: 32 x 32 cells are 84 MB in float32).
MAP_BATCH = 16


def _int_at_least(name: str, v, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InputError(f"{name} must be an int >= {lo}, got {v!r}")


@dataclasses.dataclass(frozen=True)
class CamConfig:
    """Class-weighted pooling and re-ranking settings of :func:`evaluate_cam`.

    Attributes:
      variant: "ofa" (each image's own classes) or "ona" (database re-aggregated with the
        query's classes).
      top_classes: N_C, predicted classes pooled per image (64 in the paper).
      rerank: R, database images re-ranked by their best CAM region (0: none).
      rerank_classes: the query's first classes used by re-ranking (6 in the reference code).
      heatmap_classes: CAMs averaged into the re-ranking heatmap (2 in the paper).
      thresholds: box thresholds, fractions of the heatmap's maximum.
      min_cells: smallest box side in map cells.
    """

    variant: str = "ofa"
    top_classes: int = 64
    rerank: int = 0
    rerank_classes: int = 6
    heatmap_classes: int = 2
    thresholds: tuple[float, ...] = THRESHOLDS
    min_cells: int = 5

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise InputError(
                f"CAM variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}"
            )
        _int_at_least("top_classes", self.top_classes, 1)
        _int_at_least("rerank", self.rerank, 0)
        for name in ("rerank_classes", "heatmap_classes", "min_cells"):
            _int_at_least(name, getattr(self, name), 1)
        if self.heatmap_classes > self.rerank_classes:
            raise InputError(
                f"heatmap_classes ({self.heatmap_classes}) must be <= rerank_classes "
                f"({self.rerank_classes})"
            )
        try:
            ts = tuple(float(t) for t in self.thresholds)
        except (TypeError, ValueError):
            raise InputError(f"thresholds must be numbers, got {self.thresholds!r}") from None
        if not ts or not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in ts):
            raise InputError(f"thresholds must be fractions in [0, 1], got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", ts)

    @property
    def label(self) -> str:
        """Short description, e.g. "CAM OnA (64 classes), re-ranked top 100"."""
        s = f"CAM {'OfA' if self.variant == 'ofa' else 'OnA'} ({self.top_classes} classes)"
        return s + (f", re-ranked top {self.rerank}" if self.rerank else "")


class _Maps:
    """float16 feature maps of the database images in a temporary memmap, with their masks."""

    def __init__(self, directory: str, n: int, cells: tuple[int, int], channels: int):
        self.maps = np.lib.format.open_memmap(
            Path(directory) / "maps.npy", mode="w+", dtype=np.float16,
            shape=(n, *cells, channels),
        )  # fmt: skip
        self.mask = np.zeros((n, *cells), bool)

    def put(self, i: int, features: np.ndarray, mask: np.ndarray) -> None:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        h, w = int(rows[-1]) + 1, int(cols[-1]) + 1
        self.maps[i, :h, :w] = features[:h, :w]
        self.mask[i, :h, :w] = mask[:h, :w]

    def crop(self) -> None:
        """Keeps the rows and columns some image uses (OnA and re-ranking compute every cell)."""
        used = self.mask.any(axis=0)
        h = int(np.flatnonzero(used.any(axis=1))[-1]) + 1 if used.any() else 1
        w = int(np.flatnonzero(used.any(axis=0))[-1]) + 1 if used.any() else 1
        self.maps, self.mask = self.maps[:, :h, :w], self.mask[:, :h, :w]

    def rows(self, ids: np.ndarray) -> _Rows:
        return _Rows(self.maps, np.asarray(ids, np.int64))


def _even_batch(n: int) -> int:
    """Batch size <= MAP_BATCH splitting n rows into equal batches (least padding)."""
    return -(-n // -(-n // MAP_BATCH))


class _Rows:
    """Rows ``ids`` of a memmap, read a slice at a time (what cam_rerank's batches ask)."""

    def __init__(self, maps: np.ndarray, ids: np.ndarray):
        self._maps, self._ids = maps, ids
        self.shape, self.dtype = (len(ids), *maps.shape[1:]), maps.dtype

    def __getitem__(self, sl):
        return np.asarray(self._maps[self._ids[sl]])


class _Described:
    """What evaluate_cam keeps of described images."""

    def __init__(self, n: int):
        self.vectors: np.ndarray | None = None  # (n, D) OfA
        self.rerank_vectors: np.ndarray | None = None  # (n, D) from the first classes
        self.classes = np.zeros((n, 0), np.int32)


def _check_backbone(backbone: Backbone):
    try:
        weight, bias = backbone.classifier
    except AttributeError:
        raise InputError(
            f"{getattr(backbone, 'name', type(backbone).__name__)} has no classifier: "
            "CAM pooling needs a network ending in global average pooling and one linear "
            "layer (efficientnet-lite0, resnet50, resnet101)"
        ) from None
    return jnp.asarray(weight), jnp.asarray(bias)


def _describe(backbone, images, config, cam, classifier, whitening, *, maps=None, rerank=0,
              progress=False, info=None, top1=False):  # fmt: skip
    """Runs the backbone; pools per class; aggregates on the fly (maps stored if asked)."""
    n = len(images)
    out = _Described(n)
    c = classifier[0].shape[1]
    top1_vectors = np.zeros((n, c), np.float32) if top1 else None
    for mb in iter_feature_maps(backbone, images, config, progress=progress, info=info):
        k = len(mb.items)
        pooled = cam_pool(mb.features, classifier, top_classes=cam.top_classes, mask=mb.mask)
        vec = np.asarray(pooled.vectors)[:k]
        ids = [i for i, _ in mb.items]
        if top1:
            top1_vectors[ids] = vec[:, 0]
            continue
        agg = aggregate_class_vectors(vec, whitening)
        if out.vectors is None:
            out.vectors = np.zeros((n, agg.shape[1]), np.float32)
            out.classes = np.zeros((n, cam.top_classes), np.int32)
            if rerank:
                out.rerank_vectors = np.zeros_like(out.vectors)
        out.vectors[ids] = agg
        out.classes[ids] = np.asarray(pooled.classes)[:k]
        if rerank:
            out.rerank_vectors[ids] = aggregate_class_vectors(vec[:, :rerank], whitening)
        if maps is not None:
            feats = np.asarray(mb.features[:k], np.float16)
            for r, i in enumerate(ids):
                maps.put(i, feats[r], mb.mask[r])
    return top1_vectors if top1 else out


def _l2(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), NORM_FLOOR)


class _Searcher:
    """Scores of one query: OfA or OnA database, re-ranking, QE (module docstring, 3-5)."""

    def __init__(self, db_vectors, maps, classifier, whitening, cam, post, n_db):
        self.db, self.maps, self.weight = db_vectors, maps, classifier[0]
        self.whitening, self.cam, self.post, self.n_db = whitening, cam, post, n_db
        self.boxes: dict[int, np.ndarray] = {}

    def database_for(self, classes: np.ndarray) -> np.ndarray:
        if self.cam.variant == "ofa":
            return self.db
        return online_aggregation(
            self.maps.maps, self.weight, classes, whitening=self.whitening,
            mask=self.maps.mask, batch_size=_even_batch(self.n_db),
        )  # fmt: skip

    def _rerank(self, s: np.ndarray, qv: np.ndarray, classes: np.ndarray, qid: int):
        valid = int(np.isfinite(s).sum())
        short = np.argsort(-s, kind="stable")[: min(self.cam.rerank, valid)]
        if short.size == 0:
            return s
        res = cam_rerank(
            qv, classes[: self.cam.rerank_classes], self.maps.rows(short), self.weight,
            ids=short, whitening=self.whitening, mask=self.maps.mask[short],
            thresholds=self.cam.thresholds, min_cells=self.cam.min_cells,
            heatmap_classes=self.cam.heatmap_classes, batch_size=_even_batch(len(short)),
        )  # fmt: skip
        s = s.copy()
        s[res.ids] = 2.0 + res.scores.astype(np.float64)
        self.boxes[qid] = res.boxes
        return s

    def _expand(self, q: np.ndarray, s: np.ndarray, db: np.ndarray) -> np.ndarray:
        top = np.argsort(-s, kind="stable")[: self.post.qe]
        x = db[top].astype(np.float64)
        w = np.power(np.maximum(x @ q.astype(np.float64), 0.0), self.post.alpha)
        return _l2(q + w @ x).astype(np.float32)

    def scores(self, qid: int, qv, qv_rerank, classes, self_id: int | None):
        """(N,) float64 scores of one query (-inf for itself); its final vector."""
        db = self.database_for(classes)
        s = db.astype(np.float64) @ qv.astype(np.float64)
        if self_id is not None:
            s[self_id] = -np.inf
        if self.cam.rerank:
            s = self._rerank(s, qv_rerank, classes, qid)
        if self.post.qe:
            q2 = self._expand(qv, s, db)
            if self.cam.rerank:
                r2 = self._expand(qv_rerank, s, db)
            s = db.astype(np.float64) @ q2.astype(np.float64)
            if self_id is not None:
                s[self_id] = -np.inf
            if self.cam.rerank:
                s = self._rerank(s, r2, classes, qid)
            qv = q2
        return s, qv


def _check_plan(backbone, config, cam, post):
    if not isinstance(config, GlobalConfig) or not isinstance(cam, CamConfig):
        raise InputError("evaluate_cam needs a GlobalConfig and a CamConfig")
    if not isinstance(post, PostConfig):
        raise InputError(f"post must be a PostConfig, got {type(post).__name__}")
    if len(config.scales) != 1:
        raise InputError(
            f"CAM pooling is single-scale (the paper's); got scales {config.scales}: pass one"
        )
    stored = cam.variant == "ona" or cam.rerank > 0
    if stored and config.max_side is None:
        raise InputError("OnA and re-ranking keep the maps: they need a max_side")
    if post.dba and cam.variant == "ona":
        raise InputError("DBA applies to OfA only (OnA database vectors depend on the query)")
    weight, bias = _check_backbone(backbone)
    if cam.top_classes > weight.shape[0]:
        raise InputError(
            f"top_classes = {cam.top_classes} exceeds the {weight.shape[0]} classes of "
            f"{backbone.name}"
        )
    if cam.rerank_classes > cam.top_classes:
        raise InputError(
            f"rerank_classes ({cam.rerank_classes}) must be <= top_classes ({cam.top_classes})"
        )
    return (weight, bias), stored


def evaluate_cam(
    backbone: Backbone,
    images: str | os.PathLike,
    config: GlobalConfig = GlobalConfig(scales=(1.0,)),  # noqa: B008 (frozen dataclasses)
    cam: CamConfig = CamConfig(),  # noqa: B008
    post: PostConfig = PostConfig(),  # noqa: B008
    *,
    whiten_images: str | os.PathLike | None = None,
    gnd: str | os.PathLike | None = None,
    depth: int = 10,
    progress: bool = False,
    strict: bool = False,
) -> GlobalEvaluation:
    """Class-weighted descriptors of a folder: whiten, search (OfA / OnA), re-rank, QE, score.

    Args:
      backbone: a network with a GAP + linear classifier (``Backbone.classifier``):
        EfficientNet-Lite0, ResNet-50 / 101.
      images: the folder (groups layout, or the flat ``<name>.jpg`` folder with ``gnd``).
      config: image sizes (``max_side``, ``bucket``, ``batch_size``) and ONE scale;
        ``head`` and ``p`` are not used.
      cam: a :class:`CamConfig`.
      post: whitening of the class vectors (fitted on ``whiten_images``), DBA (OfA), QE.
      whiten_images, gnd, depth, progress, strict: as :func:`retrieval.evaluate_global`.

    Returns:
      A :class:`retrieval.image.GlobalEvaluation`: ``queries`` are the final (expanded) query
      vectors, ``database`` the OfA database vectors (OnA ones depend on the query);
      ``info["cam"]`` the settings and ``info["seconds"]["search"]`` the search, OnA and
      re-ranking time.

    Raises:
      InputError: a backbone without classifier, several scales, DBA with OnA, and what
        :func:`retrieval.evaluate_global` refuses; all before any image is described.
    """
    plan = _plan(images, gnd, strict)
    w_paths, w_labels, w_skipped = _whiten_plan(whiten_images, post, plan, strict)
    n_db = len(plan.db)
    classifier, stored = _check_plan(backbone, config, cam, post)
    plan.check_post(post)
    info: dict = {"seconds": {}, "skipped_images": [*plan.skipped, *w_skipped]}
    info["cam"] = {**dataclasses.asdict(cam), "label": cam.label, "map_dtype": "float16"}
    sec = info["seconds"]
    queries = plan.query_images(backbone.min_size)
    whitening = None
    if w_paths is not None:
        t0 = time.perf_counter()
        w_extract: dict = {}
        top1 = _describe(backbone, w_paths, config, cam, classifier, None, progress=progress,
                         info=w_extract, top1=True)  # fmt: skip
        sec["whiten_describe"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        whitening = fit_global_whitening(top1, post.whiten, labels=w_labels, dim=post.whiten_dim)
        sec["whiten_fit"] = time.perf_counter() - t0
        info["whitening"] = whitening_record(
            whitening, post, w_paths, w_labels, whiten_images, fitted_on="top-1 class vectors"
        )
    rc = cam.rerank_classes if cam.rerank else 0
    with tempfile.TemporaryDirectory(prefix="ckn-cam-") as tmp:
        maps = None
        if stored:
            cells = -(-config.max_side // config.bucket) * config.bucket // backbone.stride
            maps = _Maps(tmp, n_db, (cells, cells), backbone.channels)
        t0 = time.perf_counter()
        extract: dict = {}
        db = _describe(backbone, plan.db, config, cam, classifier, whitening, maps=maps,
                       rerank=rc, progress=progress, info=extract)  # fmt: skip
        qd = db
        if gnd is not None:
            qd = _describe(backbone, queries, config, cam, classifier, whitening, rerank=rc,
                           progress=progress)  # fmt: skip
        sec["describe"] = time.perf_counter() - t0
        sec["describe_per_image"] = sec["describe"] / (n_db + len(queries))
        info["extract"] = extract
        db_vectors = db.vectors
        if maps is not None:
            maps.crop()
        if post.dba:
            weighting = "alpha" if post.alpha > 0 else "rank"
            db_vectors = database_augmentation(
                db_vectors, post.dba, weighting=weighting, alpha=post.alpha or 3.0
            )
        t0 = time.perf_counter()
        searcher = _Searcher(db_vectors, maps, classifier, whitening, cam, post, n_db)
        n_q = len(qd.vectors)
        scores = np.empty((n_q, n_db), np.float64)
        final = np.empty_like(qd.vectors)
        bar = tqdm(range(n_q), desc="searching", unit="query", disable=not progress)
        for q in bar:
            rv = None if qd.rerank_vectors is None else qd.rerank_vectors[q]
            scores[q], final[q] = searcher.scores(
                q, qd.vectors[q], rv, qd.classes[q], q if gnd is None else None
            )
        sec["search"] = time.perf_counter() - t0
    order = np.argsort(-scores, axis=1, kind="stable")
    result = revisited = None
    if gnd is None:
        result = evaluate_scores(scores, plan.labels, junk=plan.junk, names=plan.names)
        ranking = order[:, : min(depth, n_db - 1)]  # itself (-inf) is last
    else:
        revisited = revisited_map(order.T, plan.gnd["gnd"])
        ranking = order[:, :depth]
    info.update(
        num_database=n_db, num_queries=n_q, dim=int(db_vectors.shape[1]),
        gray=extract.get("gray", 0),
        boxes={int(q): b.tolist() for q, b in list(searcher.boxes.items())[:8]},
    )  # fmt: skip
    return plan.evaluation(result, revisited, final, db_vectors, ranking, info)
