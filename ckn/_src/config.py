"""Configs as code: frozen dataclasses and the named Patch-CKN presets.

The papers do not give the per-layer sizes of Patch-CKN ([P1]; CKN_NOTES
section 2): every preset below is a reconstruction, chosen so that a 51 x 51
patch gives a 1024-D descriptor (4 x 4 positions x 64 filters, a SIFT-like
layout). Every field can be overridden (``dataclasses.replace`` or the
``ckn train`` flags).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from ckn._src.errors import InputError
from ckn._src.ops import POOLINGS, pooled_size

INPUTS = ("raw", "white", "grad")
METHODS = ("kmeans", "kmeans+nystrom", "nips14")
CHANNELS = ("gray", "green", "rgb")
NORMALIZATIONS = ("global", "position")


def _check_pooling(mode: str, std: float | None) -> None:
    if mode not in POOLINGS:
        raise InputError(f"pooling must be one of {', '.join(POOLINGS)}, got {mode!r}")
    if std is not None and not std > 0:
        raise InputError(f"pool_std must be > 0 or None, got {std!r}")


class LayerGeometry(NamedTuple):
    """Sizes of one kernel layer's maps for a given patch size (``CKNConfig.layer_geometry``)."""

    in_channels: int  # channels C of the map feeding the layer (sub-patch dimension e * e * C)
    positions: tuple[int, int]  # (H, W) of the map of sub-patch embeddings, before pooling
    pooled: tuple[int, int]  # (H, W) after pooling: the layer's output map


@dataclass(frozen=True)
class LayerConfig:
    """One kernel layer.

    Attributes:
      subpatch: sub-patch side e (stride 1).
      filters: number of filters p.
      subsampling: Gaussian pooling factor s (1 = no pooling).
      sigma: kernel bandwidth, or "auto" for the 0.1-quantile rule at training.
      lam: ridge lambda of the Nystrom map (kappa(Z^T Z) + lam I)^{-1/2}.
      padding: "same" (zero padding, keeps the map size) or "valid".
      pooling: "strided" (the papers': output i centred on input i*s) or
        "centered" (outputs at the centres of equal cells tiling the map, as
        SIFT's 4x4 cells; a reconstruction that measured better, see README).
      pool_std: std of the pooling Gaussian in input-map pixels (None: s/sqrt(2),
        the papers').
    """

    subpatch: int = 3
    filters: int = 64
    subsampling: int = 2
    sigma: float | str = "auto"
    lam: float = 1e-3
    padding: str = "same"
    pooling: str = "strided"
    pool_std: float | None = None

    def __post_init__(self):
        if self.subpatch < 1 or self.filters < 1 or self.subsampling < 1:
            raise InputError(f"subpatch, filters and subsampling must be >= 1, got {self}")
        if not (self.sigma == "auto" or (isinstance(self.sigma, (int, float)) and self.sigma > 0)):
            raise InputError(f"sigma must be a positive number or 'auto', got {self.sigma!r}")
        if self.lam < 0:
            raise InputError(f"lam must be >= 0, got {self.lam}")
        if self.padding not in ("same", "valid"):
            raise InputError(f"padding must be 'same' or 'valid', got {self.padding!r}")
        _check_pooling(self.pooling, self.pool_std)


@dataclass(frozen=True)
class TrainConfig:
    """Unsupervised training of every layer (no labels).

    Reconstructed choices (no source gives them) are marked (R).

    Attributes:
      method: "kmeans" (spherical k-means filters, Nystrom map), "kmeans+nystrom"
        (then stochastic minimization of the Nystrom residual with Adam) or
        "nips14" (the kernel-approximation objective of [P2] with Adam).
      num_patches: sub-patches sampled per layer (CKN_NOTES: 1e5 - 1e6).
      kmeans_iters: Lloyd iterations (CKN_NOTES: 10 - 100).
      sigma_quantile: quantile of random-pair distances for sigma="auto".
      refine_steps, refine_batch, refine_lr: Nystrom residual refinement (R).
      nips14_steps, nips14_batch, nips14_lr: NIPS 2014 objective (R).
      whiten_rel_eps: drop whitening directions with eigenvalue < this * max.
      whiten_reg: add this * max eigenvalue before the inverse square root
        (0: plain whitening, the papers'; > 0 damps noise directions) (R).
      batch_size: patches per batch when computing the maps of lower layers.
    """

    method: str = "kmeans"
    num_patches: int = 100_000
    kmeans_iters: int = 30
    sigma_quantile: float = 0.1
    refine_steps: int = 300
    refine_batch: int = 1024
    refine_lr: float = 1e-3
    nips14_steps: int = 2000
    nips14_batch: int = 512
    nips14_lr: float = 1e-2
    whiten_rel_eps: float = 1e-8
    whiten_reg: float = 0.0
    batch_size: int = 256

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(
                f"unknown training method {self.method!r}; expected one of {', '.join(METHODS)}"
            )
        if self.num_patches < 2:
            raise InputError(f"num_patches must be >= 2, got {self.num_patches}")
        if not 0.0 < self.sigma_quantile < 1.0:
            raise InputError(f"sigma_quantile must be in (0, 1), got {self.sigma_quantile}")


@dataclass(frozen=True)
class CKNConfig:
    """A whole network: an input map and kernel layers.

    Attributes:
      name: preset name (informative).
      input: "raw" (centred sub-patches), "white" (centred + whitened) or
        "grad" (gradient orientation map, no learned parameters).
      layers: the kernel layers, first to last.
      channels: "gray", "green" (the authors' choice for grad) or "rgb".
      blur: std in pixels of a Gaussian blur of the patch before the input map
        (0: none, the papers'); SIFT too takes gradients of a smoothed image.
      grad_orientations: K orientation bins of the grad map.
      grad_sigma: bandwidth of the grad map on the unit circle.
      grad_subsampling: Gaussian pooling of the grad map.
      grad_pooling, grad_pool_std: its geometry (see ``LayerConfig``).
      patch_size: the patch side the preset is designed for (informative).
      normalize: descriptor normalization: "global" (the papers': L2 of the
        flattened last map) or "position" (L2 of each position's p values
        first, then global L2; a reconstruction that measured better).
      train: unsupervised training settings.
      projection: (D, k): a learned linear map of the D-dim descriptor to k
        dims, then L2 (``ckn.finetune`` with ``FinetuneConfig.projection``);
        None: the descriptor is the normalized last map (``ckn.train``'s models).
    """

    name: str = "custom"
    input: str = "grad"
    layers: tuple[LayerConfig, ...] = (LayerConfig(),)
    channels: str = "gray"
    blur: float = 0.0
    grad_orientations: int = 12
    grad_sigma: float = 0.4
    grad_subsampling: int = 2
    grad_pooling: str = "strided"
    grad_pool_std: float | None = None
    patch_size: int = 51
    normalize: str = "global"
    train: TrainConfig = field(default_factory=TrainConfig)
    projection: tuple[int, int] | None = None

    def __post_init__(self):
        if self.projection is not None:
            proj = tuple(self.projection)
            if len(proj) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in proj):
                raise InputError(f"projection must be (D, k) ints or None, got {self.projection!r}")
            if min(proj) < 1:
                raise InputError(f"projection dims must be >= 1, got {proj}")
            object.__setattr__(self, "projection", proj)
        if self.input not in INPUTS:
            raise InputError(
                f"unknown input map {self.input!r}; expected one of {', '.join(INPUTS)}"
            )
        if self.channels not in CHANNELS:
            raise InputError(
                f"unknown channels {self.channels!r}; expected one of {', '.join(CHANNELS)}"
            )
        if self.input == "grad" and self.channels == "rgb":
            raise InputError(
                "the grad input map works on one channel: use channels 'gray' or 'green'"
            )
        if not self.layers:
            raise InputError("a network needs at least one kernel layer")
        if self.grad_orientations < 2 or self.grad_sigma <= 0 or self.grad_subsampling < 1:
            raise InputError(
                "grad_orientations >= 2, grad_sigma > 0 and grad_subsampling >= 1 are required"
            )
        _check_pooling(self.grad_pooling, self.grad_pool_std)
        if not self.blur >= 0:
            raise InputError(f"blur must be >= 0, got {self.blur!r}")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )

    @property
    def in_channels(self) -> int:
        return 3 if self.channels == "rgb" else 1

    def layer_geometry(self, height: int, width: int) -> list[LayerGeometry]:
        """Map sizes through each kernel layer for an input of height x width.

        Raises:
          InputError: the input is smaller than the network's receptive field.
        """
        h, w = height, width
        c = self.in_channels
        if self.input == "grad":
            if min(h, w) < 2:
                raise InputError(
                    f"patches of {height}x{width} are too small for the gradient map (>= 2x2)"
                )
            h, w = pooled_size(h, self.grad_subsampling), pooled_size(w, self.grad_subsampling)
            c = self.grad_orientations
        out = []
        for i, layer in enumerate(self.layers):
            if layer.padding == "valid":
                h, w = h - layer.subpatch + 1, w - layer.subpatch + 1
            if min(h, w) < (layer.subpatch if layer.padding == "same" else 1):
                raise InputError(
                    f"patches of {height}x{width} are too small for this network: layer {i + 1} "
                    f"({layer.subpatch}x{layer.subpatch} sub-patches) sees a "
                    f"{max(h, 0)}x{max(w, 0)} map"
                )
            pooled = (pooled_size(h, layer.subsampling), pooled_size(w, layer.subsampling))
            out.append(LayerGeometry(in_channels=c, positions=(h, w), pooled=pooled))
            h, w = pooled
            c = layer.filters
        return out

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(H, W, C) of the last map for an input of height x width.

        Raises:
          InputError: the input is smaller than the network's receptive field.
        """
        return (*self.layer_geometry(height, width)[-1].pooled, self.layers[-1].filters)

    def descriptor_dim(self, height: int, width: int) -> int:
        """D of the descriptor of a height x width patch: k with a projection, else H' W' C'.

        Raises:
          InputError: the input is too small, or its last map does not have the
            projection's input dimension.
        """
        h, w, c = self.output_shape(height, width)
        if self.projection is None:
            return h * w * c
        if h * w * c != self.projection[0]:
            raise InputError(
                f"patches of {height}x{width} give a {h * w * c}-D map but the projection "
                f"takes {self.projection[0]}-D descriptors"
            )
        return self.projection[1]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CKNConfig:
        d = dict(d)
        d["layers"] = tuple(LayerConfig(**layer) for layer in d["layers"])
        d["train"] = TrainConfig(**d.get("train", {}))
        if d.get("projection") is not None:
            d["projection"] = tuple(d["projection"])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# --- Presets -------------------------------------------------------------------
# All reconstructions (CKN_NOTES section 2: "not found in any source"). The
# 51 -> 26 -> 13 -> 4 spatial path with 64 filters gives 4 x 4 x 64 = 1024-D.

PRESETS: dict[str, CKNConfig] = {
    # Gradient map with 12 orientations pooled by 2 (51 -> 26), then two
    # layers of 64 filters on 3x3 sub-patches pooled by 2 (-> 13) and 4 (-> 4).
    # Three choices measured on the TRAIN split of the embedded default data
    # (README, ablation table): a 1.5-pixel Gaussian blur before the
    # gradients, cell-centred last pooling with std 0.75 (the papers' strided
    # pooling puts the outer cells on the patch border), and per-position L2
    # normalization.
    "ckn-grad": CKNConfig(
        name="ckn-grad",
        input="grad",
        channels="gray",
        blur=1.5,
        grad_orientations=12,
        grad_sigma=0.4,
        grad_subsampling=2,
        normalize="position",
        layers=(
            LayerConfig(subpatch=3, filters=64, subsampling=2),
            LayerConfig(subpatch=3, filters=64, subsampling=4, pooling="centered", pool_std=0.75),
        ),
    ),
    # The same network with the papers' pooling and normalization and no blur
    # (the ablation's starting point).
    "ckn-grad-paper": CKNConfig(
        name="ckn-grad-paper",
        input="grad",
        channels="gray",
        grad_orientations=12,
        grad_sigma=0.4,
        grad_subsampling=2,
        layers=(
            LayerConfig(subpatch=3, filters=64, subsampling=2),
            LayerConfig(subpatch=3, filters=64, subsampling=4),
        ),
    ),
    # Centred 3x3 pixel sub-patches, 64 filters pooled by 2 (51 -> 26), then
    # 64 filters on 3x3 sub-patches pooled by 7 (26 -> 4). Blur, cell-centred
    # last pooling (std 1.3, the same fraction of the cell as ckn-grad's) and
    # per-position L2 chosen on the train split as for ckn-grad.
    "ckn-raw": CKNConfig(
        name="ckn-raw",
        input="raw",
        channels="gray",
        blur=1.5,
        normalize="position",
        layers=(
            LayerConfig(subpatch=3, filters=64, subsampling=2),
            LayerConfig(subpatch=3, filters=64, subsampling=7, pooling="centered", pool_std=1.3),
        ),
    ),
    # As ckn-raw, on centred + whitened sub-patches; plain whitening (the
    # papers') blew up noise directions (train mAP 93.5), so the eigenvalues get
    # + 0.1 * max before the inverse square root (train mAP 97.0).
    "ckn-white": CKNConfig(
        name="ckn-white",
        input="white",
        channels="gray",
        blur=1.5,
        normalize="position",
        layers=(
            LayerConfig(subpatch=3, filters=64, subsampling=2),
            LayerConfig(subpatch=3, filters=64, subsampling=7, pooling="centered", pool_std=1.3),
        ),
        train=TrainConfig(whiten_reg=0.1),
    ),
    # The authors' group reference (CIFAR-10, 2 layers; CKN_NOTES sections 2, 7):
    # 64x64 gray input, 64 then 256 filters, 3x3, subsampling 2 then 6, sigma 0.6.
    "ckn-ref64": CKNConfig(
        name="ckn-ref64",
        input="raw",
        channels="gray",
        patch_size=64,
        layers=(
            LayerConfig(subpatch=3, filters=64, subsampling=2, sigma=0.6),
            LayerConfig(subpatch=3, filters=256, subsampling=6, sigma=0.6),
        ),
    ),
    # Small and fast, for tests and smoke runs (16x16 patches -> 4x4x8 = 128-D).
    "ckn-tiny": CKNConfig(
        name="ckn-tiny",
        input="grad",
        channels="gray",
        patch_size=16,
        grad_orientations=4,
        grad_subsampling=2,
        layers=(LayerConfig(subpatch=3, filters=8, subsampling=2),),
        train=TrainConfig(
            num_patches=2000, kmeans_iters=10, refine_steps=20, nips14_steps=50, batch_size=64
        ),
    ),
}


def get_preset(name: str) -> CKNConfig:
    """The preset of that name.

    Raises:
      InputError: unknown name.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}") from None
