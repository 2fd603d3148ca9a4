"""Global image descriptors from an ImageNet CNN: multi-scale, bucketed, masked pooling.

:func:`extract_global` turns images of any sizes into one L2-normalized vector
each: every image is shrunk so that its long side is at most ``max_side``
(never enlarged), resized once per scale, run through the backbone's
convolutional part (:class:`retrieval.nets.Backbone`), pooled by a head of
:mod:`retrieval._src.pooling` (MAC, SPoC, GeM, R-MAC, CroW) and the scales are
combined by :func:`retrieval.image.multiscale_combine` (cirtorch ``extract_ms``).

Sizes. At each scale an image is resized to a multiple of the network's
stride (each side ``floor(side * f * s / stride) * stride``, f the max_side
shrink; the aspect ratio changes by less than one stride). EfficientNet's
TensorFlow "SAME" padding pads a stride-2 convolution on the top / left too
when its input side is odd, so an image whose side is not a multiple of 32
is sampled on a grid shifted against the same image padded to a multiple of
32: every cell differs, not only the border (measured: GeM cosine 0.93
between a 200 x 300 crop run as is and padded to 256 x 320). Snapping the
size to the stride keeps the grid of the padded run equal to that of an
unpadded run of the resized image.

Static shapes. Images of different sizes are padded at the bottom and right
to a *bucket*: height and width rounded up to a multiple of ``bucket`` (64 px
by default). Images of one bucket are batched, the batch is padded to a fixed
number of rows, so one compilation of the backbone serves every batch of that
bucket (a new image size within the bucket does not recompile). A validity
mask ``(N, h, w)`` on the feature map keeps the cells of the image itself:
``ceil(valid px / stride)`` rows and columns from the top-left (exactly
``valid px / stride`` with snapped sizes); the pooling heads ignore the rest.
Padding pixels take the backbone's mean colour, so they normalize to ~0, the
value that the networks' own zero padding gives at their input.

Padding is not free: deeper layers see the activations of the padded area
where an unpadded run sees zeros, and cells near the padded border (with
EfficientNet's large receptive field, every cell of a small image) differ.
Measured with EfficientNet-Lite0, 32 px of padding at the bottom and right
(one cell row and column), cosine between the padded and the unpadded
descriptor: 0.985 (MAC) to 0.997 (R-MAC) for 480 x 480 and 736 x 992 photos;
on small images (160 x 256, maps of 5 x 8 cells) 0.93 to 0.995, lower with
more padding (``tests/test_global_desc.py`` measures it). Images whose
snapped size is a multiple of ``bucket`` are not padded at all; a larger
``bucket`` means fewer compilations and more padding.

The ``codes`` head is the neural code (Babenko et al., ECCV 2014): the image
resized to 224 x 224 (aspect ratio not kept), one scale; VGG16's fc6 after
its ReLU (``Backbone.codes``, 4096-D), for the other backbones (no fc6) the
global average of their last conv map (SPoC at 224 x 224, Razavian et al.'s
convolutional stand-in). ``scales``, ``max_side`` and ``bucket`` do not
apply to it.

Memory: paths are read one image at a time; after a first pass that reads
each image's size, one bucket batch at a time is in memory (and the pooled
vectors, (S, N, D) float32).

References:
  F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN image retrieval with no
  human annotation", TPAMI 2018, section 5 (multi-scale, max side 1024).
  A. Babenko, A. Slesarev, A. Chigorin, V. Lempitsky, "Neural codes for image
  retrieval", ECCV 2014. A. S. Razavian et al., "Visual instance retrieval with
  deep convolutional networks", ITE Trans. MTA 2016.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import jax
import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src import pooling
from retrieval._src.data.io import read_image_any
from retrieval._src.heads import HEADS, pool_maps, pooling_head
from retrieval._src.nets.backbone import Backbone
from retrieval._src.postprocess import multiscale_combine
from retrieval._src.settings import check_settings, max_side_setting, setting

#: cirtorch's multi-scale set: 1, 1/sqrt(2), 1/2.
MULTI_SCALE = (1.0, 1.0 / math.sqrt(2.0), 0.5)
#: Rows of a padded batch when ``batch_size`` is None, by backend. On the CPU
#: batching buys little (EfficientNet-Lite0, 2 shared cores, benchmarks/results/
#: bench_backbone_cpu.json: 3.3 vs 3.4 images/s at 512 px for batches of 1 and 4,
#: 0.85 vs 1.10 at 1024 px), while a fixed batch of B rows computes B images even
#: for a bucket holding one (most buckets of the benchmark's image sets hold a few).
DEFAULT_BATCH = {"cpu": 1}
DEFAULT_BATCH_ACCELERATOR = 8
#: Pooled batches dispatched and not yet read (:func:`_extract_pooled`): the next batch is
#: prepared while the device computes, and memory stays bounded.
IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleConfig:
    """How a backbone sees images: shrink, scales, buckets, batches (see the module docstring).

    Attributes:
      scales: image scales, each > 0, relative to the image after the ``max_side`` shrink;
        (1, 1/sqrt 2, 1/2) is cirtorch's multi-scale set, (1,) a single scale.
      max_side: long side, in pixels, that images are shrunk to when larger (never
        enlarged); None keeps every image at its size.
      bucket: padded heights and widths are multiples of this (and of the backbone's
        stride); larger buckets mean fewer compilations and more padding.
      batch_size: images per padded batch (every batch of a bucket has this many rows);
        None: 1 on the CPU, 8 on accelerators (see ``DEFAULT_BATCH``).
    """

    scales: tuple[float, ...] = setting(
        MULTI_SCALE, positive=True,
        help="image scales combined by a power mean (p of GeM, else 1); 1: one scale",
    )  # fmt: skip
    max_side: int | None = max_side_setting()
    bucket: int = setting(64, minimum=1, help="padded sizes are multiples of this")
    batch_size: int | None = setting(
        None, kind="int", minimum=1, optional=True, help="images per padded batch"
    )

    def __post_init__(self):
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class GlobalConfig(ScaleConfig):
    """How :func:`extract_global` describes images: a pooling head and the image sizes.

    Attributes:
      head: a name of :data:`retrieval.image.POOLING_HEADS` ("mac", "spoc", "gem", "rmac",
        "crow", "codes"; see the module docstring).
      p: GeM exponent (3, cirtorch); also the power of the multi-scale mean with GeM
        (1 for the other heads, as cirtorch: ``POOLING_HEADS[head].multiscale_p``).
      levels: R-MAC levels.
      scales, max_side, bucket, batch_size: as :class:`ScaleConfig` (keyword only).
    """

    # "global" is a Python keyword: the one field whose flag (--global) is not its name.
    head: str = setting("gem", choices=HEADS, flag="global", help="the pooling head")
    p: float = setting(3.0, positive=True, help="GeM exponent")
    levels: int = setting(3, minimum=1, help="R-MAC levels")

    @property
    def combine_p(self) -> float:
        """Power of the multi-scale mean (the head's ``multiscale_p``: p for GeM, else 1)."""
        return pooling_head(self.head).multiscale_p(self.p)


# --------------------------------------------------------------------------- images


def _check_array(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise InputError(f"{name}: images must be (H, W, 3) RGB or (H, W) gray, got {a.shape}")
    if a.dtype != np.uint8:
        raise InputError(f"{name}: images must be uint8, got dtype {a.dtype}")
    if 0 in a.shape:
        raise InputError(f"{name}: empty image, shape {a.shape}")
    return a


class _Images:
    """Arrays or paths, read on demand (one at a time) as uint8 (H, W[, 3])."""

    def __init__(self, images: Sequence):
        if isinstance(images, (np.ndarray, jax.Array)) and np.ndim(images) == 4:
            images = list(images)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise InputError(
                "images must be a list of uint8 (H, W, 3) / (H, W) arrays or image paths, "
                f"got {type(images).__name__}"
            )
        if len(images) == 0:
            raise InputError("images: empty list, nothing to describe")
        self.items = list(images)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        x = self.items[i]
        return os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image {i}"

    def load(self, i: int) -> np.ndarray:
        x = self.items[i]
        if isinstance(x, (str, os.PathLike)):
            return read_image_any(x)
        return _check_array(x, self.name(i))


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """RGB uint8 resized to h x w (INTER_AREA to shrink, INTER_LINEAR to enlarge)."""
    img = _rgb(img)
    if img.shape[:2] == (h, w):
        return img
    shrink = h <= img.shape[0] and w <= img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def scaled_sizes(h: int, w: int, config: ScaleConfig, stride: int = 1) -> list[tuple[int, int]]:
    """(height, width) of an h x w image at each of ``config.scales``, after the max_side shrink.

    ``f = min(1, max_side / max(h, w))``; scale s gives ``floor(h f s / stride) * stride``
    by ``floor(w f s / stride) * stride``: multiples of the network's stride (0 when the
    image is smaller than one stride), never above the max_side bound.
    """
    f = 1.0 if config.max_side is None else min(1.0, config.max_side / max(h, w))
    return [
        (int(h * f * s + 1e-9) // stride * stride, int(w * f * s + 1e-9) // stride * stride)
        for s in config.scales
    ]


def pad_colour(backbone: Backbone) -> np.ndarray:
    """(3,) uint8: the backbone's mean RGB, rounded; padded pixels normalize to ~0."""
    arch = getattr(backbone, "_arch", None)  # the one place that knows the preprocessing
    mean = getattr(arch, "mean", (0.0, 0.0, 0.0))
    return np.clip(np.round(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _batch_size(config: ScaleConfig) -> int:
    if config.batch_size is not None:
        return config.batch_size
    return DEFAULT_BATCH.get(jax.default_backend(), DEFAULT_BATCH_ACCELERATOR)


# --------------------------------------------------------------------------- heads


def _check_heads(heads: Sequence[str]) -> tuple[str, ...]:
    heads = tuple(heads)
    if not heads:
        raise InputError("heads: empty, nothing to compute")
    for h in heads:
        pooling_head(h)
    if len(set(heads)) != len(heads):
        raise InputError(f"heads has a repeated name: {heads}")
    return heads


# --------------------------------------------------------------------------- extraction


def extract_global(
    backbone: Backbone,
    images: Sequence,
    config: GlobalConfig = GlobalConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    progress: bool = False,
    info: dict | None = None,
) -> np.ndarray:
    """Global descriptors of images of any sizes: (N, D) float32, L2-normalized.

    See the module docstring for the pipeline (shrink to ``max_side``, scales,
    buckets and masks, heads, multi-scale combination).

    Args:
      backbone: from :func:`retrieval.load_backbone`.
      images: N images, each a uint8 (H, W, 3) RGB or (H, W) gray array or an image path
        (read one at a time); a uint8 (N, H, W, 3) array works too. Gray images are
        repeated to RGB, and said once (a ``UserWarning``).
      config: a :class:`GlobalConfig`.
      progress: show a progress bar over the (image, scale) pairs.
      info: if given, a dict filled with what happened: ``images``, ``gray`` (count),
        ``skipped_scales`` (list of (image name, scale) too small for the network:
        left out of that image's multi-scale mean), ``buckets`` ({"HxW": (image, scale)
        pairs}), ``batches``.

    Returns:
      (N, D) float32, unit L2 norm; D = the backbone's channels (4096 for VGG16's
      ``codes``).

    Raises:
      InputError: a bad config or image list, an unreadable file, an image whose short
        side is below ``backbone.min_size`` (the stride; 32 px for VGG16) at every scale,
        ``bucket`` not a multiple of the backbone's stride.

    Examples:
      >>> net = retrieval.load_backbone("efficientnet-lite0")
      >>> v = extract_global(net, ["a.jpg", "b.png"], GlobalConfig(head="gem"))  # (2, 1280)
    """
    return extract_global_heads(
        backbone, images, config, heads=(config.head,), progress=progress, info=info
    )[config.head]


def extract_global_heads(
    backbone: Backbone,
    images: Sequence,
    config: GlobalConfig = GlobalConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    heads: Sequence[str] | None = None,
    progress: bool = False,
    info: dict | None = None,
) -> dict[str, np.ndarray]:
    """:func:`extract_global` for several heads at once, sharing the backbone's feature maps.

    ``config.head`` is ignored when ``heads`` is given; ``codes`` (a 224 x 224 pass) costs
    its own backbone run.

    Args:
      backbone, images, config, progress, info: as :func:`extract_global`.
      heads: names from ``HEADS`` (default: ``(config.head,)``).

    Returns:
      {head: (N, D) float32, L2-normalized}.
    """
    heads = _check_heads((config.head,) if heads is None else heads)
    src, sizes, rec = _prepare(backbone, images, config)
    out: dict[str, np.ndarray] = {}
    pooled = [h for h in heads if pooling_head(h).image_size is None]
    if pooled:
        vecs, have = _extract_pooled(backbone, src, sizes, config, pooled, progress, rec)
        for head in pooled:
            p = pooling_head(head).multiscale_p(config.p)
            out[head] = combine_scales(vecs[head], have, p)
    for head in heads:
        if head not in pooled:
            out[head] = _extract_square(backbone, src, head, config, progress, rec)
    _report(backbone, rec, info)
    return {h: out[h] for h in heads}


class PerScale(NamedTuple):
    """Descriptors of every image at every scale, before the multi-scale mean.

    Attributes:
      vectors: {head: (S, N, C) float32}, each L2-normalized (zeros where ``have`` is False).
      have: (S, N) bool, False where the image was too small for the network at that scale.
    """

    vectors: dict[str, np.ndarray]
    have: np.ndarray


def extract_per_scale(
    backbone: Backbone,
    images: Sequence,
    config: GlobalConfig = GlobalConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    heads: Sequence[str] | None = None,
    progress: bool = False,
    info: dict | None = None,
) -> PerScale:
    """The per-scale descriptors behind :func:`extract_global_heads` (not ``codes``).

    ``combine_scales(r.vectors[head], r.have, p)`` gives the multi-scale descriptor, and
    ``r.vectors[head][0]`` the single-scale one when ``config.scales[0]`` is 1 (one run
    serves both in benchmarks).

    Args:
      backbone, images, config, progress, info: as :func:`extract_global`.
      heads: multi-scale heads (default: ``(config.head,)``); not one of one square size
        (``codes``).

    Returns:
      A :class:`PerScale`.
    """
    heads = _check_heads((config.head,) if heads is None else heads)
    for head in heads:
        if (size := pooling_head(head).image_size) is not None:
            raise InputError(f"{head} has one scale ({size} x {size}): use extract_global_heads")
    src, sizes, rec = _prepare(backbone, images, config)
    vecs, have = _extract_pooled(backbone, src, sizes, config, heads, progress, rec)
    _report(backbone, rec, info)
    return PerScale(vecs, have)


def _prepare(backbone, images, config: ScaleConfig):
    """Checks; pass 1 over the images: their sizes (one image in memory at a time)."""
    if not all(hasattr(backbone, a) for a in ("features", "stride", "min_size", "channels")):
        raise InputError(
            f"backbone must be a retrieval.nets.Backbone, got {type(backbone).__name__}"
        )
    if not isinstance(config, ScaleConfig):
        raise InputError(
            f"config must be a GlobalConfig or a ScaleConfig, got {type(config).__name__}"
        )
    if config.bucket % backbone.stride:
        raise InputError(
            f"bucket ({config.bucket} px) must be a multiple of {backbone.name}'s stride "
            f"({backbone.stride} px)"
        )
    src = _Images(images)
    n = len(src)
    sizes, gray = [], 0
    for i in range(n):
        img = src.load(i)
        h, w = img.shape[:2]
        if min(h, w) < backbone.min_size:
            raise InputError(
                f"{src.name(i)}: {h}x{w} px is smaller than the {backbone.min_size} px that "
                f"{backbone.name} needs (stride {backbone.stride})"
            )
        gray += img.ndim == 2
        sizes.append((h, w))
    rec = {"images": n, "gray": gray, "skipped_scales": [], "buckets": {}, "batches": 0}
    return src, sizes, rec


def _report(backbone, rec: dict, info: dict | None) -> None:
    if info is not None:
        info.update(rec)
    if rec["gray"]:
        warnings.warn(
            f"{rec['gray']} of {rec['images']} images are gray: repeated to RGB for "
            f"{backbone.name}",
            UserWarning,
            stacklevel=4,
        )


class MapBatch(NamedTuple):
    """One padded batch of feature maps (:func:`iter_feature_maps`).

    Attributes:
      items: (image index, scale index) of each real row; rows beyond ``len(items)`` pad the
        batch.
      features: (B, h, w, C) the backbone's maps of the bucket.
      mask: (B, h, w) bool validity of each row's image (False on padding rows).
    """

    items: list[tuple[int, int]]
    features: jax.Array
    mask: np.ndarray


def _plan_items(backbone, src, sizes, config, rec):
    """Bucket plan: ({(H, W): [(image, scale, h, w)]}, have (S, N) bool)."""
    items: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    have = np.zeros((len(config.scales), len(src)), bool)
    for i, (h, w) in enumerate(sizes):
        kept = 0
        for s, (hs, ws) in enumerate(scaled_sizes(h, w, config, backbone.stride)):
            if min(hs, ws) < backbone.min_size:
                rec["skipped_scales"].append((src.name(i), config.scales[s]))
                continue
            key = (_ceil_div(hs, config.bucket) * config.bucket,
                   _ceil_div(ws, config.bucket) * config.bucket)  # fmt: skip
            items.setdefault(key, []).append((i, s, hs, ws))
            have[s, i] = True
            kept += 1
        if not kept:
            raise InputError(
                f"{src.name(i)}: {h}x{w} px is smaller than the {backbone.min_size} px that "
                f"{backbone.name} needs at every scale (max side {config.max_side}, scales "
                f"{', '.join(f'{x:g}' for x in config.scales)})"
            )
    return items, have


def _map_batches(backbone, src, items, config, progress, rec):
    """Yields a :class:`MapBatch` per padded batch, bucket by bucket (one batch in memory)."""
    batch = _batch_size(config)
    colour = pad_colour(backbone)
    stride = backbone.stride
    total = sum(len(v) for v in items.values())
    bar = tqdm(total=total, desc="describing", unit="image-scale", disable=not progress)
    last = (-1, None)  # the last image read: its scales are usually in nearby batches
    for key in sorted(items):
        rec["buckets"][f"{key[0]}x{key[1]}"] = len(items[key])
        group = items[key]
        for start in range(0, len(group), batch):
            chunk = group[start : start + batch]
            x = np.empty((batch, key[0], key[1], 3), np.uint8)
            x[len(chunk) :] = colour
            for r, (i, _, hs, ws) in enumerate(chunk):
                if last[0] != i:
                    last = (i, src.load(i))
                x[r, :hs, :ws] = _resize(last[1], hs, ws)
                x[r, hs:] = colour  # only the padding (filling all: 1 ms of a 384 x 576 query)
                x[r, :hs, ws:] = colour
            feats = backbone.features(x)
            mask = np.zeros(feats.shape[:3], bool)
            for r, (_, _, hs, ws) in enumerate(chunk):
                mask[r, : _ceil_div(hs, stride), : _ceil_div(ws, stride)] = True
            rec["batches"] += 1
            yield MapBatch([(i, s) for i, s, _, _ in chunk], feats, mask)
            bar.update(len(chunk))
    bar.close()


def iter_feature_maps(
    backbone: Backbone,
    images: Sequence,
    config: ScaleConfig = ScaleConfig(),  # noqa: B008 (a frozen dataclass)
    *,
    progress: bool = False,
    info: dict | None = None,
):
    """The backbone's feature maps of images, one padded bucket batch at a time.

    Images are shrunk, resized per scale, bucketed and padded as :func:`extract_global`
    does (a :class:`ScaleConfig`; a ``GlobalConfig``'s head is not used); a consumer pools
    each :class:`MapBatch` itself
    (class-weighted pooling, stored maps for re-ranking). Every image is checked (and its
    size read) before the first batch is yielded.

    Args:
      backbone, images, config, progress: as :func:`extract_global`.
      info: filled, once the iteration is done, as :func:`extract_global`'s.

    Yields:
      :class:`MapBatch` ``(items, features (B, h, w, C), mask (B, h, w))``.

    Raises:
      InputError: as :func:`extract_global` (before the first batch).
    """
    src, sizes, rec = _prepare(backbone, images, config)
    items, _ = _plan_items(backbone, src, sizes, config, rec)
    yield from _map_batches(backbone, src, items, config, progress, rec)
    _report(backbone, rec, info)


def _extract_pooled(backbone, src, sizes, config, heads, progress, rec):
    """Pooled heads at every scale, by bucket: ({head: (S, N, C)}, have (S, N))."""
    items, have = _plan_items(backbone, src, sizes, config, rec)
    vecs = {h: np.zeros((*have.shape, backbone.channels), np.float32) for h in heads}
    pending = collections.deque()  # (items, {head: pooled on the device}) of batches in flight

    def read_oldest():
        done, pooled = pending.popleft()
        for head, v in pooled.items():
            v = np.asarray(v, np.float32)
            for r, (i, s) in enumerate(done):
                vecs[head][s, i] = v[r]

    for mb in _map_batches(backbone, src, items, config, progress, rec):
        # Read a batch once the next one is dispatched: its images are resized and sent while
        # the device computes (a multi-scale query: -10% wall time). At most IN_FLIGHT held.
        pending.append((mb.items, {h: pool_maps(h, mb.features, mb.mask, config) for h in heads}))
        if len(pending) > IN_FLIGHT:
            read_oldest()
    while pending:
        read_oldest()
    return vecs, have


def combine_scales(vecs, have, p: float = 1.0) -> np.ndarray:
    """Multi-scale mean of per-scale descriptors, over the scales each image has.

    Args:
      vecs: (S, N, D) per-scale descriptors (:class:`PerScale`).
      have: (S, N) bool, the scales each image has (at least one).
      p: power of :func:`retrieval.image.multiscale_combine` (the GeM p with GeM, else 1).

    Returns:
      (N, D) float32, L2-normalized. Images with the same scales are combined in one call.
    """
    vecs, have = np.asarray(vecs), np.asarray(have, bool)
    if vecs.ndim != 3 or have.shape != vecs.shape[:2] or not have.any(axis=0).all():
        raise InputError(
            f"vecs must be (S, N, D) and have (S, N) with a scale for every image, got "
            f"{vecs.shape} and {have.shape}"
        )
    out = np.empty(vecs.shape[1:], np.float32)
    patterns = {}
    for i in range(vecs.shape[1]):
        patterns.setdefault(tuple(np.flatnonzero(have[:, i])), []).append(i)
    for scales, rows in patterns.items():
        out[rows] = multiscale_combine(vecs[np.ix_(scales, rows)], p)
    return out


def _extract_square(backbone, src, head: str, config, progress, rec):
    """A head of one square size (neural codes): the backbone's ``codes`` when it has them
    (VGG16's fc6), else the head pooled on the map of the square image."""
    n, batch = len(src), _batch_size(config)
    size = pooling_head(head).image_size
    codes = getattr(backbone, "has_codes", False)
    out = None
    for start in tqdm(range(0, n, batch), desc=head, unit="batch", disable=not progress):
        rows = range(start, min(n, start + batch))
        x = np.empty((batch, size, size, 3), np.uint8)
        x[:] = pad_colour(backbone)
        for r, i in enumerate(rows):
            x[r] = _resize(src.load(i), size, size)
        if codes:
            v = np.asarray(pooling.l2_normalize(backbone.codes(x)), np.float32)
        else:
            v = np.asarray(pool_maps(head, backbone.features(x), None, config), np.float32)
        if out is None:
            out = np.empty((n, v.shape[1]), np.float32)
        out[start : start + len(rows)] = v[: len(rows)]
        rec["batches"] += 1
    rec["buckets"][f"{size}x{size}"] = rec["buckets"].get(f"{size}x{size}", 0) + n
    return out
