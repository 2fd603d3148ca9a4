"""Interest regions (SIFT / difference-of-Gaussians) and normalized patch sampling.

A region is a centre ``(x, y)`` in pixels (x to the right, y down, origin at the
centre of the top-left pixel, as OpenCV), a size (OpenCV's ``KeyPoint.size``,
i.e. twice the detection scale sigma) and a dominant orientation ``angle`` in
degrees, measured in image coordinates from +x towards +y (OpenCV's
convention: the direction vector is ``(cos angle, sin angle)``).

A patch is resampled from the region's own frame: it is centred on the region,
its side covers ``magnification * size`` image pixels (default 6, i.e. 12
sigma: the window that SIFT's own descriptor covers), it is rotated so that the
dominant orientation points along the patch's +x axis, and an optional 2x2
affine shape matrix maps the normalized (circular) frame to the image ellipse.
Large regions are sampled from a Gaussian pyramid level, so that shrinking them
to ``size x size`` does not alias.

References:
  D. Lowe, "Distinctive image features from scale-invariant keypoints", IJCV
  2004 (DoG detector, orientation assignment). M. Paulin et al., "Convolutional
  patch representations for image retrieval: an unsupervised approach", IJCV
  2017, Sec. 5 (RomePatches: 51 x 51 normalized patches).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import NamedTuple

import cv2
import numpy as np

from ckn import InputError

#: Default patch side, in pixels (RomePatches uses 51 x 51).
PATCH_SIZE = 51
#: Default ratio (patch side in image pixels) / (region size). 6 x size = 12 sigma.
MAGNIFICATION = 6.0


class Regions(NamedTuple):
    """Interest regions of one image, as parallel float64 arrays of shape (N,).

    Attributes:
      x, y: centre in pixels.
      size: OpenCV ``KeyPoint.size`` (twice the detection scale sigma).
      angle: dominant orientation in degrees, in [0, 360).
      response: detector response (contrast); larger is stronger.
    """

    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    response: np.ndarray

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.x.shape[0])

    def take(self, index: np.ndarray) -> Regions:
        """Returns the regions at ``index`` (an integer or boolean array)."""
        return Regions(*(a[index] for a in self))

    @property
    def xy(self) -> np.ndarray:
        """Centres, (N, 2)."""
        return np.stack([self.x, self.y], axis=1)


def empty_regions() -> Regions:
    return Regions(*(np.zeros((0,), np.float64) for _ in Regions._fields))


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) RGB uint8 -> (H, W) uint8."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[..., 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    raise InputError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise InputError(
            f"{name} must be (H, W) or (H, W, C) with C in (1, 3), got shape {image.shape}"
        )
    if image.dtype != np.uint8:
        raise InputError(f"{name} must be uint8, got dtype {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise InputError(f"{name} is too small ({image.shape[1]} x {image.shape[0]} pixels)")
    return image


# One detector per thread: scenes are processed by a thread pool, and OpenCV does
# not document cv2.SIFT.detect as safe to call concurrently on one object.
_SIFT_CACHE = threading.local()


def _sift(contrast_threshold: float, edge_threshold: float, sigma: float, n_octave_layers: int):
    key = (contrast_threshold, edge_threshold, sigma, n_octave_layers)
    cache = _SIFT_CACHE.__dict__.setdefault("detectors", {})
    if key not in cache:
        cache[key] = cv2.SIFT_create(
            nfeatures=0,
            nOctaveLayers=n_octave_layers,
            contrastThreshold=contrast_threshold,
            edgeThreshold=edge_threshold,
            sigma=sigma,
        )
    return cache[key]


def detect_regions(
    image: np.ndarray,
    *,
    contrast_threshold: float = 0.04,
    edge_threshold: float = 10.0,
    sigma: float = 1.6,
    n_octave_layers: int = 3,
    mask: np.ndarray | None = None,
) -> Regions:
    """Detects all SIFT (difference-of-Gaussians) regions of an image.

    Args:
      image: (H, W) or (H, W, 3) RGB uint8.
      contrast_threshold, edge_threshold, sigma, n_octave_layers: passed to
        ``cv2.SIFT_create``.
      mask: optional (H, W) array; detections only where it is non-zero.

    Returns:
      All detections, sorted deterministically by decreasing response (then x,
      y, size, angle): OpenCV's multi-threaded detector does not fix the order.
      A location with several dominant orientations gives several regions.
    """
    image = _check_image(image)
    gray = to_gray(image)
    if mask is not None:
        mask = (np.asarray(mask) != 0).astype(np.uint8)
    kps = _sift(contrast_threshold, edge_threshold, sigma, n_octave_layers).detect(gray, mask)
    if not kps:
        return empty_regions()
    arr = np.array([(k.pt[0], k.pt[1], k.size, k.angle, k.response) for k in kps], np.float64)
    order = np.lexsort((arr[:, 3], arr[:, 2], arr[:, 1], arr[:, 0], -arr[:, 4]))
    arr = arr[order]
    return Regions(*(np.ascontiguousarray(arr[:, i]) for i in range(5)))


def rotation(angle_deg: np.ndarray) -> np.ndarray:
    """(...,) angles in degrees -> (..., 2, 2) rotations taking +x to (cos a, sin a)."""
    a = np.deg2rad(np.asarray(angle_deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def patch_frames(
    x: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
    *,
    size: int = PATCH_SIZE,
    magnification: float = MAGNIFICATION,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Affine maps from patch pixels to image pixels, (N, 2, 3).

    Image point = ``M[:, :2] @ (u, v) + M[:, 2]`` for patch pixel (u, v), with
    ``M[:, :2] = (magnification * scale / size) * affine @ R(angle)`` and the
    patch centre ``((size - 1) / 2, (size - 1) / 2)`` mapped to ``(x, y)``.
    ``affine`` is (2, 2) or (N, 2, 2); None means the identity.
    """
    x, y, scale, angle = (np.atleast_1d(np.asarray(a, np.float64)) for a in (x, y, scale, angle))
    n = x.shape[0]
    if not (y.shape == scale.shape == angle.shape == (n,)):
        raise ValueError(
            "x, y, scale, angle must all be (N,), got "
            f"{x.shape}, {y.shape}, {scale.shape}, {angle.shape}"
        )
    lin = rotation(angle)
    if affine is not None:
        affine = np.asarray(affine, np.float64)
        if affine.shape not in ((2, 2), (n, 2, 2)):
            raise ValueError(f"affine must be (2, 2) or (N, 2, 2) with N = {n}, got {affine.shape}")
        lin = np.matmul(affine, lin)
    lin = lin * (magnification * scale / size)[:, None, None]
    c = (size - 1) / 2.0
    t = np.stack([x, y], 1) - lin @ np.array([c, c])
    return np.concatenate([lin, t[:, :, None]], axis=2)


def inside_fraction(
    valid: np.ndarray | tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
    *,
    magnification: float = MAGNIFICATION,
    affine: np.ndarray | None = None,
    grid: int = 9,
) -> np.ndarray:
    """Fraction of each region's patch square that lies inside the valid area, (N,).

    Args:
      valid: an image shape (H, W) (the whole image is valid) or an (H, W)
        mask (non-zero = valid, e.g. the area that a synthetic warp covers).
      grid: the square is probed at grid x grid points.
    """
    frames = patch_frames(x, y, scale, angle, size=grid, magnification=magnification, affine=affine)
    if isinstance(valid, tuple):
        h, w = valid
        mask = None
    else:
        mask = np.asarray(valid) != 0
        h, w = mask.shape
    # Fast path, same result: a square whose circumscribed circle lies inside has fraction 1,
    # so only the regions near an edge are probed (most of the cost in group_scene otherwise).
    c = (grid - 1) / 2.0
    corners = np.array([[c, c], [c, -c]])
    radius = np.max(
        np.linalg.norm(np.einsum("nij,kj->nki", frames[:, :, :2], corners), axis=2), axis=1
    )
    centre = frames[:, :, :2] @ np.array([c, c]) + frames[:, :, 2]
    cx, cy = centre[:, 0], centre[:, 1]
    sure = (
        (cx - radius >= -0.5)
        & (cx + radius <= w - 0.5)
        & (cy - radius >= -0.5)
        & (cy + radius <= h - 0.5)
    )
    if mask is not None and sure.any():
        # Distance to the nearest invalid pixel; 2 pixels of margin cover the rounding of probe
        # points.
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        xi = np.clip(np.rint(cx), 0, w - 1).astype(np.intp)
        yi = np.clip(np.rint(cy), 0, h - 1).astype(np.intp)
        sure &= dist[yi, xi] >= radius + 2.0
    out = np.ones(frames.shape[0])
    todo = np.flatnonzero(~sure)
    if todo.size == 0:
        return out
    frames = frames[todo]
    g = np.arange(grid, dtype=np.float64)
    uv = np.stack(np.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)  # (G, 2)
    pts = np.einsum("nij,gj->ngi", frames[:, :, :2], uv) + frames[:, None, :, 2]  # (N, G, 2)
    px, py = pts[..., 0], pts[..., 1]
    ok = (px >= -0.5) & (px <= w - 0.5) & (py >= -0.5) & (py <= h - 0.5)
    if mask is not None:
        xi = np.clip(np.rint(px), 0, w - 1).astype(np.intp)
        yi = np.clip(np.rint(py), 0, h - 1).astype(np.intp)
        ok &= mask[yi, xi]
    out[todo] = ok.mean(axis=1)
    return out


def select_regions(
    regions: Regions,
    image_shape: tuple[int, int],
    *,
    max_regions: int | None = None,
    min_size: float = 0.0,
    max_size: float = math.inf,
    nms_radius: float = 1.0,
    max_outside: float = 0.05,
    magnification: float = MAGNIFICATION,
    valid: np.ndarray | None = None,
) -> Regions:
    """Keeps strong, large-enough, well-separated regions whose patch fits the image.

    In order of decreasing response, a region is kept if ``min_size <= size <=
    max_size``, at most ``max_outside`` of its patch square leaves the image (or
    the ``valid`` mask), and its centre is at least ``nms_radius * max(size_i,
    size_j)`` from every region kept before (non-maximum suppression by
    distance: this also drops the extra orientations that SIFT gives at one
    location). Stops after ``max_regions``.
    """
    if len(regions) == 0:
        return regions
    keep = (regions.size >= min_size) & (regions.size <= max_size)
    idx = np.flatnonzero(keep)
    if idx.size:
        frac = inside_fraction(
            image_shape if valid is None else valid,
            regions.x[idx],
            regions.y[idx],
            regions.size[idx],
            regions.angle[idx],
            magnification=magnification,
        )
        idx = idx[frac >= 1.0 - max_outside - 1e-9]
    order = idx[np.argsort(-regions.response[idx], kind="stable")]
    limit = len(order) if max_regions is None else max_regions
    kept: list[int] = []
    kx = np.empty(len(order))
    ky = np.empty(len(order))
    ks = np.empty(len(order))
    for i in order:
        if len(kept) >= limit:
            break
        n = len(kept)
        if n and nms_radius > 0:
            d2 = (kx[:n] - regions.x[i]) ** 2 + (ky[:n] - regions.y[i]) ** 2
            r = nms_radius * np.maximum(ks[:n], regions.size[i])
            if np.any(d2 < r * r):
                continue
        kx[n], ky[n], ks[n] = regions.x[i], regions.y[i], regions.size[i]
        kept.append(int(i))
    return regions.take(np.asarray(kept, np.intp))


@dataclasses.dataclass(frozen=True)
class RegionSpec:
    """How regions are detected and selected in one image: one value, passed whole.

    :meth:`detect` and :meth:`select` call :func:`detect_regions` and
    :func:`select_regions` with these settings; the defaults are the patch
    data's (``retrieval.patches.PatchSetConfig().regions == RegionSpec()``).

    Attributes:
      max_regions: regions kept per image, strongest (detector response) first.
      contrast_threshold, edge_threshold: SIFT detector thresholds (0.03 is a
        little below OpenCV's 0.04, for more regions in low-contrast photos).
      min_size, max_size: region size range (OpenCV ``KeyPoint.size``, pixels).
        min_size 4 (sigma 2) keeps patch sides >= 24 image pixels.
      nms_radius: regions closer than nms_radius * size to a stronger one are dropped.
      max_outside: largest fraction of a patch square that may leave the image.
      magnification: patch side in image pixels = magnification * region size.
    """

    max_regions: int = 450
    contrast_threshold: float = 0.03
    edge_threshold: float = 10.0
    min_size: float = 4.0
    max_size: float = 80.0
    nms_radius: float = 1.0
    max_outside: float = 0.05
    magnification: float = MAGNIFICATION

    def __post_init__(self):
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")
        if self.magnification <= 0:
            raise ValueError(f"magnification must be > 0, got {self.magnification}")

    def detect(self, image: np.ndarray, *, mask: np.ndarray | None = None) -> Regions:
        """Every region of ``image`` ((H, W) or (H, W, 3) uint8): :func:`detect_regions`."""
        return detect_regions(
            image,
            contrast_threshold=self.contrast_threshold,
            edge_threshold=self.edge_threshold,
            mask=mask,
        )

    def select(
        self, regions: Regions, image_shape: tuple[int, int], *, valid: np.ndarray | None = None
    ) -> Regions:
        """The kept regions, strongest first: :func:`select_regions` with these settings."""
        return select_regions(
            regions,
            image_shape,
            max_regions=self.max_regions,
            min_size=self.min_size,
            max_size=self.max_size,
            nms_radius=self.nms_radius,
            max_outside=self.max_outside,
            magnification=self.magnification,
            valid=valid,
        )


def _level_for(frames: np.ndarray, size_out: int, max_level: int) -> np.ndarray:
    # Pixel step in the image per patch pixel (geometric mean of the two axes);
    # pyramid level L halves it L times, so bilinear sampling steps stay in ~[0.7, 1.4).
    step = np.sqrt(np.abs(np.linalg.det(frames[:, :, :2])))
    level = np.floor(np.log2(np.maximum(step, 1e-12)) + 0.5)
    return np.clip(level, 0, max_level).astype(np.intp)


def gaussian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """[image, pyrDown(image), ...]: level L has pixel i at level-0 position 2**L * i."""
    pyr = [image]
    for _ in range(levels):
        if min(pyr[-1].shape[:2]) < 16:
            break
        pyr.append(cv2.pyrDown(pyr[-1]))
    return pyr


def sample_patch(
    image: np.ndarray,
    x: float,
    y: float,
    scale: float,
    angle: float,
    *,
    size: int = PATCH_SIZE,
    magnification: float = MAGNIFICATION,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Resamples one normalized patch with ``cv2.warpAffine``.

    Args:
      image: (H, W) or (H, W, C) uint8.
      x, y, scale, angle: the region (centre, size, orientation in degrees).
      size: output side in pixels.
      magnification: patch side in image pixels = ``magnification * scale``.
      affine: optional (2, 2) shape matrix (normalized frame -> image), applied
        after the rotation: image offset = ``k * affine @ R(angle) @ q``.

    Returns:
      (size, size) or (size, size, C) uint8; the dominant orientation points
      along +x. Pixels outside the image replicate the border.
    """
    image = _check_image(image)
    frame = patch_frames(x, y, scale, angle, size=size, magnification=magnification, affine=affine)
    level = int(_level_for(frame, size, 16)[0])
    pyr = gaussian_pyramid(image, level)
    level = len(pyr) - 1
    m = frame[0] / (2.0**level)
    out = cv2.warpAffine(
        pyr[level],
        m,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape((size, size) + image.shape[2:])


def sample_patches(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
    *,
    size: int = PATCH_SIZE,
    magnification: float = MAGNIFICATION,
    affine: np.ndarray | None = None,
    pyramid: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Batched :func:`sample_patch`: one ``cv2.remap`` per pyramid level.

    Args:
      image: (H, W) or (H, W, C) uint8.
      x, y, scale, angle: (N,) regions.
      affine: None, (2, 2) or (N, 2, 2).
      pyramid: optional precomputed :func:`gaussian_pyramid` of ``image``.

    Returns:
      (N, size, size) or (N, size, size, C) uint8.
    """
    image = _check_image(image)
    frames = patch_frames(x, y, scale, angle, size=size, magnification=magnification, affine=affine)
    n = frames.shape[0]
    out = np.zeros((n, size, size) + image.shape[2:], np.uint8)
    if n == 0:
        return out
    levels = _level_for(frames, size, 16)
    if pyramid is None:
        pyramid = gaussian_pyramid(image, int(levels.max()))
    levels = np.minimum(levels, len(pyramid) - 1)
    g = np.arange(size, dtype=np.float64)
    uu, vv = np.meshgrid(g, g, indexing="xy")
    for level in np.unique(levels):
        sel = np.flatnonzero(levels == level)
        f = frames[sel] / (2.0**level)
        mx = f[:, 0, 0, None, None] * uu + f[:, 0, 1, None, None] * vv + f[:, 0, 2, None, None]
        my = f[:, 1, 0, None, None] * uu + f[:, 1, 1, None, None] * vv + f[:, 1, 2, None, None]
        # cv2.remap maps are limited to 32767 rows: chunk.
        chunk = max(1, 32000 // size)
        for s in range(0, sel.size, chunk):
            e = min(sel.size, s + chunk)
            res = cv2.remap(
                pyramid[level],
                mx[s:e].reshape(-1, size).astype(np.float32),
                my[s:e].reshape(-1, size).astype(np.float32),
                interpolation=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
            out[sel[s:e]] = res.reshape((e - s, size, size) + image.shape[2:])
    return out
