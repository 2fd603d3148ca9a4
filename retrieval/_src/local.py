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
from collections.abc import Callable, Sequence
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
    t1 = time.perf_counter()
    desc = np.asarray(describer(patches), np.float32)
    t2 = time.perf_counter()
    return LocalFeatures(desc, sel, gray.shape, t1 - t0, t2 - t1)


def describe_images(
    images: Sequence[str | os.PathLike | np.ndarray],
    describer: LocalDescriber,
    *,
    config: LocalConfig = LocalConfig(),
    names: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "describing images",
) -> list[LocalFeatures]:
    """:func:`local_features` of every image (paths are read as RGB), with a progress bar.

    Raises:
      InputError: an image that does not decode or has no region (named).
    """
    out = []
    for i, im in enumerate(tqdm(images, desc=desc, unit="image", disable=not progress)):
        if isinstance(im, (str, os.PathLike)):
            name = str(im) if names is None else names[i]
            arr = read_image(im)
        else:
            name = f"image {i}" if names is None else names[i]
            arr = np.asarray(im)
        out.append(local_features(arr, describer, config=config, name=name))
    return out
