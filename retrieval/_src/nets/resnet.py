"""ResNet-50 and ResNet-101 (He et al. 2016) in JAX, from a torchvision state dict.

torchvision layout (ResNet v1.5: the stride of a bottleneck is on its 3x3 convolution):
  ``conv1`` 7x7 stride 2 padding 3 (no bias), ``bn1``, ReLU, 3x3 max pooling stride 2 padding 1;
  ``layer1..4``: (3, 4, 6, 3) bottlenecks for ResNet-50, (3, 4, 23, 3) for ResNet-101, of widths
  64, 128, 256, 512 (outputs 4x that), strides 1, 2, 2, 2. Block ``layer{l}.{i}``: ``conv1`` 1x1 +
  ``bn1`` + ReLU, ``conv2`` 3x3 (stride, padding 1) + ``bn2`` + ReLU, ``conv3`` 1x1 + ``bn3``, plus
  the input (through ``downsample.0`` 1x1 conv with the stride + ``downsample.1`` BN in the first
  block of each layer), ReLU; ``fc`` 2048 -> 1000 after global average pooling. BN epsilon 1e-5.
  Inputs are torchvision's: RGB / 255, minus mean (0.485, 0.456, 0.406), over std (0.229, 0.224,
  0.225).

``features`` = layer4's output after its ReLU: stride 32, 224 px -> (7, 7, 2048) (the map that
Gordo et al. and cirtorch pool). ``logits`` = fc(GAP(features)).

BatchNorm is folded into the convolutions at load time. The blocks after the first of a layer have
identical shapes: their parameters are stacked and run by ``lax.scan`` (ResNet-101 compiles 4
distinct blocks instead of 33 copies). ``width_divisor`` d builds a thinner network of the same
structure (widths 64 / d ...), for tests and quick experiments.

Parameter pytree: {"stem": {"w": (7, 7, 3, 64), "b": (64,)},
  "layers": [{"first": block, "rest": block with a leading (depth - 1) axis}] * 4,
  "fc": {"w": (1000, 2048), "b": (1000,)}}, block = {"conv1": {"w": (C_in, P), "b"},
  "conv2": {"w": (3, 3, P, P), "b"}, "conv3": {"w": (P, 4 P), "b"}, "down": {"w": (C_in, 4 P), "b"}
  (first blocks only)}.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import numpy as np
from jax import lax

from retrieval._src.nets import bn_shapes, conv2d, conv_bn, dense, max_pool

BN_EPS = 1e-5
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
STRIDE = 32
NUM_CLASSES = 1000
EXPANSION = 4
WIDTHS = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def resnet_shapes(depths: tuple[int, ...], width_divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's ResNet state dict (BatchNorm counters left out).

    Args:
      depths: blocks per layer, e.g. ``DEPTHS["resnet50"]``.
      width_divisor: widths divided by this (1: the ImageNet networks).
    """
    stem = 64 // width_divisor
    shapes = {"conv1.weight": (stem, 3, 7, 7), **bn_shapes("bn1", stem)}
    cin = stem
    for layer, (depth, width) in enumerate(zip(depths, WIDTHS), start=1):
        p = width // width_divisor
        for i in range(depth):
            pre = f"layer{layer}.{i}"
            for j, shape in enumerate(
                ((p, cin, 1, 1), (p, p, 3, 3), (EXPANSION * p, p, 1, 1)), start=1
            ):
                shapes[f"{pre}.conv{j}.weight"] = shape
                shapes.update(bn_shapes(f"{pre}.bn{j}", shape[0]))
            if i == 0:
                shapes[f"{pre}.downsample.0.weight"] = (EXPANSION * p, cin, 1, 1)
                shapes.update(bn_shapes(f"{pre}.downsample.1", EXPANSION * p))
            cin = EXPANSION * p
    shapes.update({"fc.weight": (NUM_CLASSES, cin), "fc.bias": (NUM_CLASSES,)})
    return shapes


def _folded(state, conv: str, bn: str, pointwise: bool) -> dict[str, np.ndarray]:
    return conv_bn(state, conv, bn, BN_EPS, pointwise=pointwise)


def bottleneck_params(state: Mapping[str, np.ndarray], prefix: str) -> dict:
    """One block's parameters (BN folded) from the arrays named ``prefix`` (e.g. "layer1.0")."""
    p = {
        "conv1": _folded(state, f"{prefix}.conv1", f"{prefix}.bn1", True),
        "conv2": _folded(state, f"{prefix}.conv2", f"{prefix}.bn2", False),
        "conv3": _folded(state, f"{prefix}.conv3", f"{prefix}.bn3", True),
    }
    if f"{prefix}.downsample.0.weight" in state:
        p["down"] = _folded(state, f"{prefix}.downsample.0", f"{prefix}.downsample.1", True)
    return p


def resnet_params(state: Mapping[str, np.ndarray], depths: tuple[int, ...]) -> dict:
    """The parameter pytree (module docstring) from a checked torchvision state dict."""
    layers = []
    for layer, depth in enumerate(depths, start=1):
        blocks = [bottleneck_params(state, f"layer{layer}.{i}") for i in range(depth)]
        rest = jax.tree.map(lambda *a: np.stack(a), *blocks[1:]) if depth > 1 else None
        layers.append({"first": blocks[0], "rest": rest})
    return {
        "stem": _folded(state, "conv1", "bn1", False),
        "layers": layers,
        "fc": {"w": state["fc.weight"], "b": state["fc.bias"]},
    }


def bottleneck(p: Mapping, x: jax.Array, *, stride: int = 1, precision=None) -> jax.Array:
    """One bottleneck block (BN folded).

    Args:
      p: the block's parameters (module docstring); "down" present when the shortcut is projected.
      x: (N, H, W, C_in) map.
      stride: 1 or 2 (on the 3x3 convolution and the projection shortcut).

    Returns:
      (N, ceil(H / stride), ceil(W / stride), 4 P) map after the final ReLU.
    """
    y = jax.nn.relu(dense(x, p["conv1"]["w"], p["conv1"]["b"], precision=precision))
    c2 = p["conv2"]
    y = jax.nn.relu(conv2d(y, c2["w"], c2["b"], stride=stride, padding=1, precision=precision))
    y = dense(y, p["conv3"]["w"], p["conv3"]["b"], precision=precision)
    if "down" in p:
        # A strided 1x1 convolution = subsampling, then the product.
        x = dense(x[:, ::stride, ::stride], p["down"]["w"], p["down"]["b"], precision=precision)
    return jax.nn.relu(y + x)


def resnet_stem(params: Mapping, x: jax.Array, *, precision=None) -> jax.Array:
    """conv1 + bn1 + ReLU + max pooling: (N, H, W, 3) -> (N, ~H / 4, ~W / 4, 64)."""
    stem = params["stem"]
    x = jax.nn.relu(conv2d(x, stem["w"], stem["b"], stride=2, padding=3, precision=precision))
    return max_pool(x, 3, 2, padding=1)


@functools.partial(jax.jit, static_argnames="precision")
def resnet_features(params: Mapping, x: jax.Array, *, precision=None) -> jax.Array:
    """layer4's output after its ReLU.

    Args:
      params: the parameter pytree (module docstring).
      x: (N, H, W, 3) preprocessed images (torchvision normalization).

    Returns:
      (N, ~H / 32, ~W / 32, 2048) map (224 -> 7), values >= 0.
    """
    x = resnet_stem(params, x, precision=precision)
    for layer, stride in zip(params["layers"], STRIDES):
        x = bottleneck(layer["first"], x, stride=stride, precision=precision)
        if layer["rest"] is not None:
            step = lambda h, p: (bottleneck(p, h, precision=precision), None)
            x, _ = lax.scan(step, x, layer["rest"])
    return x
