"""Known maps from a scene's reference image to its other images, and mapping regions with them.

A :class:`Geometry` maps reference points and gives the local Jacobian there:
:class:`Homography` (planar scenes, synthetic views) and :class:`Disparity`
(rectified stereo). :func:`map_regions` predicts where a reference region lies
in another image: centre by the map, size by ``sqrt(|det J|)``, orientation by
``J @ (cos a, sin a)``.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ckn import InputError
from retrieval._src import regions as R


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
        v = (
            a[y0, x0] * (1 - fx) * (1 - fy)
            + a[y0, x0 + 1] * fx * (1 - fy)
            + a[y0 + 1, x0] * (1 - fx) * fy
            + a[y0 + 1, x0 + 1] * fx * fy
        )
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


def map_regions(
    geometry: Geometry, regions: R.Regions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(
            f"{path}: cannot parse homography ({type(e).__name__}: {first_line})"
        ) from None
    if h.size == 0:
        raise InputError(f"{path}: homography file is empty")
    if h.shape != (3, 3):
        raise InputError(f"{path}: homography must be a 3x3 matrix, got shape {h.shape}")
    if not np.isfinite(h).all():
        raise InputError(f"{path}: homography has NaN or inf entries")
    s = np.linalg.svd(h, compute_uv=False)
    if s[0] == 0 or s[-1] / s[0] < 1e-10:
        raise InputError(
            f"{path}: homography is singular (condition number {s[0] / max(s[-1], 1e-300):.3g})"
        )
    return h
