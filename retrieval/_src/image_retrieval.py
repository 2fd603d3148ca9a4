"""Image retrieval with VLAD: local descriptors, codebook + PCA, search, evaluation.

Pipeline, each step a function:

1. Local descriptors per image (:func:`local_features`, :func:`describe_images`):
   SIFT / difference-of-Gaussians interest regions, selected as for the patch
   data (:class:`LocalConfig` defaults = :class:`retrieval.PatchSetConfig`'s:
   contrast threshold 0.03, region size 4-80 px, non-maximum suppression at 1
   size, patch at most 5% outside the image), strongest first up to
   ``max_regions`` per image; each region is resampled to an oriented
   ``S x S`` patch (side 6 x size); patches are described by a trained CKN
   (``ckn.describe``) or by SIFT / RootSIFT at the patch centre
   (``retrieval.describe_with``; :func:`make_describer`).
2. A VLAD model (:func:`fit_vlad`): an optional PCA of the local descriptors
   (``local_dim``, no whitening, so that a 1024-D CKN descriptor and a 128-D
   SIFT give VLADs of the same size), a Euclidean k-means codebook, and an
   optional PCA-whitening of the VLADs, all fitted on the local descriptors of
   a set of training images (separate from the evaluated ones when given).
   PCA needs more training vectors than output dimensions: besides each
   training image's VLAD it uses the VLADs of ``pca_windows`` random windows
   per image (the descriptors whose centre lies in a random rectangle covering
   25-100% of the image) -- a reconstruction, no source gives a recipe for
   small collections. The windows of one image are strongly correlated, so
   they do not replace distinct images: with fewer training images than PCA
   dimensions, whitening mostly amplifies window noise and lowers mAP
   (benchmarks/image_retrieval.py measures it).
3. Search (:func:`make_index`): exact inner-product top-k
   (``retrieval.ExactIndex``: a jitted, blocked matmul) or faiss IVF-PQ
   (``retrieval.FaissIndex``) for large collections, behind one interface.
4. Evaluation (:func:`evaluate_scores`, :func:`evaluate_rankings`,
   :func:`image_retrieval_map`; :func:`evaluate_vlad` runs steps 2-4): every image of a group is a query against all
   other images (itself excluded); relevant = the other images of its group;
   images in its junk list are removed from its ranking; a query without any
   relevant image is skipped and said. AP is the plain non-interpolated AP
   (precision averaged at the rank of each relevant image, see
   :mod:`retrieval._src.metrics`; ties broken against the relevant images), and
   the Oxford trapezoidal AP is reported beside it.

Folder layout (:func:`load_image_folder`): ``ROOT/<group>/<image>``, one
subfolder per scene or object; images directly in ROOT are distractors (in the
database, never queries, relevant to nothing). An optional ``junk.txt`` in a
group folder lists images (paths relative to ROOT, or bare names in that
group) removed from the rankings of that group's queries.

References:
  Jegou et al., "Aggregating local descriptors into a compact image
  representation", CVPR 2010; Jegou & Chum, "Negative evidences and
  co-occurrences in image retrieval", ECCV 2012 (PCA-whitening); Philbin et
  al., Oxford buildings (junk images, ``compute_ap``). Paulin et al., IJCV 2017,
  Sec. 6 (VLAD over Patch-CKN descriptors).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src import postprocess as PP
from retrieval._src import regions as R
from retrieval._src import vlad as V
from retrieval._src.data import IMAGE_EXTENSIONS, read_image
from retrieval._src.data import resize_max as _resize_max
from retrieval._src.evaluation import describe_with, descriptor_info, resolve_model
from retrieval._src.metrics.image import (
    ImageRetrievalResult,
    evaluate_rankings,
    evaluate_scores,
    image_retrieval_map,
    junk_sets,
)
from retrieval._src.search import make_index

# --------------------------------------------------------------------------- local descriptors


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    """Interest regions and patches of one image (defaults: the patch data's).

    Attributes:
      max_regions: cap on regions per image, strongest (detector response) first.
      contrast_threshold, edge_threshold: SIFT detector thresholds.
      min_size, max_size: region size range (OpenCV KeyPoint.size, pixels).
      nms_radius: regions closer than nms_radius * size to a stronger one are dropped.
      max_outside: largest fraction of a patch square that may leave the image.
      magnification: patch side in image pixels = magnification * region size.
      max_side: images whose long side exceeds it are first resized (None: never).
    """

    max_regions: int = 1000
    contrast_threshold: float = 0.03
    edge_threshold: float = 10.0
    min_size: float = 4.0
    max_size: float = 80.0
    nms_radius: float = 1.0
    max_outside: float = 0.05
    magnification: float = R.MAGNIFICATION
    max_side: int | None = None

    def __post_init__(self):
        if self.max_regions < 1:
            raise InputError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.max_side is not None and self.max_side < 16:
            raise InputError(f"max_side must be >= 16, got {self.max_side}")


@dataclasses.dataclass(frozen=True)
class Describer:
    """Turns oriented patches into local descriptors.

    Attributes:
      name: "sift", "rootsift" or the CKN model's directory / preset name.
      patch_size: patch side S in pixels.
      color: the patches are RGB (N, S, S, 3) if True, else gray (N, S, S).
      fn: (N, S, S[, 3]) uint8 -> (N, D) float32.
      dim: D.
    """

    name: str
    patch_size: int
    color: bool
    fn: Callable[[np.ndarray], np.ndarray]
    dim: int

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return self.fn(patches)


def make_describer(spec: Any, *, batch_size: int = 256) -> Describer:
    """A :class:`Describer` from "sift", "rootsift", "pixels", a model directory or a ``ckn.CKN``.

    The baselines describe 51 x 51 gray patches; a CKN model the patch side of
    its config (``patch_size``), in colour for ``channels`` "rgb" / "green".

    Raises:
      InputError: neither a baseline nor a model directory that loads.
    """
    what = resolve_model(spec)
    if isinstance(what, str):
        size, color, name = R.PATCH_SIZE, False, what
    else:
        size, color = what.config.patch_size, what.config.channels in ("rgb", "green")
        name = str(spec) if isinstance(spec, (str, os.PathLike)) else what.config.name
    dim = descriptor_info(what, (size, size, 3) if color else (size, size))["dim"]
    return Describer(name, size, color, functools.partial(describe_with, what, batch_size=batch_size), dim)


class LocalFeatures(NamedTuple):
    """Local descriptors of one image.

    Attributes:
      descriptors: (n, D) float32.
      regions: the n regions (coordinates in the possibly resized image).
      image_shape: (H, W) of the (possibly resized) image.
      seconds_regions: detection, selection and patch sampling time.
      seconds_describe: time to describe the n patches.
    """

    descriptors: np.ndarray
    regions: R.Regions
    image_shape: tuple[int, int]
    seconds_regions: float
    seconds_describe: float


def local_features(image: np.ndarray, describer: Describer, *, config: LocalConfig = LocalConfig(),
                   name: str = "image") -> LocalFeatures:
    """Regions, patches and descriptors of one image.

    Args:
      image: (H, W) or (H, W, 3) RGB uint8.
      describer: from :func:`make_describer`.
      config: region selection.
      name: used in error messages.

    Raises:
      InputError: a bad image, or an image without any selected region.
    """
    t0 = time.perf_counter()
    image = _resize_max(np.asarray(image), config.max_side)
    gray = R.to_gray(R._check_image(image, name))
    regions = R.detect_regions(gray, contrast_threshold=config.contrast_threshold,
                               edge_threshold=config.edge_threshold)
    sel = R.select_regions(
        regions, gray.shape, max_regions=config.max_regions, min_size=config.min_size,
        max_size=config.max_size, nms_radius=config.nms_radius, max_outside=config.max_outside,
        magnification=config.magnification,
    )
    if len(sel) == 0:
        raise InputError(
            f"{name}: no interest regions ({len(regions)} detected, none of size "
            f"{config.min_size:g}-{config.max_size:g} px inside the {gray.shape[1]} x {gray.shape[0]} image)"
        )
    src = image if (describer.color and image.ndim == 3) else gray
    patches = R.sample_patches(src, sel.x, sel.y, sel.size, sel.angle, size=describer.patch_size,
                               magnification=config.magnification)
    if describer.color and patches.ndim == 3:
        patches = np.repeat(patches[..., None], 3, axis=3)
    t1 = time.perf_counter()
    desc = np.asarray(describer(patches), np.float32)
    t2 = time.perf_counter()
    return LocalFeatures(desc, sel, gray.shape, t1 - t0, t2 - t1)


def describe_images(
    images: Sequence[str | os.PathLike | np.ndarray],
    describer: Describer,
    *,
    config: LocalConfig = LocalConfig(),
    names: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "describing images",
) -> list[LocalFeatures]:
    """:func:`local_features` of every image (paths are read as RGB), with a progress bar.

    Raises:
      InputError: an image that does not decode or has no region (named).
    """
    out = []
    for i, im in enumerate(tqdm(images, desc=desc, unit="image", disable=not progress)):
        if isinstance(im, (str, os.PathLike)):
            name = str(im) if names is None else names[i]
            arr = read_image(im)
        else:
            name = f"image {i}" if names is None else names[i]
            arr = np.asarray(im)
        out.append(local_features(arr, describer, config=config, name=name))
    return out


# --------------------------------------------------------------------------- VLAD model


@dataclasses.dataclass(frozen=True)
class VladConfig:
    """Codebook, VLAD normalizations and PCA.

    Attributes:
      k: codebook size.
      local_dim: PCA (no whitening) of the local descriptors to this dimension
        when they are larger (None: keep them).
      mass_norm, power, intra_norm, residual_norm: VLAD options (retrieval.vlad_encode);
        default signed square root + intra-normalization (Arandjelovic & Zisserman).
      pca_dim: PCA of the VLADs to this dimension, then L2 (None: no PCA).
      pca_whiten: whiten the PCA (False: a plain projection).
      pca_windows: random windows per training image whose VLADs join the PCA
        training vectors (see the module docstring).
      pca_eps: whitening variance floor, relative to the largest variance.
      kmeans_iters: Lloyd iterations of the codebook.
      max_train_descriptors: codebook and local PCA fitted on at most this many
        descriptors drawn at random.
      seed: seeds the subsamples, the k-means initialization and the windows.
    """

    k: int = 64
    local_dim: int | None = 128
    mass_norm: bool = False
    power: float = 0.5
    intra_norm: bool = True
    residual_norm: bool = False
    pca_dim: int | None = 256
    pca_whiten: bool = True
    pca_windows: int = 50
    pca_eps: float = 1e-9
    kmeans_iters: int = 30
    max_train_descriptors: int = 100_000
    seed: int = 0

    def __post_init__(self):
        if self.k < 1:
            raise InputError(f"k must be >= 1, got {self.k}")
        if self.local_dim is not None and self.local_dim < 1:
            raise InputError(f"local_dim must be >= 1, got {self.local_dim}")
        if self.pca_dim is not None and self.pca_dim < 1:
            raise InputError(f"pca_dim must be >= 1, got {self.pca_dim}")
        if not 0.0 < self.power <= 1.0:
            raise InputError(f"power must be in (0, 1], got {self.power}")
        if self.pca_windows < 0:
            raise InputError(f"pca_windows must be >= 0, got {self.pca_windows}")

    @property
    def flags(self) -> dict:
        return dict(mass_norm=self.mass_norm, power=self.power, intra_norm=self.intra_norm,
                    residual_norm=self.residual_norm)


class VladModel(NamedTuple):
    """A fitted VLAD pipeline: (local PCA) -> codebook -> VLAD -> (PCA-whitening, L2).

    Attributes:
      config: the VladConfig it was fitted with.
      centers: (k, d) codebook in the (reduced) local descriptor space.
      local_pca: PCA of the local descriptors, or None.
      pca: PCA-whitening of the VLADs, or None.
      info: what it was fitted on (counts, seconds).
    """

    config: VladConfig
    centers: np.ndarray
    local_pca: PP.PCAWhitening | None
    pca: PP.PCAWhitening | None
    info: dict

    @property
    def dim(self) -> int:
        return self.pca.dim if self.pca is not None else int(self.centers.size)


def _window_subsets(feats: LocalFeatures, count: int, rng: np.random.Generator, min_count: int) -> list[np.ndarray]:
    """Index sets of the descriptors inside ``count`` random windows (25-100% of the area)."""
    h, w = feats.image_shape
    x, y = feats.regions.x, feats.regions.y
    out = []
    for _ in range(count):
        fw, fh = rng.uniform(0.5, 1.0, 2)
        x0 = rng.uniform(0, (1 - fw) * w)
        y0 = rng.uniform(0, (1 - fh) * h)
        idx = np.flatnonzero((x >= x0) & (x < x0 + fw * w) & (y >= y0) & (y < y0 + fh * h))
        if idx.size >= min_count:
            out.append(idx)
    return out


def _reduce_local(model_local_pca, x: np.ndarray) -> np.ndarray:
    if model_local_pca is None:
        return x
    return PP.apply_pca_whitening(model_local_pca, x, l2_norm=False)


def fit_vlad(train: Sequence[LocalFeatures], config: VladConfig = VladConfig(), *, batch_size: int = 8) -> VladModel:
    """Fits the local PCA, the codebook and the VLAD PCA-whitening on training images.

    Args:
      train: local features of the training images (for the codebook: images
        other than the evaluated ones when possible).
      config: see :class:`VladConfig`.

    Raises:
      InputError: no training image, fewer descriptors than k, a PCA dimension
        above what the training vectors span, mismatched descriptor dimensions.
    """
    if not train:
        raise InputError("no training images for the codebook")
    dims = {f.descriptors.shape[1] for f in train}
    if len(dims) != 1:
        raise InputError(f"training images have descriptors of different dimensions {sorted(dims)}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    allx = np.concatenate([f.descriptors for f in train])
    sample = allx
    if allx.shape[0] > config.max_train_descriptors:
        sample = allx[np.sort(rng.choice(allx.shape[0], config.max_train_descriptors, replace=False))]
    local_pca = None
    d = allx.shape[1]
    if config.local_dim is not None and d > config.local_dim:
        local_pca = PP.fit_pca_whitening(sample, config.local_dim, whiten=False)
        sample = PP.apply_pca_whitening(local_pca, sample, l2_norm=False)
    t1 = time.perf_counter()
    centers = V.fit_codebook(sample, config.k, iters=config.kmeans_iters, max_samples=None, seed=config.seed)
    t2 = time.perf_counter()
    pca = None
    info = {
        "train_images": len(train),
        "train_descriptors": int(allx.shape[0]),
        "codebook_descriptors": int(sample.shape[0]),
        "local_dim": int(local_pca.dim if local_pca is not None else d),
        "seconds_local_pca": t1 - t0,
        "seconds_kmeans": t2 - t1,
    }
    if config.pca_dim is not None:
        sets = []
        for f in train:
            xr = _reduce_local(local_pca, f.descriptors)
            sets.append(xr)
            for idx in _window_subsets(f, config.pca_windows, rng, min_count=max(5, config.k // 4)):
                sets.append(xr[idx])
        vlads = V.vlad_encode_batch(sets, centers, batch_size=batch_size, **config.flags)
        pca = PP.fit_pca_whitening(vlads, config.pca_dim, whiten=config.pca_whiten, eps=config.pca_eps)
        info["pca_train_vectors"] = int(vlads.shape[0])
        info["seconds_pca"] = time.perf_counter() - t2
    return VladModel(config, centers, local_pca, pca, info)


def encode_images(model: VladModel, features: Sequence[LocalFeatures | np.ndarray], *, batch_size: int = 8,
           names: Sequence[str] | None = None) -> np.ndarray:
    """Global vectors of images: (local PCA), VLAD, (PCA-whitening), L2.

    Args:
      model: from :func:`fit_vlad`.
      features: per image a :class:`LocalFeatures` or an (n, D) descriptor array.

    Returns:
      (B, model.dim) float32, unit rows.

    Raises:
      InputError: descriptor dimension different from the model's (image named).
    """
    xs = []
    want = model.local_pca.input_dim if model.local_pca is not None else model.centers.shape[1]
    for i, f in enumerate(features):
        x = f.descriptors if isinstance(f, LocalFeatures) else np.asarray(f)
        if x.ndim != 2 or x.shape[1] != want:
            who = names[i] if names is not None else f"image {i}"
            raise InputError(
                f"{who}: descriptors of shape {x.shape} do not match the codebook's local dimension {want}"
            )
        xs.append(_reduce_local(model.local_pca, x))
    v = V.vlad_encode_batch(xs, model.centers, batch_size=batch_size, **model.config.flags)
    if model.pca is not None:
        v = PP.apply_pca_whitening(model.pca, v)
    return v


# --------------------------------------------------------------------------- evaluation


class VladEvaluation(NamedTuple):
    """Result of :func:`evaluate_vlad`.

    Attributes:
      result: the mAP evaluation.
      vectors: (N, dim) float32 global vectors.
      model: the fitted VLAD model.
      ranking: (N, min(N - 1, depth)) ids of each image's top results (itself
        excluded; -1 pads), by the search method used.
      seconds: {"fit", "encode" (first call, compilation included), "search"}.
    """

    result: ImageRetrievalResult
    vectors: np.ndarray
    model: VladModel
    ranking: np.ndarray
    seconds: dict


def evaluate_vlad(
    features: Sequence[LocalFeatures],
    labels,
    *,
    train: Sequence[LocalFeatures] | None = None,
    config: VladConfig = VladConfig(),
    junk=None,
    names: Sequence[str] | None = None,
    search: str = "exact",
    search_options: dict | None = None,
    depth: int = 10,
) -> VladEvaluation:
    """Fits VLAD on ``train`` (default: the evaluated images), encodes, searches, scores.

    Exact search is scored on the full similarity matrix (ties against the
    relevant images); IVF-PQ on its ranked lists of ``min(N, 100)`` results.
    """
    t0 = time.perf_counter()
    model = fit_vlad(features if train is None else train, config)
    t1 = time.perf_counter()
    vecs = encode_images(model, features, names=names)
    t2 = time.perf_counter()
    n = vecs.shape[0]
    index = make_index(vecs, search, **(search_options or {}))
    if search == "exact":
        res = image_retrieval_map(vecs, labels, junk=junk, names=names)
        top = index.search(vecs, min(n, depth + 1)).ids
    else:
        top = index.search(vecs, min(n, 100)).ids
        res = evaluate_rankings(top, labels, junk=junk, names=names)
    t3 = time.perf_counter()
    width = max(1, min(n - 1, depth))
    ranking = np.stack([np.concatenate([r[r != q], np.full(width, -1)])[:width] for q, r in enumerate(top)])
    return VladEvaluation(res, vecs, model, ranking, {"fit": t1 - t0, "encode": t2 - t1, "search": t3 - t2})


# --------------------------------------------------------------------------- folders


class ImageCollection(NamedTuple):
    """Images of a folder of folders.

    Attributes:
      root: the folder.
      paths: (N,) image files, group by group (sorted), then root-level distractors.
      labels: (N,) int64 group index, -1 for distractors.
      groups: group (subfolder) names, by label.
      junk: {query index: set of junk image indices} from the junk.txt files.
    """

    root: Path
    paths: list[Path]
    labels: np.ndarray
    groups: list[str]
    junk: dict[int, set[int]]

    @property
    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image_folder(root: str | os.PathLike) -> ImageCollection:
    """Lists ``ROOT/<group>/<image>`` groups, root-level distractors and junk lists.

    Raises:
      InputError: a missing folder, no group at all, an empty group folder, a
        junk list naming an unknown image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    groups = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for g, folder in enumerate(groups):
        files = _image_files(folder)
        if not files:
            raise InputError(f"group folder {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [g] * len(files)
        names.append(folder.name)
    distractors = _image_files(root)
    paths += distractors
    labels += [-1] * len(distractors)
    if not groups:
        raise InputError(f"{root} has no group subfolder (expected ROOT/<group>/<image>)")
    index = {p.relative_to(root).as_posix(): i for i, p in enumerate(paths)}
    lab = np.asarray(labels, np.int64)
    junk: dict[int, set[int]] = {}
    for g, folder in enumerate(groups):
        jf = folder / "junk.txt"
        if not jf.is_file():
            continue
        ids = set()
        for line in jf.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key = line if line in index else f"{folder.name}/{line}"
            if key not in index:
                raise InputError(f"{jf}: unknown image {line!r}")
            ids.add(index[key])
        for q in np.flatnonzero(lab == g):
            junk[int(q)] = set(ids) - {int(q)}
    return ImageCollection(root, paths, lab, names, junk)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image under a folder, recursively (sorted); InputError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"no image under {folder}")
    return files


# --------------------------------------------------------------------------- figure


def save_figure(path: str | os.PathLike, images: Sequence[np.ndarray], labels, ranking: np.ndarray,
                queries: Sequence[int], *, names: Sequence[str] | None = None, junk=None, top: int = 5,
                title: str = "") -> Path:
    """A PNG grid: each row a query then its top results (green relevant, red not, grey junk).

    Args:
      images: (N,) images (thumbnails are fine), RGB or gray uint8.
      labels: (N,) group ids.
      ranking: (Q_all, >= top + 1) ranked ids per image (row q for query q).
      queries: the rows to draw.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = np.asarray(labels)
    jsets = junk_sets(junk, lab.shape[0])
    rows = len(queries)
    fig, axes = plt.subplots(rows, top + 1, figsize=(2.0 * (top + 1), 2.0 * rows), squeeze=False)
    for r, q in enumerate(queries):
        ids = [int(i) for i in ranking[q] if i >= 0 and i != q][:top]
        cells = [(q, "query", "black")] + [
            (i, f"#{j + 1}", "grey" if i in jsets[q] else ("green" if lab[i] == lab[q] and lab[q] >= 0 else "red"))
            for j, i in enumerate(ids)
        ]
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            i, tag, color = cells[c]
            im = images[i]
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None)
            for sp in ax.spines.values():
                sp.set_edgecolor(color)
                sp.set_linewidth(4 if c else 2)
            name = names[i] if names is not None else str(i)
            ax.set_title(f"{tag} {name}"[:28], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def thumbnail(image: np.ndarray, side: int = 160) -> np.ndarray:
    return _resize_max(np.asarray(image), side)
