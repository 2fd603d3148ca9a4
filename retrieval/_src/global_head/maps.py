"""Backbone maps of training images, computed once: :class:`HeadMaps`, :func:`prepare_maps`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src import feature_maps as F
from retrieval._src.global_head.config import (
    _is_int,
)
from retrieval._src.nets.row_calls import run_in_order


class HeadMaps(NamedTuple):
    """Backbone maps of a set of images, computed once for training.

    Attributes:
      maps: (N, h, w, C) float16.
      mask: (N, h, w) bool validity (each image's own cells, top-left).
    """

    maps: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.maps.nbytes + self.mask.nbytes)


def maps_bytes(n: int, backbone, side: int) -> int:
    """Bytes of the float16 maps (+ mask) of n images padded to side x side."""
    cells = -(-side // backbone.stride)
    return n * cells * cells * (2 * backbone.channels + 1)


def prepare_maps(
    backbone,
    images: Sequence,
    *,
    side: int = 320,
    max_bytes: int | None = None,
    progress: bool = False,
    info: dict | None = None,
) -> HeadMaps:
    """The backbone's maps of training images, float16, padded to one size.

    Every image is shrunk so that its long side is at most ``side`` (never
    enlarged; sides snapped to the stride, as :func:`retrieval.extract_global`),
    padded at the bottom and right with the backbone's mean colour to
    ``side x side``, and run through the backbone: one compilation for the whole set.

    Args:
      backbone: a :class:`retrieval.nets.Backbone` (or the ``ckn`` backbone).
      images: N uint8 arrays or image paths (read one at a time).
      side: padded size in pixels, a multiple of the backbone's stride.
      max_bytes: refuse (before describing anything) maps above this many bytes.
      progress: a progress bar.
      info: filled with ``images``, ``gray``, ``seconds``, ``bytes``.

    Returns:
      A :class:`HeadMaps`.

    Raises:
      InputError: ``side`` not a multiple of the stride, an image too small or too
        elongated for the network, maps above ``max_bytes``, maps that overflow float16.
    """
    if not _is_int(side, 1) or side % backbone.stride:
        raise InputError(
            f"side must be a multiple of {backbone.name}'s stride ({backbone.stride} px), "
            f"got {side}"
        )
    cfg = F.ScaleConfig(scales=(1.0,), max_side=side, bucket=side)
    src, sizes, rec = F.prepare_images(backbone, images, cfg)
    n = len(src)
    need = maps_bytes(n, backbone, side)
    if max_bytes is not None and need > max_bytes:
        raise InputError(
            f"the float16 maps of {n} images at {side} px need {need / 2**20:.0f} MiB, above "
            f"the {max_bytes / 2**20:.0f} MiB limit: use a smaller side, fewer images or a "
            "higher limit"
        )
    stride = backbone.stride
    snapped = [F.scaled_sizes(h, w, cfg, stride)[0] for h, w in sizes]
    for i, (hs, ws) in enumerate(snapped):
        if min(hs, ws) < backbone.min_size:
            raise InputError(
                f"{src.name(i)}: {sizes[i][0]}x{sizes[i][1]} px shrunk to at most {side} px "
                f"is smaller than the {backbone.min_size} px that {backbone.name} needs"
            )
    t0 = time.perf_counter()
    batch = F.batch_rows(cfg)
    colour = F.pad_colour(backbone)
    maps = mask = None
    bar = tqdm(total=n, desc="backbone maps", unit="image", disable=not progress)

    def padded_batches():
        for start in range(0, n, batch):
            rows = range(start, min(n, start + batch))
            x = np.empty((batch, side, side, 3), np.uint8)
            x[len(rows) :] = colour
            for r, i in enumerate(rows):
                F.put_row(x, r, src.load(i), *snapped[i], colour)
            yield rows, x

    runs = run_in_order(backbone.features, padded_batches())
    with contextlib.closing(runs):
        for rows, f in runs:
            f = np.asarray(f)
            if maps is None:
                maps = np.zeros((n, *f.shape[1:]), np.float16)
                mask = np.zeros((n, *f.shape[1:3]), bool)
            for r, i in enumerate(rows):
                maps[i] = f[r]
                hs, ws = snapped[i]
                mask[i, : F.ceil_div(hs, stride), : F.ceil_div(ws, stride)] = True
            bar.update(len(rows))
    bar.close()
    if not np.isfinite(maps).all():
        raise InputError(f"{backbone.name} feature values overflow float16")
    if info is not None:
        info.update(
            images=n,
            gray=rec["gray"],
            seconds=time.perf_counter() - t0,
            bytes=int(maps.nbytes + mask.nbytes),
        )
    return HeadMaps(maps, mask)
