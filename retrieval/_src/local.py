"""Local descriptors of an image: interest regions, oriented patches, a describer.

Per image (:func:`local_features`; :func:`describe_images` for many):
SIFT / difference-of-Gaussians interest regions, selected as for the patch
data (:class:`LocalConfig` defaults = :class:`retrieval.patches.PatchSetConfig`'s:
contrast threshold 0.03, region size 4-80 px, non-maximum suppression at 1
size, patch at most 5% outside the image), strongest first up to
``max_regions`` per image; each region is resampled to an oriented ``S x S``
patch (side 6 x size); patches are described by a trained CKN
(``ckn.describe``) or by SIFT / RootSIFT at the patch centre
(``retrieval.patches.describe_with``; :func:`make_local_describer`).

References:
  Paulin et al., IJCV 2017, Sec. 6 (VLAD over Patch-CKN descriptors).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from retrieval._src import regions as R
from retrieval._src.data import read_image, resize_max
from retrieval._src.evaluation import describe_with, descriptor_info, resolve_model
from retrieval._src.settings import check_settings, max_side_setting, setting


@dataclasses.dataclass(frozen=True)
class LocalConfig:
    """Interest regions and patches of one image (defaults: the patch data's).

    Attributes:
      max_regions: cap on regions per image, strongest (detector response) first.
      contrast_threshold, edge_threshold: SIFT detector thresholds.
      min_size, max_size: region size range (OpenCV KeyPoint.size, pixels).
      nms_radius: regions closer than nms_radius * size to a stronger one are dropped.
      max_outside: largest fraction of a patch square that may leave the image.
      magnification: patch side in image pixels = magnification * region size.
      max_side: images whose long side exceeds it are first shrunk to it (default
        1024, so that a huge photo neither floods the detector with hundreds of
        thousands of keypoints nor the memory; None: never).
    """

    max_regions: int = setting(1000, minimum=1, help="regions per image, strongest first")
    contrast_threshold: float = 0.03
    edge_threshold: float = 10.0
    min_size: float = 4.0
    max_size: float = 80.0
    nms_radius: float = 1.0
    max_outside: float = 0.05
    magnification: float = R.MAGNIFICATION
    max_side: int | None = max_side_setting()

    def __post_init__(self):
        check_settings(self)


@dataclasses.dataclass(frozen=True)
class LocalDescriber:
    """Turns oriented patches into local descriptors (patches in, one vector per patch out).

    Attributes:
      name: "sift", "rootsift" or the CKN model's directory / preset name.
      patch_size: patch side S in pixels.
      color: the patches are RGB (N, S, S, 3) if True, else gray (N, S, S).
      fn: (N, S, S[, 3]) uint8 -> (N, D) float32.
      dim: D.
    """

    name: str
    patch_size: int
    color: bool
    fn: Callable[[np.ndarray], np.ndarray]
    dim: int

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        return self.fn(patches)


def make_local_describer(spec: Any, *, batch_size: int = 256) -> LocalDescriber:
    """A :class:`LocalDescriber` from "sift", "rootsift", "pixels", a model folder or a ``ckn.CKN``.

    The baselines describe 51 x 51 gray patches; a CKN model the patch side of
    its config (``patch_size``), in colour for ``channels`` "rgb" / "green".

    Raises:
      InputError: neither a baseline nor a model directory that loads.
    """
    what = resolve_model(spec)
    if isinstance(what, str):
        size, color, name = R.PATCH_SIZE, False, what
    else:
        size, color = what.config.patch_size, what.config.channels in ("rgb", "green")
        name = str(spec) if isinstance(spec, (str, os.PathLike)) else what.config.name
    dim = descriptor_info(what, (size, size, 3) if color else (size, size))["dim"]
    return LocalDescriber(
        name, size, color, functools.partial(describe_with, what, batch_size=batch_size), dim
    )


class LocalFeatures(NamedTuple):
    """Local descriptors of one image.

    Attributes:
      descriptors: (n, D) float32.
      regions: the n regions (coordinates in the possibly resized image).
      image_shape: (H, W) of the (possibly resized) image.
      seconds_regions: detection, selection and patch sampling time.
      seconds_describe: time to describe the n patches.
    """

    descriptors: np.ndarray
    regions: R.Regions
    image_shape: tuple[int, int]
    seconds_regions: float
    seconds_describe: float


class _Sampled(NamedTuple):
    """An image's regions and patches, not described yet."""

    name: str
    regions: R.Regions
    image_shape: tuple[int, int]
    patches: np.ndarray
    seconds_regions: float


def _sample(
    image: np.ndarray, describer: LocalDescriber, config: LocalConfig, name: str
) -> _Sampled:
    """Regions and oriented patches of one image (the part of :func:`local_features` before
    the describer)."""
    t0 = time.perf_counter()
    image = resize_max(np.asarray(image), config.max_side)
    gray = R.to_gray(R._check_image(image, name))
    regions = R.detect_regions(
        gray, contrast_threshold=config.contrast_threshold, edge_threshold=config.edge_threshold
    )
    sel = R.select_regions(
        regions,
        gray.shape,
        max_regions=config.max_regions,
        min_size=config.min_size,
        max_size=config.max_size,
        nms_radius=config.nms_radius,
        max_outside=config.max_outside,
        magnification=config.magnification,
    )
    if len(sel) == 0:
        raise InputError(
            f"{name}: no interest regions ({len(regions)} detected, none of size "
            f"{config.min_size:g}-{config.max_size:g} px inside the "
            f"{gray.shape[1]} x {gray.shape[0]} image)"
        )
    src = image if (describer.color and image.ndim == 3) else gray
    patches = R.sample_patches(
        src,
        sel.x,
        sel.y,
        sel.size,
        sel.angle,
        size=describer.patch_size,
        magnification=config.magnification,
    )
    if describer.color and patches.ndim == 3:
        patches = np.repeat(patches[..., None], 3, axis=3)
    return _Sampled(name, sel, gray.shape, patches, time.perf_counter() - t0)


def local_features(
    image: np.ndarray,
    describer: LocalDescriber,
    *,
    config: LocalConfig = LocalConfig(),
    name: str = "image",
) -> LocalFeatures:
    """Regions, patches and descriptors of one image.

    Args:
      image: (H, W) or (H, W, 3) RGB uint8.
      describer: from :func:`make_local_describer`.
      config: region selection.
      name: used in error messages.

    Raises:
      InputError: a bad image, or an image without any selected region.
    """
    s = _sample(image, describer, config, name)
    t1 = time.perf_counter()
    desc = np.asarray(describer(s.patches), np.float32)
    return LocalFeatures(desc, s.regions, s.image_shape, s.seconds_regions,
                         time.perf_counter() - t1)  # fmt: skip


#: Patches described per call by :func:`iter_local_features` (a multiple of the describers'
#: 256-patch batches): the patches of consecutive images fill whole batches, so an image
#: of a few hundred regions no longer pays for a padded batch and a call of its own.
PATCH_BATCH = 2048


def iter_local_features(
    images: Iterable[tuple[str, np.ndarray]],
    describer: LocalDescriber,
    *,
    config: LocalConfig = LocalConfig(),
    batch: int = PATCH_BATCH,
) -> Iterator[LocalFeatures]:
    """:func:`local_features` of many images, their patches described together in batches.

    Patches of consecutive images are gathered and described ``batch`` at a time (only the
    last call of the stream is shorter), so the describer runs full batches whatever the
    number of regions per image; descriptors are the same as image by image (each patch is
    described alone: rows do not interact). Memory: at most ``batch`` patches plus one
    image's are held. Each image's ``seconds_describe`` is its share (by patch count) of the
    calls its patches were in.

    Args:
      images: (name, (H, W[, 3]) uint8 array) pairs, read lazily in order.
      describer: from :func:`make_local_describer`.
      config: region selection.
      batch: patches per describer call (>= 1).

    Yields:
      One :class:`LocalFeatures` per image, in order, as soon as its patches are described.

    Raises:
      InputError: a bad image, or an image without any selected region (named).
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be an int >= 1, got {batch!r}")
    waiting: list[_Sampled] = []  # sampled images whose descriptors are not all ready
    todo: list[np.ndarray] = []  # patches not described yet (the tail of `waiting`'s)
    done: list[np.ndarray] = []  # descriptors of `waiting`'s first patches
    seconds: list[float] = []  # describe time per ready descriptor row, as `done`
    n_todo = 0

    def describe(m: int) -> None:
        nonlocal todo, n_todo
        x = np.concatenate(todo) if len(todo) > 1 else todo[0]
        t = time.perf_counter()
        d = np.asarray(describer(x[:m]), np.float32)
        share = (time.perf_counter() - t) / max(m, 1)
        done.append(d)
        seconds.append(np.full(m, share))
        todo, n_todo = ([x[m:]] if m < len(x) else []), n_todo - m

    def ready() -> Iterator[LocalFeatures]:
        nonlocal done, seconds
        d = np.concatenate(done) if len(done) > 1 else done[0]
        sec = np.concatenate(seconds)
        start = 0
        while waiting and start + len(waiting[0].patches) <= len(d):
            s = waiting.pop(0)
            n = len(s.patches)
            yield LocalFeatures(d[start : start + n], s.regions, s.image_shape,
                                s.seconds_regions, float(sec[start : start + n].sum()))  # fmt: skip
            start += n
        done, seconds = [d[start:]], [sec[start:]]

    for name, image in images:
        s = _sample(image, describer, config, name)
        waiting.append(s)
        todo.append(s.patches)
        n_todo += len(s.patches)
        if n_todo >= batch:
            describe(n_todo // batch * batch)
            yield from ready()
    if n_todo:
        describe(n_todo)
    if waiting:
        yield from ready()


def describe_images(
    images: Sequence[str | os.PathLike | np.ndarray],
    describer: LocalDescriber,
    *,
    config: LocalConfig = LocalConfig(),
    names: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "describing images",
    batch: int = PATCH_BATCH,
) -> list[LocalFeatures]:
    """:func:`local_features` of every image (paths are read as RGB), with a progress bar;
    the patches of consecutive images are described together (:func:`iter_local_features`).

    Raises:
      InputError: an image that does not decode or has no region (named).
    """

    def read():
        for i, im in enumerate(tqdm(images, desc=desc, unit="image", disable=not progress)):
            if isinstance(im, (str, os.PathLike)):
                yield (str(im) if names is None else names[i]), read_image(im)
            else:
                yield (f"image {i}" if names is None else names[i]), np.asarray(im)

    return list(iter_local_features(read(), describer, config=config, batch=batch))
