"""Baseline patch descriptors: OpenCV SIFT, RootSIFT and normalized raw pixels.

All three describe the same (N, H, W[, C]) patches as the CKN models and
return (N, D) float32 rows, L2-normalized (a flat patch gives a zero row, never
NaN), so that the dot product ranks as the Euclidean distance does.

* ``"sift"``: OpenCV's SIFT descriptor (``cv2.SIFT_create().compute``) of one
  keypoint per patch, at the patch centre, orientation 0 (the patches are
  already rotated to their dominant orientation), on the gray patch.

  Keypoint size: ``min(H, W) / 6`` (:data:`SIFT_MAGNIFICATION`), so that the
  descriptor's 4 x 4 grid of spatial bins covers the patch exactly. OpenCV
  takes ``sigma = size / 2`` and makes each spatial bin ``3 sigma`` wide
  (``SIFT_DESCR_SCL_FCTR = 3``), so the grid is ``4 * 3 * size / 2 = 6 size``
  pixels wide: 51 pixels for a 51 x 51 patch at size 8.5. This is Lowe's
  descriptor window, the one VLFeat's ``magnif = 3`` also gives, and the
  window the patch sets sample: :mod:`retrieval._src.regions` cuts each patch
  with side ``6 x size`` of the detected region, so SIFT here describes the
  same image area that SIFT at the detection would. Checked by perturbation
  (one pixel at a time, a 51-pixel patch on a larger textured canvas): at
  size 8.5 every pixel of the patch changes the descriptor, and the influence
  reaches 36 pixels from the centre (the bins' trilinear tails, 0.5 bin beyond
  the grid, plus the 1.6-sigma pyramid blur); on the patch alone those outer
  pixels simply do not exist. A smaller size would leave the patch border out
  of the grid; ``min(H, W) / 7.5`` is the largest that keeps even the tails
  inside. For an even side the centre ``(W - 1) / 2`` falls between pixels
  and OpenCV rounds it to the nearest pixel (half a pixel off).
* ``"rootsift"``: RootSIFT (Arandjelovic & Zisserman, CVPR 2012) of that SIFT
  descriptor: L1-normalize, element-wise square root (the Hellinger kernel
  becomes a dot product), then L2-normalize (a no-op up to rounding).
* ``"pixels"``: the raw pixels (all channels), the mean of each channel over
  the patch subtracted, L2-normalized: D = H * W * C.

Colour patches are converted to gray for SIFT with OpenCV's RGB weights
(0.299, 0.587, 0.114); the patch files store RGB.

References:
  D. Lowe, "Distinctive image features from scale-invariant keypoints",
  IJCV 2004, Sec. 6.1. R. Arandjelovic, A. Zisserman, "Three things everyone
  should know to improve object retrieval", CVPR 2012 (RootSIFT).
"""

from __future__ import annotations

import cv2
import numpy as np
from tqdm.auto import tqdm

from ckn import InputError
from ckn.files import check_patches

#: Names accepted by :func:`describe_baseline`.
BASELINES = ("sift", "rootsift", "pixels")

#: Patch side / SIFT keypoint size: the descriptor grid (6 x size) covers the patch.
SIFT_MAGNIFICATION = 6.0

# Norm floor: a row with a smaller norm (a flat patch) is returned as zeros.
_NORM_FLOOR = 1e-12


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > _NORM_FLOOR, x / np.maximum(norms, _NORM_FLOOR), 0.0).astype(np.float32)


def sift_keypoint_size(height: int, width: int) -> float:
    """OpenCV ``KeyPoint.size`` whose descriptor grid covers a height x width patch."""
    return min(height, width) / SIFT_MAGNIFICATION


def _gray_uint8(patches: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 gray patches from (N, H, W[, C]) uint8."""
    if patches.dtype != np.uint8:
        raise InputError(f"the SIFT baselines need uint8 patches, got dtype {patches.dtype}")
    if patches.ndim == 3:
        return patches
    if patches.shape[3] == 1:
        return patches[..., 0]
    n, h, w, _ = patches.shape
    # One cvtColor over all rows: the conversion is per pixel.
    gray = cv2.cvtColor(np.ascontiguousarray(patches).reshape(n * h, w, 3), cv2.COLOR_RGB2GRAY)
    return gray.reshape(n, h, w)


def sift_descriptors(
    patches, *, keypoint_size: float | None = None, root: bool = False, progress: bool = False
) -> np.ndarray:
    """SIFT (or RootSIFT) of one centred keypoint per patch, orientation 0.

    Args:
      patches: (N, H, W) or (N, H, W, C) uint8, already oriented; colour is
        converted to gray.
      keypoint_size: OpenCV ``KeyPoint.size`` in patch pixels (default
        :func:`sift_keypoint_size`: ``min(H, W) / 6``, the grid covers the patch).
      root: RootSIFT instead of SIFT.
      progress: show a progress bar (stderr).

    Returns:
      (N, 128) float32, L2-normalized rows; zeros for a flat patch.

    Raises:
      InputError: wrong shape or dtype, NaN, non-positive keypoint size.
    """
    patches = check_patches(patches)
    n, h, w = patches.shape[:3]
    size = sift_keypoint_size(h, w) if keypoint_size is None else float(keypoint_size)
    if not size > 0:
        raise InputError(f"keypoint_size must be > 0, got {keypoint_size}")
    sift = cv2.SIFT_create()
    keypoint = [cv2.KeyPoint((w - 1) / 2.0, (h - 1) / 2.0, size, 0.0, 0.0, 0)]
    out = np.empty((n, 128), np.float32)
    chunk = 1024  # bounded memory for memory-mapped input
    bar = tqdm(total=n, desc="sift", unit="patch", disable=not progress or n < 2000)
    for c0 in range(0, n, chunk):
        gray = _gray_uint8(np.asarray(patches[c0 : c0 + chunk]))
        for i, p in enumerate(gray):
            kps, d = sift.compute(p, keypoint)
            if d is None or len(kps) != 1:
                raise InputError(f"OpenCV SIFT returned no descriptor for patch {c0 + i} ({h}x{w})")
            out[c0 + i] = d[0]
        bar.update(gray.shape[0])
    bar.close()
    if root:
        # OpenCV's SIFT entries are >= 0: L1 then sqrt gives a unit L2 vector.
        l1 = out.sum(axis=1, keepdims=True)
        out = np.sqrt(np.where(l1 > 0, out / np.maximum(l1, _NORM_FLOOR), 0.0))
    return _l2_normalize(out)


def pixel_descriptors(patches) -> np.ndarray:
    """Normalized raw pixels: per-channel mean subtracted, L2-normalized.

    Args:
      patches: (N, H, W) or (N, H, W, C), uint8 or float.

    Returns:
      (N, H * W * C) float32; zeros for a flat patch.
    """
    patches = check_patches(patches)
    n = patches.shape[0]
    out = np.empty((n, int(np.prod(patches.shape[1:]))), np.float32)
    chunk = 4096
    for c0 in range(0, n, chunk):
        x = np.asarray(patches[c0 : c0 + chunk], dtype=np.float64)
        x = x - x.mean(axis=(1, 2), keepdims=True)
        out[c0 : c0 + x.shape[0]] = _l2_normalize(x.reshape(x.shape[0], -1))
    return out


def describe_baseline(name: str, patches, *, progress: bool = False) -> np.ndarray:
    """Describes patches with a baseline descriptor.

    Args:
      name: ``"sift"``, ``"rootsift"`` or ``"pixels"`` (:data:`BASELINES`).
      patches: (N, H, W) or (N, H, W, C); uint8 for the SIFT baselines.
      progress: show a progress bar (SIFT baselines).

    Returns:
      (N, D) float32 L2-normalized descriptors (zero rows for flat patches):
      D = 128 for SIFT and RootSIFT, H * W * C for pixels.

    Raises:
      InputError: unknown name, bad patches (shape, dtype, NaN).

    Examples:
      >>> p = np.random.default_rng(0).integers(0, 256, (2, 51, 51), dtype=np.uint8)
      >>> describe_baseline("sift", p).shape
      (2, 128)
    """
    if name == "sift":
        return sift_descriptors(patches, progress=progress)
    if name == "rootsift":
        return sift_descriptors(patches, root=True, progress=progress)
    if name == "pixels":
        return pixel_descriptors(patches)
    raise InputError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")
