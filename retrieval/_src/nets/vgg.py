"""VGG16 (Simonyan & Zisserman 2015, configuration D) in JAX, from a torchvision state dict.

torchvision layout: ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}`` are the 13 3x3 convolutions
(padding 1, ReLU after each, 2x2 max pooling after convolutions 2, 4, 7, 10 and 13), then adaptive
average pooling to 7x7, and ``classifier.{0,3,6}`` the fully connected layers fc6 (25088 -> 4096),
fc7 (4096 -> 4096), fc8 (4096 -> 1000) with ReLU (and dropout, off at inference) between them. No
BatchNorm. Inputs are torchvision's: RGB / 255, minus mean (0.485, 0.456, 0.406), over std
(0.229, 0.224, 0.225).

``features`` is the map of conv5_3 after its ReLU, *before* the last max pooling (pool5), as the
retrieval papers pool it (cirtorch's VGG ``features`` drop the final max pooling; R-MAC, CroW):
stride 16, so 224 px -> (14, 14, 512). ``codes`` is the 4096-D neural code of Babenko et al. 2014:
fc6 after its ReLU, computed as torchvision does (pool5, adaptive average pooling to 7x7, flatten
in PyTorch's (C, H, W) order, here folded into fc6's weight at load time). ``logits``: fc8.

``width_divisor`` d builds a thinner network with the same structure (conv widths 64 / d ...
512 / d, fully connected 4096 / d, still 1000 classes), for tests and quick experiments.

Parameter pytree: {"convs": [{"w": (3, 3, C_in, C_out), "b": (C_out,)}] * 13,
  "fc6": {"w": (7 * 7 * 512, 4096) in (H, W, C) order, "b"}, "fc7": {"w": (4096, 4096), "b"},
  "fc8": {"w": (4096, 1000), "b"}}.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from retrieval._src.nets import conv2d, conv_kernel, dense, max_pool

MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
STRIDE = 16
MIN_SIZE = 32  # pool5 needs a 2x2 conv5 map
NUM_CLASSES = 1000
POOL = 7  # torchvision's AdaptiveAvgPool2d((7, 7)) before the classifier
# Configuration D: output channels of each conv, "M" a 2x2 max pooling.
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def conv_indices() -> tuple[int, ...]:
    """Indices of the convolutions in torchvision's ``features`` Sequential (ReLUs in between)."""
    idx, i = [], 0
    for c in CONFIG:
        if c == "M":
            i += 1
        else:
            idx.append(i)
            i += 2
    return tuple(idx)


def vgg16_shapes(width_divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's VGG16 state dict (widths divided by ``width_divisor``)."""
    shapes, cin = {}, 3
    for i, c in zip(conv_indices(), [c for c in CONFIG if c != "M"]):
        c //= width_divisor
        shapes[f"features.{i}.weight"] = (c, cin, 3, 3)
        shapes[f"features.{i}.bias"] = (c,)
        cin = c
    fc = 4096 // width_divisor
    for name, (n_out, n_in) in zip(
        ("0", "3", "6"), ((fc, cin * POOL * POOL), (fc, fc), (NUM_CLASSES, fc))
    ):
        shapes[f"classifier.{name}.weight"] = (n_out, n_in)
        shapes[f"classifier.{name}.bias"] = (n_out,)
    return shapes


def vgg16_params(state: Mapping[str, np.ndarray]) -> dict:
    """The parameter pytree (module docstring) from a checked torchvision state dict."""
    convs = [
        {"w": conv_kernel(state[f"features.{i}.weight"]), "b": state[f"features.{i}.bias"]}
        for i in conv_indices()
    ]
    c = convs[-1]["w"].shape[-1]
    w6 = state["classifier.0.weight"]  # (4096, C * 7 * 7), inputs in (C, H, W) order
    w6 = w6.reshape(-1, c, POOL, POOL).transpose(2, 3, 1, 0).reshape(POOL * POOL * c, -1)
    fc = lambda i, w: {"w": np.ascontiguousarray(w), "b": state[f"classifier.{i}.bias"]}
    return {
        "convs": convs,
        "fc6": fc(0, w6),
        "fc7": fc(3, state["classifier.3.weight"].T),
        "fc8": fc(6, state["classifier.6.weight"].T),
    }


@functools.partial(jax.jit, static_argnames="precision")
def vgg16_features(params: Mapping, x: jax.Array, *, precision=None) -> jax.Array:
    """conv5_3 after its ReLU (no pool5).

    Args:
      params: the parameter pytree (module docstring).
      x: (N, H, W, 3) preprocessed images (torchvision normalization).

    Returns:
      (N, H // 16, W // 16, 512) map (PyTorch's floor pooling), values >= 0.
    """
    convs = iter(params["convs"])
    for c in CONFIG:
        if c == "M":
            x = max_pool(x, 2, 2)
        else:
            p = next(convs)
            x = jax.nn.relu(conv2d(x, p["w"], p["b"], padding=1, precision=precision))
    return x


def adaptive_avg_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix of PyTorch's adaptive average pooling along one axis.

    Output bin i averages inputs floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1.
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def vgg16_codes(params: Mapping, features: jax.Array, *, precision=None) -> jax.Array:
    """Neural codes: fc6 after its ReLU, (N, h, w, 512) conv5 map -> (N, 4096); h, w >= 2."""
    x = max_pool(features, 2, 2)
    n, h, w, c = x.shape
    ph, pw = adaptive_avg_matrix(h, POOL), adaptive_avg_matrix(w, POOL)
    x = jnp.einsum("ih,jw,nhwc->nijc", ph, pw, x, precision=precision).reshape(n, -1)
    return jax.nn.relu(dense(x, params["fc6"]["w"], params["fc6"]["b"], precision=precision))


def vgg16_logits(params: Mapping, features: jax.Array, *, precision=None) -> jax.Array:
    """fc8 scores from the conv5 map: (N, h, w, 512) -> (N, 1000)."""
    x = vgg16_codes(params, features, precision=precision)
    x = jax.nn.relu(dense(x, params["fc7"]["w"], params["fc7"]["b"], precision=precision))
    return dense(x, params["fc8"]["w"], params["fc8"]["b"], precision=precision)
