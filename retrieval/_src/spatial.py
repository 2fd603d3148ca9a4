"""Spatial verification as a scorer of the image pipeline: re-rank the shortlist by inliers.

:class:`SpatialVerification` (config :class:`VerifyConfig`) re-scores each query's ranking
(:mod:`retrieval._src.scoring`), after any describer (pooling head, learned head, CAM, VLAD):

1. the shortlist: the top ``top`` database images of the current ranking;
2. local features (:func:`retrieval.local.local_features`: SIFT / DoG regions, at most
   ``regions`` per image, described by SIFT, RootSIFT or a CKN model) of the query and of each
   shortlisted image; a database image's features are computed once per run and kept in a
   :class:`retrieval.local.FeatureCache` of at most ``cache_mb`` MiB;
3. per pair, mutual nearest neighbours with Lowe's ratio test (:func:`retrieval.local.
   batch_matches`: one BLAS product per image) and RANSAC of an affine map or a homography
   (:func:`retrieval.local.fit_geometry`, OpenCV seeded with ``seed``): the number of inliers
   (as :func:`retrieval.local.verify_pair` counts them);
4. the images with at least ``min_inliers`` inliers come first, by decreasing inlier count;
   ties keep the global order, and so do the other images (below the verified ones). Their new
   score is ``1 + max(global scores) + inliers + 0.5 (1 - r / R)`` (r their global rank in the
   shortlist of R), above every global score;
5. query expansion, when asked (``PostConfig.qe``), is the pipeline's scorer after this one:
   it expands the query with the top k of the verified ranking (the verified images first),
   and the expanded query's new shortlist is verified again (the pairs already verified for
   this query are not matched twice).

A database image that cannot be read keeps its global rank (0 inliers) with one warning; one
without any interest region keeps it silently. A query without any interest region (too
small, or flat) is refused (:class:`ckn.InputError`).

References:
  J. Philbin, O. Chum, M. Isard, J. Sivic, A. Zisserman, "Object retrieval with large
  vocabularies and fast spatial matching", CVPR 2007; H. Noh et al., "Large-scale image
  retrieval with attentive deep local features", ICCV 2017; B. Cao, A. Araujo, J. Sim,
  "Unifying deep local and global features for image search" (DELG), ECCV 2020.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings

import numpy as np

from ckn import InputError
from retrieval._src.data.io import read_image_any
from retrieval._src.local import LocalConfig, local_features, make_local_describer
from retrieval._src.scoring import Block, Ranked, ScoringContext
from retrieval._src.settings import check_settings, max_side_setting, setting
from retrieval._src.verification import (
    GEOMETRIC_MODELS,
    FeatureCache,
    batch_matches,
    fit_geometry,
)

#: The extra of a description that holds its images (paths, or arrays such as query crops).
IMAGES = "images"


class _Unreadable(Exception):
    """A database image that cannot be read (it keeps its global rank)."""


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
    """Spatial verification of the shortlist (see the module docstring).

    Attributes:
      descriptor: local descriptor: "sift", "rootsift" or a CKN model folder.
      top: R, the shortlist verified per query.
      ratio: Lowe's ratio of the mutual nearest-neighbour matches.
      model: the geometric model fitted by RANSAC (:data:`retrieval.local.GEOMETRIC_MODELS`).
      min_inliers: fewest inliers of a verified image.
      threshold: largest transfer error of an inlier, pixels.
      regions: local regions per image at most, strongest first.
      contrast_threshold: the SIFT detector's contrast threshold (0.01, below the patch data's
        0.03: a query crop of a few hundred pixels has few regions at 0.03).
      max_side: images are shrunk to this long side before detection.
      cache_mb: memory for the database images' local features, MiB.
      seed: OpenCV's RANSAC seed.
    """

    descriptor: str = setting(
        "rootsift", kind="str", flag="verify",
        help="re-rank the top R by spatial verification with this local descriptor: sift, "
        "rootsift or a CKN model folder",
    )  # fmt: skip
    top: int = setting(100, minimum=1, flag="verify-top", help="R, images verified per query")
    ratio: float = setting(
        0.9, positive=True, flag="verify-ratio", help="Lowe's ratio test of the matches (<= 1)"
    )
    model: str = setting(
        "affine", choices=tuple(GEOMETRIC_MODELS), flag="verify-model",
        help="geometric model fitted by RANSAC",
    )  # fmt: skip
    min_inliers: int = setting(
        10, minimum=1, help="fewest inliers of a verified image (the others keep their rank)"
    )
    threshold: float = setting(
        8.0, positive=True, flag="verify-threshold", help="inlier transfer error, pixels"
    )
    regions: int = setting(
        1000, minimum=1, flag="verify-regions", help="local regions per image, strongest first"
    )
    contrast_threshold: float = setting(
        0.01, positive=True, flag="verify-contrast",
        help="SIFT detector contrast threshold of the verification's regions (lower: more "
        "regions on small query crops)",
    )  # fmt: skip
    max_side: int | None = max_side_setting()
    cache_mb: int = setting(
        1024, minimum=0, flag="verify-cache-mb",
        help="memory for the database images' local features, MiB",
    )  # fmt: skip
    seed: int = setting(0, minimum=0, flag="verify-seed", help="RANSAC seed")

    def __post_init__(self):
        object.__setattr__(
            self, "descriptor", os.fspath(self.descriptor) if self.descriptor else ""
        )
        check_settings(self)
        if not self.descriptor:
            raise InputError("descriptor must be sift, rootsift or a CKN model folder")
        if self.ratio > 1:
            raise InputError(f"ratio must be <= 1, got {self.ratio:g}")

    @property
    def label(self) -> str:
        """Short description, e.g. "verified top 100 (rootsift, affine, >= 10 inliers)"."""
        name = os.path.basename(self.descriptor.rstrip("/")) or self.descriptor
        return f"verified top {self.top} ({name}, {self.model}, >= {self.min_inliers} inliers)"


def verified_scores(scores: np.ndarray, short: np.ndarray, inliers, min_inliers: int):
    """One query's scores with the verified images of its shortlist first.

    Args:
      scores: (N,) float64 global scores (-inf: excluded).
      short: (R,) int64 database rows of the shortlist, in global order.
      inliers: (R,) inlier counts of the shortlist.
      min_inliers: fewest inliers of a verified image.

    Returns:
      (N,) float64: ``1 + max(finite scores) + inliers + 0.5 (1 - r / R)`` for the verified
      images (r: rank in the shortlist), the others unchanged.
    """
    out = np.array(scores, np.float64, copy=True)
    inliers = np.asarray(inliers, np.int64)
    ok = inliers >= min_inliers
    if not ok.any():
        return out
    base = 1.0 + float(np.max(out[np.isfinite(out)]))
    r = np.arange(len(short))
    out[short[ok]] = base + inliers[ok] + 0.5 * (1.0 - r[ok] / len(short))
    return out


class SpatialVerification:
    """The spatial-verification scorer (module docstring).

    Args:
      config: the :class:`VerifyConfig`.
      cache: a :class:`retrieval.local.FeatureCache` shared with other runs on the same
        database with the same local descriptor and regions (a benchmark); default: a new one
        of ``cache_mb``.
      patches: the loaded local describer of ``config.descriptor`` (default: loaded here).

    Attributes:
      config: the :class:`VerifyConfig`.
      patches: the :class:`retrieval.local.LocalDescriber` of ``config.descriptor``.
      cache: the database images' :class:`retrieval.local.FeatureCache`.
    """

    keeps = frozenset({IMAGES})
    per_query = True
    name = "spatial verification"

    def __init__(self, config: VerifyConfig, *, cache: FeatureCache | None = None, patches=None):
        if not isinstance(config, VerifyConfig):
            raise InputError(f"SpatialVerification needs a VerifyConfig, got {config!r}")
        self.config = config
        self.patches = make_local_describer(config.descriptor) if patches is None else patches
        self.local = LocalConfig(
            max_regions=config.regions, max_side=config.max_side,
            contrast_threshold=config.contrast_threshold,
        )  # fmt: skip
        self.cache = FeatureCache(config.cache_mb * 2**20) if cache is None else cache
        self._query: tuple = (None, None, {})  # (query id, features, {db row: inliers})
        self.seconds: dict[int, float] = {}
        self.seconds_database = 0.0
        self.pairs = 0
        self.unreadable: list[str] = []
        self.no_regions: set[int] = set()

    def check(self, describer, post) -> None:
        """Nothing to refuse: every describer's ranking can be verified."""

    def check_size(self, num_database: int) -> None:
        """Refuses a shortlist longer than the database (before any image is described)."""
        if self.config.top > num_database:
            raise InputError(
                f"top {self.config.top} is larger than the database ({num_database} images)"
            )

    def _features(self, image, name: str):
        img = read_image_any(image) if isinstance(image, (str, os.PathLike)) else image
        return local_features(np.asarray(img), self.patches, config=self.local, name=name)

    def _database(self, j: int, path):
        """Features of database row j, or None (unreadable: warned once; no region).

        The image is read only when its features are not in the cache."""
        if j in self.no_regions or str(path) in self.unreadable:
            return None
        t0 = time.perf_counter()
        try:
            return self.cache.get(j, lambda: self._database_features(path))
        except _Unreadable as e:
            self.unreadable.append(str(path))
            warnings.warn(f"{e}: it keeps its global rank (not verified)", stacklevel=2)
            return None
        except InputError:
            self.no_regions.add(j)
            return None
        finally:
            self.seconds_database += time.perf_counter() - t0

    def _database_features(self, path):
        try:
            img = read_image_any(path) if isinstance(path, (str, os.PathLike)) else path
        except InputError as e:
            raise _Unreadable(str(e)) from None
        return self._features(img, str(path))

    def _query_features(self, block: Block, ctx: ScoringContext):
        qid = int(block.ids[0])
        if self._query[0] == qid:
            return self._query[1], self._query[2]
        image = block.extras[IMAGES][0]
        name = str(image) if isinstance(image, (str, os.PathLike)) else f"query {qid}"
        if block.self_ids is not None:  # groups protocol: the query is a database image
            j = int(block.self_ids[0])
            feats = self.cache.get(j, lambda: self._features(image, name))
        else:
            feats = self._features(image, name)
        self._query = (qid, feats, {})
        return feats, self._query[2]

    def rescore(self, block: Block, ranked: Ranked, ctx: ScoringContext) -> Ranked:
        """The top R of one query re-ordered by inliers (module docstring)."""
        t0 = time.perf_counter()
        c = self.config
        s = ranked.scores[0]
        valid = int(np.isfinite(s).sum())
        short = np.argsort(-s, kind="stable")[: min(c.top, valid)]
        qf, seen = self._query_features(block, ctx)
        paths = ctx.database.extras[IMAGES]
        new = [j for j in short.tolist() if j not in seen]
        feats = {j: self._database(j, paths[j]) for j in new}
        todo = [j for j in new if feats[j] is not None]
        matches = batch_matches(qf.descriptors, [feats[j].descriptors for j in todo], c.ratio)
        for j in new:
            seen[j] = 0
        for j, m in zip(todo, matches):
            src = np.asarray(qf.regions.xy)[m.query]
            dst = np.asarray(feats[j].regions.xy)[m.database]
            seen[j] = fit_geometry(
                src, dst, c.model, threshold=c.threshold, seed=c.seed
            ).count  # fmt: skip
        self.pairs += len(new)
        inliers = np.array([seen[j] for j in short.tolist()], np.int64)
        out = verified_scores(s, short, inliers, c.min_inliers)
        qid = int(block.ids[0])
        self.seconds[qid] = self.seconds.get(qid, 0.0) + time.perf_counter() - t0
        ctx.record["verification"] = self.record()
        return ranked._replace(scores=out[None])

    def record(self) -> dict:
        """What the evaluation's ``info["verification"]`` says: settings, counts, times."""
        sec = np.asarray(list(self.seconds.values()) or [0.0])
        n = len(self.seconds)
        return {
            "config": dataclasses.asdict(self.config),
            "label": self.config.label,
            "descriptor_dim": self.patches.dim,
            "queries": n,
            "pairs": self.pairs,
            "unreadable": list(self.unreadable),
            "no_regions": len(self.no_regions),
            "cache": {"hits": self.cache.hits, "misses": self.cache.misses,
                      "peak_mb": self.cache.peak / 2**20, "max_mb": self.config.cache_mb},
            "seconds_per_query": float(sec.mean()),
            "seconds_per_query_max": float(sec.max()),
            "seconds_database_features": self.seconds_database,
            "seconds_per_query_cached": float(max(sec.sum() - self.seconds_database, 0.0)
                                              / max(n, 1)),
        }  # fmt: skip
