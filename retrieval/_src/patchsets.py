"""RomePatches-style patch data sets: groups of patches of one physical point.

RomePatches (Paulin et al., IJCV 2017, Sec. 5; CKN_NOTES.md Sec. 3) groups
affine- and orientation-normalized 51 x 51 patches of the same 3D point seen in
different photos, 10 patches per group, split into train and test by scene. We
build data of the same kind from real images whose geometry is known:

* homography sequences (Oxford affine layout ``<seq>/img1..imgN`` +
  ``H1toNp``; HPatches layout ``1.ppm..6.ppm`` + ``H_1_N``): :func:`build_sequences`;
* stereo pairs with a disparity map (``x_right = x_left - disparity``;
  Middlebury folders ``im0.png``, ``im1.png``, ``disp0.pfm``): :func:`build_stereo`;
* any folder of ordinary photos, under known random homographies and
  photometric changes: :func:`build_photos`; the embedded default set
  (real photos shipped with scikit-image): :func:`build_default`;
* pre-cut patches with group labels (e.g. the original RomePatches):
  :func:`load_manual`.

Bad input is an :class:`~ckn.InputError` with a one-line message (a missing or
unreadable image, a homography that does not parse or is singular, a folder
without images or sequences, no group at all), or, for an item that can be
left out (one unreadable photo, one sequence without matches), a
:class:`SkippedItemWarning` naming it; an empty train or test split gives an
:class:`EmptySplitWarning`. Outputs are written atomically.

Grouping, with real detector noise. Regions are detected independently in
every image of a scene (SIFT / DoG, :mod:`retrieval._src.regions`). Reference
regions are selected in image 0 (strongest first, ``min_size`` or larger,
non-maximum suppression by distance, patch inside the image). Each reference
region is mapped into image k with the known geometry: its centre by the map,
its size by ``sqrt(|det J|)`` and its orientation by ``J @ (cos a, sin a)``,
where J is the map's local 2x2 Jacobian at the centre. It is grouped with the
region detected in image k that agrees with the prediction within all three
tolerances (:class:`PatchSetConfig`):

* centre: ``|x_k - x_pred| <= max(center_px, center_rel * size_pred)``
  (defaults 2.5 px and 0.25 size = 0.5 sigma; the patch side is 6 size, so
  this is at most ~2 patch pixels of a 51-pixel patch for large regions);
* scale: ``max(s_k / s_pred, s_pred / s_k) <= scale_ratio`` (default 1.3,
  about one DoG scale step, 2**(1/3) = 1.26);
* orientation: ``|angle_k - angle_pred| <= angle_deg`` (default 20 degrees).

Candidates are assigned one-to-one, best (smallest normalized error) first.
Every patch is sampled from its OWN detection in its own image (not from the
prediction), so the groups carry the real localization, scale and orientation
noise of the detector. Groups with at least ``min_group`` (2) patches are kept,
at most ``max_group`` (10) patches per group (the reference and the first
matched images).

Output (:class:`PatchSet`, saved by :func:`save_patchset` as one ``.npz``):

==============  ==============  ===============================================
key             shape, dtype    meaning
==============  ==============  ===============================================
``patches``     (N,S,S[,3]) u8  gray (default) or RGB patches
``labels``      (N,) int64      group id, unique across the whole file
``split``       (N,) uint8      0 = train, 1 = test (never one scene in both)
``scene``       (N,) int32      index into ``scene_names``
``image``       (N,) int32      image of the scene: 0 = reference (Oxford img1,
                                the untouched photo, the left stereo image)
``x``, ``y``    (N,) float32    region centre in that image, pixels
``scale``       (N,) float32    region size (OpenCV KeyPoint.size = 2 sigma)
``angle``       (N,) float32    dominant orientation, degrees (OpenCV)
``scene_names`` (S,) str        one name per scene
``info``        () str          JSON: source, configuration, version
==============  ==============  ===============================================
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import re
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import cv2
import numpy as np

from ckn import InputError, atomic_path, load_patch_file
from retrieval._src import regions as R

#: Bumped whenever the output of a builder changes for the same parameters (cache key).
VERSION = "patchsets-1"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".pnm", ".bmp", ".tif", ".tiff", ".webp")

TRAIN, TEST = 0, 1
SPLIT_NAMES = ("train", "test")


class SkippedItemWarning(UserWarning):
    """An input item (image, sequence, photo) was skipped; the message says which and why."""


class EmptySplitWarning(UserWarning):
    """The train or the test split of a patch set is empty (e.g. a single scene)."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchSetConfig:
    """Detection, grouping and sampling parameters (all sources).

    Attributes:
      size: patch side in pixels.
      magnification: patch side in image pixels = magnification * region size.
      color: RGB patches (N, S, S, 3) if True, else gray (N, S, S).
      max_regions: reference regions per scene (strongest first) before grouping.
      min_size, max_size: reference region size range (KeyPoint.size, pixels).
        min_size 4 (sigma 2) keeps patch sides >= 24 image pixels.
      nms_radius: reference regions closer than nms_radius * size are suppressed.
      max_outside: largest fraction of a patch square that may leave its image.
      center_px, center_rel, scale_ratio, angle_deg: grouping tolerances (module doc).
      min_group, max_group: patches per kept group.
      contrast_threshold, edge_threshold: SIFT detector thresholds (0.03 is a
        little below OpenCV's 0.04, for more regions in low-contrast photos).
    """

    size: int = R.PATCH_SIZE
    magnification: float = R.MAGNIFICATION
    color: bool = False
    max_regions: int = 450
    min_size: float = 4.0
    max_size: float = 80.0
    nms_radius: float = 1.0
    max_outside: float = 0.05
    center_px: float = 2.5
    center_rel: float = 0.25
    scale_ratio: float = 1.3
    angle_deg: float = 20.0
    min_group: int = 2
    max_group: int = 10
    contrast_threshold: float = 0.03
    edge_threshold: float = 10.0

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size}")
        if self.magnification <= 0:
            raise ValueError(f"magnification must be > 0, got {self.magnification}")
        if self.scale_ratio < 1 or self.angle_deg <= 0 or self.center_px < 0 or self.center_rel < 0:
            raise ValueError("tolerances must be scale_ratio >= 1, angle_deg > 0, center_px, center_rel >= 0")
        if not 2 <= self.min_group <= self.max_group:
            raise ValueError(f"need 2 <= min_group <= max_group, got {self.min_group}, {self.max_group}")
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """Random synthetic views of a photo (geometry, then photometry).

    Geometry: a homography that rotates by U(-rotation_deg, rotation_deg), scales
    by log-U(scale_range), moves each image corner by U(-viewpoint, viewpoint) x
    min(W, H) (perspective / viewpoint change) and shifts by U(-shift, shift) x
    (W, H), all about the image centre. Photometry, in this order: gamma
    log-U(gamma), contrast U(contrast) and brightness U(-brightness, brightness)
    grey levels, Gaussian blur sigma U(blur) with probability blur_prob, Gaussian
    noise sigma U(noise), JPEG re-compression with quality U(jpeg_quality) with
    probability jpeg_prob.
    """

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    viewpoint: float = 0.1
    shift: float = 0.05
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: float = 25.0
    blur: tuple[float, float] = (0.5, 1.5)
    blur_prob: float = 0.5
    noise: tuple[float, float] = (0.0, 5.0)
    jpeg_quality: tuple[int, int] = (30, 90)
    jpeg_prob: float = 0.7


# --------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------


class Geometry(Protocol):
    """A known map from the reference image to another image of the scene."""

    def map(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) reference points -> (N, 2) points (NaN where undefined)."""

    def jacobian(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) reference points -> (N, 2, 2) local Jacobians (NaN where undefined)."""


@dataclasses.dataclass(frozen=True)
class Homography:
    """x' ~ H (x, y, 1): a 3x3 homography from the reference image.

    H is defined up to scale, and some files store it with a negative scale
    (Oxford ``leuven/H1to5p`` has ``H[2, 2] = -0.576``). The sign is fixed so
    that the reference origin, a corner of the reference image, has ``w > 0``;
    points with ``w <= 0`` lie beyond the horizon of the other view and map to NaN.
    """

    H: np.ndarray

    def __post_init__(self):
        h = np.asarray(self.H, np.float64)
        if h.shape != (3, 3):
            raise InputError(f"homography must be 3x3, got shape {h.shape}")
        object.__setattr__(self, "H", -h if h[2, 2] < 0 else h)

    def map(self, xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        h = self.H
        w = h[2, 0] * xy[:, 0] + h[2, 1] * xy[:, 1] + h[2, 2]
        u = (h[0, 0] * xy[:, 0] + h[0, 1] * xy[:, 1] + h[0, 2]) / w
        v = (h[1, 0] * xy[:, 0] + h[1, 1] * xy[:, 1] + h[1, 2]) / w
        out = np.stack([u, v], 1)
        out[w <= 1e-12] = np.nan  # behind the camera
        return out

    def jacobian(self, xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        h = self.H
        w = h[2, 0] * xy[:, 0] + h[2, 1] * xy[:, 1] + h[2, 2]
        uv = self.map(xy)
        j = np.empty((xy.shape[0], 2, 2))
        for r in range(2):
            j[:, r, 0] = (h[r, 0] - uv[:, r] * h[2, 0]) / w
            j[:, r, 1] = (h[r, 1] - uv[:, r] * h[2, 1]) / w
        return j


class Disparity:
    """Rectified stereo: x_right = x_left - d(x, y), y_right = y_left.

    The Jacobian uses the gradient of the disparity smoothed with a Gaussian of
    ``sigma`` pixels; non-finite or non-positive disparities (occlusions) make
    the map undefined (NaN), so those regions are never grouped.
    """

    def __init__(self, disparity: np.ndarray, sigma: float = 2.0):
        d = np.asarray(disparity, np.float64)
        if d.ndim != 2:
            raise InputError(f"disparity must be (H, W), got shape {d.shape}")
        self.valid = np.isfinite(d) & (d > 0)
        if not self.valid.any():
            raise InputError("disparity map has no finite positive value")
        filled = np.where(self.valid, d, 0.0)
        wsum = cv2.GaussianBlur(self.valid.astype(np.float64), (0, 0), sigma)
        smooth = cv2.GaussianBlur(filled, (0, 0), sigma) / np.maximum(wsum, 1e-6)
        self.d = np.where(self.valid, d, np.nan)
        self.gx = cv2.Sobel(smooth, cv2.CV_64F, 1, 0, ksize=3) / 8.0
        self.gy = cv2.Sobel(smooth, cv2.CV_64F, 0, 1, ksize=3) / 8.0

    def _at(self, a: np.ndarray, xy: np.ndarray) -> np.ndarray:
        h, w = a.shape
        x, y = xy[:, 0], xy[:, 1]
        ok = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
        x0 = np.clip(np.floor(x), 0, w - 2).astype(np.intp)
        y0 = np.clip(np.floor(y), 0, h - 2).astype(np.intp)
        fx, fy = np.clip(x - x0, 0, 1), np.clip(y - y0, 0, 1)
        v = (a[y0, x0] * (1 - fx) * (1 - fy) + a[y0, x0 + 1] * fx * (1 - fy)
             + a[y0 + 1, x0] * (1 - fx) * fy + a[y0 + 1, x0 + 1] * fx * fy)
        return np.where(ok, v, np.nan)

    def map(self, xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        d = self._at(self.d, xy)
        return np.stack([xy[:, 0] - d, xy[:, 1] + 0.0 * d], 1)

    def jacobian(self, xy):
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        gx, gy = self._at(self.gx, xy), self._at(self.gy, xy)
        nan = np.isnan(self._at(self.d, xy))
        j = np.zeros((xy.shape[0], 2, 2))
        j[:, 0, 0] = 1.0 - gx
        j[:, 0, 1] = -gy
        j[:, 1, 1] = 1.0
        j[nan] = np.nan
        return j


def map_regions(geometry: Geometry, regions: R.Regions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicts regions in another image: (centres (N, 2), sizes (N,), angles (N,) degrees)."""
    xy = geometry.map(regions.xy)
    jac = geometry.jacobian(regions.xy)
    # Undefined maps (NaN) stay NaN without numpy's invalid-value warnings.
    finite = np.isfinite(jac).all(axis=(1, 2))
    scale = np.full(jac.shape[0], np.nan)
    scale[finite] = np.sqrt(np.abs(np.linalg.det(jac[finite])))
    jac = np.where(finite[:, None, None], jac, 0.0)
    a = np.deg2rad(regions.angle)
    d = np.einsum("nij,nj->ni", jac, np.stack([np.cos(a), np.sin(a)], 1))
    angle = np.where(finite, np.rad2deg(np.arctan2(d[:, 1], d[:, 0])) % 360.0, np.nan)
    return xy, regions.size * scale, angle


def read_homography(path: str | os.PathLike) -> np.ndarray:
    """Reads a 3x3 ASCII homography; InputError if it does not parse, or is singular."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"homography file not found: {path}")
    try:
        with warnings.catch_warnings():
            # An empty file is a parse error here, not numpy's "no data" UserWarning.
            warnings.simplefilter("ignore", UserWarning)
            h = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: cannot parse homography ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if h.size == 0:
        raise InputError(f"{path}: homography file is empty")
    if h.shape != (3, 3):
        raise InputError(f"{path}: homography must be a 3x3 matrix, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise InputError(f"{path}: homography has NaN or inf entries")
    s = np.linalg.svd(h, compute_uv=False)
    if s[0] == 0 or s[-1] / s[0] < 1e-10:
        raise InputError(f"{path}: homography is singular (condition number {s[0] / max(s[-1], 1e-300):.3g})")
    return h


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image as RGB uint8 (H, W, 3); InputError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise InputError(f"cannot read image (unknown format or corrupt): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------
# Grouping within one scene
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _SceneResult:
    name: str
    patches: np.ndarray
    group: np.ndarray  # local group index
    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if self.group.size else 0


def _prepare(image: np.ndarray, color: bool) -> np.ndarray:
    if color:
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    return R.to_gray(image)


def _match(pred_xy, pred_size, pred_angle, cand: R.Regions, cfg: PatchSetConfig) -> np.ndarray:
    """For each prediction, the index of its candidate (one-to-one), or -1."""
    n = pred_xy.shape[0]
    out = np.full(n, -1, np.intp)
    ok = np.isfinite(pred_xy).all(1) & np.isfinite(pred_size) & (pred_size > 0) & np.isfinite(pred_angle)
    if len(cand) == 0 or not ok.any():
        return out
    tol = np.maximum(cfg.center_px, cfg.center_rel * pred_size)
    # All (prediction, candidate) pairs within tolerance; sort candidates by x for a band search.
    order = np.argsort(cand.x, kind="stable")
    cx = cand.x[order]
    pairs_i, pairs_j, costs = [], [], []
    log_tol = math.log(cfg.scale_ratio) if cfg.scale_ratio > 1 else 1e-9
    for i in np.flatnonzero(ok):
        lo = np.searchsorted(cx, pred_xy[i, 0] - tol[i], "left")
        hi = np.searchsorted(cx, pred_xy[i, 0] + tol[i], "right")
        if hi <= lo:
            continue
        j = order[lo:hi]
        d = np.hypot(cand.x[j] - pred_xy[i, 0], cand.y[j] - pred_xy[i, 1]) / tol[i]
        s = np.abs(np.log(cand.size[j] / pred_size[i])) / log_tol
        a = np.abs((cand.angle[j] - pred_angle[i] + 180.0) % 360.0 - 180.0) / cfg.angle_deg
        good = (d <= 1) & (s <= 1 + 1e-9) & (a <= 1)
        if good.any():
            pairs_i.append(np.full(int(good.sum()), i))
            pairs_j.append(j[good])
            costs.append(d[good] ** 2 + s[good] ** 2 + a[good] ** 2)
    if not pairs_i:
        return out
    pi, pj, pc = np.concatenate(pairs_i), np.concatenate(pairs_j), np.concatenate(costs)
    used_j = np.zeros(len(cand), bool)
    for k in np.lexsort((pj, pi, pc)):
        if out[pi[k]] < 0 and not used_j[pj[k]]:
            out[pi[k]] = pj[k]
            used_j[pj[k]] = True
    return out


def group_scene(
    name: str,
    images: Sequence[np.ndarray],
    geometries: Sequence[Geometry | None],
    cfg: PatchSetConfig,
    *,
    valid: Sequence[np.ndarray | None] | None = None,
    image_ids: Sequence[int] | None = None,
) -> _SceneResult:
    """Groups regions of one scene; image 0 is the reference.

    Args:
      name: scene name (for messages).
      images: (H, W) or (H, W, 3) uint8 images; sizes may differ.
      geometries: ``geometries[k]`` maps the reference into image k (``[0]`` unused).
      cfg: parameters.
      valid: optional (H, W) masks of usable pixels per image (e.g. the area a
        synthetic warp covers, or one half of a stereo image).
      image_ids: the ``image`` metadata value of each image (default 0..K-1).
    """
    k_img = len(images)
    valid = list(valid) if valid is not None else [None] * k_img
    image_ids = list(image_ids) if image_ids is not None else list(range(k_img))
    dets = [
        R.detect_regions(im, contrast_threshold=cfg.contrast_threshold, edge_threshold=cfg.edge_threshold)
        for im in images
    ]
    ref = R.select_regions(
        dets[0], images[0].shape[:2], max_regions=cfg.max_regions, min_size=cfg.min_size,
        max_size=cfg.max_size, nms_radius=cfg.nms_radius, max_outside=cfg.max_outside,
        magnification=cfg.magnification, valid=valid[0],
    )
    members: list[list[tuple[int, int]]] = [[(0, i)] for i in range(len(ref))]
    for k in range(1, k_img):
        cand = dets[k]
        if len(cand):
            frac = R.inside_fraction(
                images[k].shape[:2] if valid[k] is None else valid[k],
                cand.x, cand.y, cand.size, cand.angle, magnification=cfg.magnification,
            )
            keep = np.flatnonzero(frac >= 1.0 - cfg.max_outside - 1e-9)
            cand = cand.take(keep)
        else:
            keep = np.zeros((0,), np.intp)
        pred_xy, pred_size, pred_angle = map_regions(geometries[k], ref)
        match = _match(pred_xy, pred_size, pred_angle, cand, cfg)
        for i in np.flatnonzero(match >= 0):
            if len(members[i]) < cfg.max_group:
                members[i].append((k, int(keep[match[i]])))
    groups = [m for m in members if len(m) >= cfg.min_group]
    # Gather per image, sample from each image's own detection.
    rows = [(g, k, j) for g, m in enumerate(groups) for (k, j) in m]
    n = len(rows)
    if n == 0:
        return _SceneResult(name, np.zeros((0,)), *(np.zeros((0,)) for _ in range(6)))
    g_arr = np.array([r[0] for r in rows], np.int64)
    k_arr = np.array([r[1] for r in rows], np.intp)
    j_arr = np.array([r[2] for r in rows], np.intp)
    sample0 = images[0]
    patches = np.zeros((n, cfg.size, cfg.size) + sample0.shape[2:], np.uint8)
    x = np.zeros(n); y = np.zeros(n); sc = np.zeros(n); an = np.zeros(n)
    for k in range(k_img):
        sel = np.flatnonzero(k_arr == k)
        if sel.size == 0:
            continue
        det = ref if k == 0 else dets[k]
        r = det.take(j_arr[sel])
        patches[sel] = R.sample_patches(
            images[k], r.x, r.y, r.size, r.angle, size=cfg.size, magnification=cfg.magnification
        )
        x[sel], y[sel], sc[sel], an[sel] = r.x, r.y, r.size, r.angle
    ids = np.asarray(image_ids, np.int32)[k_arr]
    return _SceneResult(name, patches, g_arr, ids, x, y, sc, an)


# --------------------------------------------------------------------------------------
# The data set
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class PatchSet:
    """Groups of patches with metadata; see the module docstring for every field."""

    patches: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    scene: np.ndarray
    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    scene_names: np.ndarray
    info: dict = dataclasses.field(default_factory=dict)

    ARRAYS = ("patches", "labels", "split", "scene", "image", "x", "y", "scale", "angle")

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def subset(self, index: np.ndarray) -> "PatchSet":
        """Rows ``index`` (labels, scene names and info kept)."""
        kw = {k: getattr(self, k)[index] for k in self.ARRAYS}
        return PatchSet(**kw, scene_names=self.scene_names, info=dict(self.info))

    def split_subset(self, split: str | int) -> "PatchSet":
        """The ``"train"`` (0) or ``"test"`` (1) rows."""
        s = SPLIT_NAMES.index(split) if isinstance(split, str) else int(split)
        return self.subset(np.flatnonzero(self.split == s))

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays as saved in the ``.npz`` file."""
        d = {k: getattr(self, k) for k in self.ARRAYS}
        d["scene_names"] = np.asarray(self.scene_names, dtype=str)
        d["info"] = np.asarray(json.dumps(self.info, sort_keys=True))
        return d


def _balanced_test_scenes(names: Sequence[str], counts: Sequence[int]) -> set[str]:
    # Greedy: largest scenes first, each to the split with fewer patches (ties: train).
    totals = [0, 0]
    test = set()
    for i in sorted(range(len(names)), key=lambda i: (-counts[i], names[i])):
        s = TEST if totals[TEST] < totals[TRAIN] else TRAIN
        totals[s] += counts[i]
        if s == TEST:
            test.add(names[i])
    return test


def assemble(
    results: Sequence[_SceneResult],
    cfg: PatchSetConfig,
    *,
    test_scenes: Iterable[str] | None = None,
    info: dict | None = None,
    what: str = "input",
) -> PatchSet:
    """Concatenates scenes, numbers the groups globally and assigns the splits.

    Without ``test_scenes``, scenes are assigned greedily so that train and test
    have about as many patches (largest scene first). Raises InputError when no
    group was found at all.
    """
    results = [r for r in results if r.group.size]
    if not results:
        raise InputError(f"no groups of matching regions found in {what}")
    names = [r.name for r in results]
    if test_scenes is None:
        test = _balanced_test_scenes(names, [r.group.size for r in results])
    else:
        test = set(test_scenes)
        unknown = test - set(names)
        if unknown:
            warnings.warn(f"test scenes not in the data set: {', '.join(sorted(unknown))}", SkippedItemWarning, stacklevel=2)
    for s, split_name in enumerate(SPLIT_NAMES):
        if all((s == TEST) != (n in test) for n in names):
            warnings.warn(
                f"the {split_name} split is empty ({len(names)} scene{'s' * (len(names) > 1)}: "
                f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); a split by scene needs 2 or more",
                EmptySplitWarning, stacklevel=2,
            )
    labels, offset = [], 0
    for r in results:
        labels.append(r.group + offset)
        offset += r.n_groups
    cat = lambda f, dt: np.concatenate([getattr(r, f) for r in results]).astype(dt)  # noqa: E731
    ps = PatchSet(
        patches=np.concatenate([r.patches for r in results]),
        labels=np.concatenate(labels).astype(np.int64),
        split=np.concatenate([np.full(r.group.size, TEST if r.name in test else TRAIN, np.uint8) for r in results]),
        scene=np.concatenate([np.full(r.group.size, i, np.int32) for i, r in enumerate(results)]),
        image=cat("image", np.int32),
        x=cat("x", np.float32), y=cat("y", np.float32),
        scale=cat("scale", np.float32), angle=cat("angle", np.float32),
        scene_names=np.asarray(names, dtype=str),
        # JSON-normalized (tuples -> lists), so that the info survives a save / load unchanged.
        info=json.loads(json.dumps({"version": VERSION, "config": dataclasses.asdict(cfg), **(info or {})})),
    )
    return ps


def _run_scenes(jobs: Sequence[Callable[[], _SceneResult]], *, progress: bool, desc: str, workers: int | None):
    """Runs scene jobs (threads: OpenCV releases the GIL), results in job order."""
    workers = workers or min(4, os.cpu_count() or 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=desc, unit="scene", file=None)
    try:
        if workers <= 1 or len(jobs) <= 1:
            out = []
            for job in jobs:
                out.append(job())
                if bar is not None:
                    bar.update(1)
            return out
        with concurrent.futures.ThreadPoolExecutor(workers) as ex:
            futures = [ex.submit(job) for job in jobs]
            for f in concurrent.futures.as_completed(futures):
                f.result()
                if bar is not None:
                    bar.update(1)
            return [f.result() for f in futures]
    finally:
        if bar is not None:
            bar.close()


# --------------------------------------------------------------------------------------
# Source 1: homography sequences (Oxford affine, HPatches)
# --------------------------------------------------------------------------------------

_OXFORD_IMG = re.compile(r"^img(\d+)$")
_HPATCHES_IMG = re.compile(r"^(\d+)$")


def _sequence_files(seq: Path) -> tuple[dict[int, Path], dict[int, Path]] | None:
    """(images by number, homography files by target number) or None if not a sequence."""
    images: dict[int, Path] = {}
    for p in seq.iterdir():
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            m = _OXFORD_IMG.match(p.stem) or _HPATCHES_IMG.match(p.stem)
            if m:
                images.setdefault(int(m.group(1)), p)
    homs: dict[int, Path] = {}
    for p in seq.iterdir():
        m = re.match(r"^H1to(\d+)p$", p.name) or re.match(r"^H_1_(\d+)$", p.name)
        if m and p.is_file():
            homs[int(m.group(1))] = p
    if not homs and not images:
        return None
    return images, homs


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """``root`` itself if it is a sequence, else its sub-folders that are sequences (sorted)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"sequences folder not found: {root}")
    if not root.is_dir():
        raise InputError(f"sequences path is not a folder: {root}")
    own = _sequence_files(root)
    if own is not None and own[1]:
        return [root]
    seqs = [p for p in sorted(root.iterdir()) if p.is_dir() and (f := _sequence_files(p)) is not None and f[1]]
    if not seqs:
        raise InputError(
            f"no image sequences in {root} (expected <seq>/img1.ppm + H1to2p ... or <seq>/1.ppm + H_1_2 ...)"
        )
    return seqs


def load_sequence(seq: str | os.PathLike) -> tuple[list[np.ndarray], list[Homography | None], list[int]]:
    """Images (RGB), homographies from image 1 and 0-based image ids of one sequence."""
    seq = Path(seq)
    found = _sequence_files(seq)
    if found is None or not found[1]:
        raise InputError(f"{seq}: no homography files (H1toNp or H_1_N)")
    images, homs = found
    if 1 not in images:
        raise InputError(f"{seq}: reference image missing (img1.* or 1.*)")
    for n in sorted(images):
        if n != 1 and n not in homs:
            warnings.warn(f"{images[n]}: no homography from image 1, image skipped", SkippedItemWarning, stacklevel=2)
    nums = [1] + [n for n in sorted(homs) if n != 1]
    imgs, geoms = [], []
    for n in nums:
        if n not in images:
            raise InputError(f"{seq}: image {n} missing (homography {homs[n].name} has no image)")
        imgs.append(read_image(images[n]))
        geoms.append(None if n == 1 else Homography(read_homography(homs[n])))
    return imgs, geoms, [n - 1 for n in nums]


def build_sequences(
    root: str | os.PathLike,
    *,
    config: PatchSetConfig | None = None,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> PatchSet:
    """Groups from homography sequences (Oxford ``img1..N`` + ``H1toNp``, HPatches ``1..6`` + ``H_1_N``).

    Args:
      root: one sequence folder or a folder of sequence folders.
      config: parameters (default :class:`PatchSetConfig`).
      test_scenes: sequence names for the test split; default: balanced greedy.

    Raises:
      InputError: missing folder, no sequence, missing/unreadable image, a
        homography that does not parse or is singular, no group at all.
        A sequence without any group is skipped with a SkippedItemWarning.
    """
    cfg = config or PatchSetConfig()
    seqs = find_sequences(root)
    loaded = [(s.name, *load_sequence(s)) for s in seqs]  # errors early, before any work

    def job(name, imgs, geoms, ids):
        return lambda: group_scene(name, [_prepare(i, cfg.color) for i in imgs], geoms, cfg, image_ids=ids)

    results = _run_scenes([job(*item) for item in loaded], progress=progress, desc="sequences", workers=workers)
    for r in results:
        if r.group.size == 0:
            warnings.warn(f"sequence {r.name}: no matching regions, skipped", SkippedItemWarning, stacklevel=2)
    return assemble(results, cfg, test_scenes=test_scenes, info={"source": "sequences", "root": str(root)}, what=str(root))


# --------------------------------------------------------------------------------------
# Source 2: stereo pairs with disparity
# --------------------------------------------------------------------------------------


_STEREO_LEFT = ("im0", "left")
_STEREO_RIGHT = ("im1", "right")
_STEREO_DISPARITY = ("disp0", "disp0gt", "disparity", "disp")
_DISPARITY_EXTENSIONS = (".pfm", ".npy")


def read_disparity(path: str | os.PathLike) -> np.ndarray:
    """Reads a disparity map, (H, W) float32: ``.pfm`` (Middlebury; inf = unknown) or ``.npy``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"disparity file not found: {path}")
    if path.suffix.lower() == ".npy":
        try:
            d = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: cannot read disparity ({type(e).__name__}: {e})") from None
    else:
        d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if d is None:
            raise InputError(f"{path}: cannot read disparity (unknown format or corrupt)")
    d = np.asarray(d)
    if d.ndim == 3 and d.shape[2] in (1, 3):
        d = d[..., 0]
    if d.ndim != 2 or not np.issubdtype(d.dtype, np.number):
        raise InputError(f"{path}: disparity must be an (H, W) number array, got {d.dtype} {d.shape}")
    return d.astype(np.float32)


def _stereo_file(folder: Path, stems: Sequence[str], exts: Sequence[str]) -> Path | None:
    for stem in stems:
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.stem.lower() == stem and p.suffix.lower() in exts:
                return p
    return None


def _stereo_pair_files(folder: Path) -> tuple[Path, Path, Path] | None:
    left = _stereo_file(folder, _STEREO_LEFT, IMAGE_EXTENSIONS)
    right = _stereo_file(folder, _STEREO_RIGHT, IMAGE_EXTENSIONS)
    disp = _stereo_file(folder, _STEREO_DISPARITY, _DISPARITY_EXTENSIONS)
    if left is None and right is None and disp is None:
        return None
    missing = [n for n, f in (("left image (im0.* / left.*)", left), ("right image (im1.* / right.*)", right),
                              ("disparity (disp0.pfm / disparity.npy)", disp)) if f is None]
    if missing:
        raise InputError(f"stereo pair {folder}: missing {', '.join(missing)}")
    return left, right, disp


def read_stereo_pairs(root: str | os.PathLike) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Stereo pairs from a folder in the Middlebury layout.

    ``root`` is one pair folder or a folder of pair folders; a pair folder
    holds the rectified left and right images (``im0.png`` / ``im1.png``, or
    ``left.*`` / ``right.*``) and the left disparity map (``disp0.pfm`` or
    ``disparity.npy``, ``x_right = x_left - d``; inf, NaN or <= 0 = unknown).

    Returns:
      ``[(name, left (H, W, 3) uint8, right, disparity (H, W) float32)]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"stereo folder not found: {root}" if not root.exists() else f"not a folder: {root}")
    own = _stereo_pair_files(root)
    folders = [(root.name, own)] if own is not None else [
        (p.name, f) for p in sorted(root.iterdir()) if p.is_dir() and (f := _stereo_pair_files(p)) is not None
    ]
    if not folders:
        raise InputError(f"no stereo pairs in {root} (expected <pair>/im0.png, im1.png, disp0.pfm)")
    return [(name, read_image(l), read_image(r), read_disparity(d)) for name, (l, r, d) in folders]


def build_stereo(
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]] | str | os.PathLike | None = None,
    *,
    config: PatchSetConfig | None = None,
    split_halves: bool | None = None,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
) -> PatchSet:
    """Groups (of 2 patches) from rectified stereo pairs with a left disparity map.

    Args:
      pairs: ``(name, left, right, disparity)`` with ``x_right = x_left -
        disparity[y, x]``, or a folder read by :func:`read_stereo_pairs`;
        default: scikit-image's ``stereo_motorcycle`` (Middlebury 2014).
      split_halves: make two scenes of each pair, ``<name>-left-half`` and
        ``<name>-right-half``, whose reference patches lie entirely in the left
        or right half of the left image (so no patch of one overlaps the other
        by more than ``max_outside``). Default: True when there is a single
        pair, so that a train/test split by scene exists.
    """
    cfg = config or PatchSetConfig()
    if pairs is None:
        from skimage import data as skdata

        left, right, disp = skdata.stereo_motorcycle()
        pairs = [("motorcycle", left, right, disp)]
    elif isinstance(pairs, (str, os.PathLike)):
        pairs = read_stereo_pairs(pairs)
    if split_halves is None:
        split_halves = len(pairs) == 1
    jobs = []
    for name, left, right, disp in pairs:
        left, right = np.asarray(left), np.asarray(right)
        if left.shape[:2] != np.shape(disp) or right.shape[:2] != left.shape[:2]:
            raise InputError(f"stereo pair {name}: left, right and disparity must have the same size")
        geom = Disparity(disp)
        imgs = [_prepare(left, cfg.color), _prepare(right, cfg.color)]
        if split_halves:
            h, w = left.shape[:2]
            for half in ("left", "right"):
                m = np.zeros((h, w), np.uint8)
                if half == "left":
                    m[:, : w // 2] = 1
                else:
                    m[:, w // 2:] = 1
                jobs.append(
                    lambda n=f"{name}-{half}-half", i=imgs, g=geom, m=m: group_scene(n, i, [None, g], cfg, valid=[m, None])
                )
        else:
            jobs.append(lambda n=name, i=imgs, g=geom: group_scene(n, i, [None, g], cfg))
    results = _run_scenes(jobs, progress=progress, desc="stereo", workers=None)
    return assemble(results, cfg, test_scenes=test_scenes, info={"source": "stereo"}, what="the stereo pairs")


# --------------------------------------------------------------------------------------
# Source 3: synthetic views of ordinary photos
# --------------------------------------------------------------------------------------


def random_homography(shape: tuple[int, int], rng: np.random.Generator, vp: ViewParams) -> np.ndarray:
    """A random 3x3 homography about the image centre (see :class:`ViewParams`)."""
    h, w = shape
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    th = np.deg2rad(rng.uniform(-vp.rotation_deg, vp.rotation_deg))
    s = math.exp(rng.uniform(math.log(vp.scale_range[0]), math.log(vp.scale_range[1])))
    rot = s * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    jitter = rng.uniform(-vp.viewpoint, vp.viewpoint, size=(4, 2)) * min(w, h)
    shift = rng.uniform(-vp.shift, vp.shift, size=2) * np.array([w, h])
    dst = (src - c) @ rot.T + c + jitter + shift
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def photometric(image: np.ndarray, rng: np.random.Generator, vp: ViewParams) -> np.ndarray:
    """Random gamma, contrast, brightness, blur, noise and JPEG (see :class:`ViewParams`)."""
    g = math.exp(rng.uniform(math.log(vp.gamma[0]), math.log(vp.gamma[1])))
    c = rng.uniform(*vp.contrast)
    b = rng.uniform(-vp.brightness, vp.brightness)
    lut = 255.0 * (np.arange(256) / 255.0) ** g
    lut = np.clip((lut - 128.0) * c + 128.0 + b, 0, 255).astype(np.uint8)
    out = cv2.LUT(image, lut)
    if rng.uniform() < vp.blur_prob:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(*vp.blur))
    sigma = rng.uniform(*vp.noise)
    if sigma > 0:
        noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(sigma)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    if rng.uniform() < vp.jpeg_prob:
        q = int(rng.integers(vp.jpeg_quality[0], vp.jpeg_quality[1] + 1))
        bgr = out[..., ::-1] if out.ndim == 3 else out
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, q])
        dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        out = dec[..., ::-1] if out.ndim == 3 else dec
        out = np.ascontiguousarray(out)
    return out


def synthetic_view(
    image: np.ndarray, rng: np.random.Generator, vp: ViewParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One random view: (view (same size as image), H (reference -> view), valid mask)."""
    h, w = image.shape[:2]
    H = random_homography((h, w), rng, vp)
    view = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    valid = cv2.warpPerspective(
        np.ones((h, w), np.uint8), H, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    valid = cv2.erode(valid, np.ones((3, 3), np.uint8))
    return photometric(view, rng, vp), H, valid


def _photo_rng(seed: int, name: str) -> np.random.Generator:
    # Seeded by photo name, not position, so adding a photo does not change the others.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def photo_scene(
    name: str, image: np.ndarray, *, views: int, seed: int, cfg: PatchSetConfig, view_params: ViewParams
) -> _SceneResult:
    """Groups of one photo: view 0 is the untouched photo, views 1..views-1 are synthetic."""
    rng = _photo_rng(seed, name)
    img = _prepare(image, cfg.color)
    imgs, geoms, valid = [img], [None], [None]
    for _ in range(views - 1):
        v, H, m = synthetic_view(img, rng, view_params)
        imgs.append(v)
        geoms.append(Homography(H))
        valid.append(m)
    return group_scene(name, imgs, geoms, cfg, valid=valid)


def _resize_max(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    f = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def build_from_images(
    named_images: Sequence[tuple[str, np.ndarray]],
    *,
    views: int = 10,
    seed: int = 0,
    config: PatchSetConfig | None = None,
    view_params: ViewParams | None = None,
    max_side: int | None = 640,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
    info: dict | None = None,
) -> PatchSet:
    """Synthetic-view groups from in-memory photos ``(name, (H, W[, 3]) uint8)``."""
    cfg = config or PatchSetConfig()
    vp = view_params or ViewParams()
    if views < 2:
        raise InputError(f"views must be >= 2, got {views}")
    if views > cfg.max_group:
        warnings.warn(f"views = {views} > max_group = {cfg.max_group}: groups keep the first {cfg.max_group}", SkippedItemWarning, stacklevel=2)
    names = [n for n, _ in named_images]
    if len(set(names)) != len(names):
        raise InputError("photo names must be unique")
    jobs = [
        (lambda n=n, im=_resize_max(np.asarray(im), max_side): photo_scene(n, im, views=views, seed=seed, cfg=cfg, view_params=vp))
        for n, im in named_images
    ]
    results = _run_scenes(jobs, progress=progress, desc="photos", workers=workers)
    for r in results:
        if r.group.size == 0:
            warnings.warn(f"photo {r.name}: no matching regions, skipped", SkippedItemWarning, stacklevel=2)
    meta = {"source": "photos", "views": views, "seed": seed, "max_side": max_side,
            "view_params": dataclasses.asdict(vp), **(info or {})}
    return assemble(results, cfg, test_scenes=test_scenes, info=meta, what="the photos")


def build_photos(
    folder: str | os.PathLike,
    *,
    views: int = 10,
    seed: int = 0,
    config: PatchSetConfig | None = None,
    view_params: ViewParams | None = None,
    max_side: int | None = 640,
    test_scenes: Iterable[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> PatchSet:
    """Synthetic-view groups from every image in a folder (not recursive).

    Each photo is one scene (split by photo): view 0 is the photo itself
    (resized to at most ``max_side`` pixels), views 1..views-1 are random
    homographies + photometric changes of it (:class:`ViewParams`), so groups
    have up to ``views`` patches. Unreadable images are skipped with a
    SkippedItemWarning; InputError when no image is readable.
    """
    if views < 2:
        raise InputError(f"views must be >= 2, got {views}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"photos folder not found: {folder}" if not folder.exists() else f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    named = []
    for p in files:
        try:
            named.append((p.stem, read_image(p)))
        except InputError as e:
            warnings.warn(f"{e}; skipped", SkippedItemWarning, stacklevel=2)
    if not named:
        raise InputError(f"no readable image in {folder}")
    return build_from_images(
        named, views=views, seed=seed, config=config, view_params=view_params, max_side=max_side,
        test_scenes=test_scenes, progress=progress, workers=workers, info={"folder": str(folder)},
    )


# --------------------------------------------------------------------------------------
# The embedded default: real photos shipped with scikit-image
# --------------------------------------------------------------------------------------

#: Real photographs shipped with scikit-image (they load offline), and their fixed
#: split by photo. Left out: cat (same photo as chelsea), horse (binary
#: silhouette), colorwheel and logo (synthetic graphics), microaneurysms
#: (102 x 102), clock and cell (smooth: 2 and 14 SIFT regions), hubble_deep_field
#: (a star field: isolated near-identical blobs would make near-duplicate
#: groups). stereo_motorcycle is its left image. The split balances patch counts
#: (about 10,200 / 10,300) and kinds (faces, textures, text, microscopy, objects
#: on both sides).
DEFAULT_TRAIN = ("astronaut", "chelsea", "coffee", "gravel", "text", "retina", "stereo_motorcycle")
DEFAULT_TEST = ("brick", "camera", "coins", "grass", "immunohistochemistry", "moon", "page", "rocket")
#: The quick variant: 2 train and 2 test photos.
DEFAULT_QUICK_TRAIN = ("astronaut", "chelsea")
DEFAULT_QUICK_TEST = ("camera", "coins")


def default_photos(names: Sequence[str] = DEFAULT_TRAIN + DEFAULT_TEST) -> list[tuple[str, np.ndarray]]:
    """The named scikit-image photos as (name, uint8 image); stereo_motorcycle = its left image."""
    from skimage import data as skdata

    out = []
    for n in names:
        img = skdata.stereo_motorcycle()[0] if n == "stereo_motorcycle" else getattr(skdata, n)()
        img = np.asarray(img)
        if img.dtype != np.uint8:
            img = (img.astype(np.float64) * (255.0 / max(float(img.max()), 1e-12))).astype(np.uint8)
        out.append((n, img))
    return out


def cache_dir() -> Path:
    """``$CKN_CACHE`` or ``~/.cache/ckn``."""
    return Path(os.environ.get("CKN_CACHE") or Path.home() / ".cache" / "ckn")


def default_config(quick: bool = False, **overrides) -> PatchSetConfig:
    """The :class:`PatchSetConfig` of :func:`build_default` (quick: 40 regions per photo)."""
    if quick:
        overrides.setdefault("max_regions", 40)
    return PatchSetConfig(**overrides)


def _default_plan(quick, views, seed, config, view_params):
    cfg = config or default_config(quick)
    vp = view_params or ViewParams()
    if quick:
        names, test, max_side = DEFAULT_QUICK_TRAIN + DEFAULT_QUICK_TEST, DEFAULT_QUICK_TEST, 384
    else:
        names, test, max_side = DEFAULT_TRAIN + DEFAULT_TEST, DEFAULT_TEST, 640
    key_src = json.dumps(
        {"v": VERSION, "names": names, "test": test, "max_side": max_side, "views": views, "seed": seed,
         "cfg": dataclasses.asdict(cfg), "vp": dataclasses.asdict(vp)},
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / "patchsets" / f"default{'-quick' if quick else ''}-{key}.npz"
    return names, test, max_side, cfg, vp, path


def default_cache_path(
    *, quick: bool = False, views: int = 10, seed: int = 0,
    config: PatchSetConfig | None = None, view_params: ViewParams | None = None,
) -> Path:
    """Where :func:`build_default` caches the set built with these arguments."""
    return _default_plan(quick, views, seed, config, view_params)[-1]


def build_default(
    *,
    quick: bool = False,
    views: int = 10,
    seed: int = 0,
    config: PatchSetConfig | None = None,
    view_params: ViewParams | None = None,
    cache: bool = True,
    progress: bool = False,
    workers: int | None = None,
) -> PatchSet:
    """The embedded default: synthetic views of 15 real scikit-image photos.

    Photos and their split: ``DEFAULT_TRAIN`` / ``DEFAULT_TEST`` (7 / 8 photos),
    each resized to at most 640 pixels, ``views`` views per photo (view 0 the
    photo itself), up to 450 reference regions per photo: about 20,500 patches
    in groups of up to 10 (mean ~6.3), train and test about equal.
    ``quick=True``: 4 photos (``DEFAULT_QUICK_TRAIN`` / ``_TEST``), at most 40
    regions each (:func:`default_config`), long side 384 (about 1,000 patches,
    for tests and quick runs).

    The result is cached in :func:`cache_dir` under a key of all parameters and
    :data:`VERSION` (written atomically); ``cache=False`` rebuilds without
    reading or writing the cache.
    """
    names, test, max_side, cfg, vp, path = _default_plan(quick, views, seed, config, view_params)
    if cache and path.is_file():
        try:
            return load_patchset(path)
        except InputError:
            pass  # a corrupt cache entry is rebuilt
    t0 = time.perf_counter()
    ps = build_from_images(
        default_photos(names), views=views, seed=seed, config=cfg, view_params=vp, max_side=max_side,
        test_scenes=test, progress=progress, workers=workers,
        info={"default": True, "quick": quick},
    )
    ps.info["build_seconds"] = round(time.perf_counter() - t0, 2)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_patchset(ps, path)
        except OSError as e:
            warnings.warn(f"cannot write the cache {path}: {e}", SkippedItemWarning, stacklevel=2)
    return ps


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def save_patchset(ps: PatchSet, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Writes one ``.npz`` (keys in the module docstring), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output must be a .npz file, got {path}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **ps.as_dict())
    return path


def load_patchset(path: str | os.PathLike, *, require_split: bool = False) -> PatchSet:
    """Reads a ``.npz`` patch file into a :class:`PatchSet`.

    ``patches`` and ``labels`` are required. Missing metadata is filled in:
    split 0 (train; InputError instead if ``require_split``), scene 0, image
    -1, x/y/scale/angle NaN. ``split`` may also hold the strings
    ``"train"``/``"test"``.
    """
    path = Path(path)
    patches, labels = load_patch_file(path, mmap=False)
    if labels is None:
        raise InputError(f"{path}: .npz has no 'labels' array (group labels are required)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if patches.dtype != np.uint8:
        raise InputError(f"{path}: patches must be uint8, got dtype {patches.dtype}")
    n = patches.shape[0]
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)

        def get(key, default, dtype):
            if key not in files:
                return np.full(n, default, dtype)
            a = z[key]
            if a.shape != (n,):
                raise InputError(f"{path}: '{key}' must be (N,) with N = {n}, got shape {a.shape}")
            return a.astype(dtype)

        if "split" in files:
            s = z["split"]
            if s.shape != (n,):
                raise InputError(f"{path}: 'split' must be (N,) with N = {n}, got shape {s.shape}")
            if s.dtype.kind in "US":
                s = s.astype(str)
                bad = set(np.unique(s)) - set(SPLIT_NAMES)
                if bad:
                    raise InputError(f"{path}: split values must be 'train' or 'test', got {sorted(bad)[:3]}")
                split = (s == "test").astype(np.uint8)
            else:
                if not np.isin(s, (0, 1)).all():
                    raise InputError(f"{path}: split values must be 0 (train) or 1 (test)")
                split = s.astype(np.uint8)
        elif require_split:
            raise InputError(f"{path}: .npz has no 'split' array (0 = train, 1 = test)")
        else:
            split = np.zeros(n, np.uint8)
        scene = get("scene", 0, np.int32)
        names = z["scene_names"].astype(str) if "scene_names" in files else None
        info = {}
        if "info" in files:
            try:
                info = json.loads(str(z["info"]))
            except ValueError:
                info = {}
        ps = PatchSet(
            patches=patches, labels=labels.astype(np.int64), split=split, scene=scene,
            image=get("image", -1, np.int32),
            x=get("x", np.nan, np.float32), y=get("y", np.nan, np.float32),
            scale=get("scale", np.nan, np.float32), angle=get("angle", np.nan, np.float32),
            scene_names=names if names is not None else np.asarray([f"scene{i}" for i in range(int(scene.max()) + 1)]),
            info=info,
        )
    if ps.scene.min() < 0 or ps.scene.max() >= len(ps.scene_names):
        raise InputError(f"{path}: 'scene' indices out of range of 'scene_names'")
    return ps


def _read_patch_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise InputError(f"cannot read patch image (unknown format or corrupt): {path}")
    if img.dtype != np.uint8:
        raise InputError(f"patch image must be 8-bit, got {img.dtype}: {path}")
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def load_manual(path: str | os.PathLike) -> PatchSet:
    """Pre-cut patches with group labels (e.g. the original RomePatches), as a PatchSet.

    ``path`` is either

    * a ``.npz`` patch file (``patches`` + ``labels``; the other keys of the
      module docstring are optional), or a folder holding exactly one; or
    * a folder of patch images, one sub-folder per group
      (``<group>/<patch>.png``), optionally under ``train/`` and ``test/``
      (``train/<group>/...``). Groups are numbered in sorted order (train
      first); the scene of a patch is its split folder (or ``manual``). All
      patches must have the same size; they are gray if every file is gray.
      Unreadable images are skipped with a SkippedItemWarning.

    Raises:
      InputError: a missing path, no patches, mixed sizes, no labels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"manual patches not found: {path}")
    if path.is_file():
        return load_patchset(path)
    npz = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".npz")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    if npz:
        if len(npz) > 1:
            raise InputError(f"{path}: more than one .npz file ({', '.join(p.name for p in npz[:3])}); pass one")
        return load_patchset(npz[0])
    names = {p.name for p in subdirs}
    if names and names <= set(SPLIT_NAMES):
        roots = [(SPLIT_NAMES.index(p.name), p.name, p) for p in subdirs]
        roots.sort()
    else:
        roots = [(TRAIN, "manual", path)]
    patches, labels, split, scene, scene_names, label = [], [], [], [], [], 0
    for sp, scene_name, root in roots:
        groups = sorted(p for p in root.iterdir() if p.is_dir())
        scene_names.append(scene_name)
        for g in groups:
            files = sorted(f for f in g.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            got = 0
            for f in files:
                try:
                    patches.append(_read_patch_image(f))
                except InputError as e:
                    warnings.warn(f"{e}; skipped", SkippedItemWarning, stacklevel=2)
                    continue
                labels.append(label); split.append(sp); scene.append(len(scene_names) - 1)
                got += 1
            if got:
                label += 1
    if not patches:
        raise InputError(f"no patch images in {path} (expected <group>/<patch>.png or [train|test]/<group>/<patch>.png)")
    shapes = {p.shape[:2] for p in patches}
    if len(shapes) > 1:
        raise InputError(f"{path}: patches have different sizes: {sorted(shapes)[:3]}")
    if any(p.ndim == 3 for p in patches):
        patches = [p if p.ndim == 3 else np.repeat(p[:, :, None], 3, axis=2) for p in patches]
    n = len(patches)
    nan = np.full(n, np.nan, np.float32)
    return PatchSet(
        patches=np.stack(patches), labels=np.asarray(labels, np.int64), split=np.asarray(split, np.uint8),
        scene=np.asarray(scene, np.int32), image=np.full(n, -1, np.int32), x=nan, y=nan.copy(),
        scale=nan.copy(), angle=nan.copy(), scene_names=np.asarray(scene_names, dtype=str),
        info={"version": VERSION, "source": "manual", "path": str(path)},
    )


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def _normalized(p: np.ndarray) -> np.ndarray:
    # Gray float rows, zero mean, unit norm (flat patches -> zeros).
    p = p.astype(np.float32)
    if p.ndim == 4:
        p = p.mean(axis=3)
    p = p.reshape(p.shape[0], -1)
    p = p - p.mean(axis=1, keepdims=True)
    n = np.linalg.norm(p, axis=1, keepdims=True)
    return p / np.maximum(n, np.float32(1e-6))


def _pair_ncc(patches: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    # Each patch is normalized once (in chunks), then pairs are dotted in chunks: bounded memory.
    z = np.empty((patches.shape[0], int(np.prod(patches.shape[1:3]))), np.float32)
    for s in range(0, patches.shape[0], chunk):
        z[s : s + chunk] = _normalized(patches[s : s + chunk])
    out = np.empty(a.size, np.float32)
    for s in range(0, a.size, chunk):
        out[s : s + chunk] = np.einsum("ij,ij->i", z[a[s : s + chunk]], z[b[s : s + chunk]])
    return out


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalized cross-correlation of paired patches (N, H, W[, C]) -> (N,) in [-1, 1] (colour: gray mean)."""
    return np.sum(_normalized(a) * _normalized(b), axis=1)


def patchset_stats(ps: PatchSet, *, max_pairs: int = 20000, seed: int = 0) -> dict:
    """Group statistics of a patch set, as a plain dict.

    Keys: ``groups``, ``patches``, ``group_size`` {mean, min, max, histogram},
    ``splits`` {train/test: {patches, groups, scenes}}, ``scenes`` {name:
    {split, groups, patches}}, ``ncc_intra`` (mean normalized
    cross-correlation of pairs of patches of the same group), ``ncc_random``
    (mean NCC of random pairs of patches of different groups), ``ncc_pairs``
    (pairs used for each mean: at most ``max_pairs``, sampled with ``seed``).
    """
    n = len(ps)
    _, inv, counts = np.unique(ps.labels, return_inverse=True, return_counts=True)
    hist = np.bincount(counts)
    stats: dict = {
        "groups": int(counts.size),
        "patches": int(n),
        "group_size": {
            "mean": float(counts.mean()) if counts.size else 0.0,
            "min": int(counts.min()) if counts.size else 0,
            "max": int(counts.max()) if counts.size else 0,
            "histogram": {int(k): int(v) for k, v in enumerate(hist) if v},
        },
    }
    splits = {}
    for s, name in enumerate(SPLIT_NAMES):
        m = ps.split == s
        splits[name] = {"patches": int(m.sum()), "groups": int(np.unique(ps.labels[m]).size),
                        "scenes": int(np.unique(ps.scene[m]).size)}
    stats["splits"] = splits
    scenes = {}
    for i, name in enumerate(ps.scene_names):
        m = ps.scene == i
        if m.any():
            scenes[str(name)] = {"split": SPLIT_NAMES[int(ps.split[m][0])], "groups": int(np.unique(ps.labels[m]).size),
                                 "patches": int(m.sum())}
    stats["scenes"] = scenes
    rng = np.random.default_rng(seed)
    # Intra-group pairs: all pairs (i < j) of each group, subsampled.
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ia, ib = [], []
    for st, c in zip(starts, counts):
        if c >= 2:
            a, b = np.triu_indices(c, 1)
            ia.append(order[st + a]); ib.append(order[st + b])
    if ia:
        ia, ib = np.concatenate(ia), np.concatenate(ib)
        if ia.size > max_pairs:
            pick = rng.choice(ia.size, max_pairs, replace=False)
            ia, ib = ia[pick], ib[pick]
        stats["ncc_intra"] = float(_pair_ncc(ps.patches, ia, ib).mean())
    else:
        stats["ncc_intra"] = float("nan")
    if n >= 2:
        ra = rng.integers(0, n, size=2 * max_pairs)
        rb = rng.integers(0, n, size=2 * max_pairs)
        ok = ps.labels[ra] != ps.labels[rb]
        ra, rb = ra[ok][:max_pairs], rb[ok][:max_pairs]
        stats["ncc_random"] = float(_pair_ncc(ps.patches, ra, rb).mean()) if ra.size else float("nan")
    else:
        stats["ncc_random"] = float("nan")
    stats["ncc_pairs"] = int(max_pairs)
    return stats


def format_stats(stats: dict) -> str:
    """A short human-readable summary of :func:`patchset_stats`."""
    gs = stats["group_size"]
    lines = [
        f"groups: {stats['groups']}   patches: {stats['patches']}   group size: mean {gs['mean']:.2f}, "
        f"min {gs['min']}, max {gs['max']}",
        "  ".join(f"{k}: {v['patches']} patches, {v['groups']} groups, {v['scenes']} scenes"
                  for k, v in stats["splits"].items()),
        f"mean NCC: intra-group {stats['ncc_intra']:.3f}   random pairs {stats['ncc_random']:.3f}",
        "per scene (split, groups, patches):",
    ]
    for name, s in stats["scenes"].items():
        lines.append(f"  {name:<28s} {s['split']:<5s} {s['groups']:6d} {s['patches']:7d}")
    return "\n".join(lines)
