"""Images to backbone feature maps: shrink, scales, size buckets, padding and masks.

:func:`iter_feature_maps` yields the padded bucket batches of the backbone's maps of images of
any sizes; :mod:`retrieval._src.global_desc` pools them into global descriptors, the CAM and
learned global heads consume them too.

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

Memory: paths are read one image at a time; after a first pass that reads
each image's size, one bucket batch at a time is in memory (and the pooled
vectors, (S, N, D) float32).
"""

from __future__ import annotations

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
from retrieval._src.data.io import read_image_any
from retrieval._src.nets.backbone import Backbone
from retrieval._src.nets.row_calls import run_in_order
from retrieval._src.settings import check_settings, max_side_setting, setting

#: cirtorch's multi-scale set: 1, 1/sqrt(2), 1/2.
MULTI_SCALE = (1.0, 1.0 / math.sqrt(2.0), 0.5)
#: Rows of a padded batch when ``batch_size`` is None, by backend. On the CPU
#: batching buys little (EfficientNet-Lite0, 2 cores, benchmarks/results/
#: bench_backbone_cpu.json: 26.2 vs 27.5 images/s at 512 px for batches of 1 and 4,
#: 4.1 vs 5.0 at 1024 px; a CPU batch runs as 1-row calls in flight anyway,
#: nets/row_calls.py), while a fixed batch of B rows computes B images even for a
#: bucket holding one (most buckets of the benchmark's image sets hold a few).
DEFAULT_BATCH = {"cpu": 1}
DEFAULT_BATCH_ACCELERATOR = 8


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


def resize_rgb(img: np.ndarray, h: int, w: int) -> np.ndarray:
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


def put_row(x: np.ndarray, r: int, img: np.ndarray, h: int, w: int, colour: np.ndarray) -> None:
    """Row ``r`` of a padded uint8 batch ``x`` (B, H, W, 3): ``img`` resized to h x w at the
    top left, the rest ``colour`` (only the padding is written: filling the whole row first
    cost 1 ms of a 384 x 576 query)."""
    x[r, :h, :w] = resize_rgb(img, h, w)
    x[r, h:] = colour
    x[r, :h, w:] = colour


def pad_colour(backbone: Backbone) -> np.ndarray:
    """(3,) uint8: the backbone's mean RGB, rounded; padded pixels normalize to ~0."""
    arch = getattr(backbone, "_arch", None)  # the one place that knows the preprocessing
    mean = getattr(arch, "mean", (0.0, 0.0, 0.0))
    return np.clip(np.round(np.asarray(mean, np.float64)), 0, 255).astype(np.uint8)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def batch_rows(config: ScaleConfig) -> int:
    if config.batch_size is not None:
        return config.batch_size
    return DEFAULT_BATCH.get(jax.default_backend(), DEFAULT_BATCH_ACCELERATOR)


# --------------------------------------------------------------------------- batches


def prepare_images(backbone, images, config: ScaleConfig):
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


def report_info(backbone, rec: dict, info: dict | None) -> None:
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


def plan_buckets(backbone, src, sizes, config, rec):
    """Bucket plan: ({(H, W): [(image, scale, h, w)]}, have (S, N) bool)."""
    items: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    have = np.zeros((len(config.scales), len(src)), bool)
    for i, (h, w) in enumerate(sizes):
        kept = 0
        for s, (hs, ws) in enumerate(scaled_sizes(h, w, config, backbone.stride)):
            if min(hs, ws) < backbone.min_size:
                rec["skipped_scales"].append((src.name(i), config.scales[s]))
                continue
            key = (ceil_div(hs, config.bucket) * config.bucket,
                   ceil_div(ws, config.bucket) * config.bucket)  # fmt: skip
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


def map_batches(backbone, src, items, config, progress, rec):
    """Yields a :class:`MapBatch` per padded batch, bucket by bucket (the largest first).

    On the CPU ``ckn.sharding.host_streams`` batches run at once (``run_in_order`` of
    nets/row_calls.py), and one more is read and resized meanwhile (Lite0 on the 2 cores,
    one image per batch: the three scales of a 384 x 576 query 1.85-1.91 -> 1.63-1.72 x
    one forward pass; four 1024 px images 958 -> 710 ms); elsewhere one batch at a time.
    """
    batch = batch_rows(config)
    colour = pad_colour(backbone)
    stride = backbone.stride
    total = sum(len(v) for v in items.values())
    bar = tqdm(total=total, desc="describing", unit="image-scale", disable=not progress)

    def padded_batches():
        last = (-1, None)  # the last image read: its scales are usually in nearby batches
        # Largest buckets first: on the CPU the small ones then run beside the last large
        # one (a query's three scales: 1.74-1.78 -> 1.71-1.72 x one forward pass).
        for key in sorted(items, key=lambda k: (-k[0] * k[1], k)):
            rec["buckets"][f"{key[0]}x{key[1]}"] = len(items[key])
            group = items[key]
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                x = np.empty((batch, key[0], key[1], 3), np.uint8)
                x[len(chunk) :] = colour
                for r, (i, _, hs, ws) in enumerate(chunk):
                    if last[0] != i:
                        last = (i, src.load(i))
                    put_row(x, r, last[1], hs, ws, colour)
                yield chunk, x

    maps = run_in_order(backbone.features, padded_batches())
    try:
        for chunk, feats in maps:
            mask = np.zeros(feats.shape[:3], bool)
            for r, (_, _, hs, ws) in enumerate(chunk):
                mask[r, : ceil_div(hs, stride), : ceil_div(ws, stride)] = True
            rec["batches"] += 1
            bar.update(len(chunk))
            yield MapBatch([(i, s) for i, s, _, _ in chunk], feats, mask)
    finally:
        maps.close()
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
    src, sizes, rec = prepare_images(backbone, images, config)
    items, _ = plan_buckets(backbone, src, sizes, config, rec)
    yield from map_batches(backbone, src, items, config, progress, rec)
    report_info(backbone, rec, info)
