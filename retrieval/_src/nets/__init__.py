"""ImageNet CNN backbones (EfficientNet-Lite0, VGG16, ResNet-50/101) in JAX, read from weight files.

Private package: the public names (``load_backbone``, ``Backbone``, ``read_state_dict``, ...) are
re-exported by ``retrieval``. This module holds what the three networks share: pure array ops,
channels last (maps (N, H, W, C), kernels (kh, kw, C_in, C_out)), and the conversions of PyTorch
layouts (OIHW kernels, BatchNorm folded into the preceding convolution at load time).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ckn import PRECISIONS, InputError

BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def check_precision(precision) -> str:
    """``precision`` if it is one of ``ckn.PRECISIONS`` (the one vocabulary), else InputError.

    The one check of the backbones' ``precision`` (ImageNet CNNs and a CKN on whole images).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def conv2d(
    x: jax.Array,
    w: jax.Array,
    b: jax.Array,
    *,
    stride: int = 1,
    padding: str | int = "SAME",
    groups: int = 1,
    precision=None,
) -> jax.Array:
    """Convolution plus bias.

    Args:
      x: (N, H, W, C_in) map.
      w: (kh, kw, C_in / groups, C_out) kernel.
      b: (C_out,) bias.
      stride: the same stride along both axes.
      padding: "SAME" (TensorFlow's: output ceil(H / stride), the odd pixel of padding after, as
        the EfficientNet-Lite weights were trained with), or an int p (PyTorch's symmetric zero
        padding of p pixels on every side, as torchvision's networks).
      groups: feature groups; ``groups = C_in = C_out`` is a depthwise convolution.
      precision: ``lax.Precision`` of the products.

    Returns:
      (N, H', W', C_out) map.
    """
    pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
    y = lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=precision,
    )
    return y + b.reshape(1, 1, 1, -1)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding along one axis: output ceil(size / stride), odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def depthwise_conv2d(x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int = 1) -> jax.Array:
    """Depthwise convolution with TensorFlow "SAME" padding, as a sum of k * k shifted slices.

    XLA's CPU grouped convolution (``feature_group_count = C``) is 5-30x slower than this sum of
    strided slices times per-channel weights, which XLA fuses into one loop (measured on the
    EfficientNet-Lite0 shapes, 2-core CPU: (8, 28, 28, 240) k=5 178 ms -> 8 ms; the full network
    at 224 px, batch 1: 122 ms -> 24 ms). Products are elementwise float32 (no precision choice).

    Args:
      x: (N, H, W, C) map.
      w: (k, k, 1, C) kernel.
      b: (C,) bias.
      stride: the same stride along both axes.

    Returns:
      (N, ceil(H / stride), ceil(W / stride), C) map.
    """
    k = w.shape[0]
    (top, bottom), (left, right) = (same_pads(n, k, stride) for n in x.shape[1:3])
    oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    return depthwise_valid(x, w, b, stride=stride, out_shape=(oh, ow))


def depthwise_valid(
    x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int, out_shape: tuple[int, int]
) -> jax.Array:
    """Depthwise convolution of an already padded map, (N, H, W, C) -> (N, oh, ow, C).

    Output (i, j) = b + sum over taps (a, c) of x[s i + a, s j + c] * w[a, c], summed in the
    order a, c. A stride of 2 reads the map as its four phases (``x[p::2, q::2]``, one reshape)
    with unit-stride slices: the same products in the same order (bit-identical) and faster than
    strided slices (measured 22% on the EfficientNet-Lite0 stride-2 blocks). Rows and columns
    past ``stride * (out - 1) + k`` are ignored.
    """
    k = w.shape[0]
    oh, ow = out_shape
    y = _bias(b, 4)
    if stride == 2:
        n, h, wd, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, wd % 2), (0, 0)))
        phases = x.reshape(n, (h + h % 2) // 2, 2, (wd + wd % 2) // 2, 2, c)
        for i in range(k):
            for j in range(k):
                tap = phases[:, i // 2 : i // 2 + oh, i % 2, j // 2 : j // 2 + ow, j % 2]
                y = y + tap * _bias(w[i, j, 0], 4)
        return y
    rows, cols = stride * (oh - 1) + 1, stride * (ow - 1) + 1
    for i in range(k):
        for j in range(k):
            y = y + x[:, i : i + rows : stride, j : j + cols : stride] * _bias(w[i, j, 0], 4)
    return y


def conv2d_same_s2d(x: jax.Array, w: jax.Array, b: jax.Array, *, stride: int, precision=None):
    """``conv2d(..., padding="SAME")`` of a strided convolution, computed on space-to-depth input.

    The padded map is cut into stride x stride phases stacked as channels, (N, H / s, W / s,
    s * s * C_in), and the kernel zero-padded to a multiple of s and rearranged to match, so the
    convolution runs at stride 1 on a map s * s times smaller with s * s times more channels: the
    same products (sums in another order; equal to ``conv2d`` within float32 rounding). Measured
    on the EfficientNet-Lite0 stem (3x3, stride 2, 3 -> 32 channels) at 512 px, 2-core CPU:
    2-4x faster than XLA's strided convolution of 3 channels.

    Args:
      x: (N, H, W, C_in) map.
      w: (k, k, C_in, C_out) kernel.
      b: (C_out,) bias.
      stride: s.
      precision: ``lax.Precision`` of the products.

    Returns:
      (N, ceil(H / s), ceil(W / s), C_out) map.
    """
    y = conv2d_valid(s2d_same_input(x, w.shape[0], stride), s2d_kernel(w, stride), precision)
    return y + _bias(b, 4)


def s2d_same_input(x: jax.Array, k: int, s: int, rows: int | None = None) -> jax.Array:
    """The "SAME"-padded input of a k x k, stride-s convolution as its s x s phases stacked as
    channels: (N, H, W, C) -> (N, rows + kk - 1, ceil(W / s) + kk - 1, s * s * C), kk = ceil(k / s).

    A "VALID" convolution of it with :func:`s2d_kernel` gives the strided convolution's first
    ``rows`` output rows (default ceil(H / s); rows past the image see zeros).
    """
    kk = -(-k // s)
    n, h, wd, c = x.shape
    oh, ow = -(-h // s), -(-wd // s)
    rows = oh if rows is None else rows
    (top, _), (left, _) = (same_pads(size, k, s) for size in (h, wd))
    hp, wp = s * (rows - 1 + kk), s * (ow - 1 + kk)
    x = jnp.pad(x, ((0, 0), (top, hp - h - top), (left, wp - wd - left), (0, 0)))
    x = x.reshape(n, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, hp // s, wp // s, s * s * c)


def s2d_kernel(w: jax.Array, s: int) -> jax.Array:
    """A (k, k, C_in, C_out) kernel as :func:`s2d_same_input` needs: (kk, kk, s s C_in, C_out)."""
    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]
    kk = -(-k // s)
    w = jnp.pad(w, ((0, s * kk - k), (0, s * kk - k), (0, 0), (0, 0)))
    w = w.reshape(kk, s, kk, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
    return w.reshape(kk, kk, s * s * cin, cout)


def conv2d_valid(x: jax.Array, w: jax.Array, precision=None) -> jax.Array:
    """Unpadded stride-1 convolution, no bias: (N, H, W, C_in), (kh, kw, C_in, C_out) kernel."""
    return lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision
    )


def _bias(b: jax.Array, ndim: int) -> jax.Array:
    """(C,) -> (1, ..., 1, C) of rank ndim (explicit: rank promotion may be set to raise)."""
    return b.reshape((1,) * (ndim - 1) + (-1,))


def dense(x: jax.Array, w: jax.Array, b: jax.Array, *, precision=None) -> jax.Array:
    """x @ w + b over the last axis: x (..., C_in), w (C_in, C_out), b (C_out,) -> (..., C_out).

    Also the 1x1 convolution of a (N, H, W, C_in) map: as fast as ``conv2d`` or faster on CPU
    (measured on 2 cores: (8, 7, 7, 320) -> 1280 channels 11.7 ms as a convolution, 2.8 ms here).
    """
    y = jnp.matmul(x, w, precision=precision)
    return y + _bias(b, y.ndim)


def max_pool(x: jax.Array, size: int, stride: int, padding: int = 0) -> jax.Array:
    """PyTorch's ``max_pool2d`` (floor mode, -inf padding): (N, H, W, C) -> (N, H', W', C)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, size, size, 1), (1, stride, stride, 1), pad)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over positions: (N, H, W, C) -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


def bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the PyTorch BatchNorm ``prefix`` over ``channels`` (counter left out)."""
    return {f"{prefix}.{k}": (channels,) for k in BN_KEYS}


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch (C_out, C_in, kh, kw) kernel -> (kh, kw, C_in, C_out); depthwise (kh, kw, 1, C)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def fold_bn(w: np.ndarray, bn: Mapping[str, np.ndarray], eps: float):
    """Folds an inference BatchNorm into the bias-free convolution before it (in float64).

    Args:
      w: (C_out, ...) PyTorch kernel.
      bn: the BatchNorm's "weight", "bias", "running_mean", "running_var", each (C_out,).
      eps: the BatchNorm's epsilon.

    Returns:
      (kernel (C_out, ...), bias (C_out,)), float32: conv(x, kernel) + bias = BN(conv(x, w)).
    """
    f64 = lambda a: np.asarray(a, np.float64)
    scale = f64(bn["weight"]) / np.sqrt(f64(bn["running_var"]) + eps)
    shift = f64(bn["bias"]) - f64(bn["running_mean"]) * scale
    kernel = f64(w) * scale.reshape((-1,) + (1,) * (np.ndim(w) - 1))
    return kernel.astype(np.float32), shift.astype(np.float32)


def conv_bn(state: Mapping[str, np.ndarray], conv: str, bn: str, eps: float, *, pointwise: bool):
    """{"w", "b"} of the PyTorch convolution ``conv`` followed by the BatchNorm ``bn``, folded.

    "w" is (kh, kw, C_in, C_out), or (C_in, C_out) for a 1x1 convolution when ``pointwise``
    (run by ``dense``); "b" is (C_out,).
    """
    w, b = fold_bn(state[f"{conv}.weight"], {k: state[f"{bn}.{k}"] for k in BN_KEYS}, eps)
    return {"w": np.ascontiguousarray(w[:, :, 0, 0].T) if pointwise else conv_kernel(w), "b": b}


def check_image_batch(images, *, min_size: int, name: str, stride: int) -> tuple[int, ...]:
    """Checks a batch of uint8 images for a backbone; returns its shape.

    ``images`` must be (N, H, W, 3) RGB or (N, H, W) gray uint8, N >= 1, with H and W at
    least ``min_size`` (the backbone ``name`` of stride ``stride``); else InputError.
    """
    shape = tuple(images.shape)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] != 3):
        raise InputError(f"images must be (N, H, W, 3) RGB or (N, H, W) gray, got shape {shape}")
    if images.dtype != np.uint8:
        raise InputError(f"images must be uint8, got dtype {images.dtype}")
    if shape[0] == 0:
        raise InputError("images: empty batch")
    if min(shape[1:3]) < min_size:
        raise InputError(
            f"images of {shape[1]}x{shape[2]} px are smaller than the {min_size} px "
            f"that {name} needs (stride {stride})"
        )
    return shape
