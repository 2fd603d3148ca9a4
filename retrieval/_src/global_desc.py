"""Global image descriptors from an ImageNet CNN: multi-scale, bucketed, masked pooling.

:func:`extract_global` turns images of any sizes into one L2-normalized vector
each: every image is shrunk so that its long side is at most ``max_side``
(never enlarged), resized once per scale, run through the backbone's
convolutional part (:class:`retrieval.nets.Backbone`), pooled by a head of
:mod:`retrieval._src.pooling` (MAC, SPoC, GeM, R-MAC, CroW) and the scales are
combined by :func:`retrieval.image.multiscale_combine` (cirtorch ``extract_ms``).

The images' path to the backbone's maps (max_side shrink, scales snapped to the stride,
size buckets, padding and masks) is :mod:`retrieval._src.feature_maps`.

The ``codes`` head is the neural code (Babenko et al., ECCV 2014): the image
resized to 224 x 224 (aspect ratio not kept), one scale; VGG16's fc6 after
its ReLU (``Backbone.codes``, 4096-D), for the other backbones (no fc6) the
global average of their last conv map (SPoC at 224 x 224, Razavian et al.'s
convolutional stand-in). ``scales``, ``max_side`` and ``bucket`` do not
apply to it.

References:
  F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN image retrieval with no
  human annotation", TPAMI 2018, section 5 (multi-scale, max side 1024).
  A. Babenko, A. Slesarev, A. Chigorin, V. Lempitsky, "Neural codes for image
  retrieval", ECCV 2014. A. S. Razavian et al., "Visual instance retrieval with
  deep convolutional networks", ITE Trans. MTA 2016.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src import pooling
from retrieval._src.feature_maps import (
    ScaleConfig,
    batch_rows,
    ceil_div,
    map_batches,
    pad_colour,
    plan_buckets,
    prepare_images,
    report_info,
    resize_rgb,
)
from retrieval._src.heads import HEADS, pool_maps, pooling_head
from retrieval._src.nets.backbone import Backbone
from retrieval._src.nets.row_calls import run_in_order
from retrieval._src.postprocess import multiscale_combine
from retrieval._src.settings import setting

#: Pooled batches dispatched and not yet read (:func:`_extract_pooled`): the next batch is
#: prepared while the device computes, and memory stays bounded.
IN_FLIGHT = 2


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
    src, sizes, rec = prepare_images(backbone, images, config)
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
    report_info(backbone, rec, info)
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
    src, sizes, rec = prepare_images(backbone, images, config)
    vecs, have = _extract_pooled(backbone, src, sizes, config, heads, progress, rec)
    report_info(backbone, rec, info)
    return PerScale(vecs, have)


def _extract_pooled(backbone, src, sizes, config, heads, progress, rec):
    """Pooled heads at every scale, by bucket: ({head: (S, N, C)}, have (S, N))."""
    items, have = plan_buckets(backbone, src, sizes, config, rec)
    vecs = {h: np.zeros((*have.shape, backbone.channels), np.float32) for h in heads}
    pending = collections.deque()  # (items, {head: pooled on the device}) of batches in flight

    def read_oldest():
        done, pooled = pending.popleft()
        for head, v in pooled.items():
            v = np.asarray(v, np.float32)
            for r, (i, s) in enumerate(done):
                vecs[head][s, i] = v[r]

    for mb in map_batches(backbone, src, items, config, progress, rec):
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
    n, batch = len(src), batch_rows(config)
    size = pooling_head(head).image_size
    codes = getattr(backbone, "has_codes", False)
    out = None

    def square_batches():
        for start in range(0, n, batch):
            rows = range(start, min(n, start + batch))
            x = np.empty((batch, size, size, 3), np.uint8)
            x[:] = pad_colour(backbone)
            for r, i in enumerate(rows):
                x[r] = resize_rgb(src.load(i), size, size)
            yield rows, x

    runs = run_in_order(backbone.codes if codes else backbone.features, square_batches())
    total = ceil_div(n, batch)
    with contextlib.closing(runs):
        for rows, y in tqdm(runs, total=total, desc=head, unit="batch", disable=not progress):
            if codes:
                v = np.asarray(pooling.l2_normalize(y), np.float32)
            else:
                v = np.asarray(pool_maps(head, y, None, config), np.float32)
            if out is None:
                out = np.empty((n, v.shape[1]), np.float32)
            out[rows.start : rows.stop] = v[: len(rows)]
            rec["batches"] += 1
    rec["buckets"][f"{size}x{size}"] = rec["buckets"].get(f"{size}x{size}", 0) + n
    return out
