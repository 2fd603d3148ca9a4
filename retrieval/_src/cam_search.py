"""CAM retrieval in the image pipeline: the OfA describer, the OnA and re-ranking scorers.

The method of Jimenez, Alvarez and Giro-i-Nieto (BMVC 2017), as pieces of the one image
pipeline (:func:`retrieval.image.evaluate`), on the math of :mod:`retrieval._src.cam`:

1. **Describer** (:class:`CamDescriber`, config :class:`CamDescription`). Each image at ONE
   scale (long side ``max_side``, the paper's 1024), the backbone's last map pooled per
   predicted class (:func:`retrieval.image.cam_pool`, top ``CamConfig.top_classes``), each class
   vector whitened (when a whitening is given), summed: the OfA vector
   (:func:`retrieval.image.aggregate_class_vectors`). Its whitening ("pca" in the paper) is
   fitted on the top-1 class vector of each image of the whitening images (never the evaluated
   ones: ``whitening_vectors``) and applied to every class vector before the sum
   (``with_whitening``). It also keeps, per image, its classes, the vector aggregated from its
   first ``rerank_classes`` classes (re-ranking), and, when a scorer asks (``keep={"maps"}``),
   its feature map in float16 in a temporary memmap (:class:`MapStore`, removed by ``close``).
2. **OnA** (:class:`OnlineAggregation`, a scorer): per query, every database map pooled again
   with the QUERY's classes (:func:`retrieval.image.online_aggregation`): exact, Q x N poolings
   (the paper's OnA over the whole database; for a large one, re-rank a shortlist). DBA
   applies to OfA only (OnA database vectors depend on the query).
3. **Re-ranking** (:class:`CamReranking`, a scorer; ``CamConfig.rerank`` = R): the top R are
   scored by their best CAM region (:func:`retrieval.image.cam_rerank`, heatmap of the query's
   first ``heatmap_classes`` classes, boxes at 1 / 10 / 20 / 30 % of its maximum) with the query
   vector aggregated from its first ``rerank_classes`` classes (6, the reference code's), and
   put first in that order (their score becomes 2 + region cosine, above any global cosine).
4. **Query expansion** is the pipeline's scorer (:class:`retrieval.image.QueryExpansion`): over
   the top k of the (re-ranked) list with the database vectors the query was scored with (OfA,
   or OnA with its classes), then the scorers before it run again with the expanded query (the
   re-ranking vector is expanded the same way). The paper's "re-ranking + QE" is this order; it
   does not say whether the expanded query is re-ranked again, the reference code does.

References:
  A. Jimenez, J. M. Alvarez, X. Giro-i-Nieto, "Class-weighted convolutional features for visual
  instance search", BMVC 2017 (arXiv:1707.02581); code github.com/imatge-upc/retrieval-2017-cam.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ckn import InputError
from retrieval._src.cam import aggregate_class_vectors, cam_pool, online_aggregation
from retrieval._src.cam_rerank import THRESHOLDS, cam_rerank
from retrieval._src.describer import (
    DEFAULT_BACKBONE,
    BaseDescriber,
    Described,
    backbone_setting,
    load_backbone_spec,
)
from retrieval._src.feature_maps import ScaleConfig, iter_feature_maps
from retrieval._src.scoring import Ranked, ScoringContext, scores_of
from retrieval._src.settings import check_settings, setting

#: Aggregation variants: offline (each image's own classes) and online (the query's).
VARIANTS = ("ofa", "ona")
#: Database maps per jitted call of OnA and re-ranking (bounds memory: 16 Lite0 maps of
#: 32 x 32 cells are 84 MB in float32).
MAP_BATCH = 16


@dataclasses.dataclass(frozen=True)
class CamConfig:
    """Class-weighted pooling and its scorers (see the module docstring).

    Attributes:
      variant: "ofa" (each image's own classes) or "ona" (database re-aggregated with the
        query's classes: the :class:`OnlineAggregation` scorer).
      top_classes: N_C, predicted classes pooled per image (64 in the paper).
      rerank: R, database images re-ranked by their best CAM region (0: none).
      rerank_classes: the query's first classes used by re-ranking (6 in the reference code).
      heatmap_classes: CAMs averaged into the re-ranking heatmap (2 in the paper).
      thresholds: box thresholds, fractions of the heatmap's maximum.
      min_cells: smallest box side in map cells.
    """

    variant: str = setting(
        "ofa", choices=VARIANTS, flag="cam-variant",
        help="ofa pools each image with its own top classes; ona pools every database image "
        "again with each query's classes",
    )  # fmt: skip
    top_classes: int = setting(
        64, minimum=1, help="predicted classes pooled per image (the paper's 64)"
    )
    rerank: int = setting(
        0, minimum=0,
        help="re-rank the top R by each image's best CAM region, before QE (0: none; the "
        "paper re-ranks 1000)",
    )  # fmt: skip
    rerank_classes: int = setting(6, minimum=1, help="the query's classes used by re-ranking")
    heatmap_classes: int = setting(2, minimum=1, help="CAMs averaged into the heatmap")
    thresholds: tuple[float, ...] = THRESHOLDS
    min_cells: int = setting(5, minimum=1, help="smallest re-ranking box side in cells")

    def __post_init__(self):
        check_settings(self)
        if self.heatmap_classes > self.rerank_classes:
            raise InputError(
                f"heatmap_classes ({self.heatmap_classes}) must be <= rerank_classes "
                f"({self.rerank_classes})"
            )
        if self.rerank and self.rerank_classes > self.top_classes:
            raise InputError(
                f"rerank_classes ({self.rerank_classes}) must be <= top_classes "
                f"({self.top_classes})"
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


@dataclasses.dataclass(frozen=True)
class CamDescription:
    """The CAM OfA describer's config.

    Attributes:
      backbone: "NAME" or "NAME:FILE" of a network with a GAP + linear classifier.
      scales: image sizes, ONE scale (the paper's).
      cam: the class-weighted pooling (and the scorers' settings, see :func:`cam_scorers`).
    """

    backbone: str = backbone_setting(
        DEFAULT_BACKBONE,
        "a network with a GAP + linear classifier: efficientnet-lite0, "
        "resnet50:FILE or resnet101:FILE",
    )
    scales: ScaleConfig = ScaleConfig(scales=(1.0,))
    cam: CamConfig = CamConfig()

    def __post_init__(self):
        check_settings(self)
        if not isinstance(self.scales, ScaleConfig) or not isinstance(self.cam, CamConfig):
            raise InputError("CamDescription needs a ScaleConfig and a CamConfig")
        if len(self.scales.scales) != 1:
            raise InputError(
                f"CAM pooling is single-scale (the paper's); got scales {self.scales.scales}: "
                "pass one"
            )


class MapStore:
    """float16 feature maps of described images in a temporary memmap, with their masks."""

    def __init__(self, n: int, cells: tuple[int, int], channels: int):
        self._tmp = tempfile.TemporaryDirectory(prefix="ckn-cam-")
        self.maps = np.lib.format.open_memmap(
            Path(self._tmp.name) / "maps.npy", mode="w+", dtype=np.float16,
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

    def close(self) -> None:
        """Removes the temporary file."""
        self.maps = None
        self._tmp.cleanup()


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


def _classifier(backbone):
    try:
        weight, bias = backbone.classifier
    except AttributeError:
        raise InputError(
            f"{getattr(backbone, 'name', type(backbone).__name__)} has no classifier: "
            "CAM pooling needs a network ending in global average pooling and one linear "
            "layer (efficientnet-lite0, resnet50, resnet101)"
        ) from None
    return jnp.asarray(weight), jnp.asarray(bias)


class CamDescriber(BaseDescriber):
    """CAM OfA vectors (module docstring, 1): per-class pooling, whitening, sum.

    Attributes:
      backbone: the network; classifier: its (weight (K, C), bias (K,)).
      whitening: the fitted whitening of the class vectors, or None.
    """

    #: Query vectors besides "query" that query expansion expands (re-ranking's).
    vector_extras = ("rerank",)
    #: What its whitening is fitted on (recorded in the evaluation's ``info``).
    whitening_input = "top-1 class vectors"

    def __init__(self, config: CamDescription, *, backbone=None, whitening=None):
        if not isinstance(config, CamDescription):
            raise InputError(f"CamDescriber needs a CamDescription, got {type(config).__name__}")
        self.config = config
        self.backbone = load_backbone_spec(config.backbone) if backbone is None else backbone
        self.classifier = _classifier(self.backbone)
        k = self.classifier[0].shape[0]
        if config.cam.top_classes > k:
            raise InputError(
                f"top_classes = {config.cam.top_classes} exceeds the {k} classes of "
                f"{self.backbone.name}"
            )
        self.whitening = whitening
        self.min_size = int(self.backbone.min_size)
        self.label = config.cam.label

    def with_whitening(self, whitening) -> CamDescriber:
        """The describer whitening every class vector before the sum."""
        return CamDescriber(self.config, backbone=self.backbone, whitening=whitening)

    def whitening_vectors(self, images, *, progress=False, info=None) -> np.ndarray:
        """The top-1 class vector of each image (the reference fits its PCA on them)."""
        out = None
        for mb, vec, _ in self._pooled(images, progress, info):
            if out is None:
                out = np.zeros((len(images), vec.shape[2]), np.float32)
            out[[i for i, _ in mb.items]] = vec[:, 0]
        return out

    def _pooled(self, images, progress, info):
        cam = self.config.cam
        for mb in iter_feature_maps(
            self.backbone, images, self.config.scales, progress=progress, info=info
        ):
            k = len(mb.items)
            pooled = cam_pool(mb.features, self.classifier, top_classes=cam.top_classes,
                              mask=mb.mask)  # fmt: skip
            yield mb, np.asarray(pooled.vectors)[:k], np.asarray(pooled.classes)[:k]

    def describe(self, images, *, progress=False, keep=frozenset()) -> Described:
        """OfA vectors; extras: "classes", "rerank" (with re-ranking), "maps" if kept."""
        n, cam, info = len(images), self.config.cam, {}
        rc = cam.rerank_classes if cam.rerank else 0
        store = None
        if "maps" in keep:
            s = self.config.scales
            if s.max_side is None:
                raise InputError("OnA and re-ranking keep the maps: they need a max_side")
            cells = -(-s.max_side // s.bucket) * s.bucket // self.backbone.stride
            store = MapStore(n, (cells, cells), self.backbone.channels)
        vectors = rerank = None
        classes = np.zeros((n, cam.top_classes), np.int32)
        for mb, vec, cls in self._pooled(images, progress, info):
            ids = [i for i, _ in mb.items]
            agg = aggregate_class_vectors(vec, self.whitening)
            if vectors is None:
                vectors = np.zeros((n, agg.shape[1]), np.float32)
                rerank = np.zeros_like(vectors) if rc else None
            vectors[ids], classes[ids] = agg, cls
            if rc:
                rerank[ids] = aggregate_class_vectors(vec[:, :rc], self.whitening)
            if store is not None:
                feats = np.asarray(mb.features[: len(ids)], np.float16)
                for r, i in enumerate(ids):
                    store.put(i, feats[r], mb.mask[r])
        extras = {"classes": classes}
        if rc:
            extras["rerank"] = rerank
        if store is not None:
            store.crop()
            extras["maps"] = store
        return Described(vectors, extras, info)


# --------------------------------------------------------------------------- scorers


def _cam_describer(scorer: str, describer) -> None:
    if not isinstance(describer, CamDescriber):
        raise InputError(f"{scorer} needs the CAM describer, got {type(describer).__name__}")
    if describer.config.scales.max_side is None:
        raise InputError("OnA and re-ranking keep the maps: they need a max_side")


class OnlineAggregation:
    """OnA (module docstring, 2): the database pooled again with each query's classes."""

    keeps = frozenset({"maps"})
    per_query = True
    name = "online aggregation"

    def check(self, describer, post) -> None:
        _cam_describer("OnA", describer)
        if post.dba:
            raise InputError("DBA applies to OfA only (OnA database vectors depend on the query)")

    def rescore(self, block, ranked: Ranked, ctx: ScoringContext) -> Ranked:
        """Scores of one query against its OnA database (computed once per query)."""
        if ranked.database is not ctx.database.vectors:
            return ranked  # already re-aggregated (a second pass after query expansion)
        store = ctx.database.extras["maps"]
        db = online_aggregation(
            store.maps, ctx.describer.classifier[0], block.extras["classes"][0],
            whitening=ctx.describer.whitening, mask=store.mask,
            batch_size=_even_batch(store.maps.shape[0]),
        )  # fmt: skip
        return ranked._replace(database=db, scores=scores_of(ranked.vectors["query"], db, block))


class CamReranking:
    """CAM re-ranking of the top R (module docstring, 3)."""

    keeps = frozenset({"maps"})
    per_query = True
    name = "CAM re-ranking"

    def __init__(self, cam: CamConfig):
        self.cam = cam

    def check(self, describer, post) -> None:
        _cam_describer("re-ranking", describer)

    def rescore(self, block, ranked: Ranked, ctx: ScoringContext) -> Ranked:
        """The top R of one query re-ordered by their best region (2 + region cosine)."""
        s = ranked.scores[0]
        valid = int(np.isfinite(s).sum())
        short = np.argsort(-s, kind="stable")[: min(self.cam.rerank, valid)]
        if short.size == 0:
            return ranked
        store, cam = ctx.database.extras["maps"], self.cam
        res = cam_rerank(
            ranked.vectors["rerank"][0], block.extras["classes"][0][: cam.rerank_classes],
            store.rows(short), ctx.describer.classifier[0], ids=short,
            whitening=ctx.describer.whitening, mask=store.mask[short],
            thresholds=cam.thresholds, min_cells=cam.min_cells,
            heatmap_classes=cam.heatmap_classes, batch_size=_even_batch(len(short)),
        )  # fmt: skip
        s = s.copy()
        s[res.ids] = 2.0 + res.scores.astype(np.float64)
        boxes = ctx.record.setdefault("boxes", {})
        if len(boxes) < 8 or int(block.ids[0]) in boxes:
            boxes[int(block.ids[0])] = res.boxes.tolist()
        return ranked._replace(scores=s[None])


def cam_scorers(cam: CamConfig) -> tuple:
    """The scorers a :class:`CamConfig` asks for: OnA (variant "ona"), re-ranking (rerank > 0)."""
    out = []
    if cam.variant == "ona":
        out.append(OnlineAggregation())
    if cam.rerank:
        out.append(CamReranking(cam))
    return tuple(out)
