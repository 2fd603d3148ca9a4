"""A VLAD model fitted on images: (local PCA) -> codebook -> VLAD -> (PCA-whitening, L2).

:func:`fit_vlad` fits, on the local descriptors of a set of training images
(separate from the evaluated ones when given), an optional PCA of the local
descriptors (``local_dim``, no whitening, so that a 1024-D CKN descriptor and
a 128-D SIFT give VLADs of the same size), a Euclidean k-means codebook
(:func:`retrieval._src.vlad.fit_codebook`), and an optional PCA-whitening of
the VLADs (:mod:`retrieval._src.postprocess`). :func:`encode_images` applies
the model to images.

PCA needs more training vectors than output dimensions: besides each training
image's VLAD it uses the VLADs of ``pca_windows`` random windows per image
(the descriptors whose centre lies in a random rectangle covering 25-100% of
the image) -- a reconstruction, no source gives a recipe for small
collections. The windows of one image are strongly correlated, so they do not
replace distinct images: with fewer training images than PCA dimensions,
whitening mostly amplifies window noise and lowers mAP
(benchmarks/image_retrieval.py measures it).

References:
  Jegou et al., "Aggregating local descriptors into a compact image
  representation", CVPR 2010; Jegou & Chum, "Negative evidences and
  co-occurrences in image retrieval", ECCV 2012 (PCA-whitening).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ckn import InputError
from retrieval._src import postprocess as PP
from retrieval._src import vlad as V
from retrieval._src.local import LocalFeatures
from retrieval._src.settings import check_settings, setting


@dataclasses.dataclass(frozen=True)
class VladConfig:
    """Codebook, VLAD normalizations and PCA.

    Attributes:
      k: codebook size.
      local_dim: PCA (no whitening) of the local descriptors to this dimension
        when they are larger (None or 0: keep them).
      mass_norm, power, intra_norm, residual_norm: the VLAD normalizations
        (:attr:`norm`; the global L2 is always on); default signed square root
        + intra-normalization (Arandjelovic & Zisserman).
      pca_dim: PCA of the VLADs to this dimension, then L2 (None or 0: no PCA,
        the default: on the small collections measured here PCA lowered mAP in 39 of
        40 comparisons, see README).
      pca_whiten: whiten the PCA (False: a plain projection).
      pca_windows: random windows per training image whose VLADs join the PCA
        training vectors (see the module docstring).
      pca_eps: whitening variance floor, relative to the largest variance.
      kmeans_iters: Lloyd iterations of the codebook.
      max_train_descriptors: codebook and local PCA fitted on at most this many
        descriptors drawn at random.
      seed: seeds the subsamples, the k-means initialization and the windows.
    """

    k: int = setting(64, minimum=1, help="codebook size")
    local_dim: int | None = setting(
        128, kind="int", minimum=1, optional=True, zero_is_none=True, none_means="keep",
        help="PCA of larger local descriptors to this dimension before VLAD, 0 to keep",
    )  # fmt: skip
    mass_norm: bool = False
    power: float = 0.5
    intra_norm: bool = True
    residual_norm: bool = False
    pca_dim: int | None = setting(
        None, kind="int", minimum=1, optional=True, zero_is_none=True, flag="pca",
        help="PCA-whitening dimension of the VLADs, e.g. 256, 0 for none (on small "
        "collections it lowered mAP in every measured setting)",
    )  # fmt: skip
    pca_whiten: bool = setting(
        True, flag="no-whiten", inverted=True, help="plain PCA projection, no whitening"
    )
    pca_windows: int = 50
    pca_eps: float = 1e-9
    kmeans_iters: int = 30
    max_train_descriptors: int = 100_000
    seed: int = setting(0, help="seed of k-means, subsamples and PCA windows")

    def __post_init__(self):
        check_settings(self)  # 0 and None both mean "none" for local_dim and pca_dim
        if not 0.0 < self.power <= 1.0:
            raise InputError(f"power must be in (0, 1], got {self.power}")
        if self.pca_windows < 0:
            raise InputError(f"pca_windows must be >= 0, got {self.pca_windows}")

    @property
    def norm(self) -> V.VladNorm:
        """The VLAD normalizations of this config, global L2 on."""
        return V.VladNorm(
            mass=self.mass_norm,
            power=self.power,
            intra=self.intra_norm,
            l2=True,
            residual=self.residual_norm,
        )


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


def window_subsets(
    feats: LocalFeatures, count: int, rng: np.random.Generator, min_count: int
) -> list[np.ndarray]:
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


def fit_vlad(
    train: Sequence[LocalFeatures], config: VladConfig = VladConfig(), *, batch_size: int = 8
) -> VladModel:
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
        sample = allx[
            np.sort(rng.choice(allx.shape[0], config.max_train_descriptors, replace=False))
        ]
    local_pca = None
    d = allx.shape[1]
    if config.local_dim is not None and d > config.local_dim:
        local_pca = PP.fit_pca_whitening(sample, config.local_dim, whiten=False)
        sample = PP.apply_pca_whitening(local_pca, sample, l2_norm=False)
    t1 = time.perf_counter()
    centers = V.fit_codebook(
        sample, config.k, iters=config.kmeans_iters, max_samples=None, seed=config.seed
    )
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
            for idx in window_subsets(f, config.pca_windows, rng, min_count=max(5, config.k // 4)):
                sets.append(xr[idx])
        vlads = V.vlad_encode_batch(sets, centers, config.norm, batch_size=batch_size)
        pca = PP.fit_pca_whitening(
            vlads, config.pca_dim, whiten=config.pca_whiten, eps=config.pca_eps
        )
        info["pca_train_vectors"] = int(vlads.shape[0])
        info["seconds_pca"] = time.perf_counter() - t2
    return VladModel(config, centers, local_pca, pca, info)


def encode_images(
    model: VladModel,
    features: Sequence[LocalFeatures | np.ndarray],
    *,
    batch_size: int = 8,
    names: Sequence[str] | None = None,
) -> np.ndarray:
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
                f"{who}: descriptors of shape {x.shape} do not match the codebook's "
                f"local dimension {want}"
            )
        xs.append(_reduce_local(model.local_pca, x))
    v = V.vlad_encode_batch(xs, model.centers, model.config.norm, batch_size=batch_size)
    if model.pca is not None:
        v = PP.apply_pca_whitening(model.pca, v)
    return v
