"""Affine jitter of a region's frame, and the ellipse overlap that measures it.

A region's measurement region is a disk (no affine adaptation: HPatches'
reference frames are similarity frames). In the region's own normalized
coordinates (unit = the disk's radius, axes along the patch's axes) the
unperturbed frame is the unit disk ``D``; a jittered frame is the ellipse
``A D + t`` for a 2x2 matrix ``A`` (rotation and anisotropic scale) and a shift
``t``. Their overlap is the Jaccard ratio ``|D n E| / |D u E|`` (Mikolajczyk
et al.'s ellipse overlap, 1 - overlap error), invariant to the similarity that
takes the normalized frame to the image.

References:
  V. Balntas, K. Lenc, A. Vedaldi, K. Mikolajczyk, "HPatches: a benchmark and
  evaluation of handcrafted and learned local descriptors", CVPR 2017, Sec. 3
  (affine jitter of the reference frames; median overlap ~0.85 easy, ~0.72 hard).
  K. Mikolajczyk et al., "A comparison of affine region detectors", IJCV 2005
  (overlap error).
"""

from __future__ import annotations

import math

import numpy as np

from retrieval._src.hpstyle.config import Jitter


def sample_jitter(rng: np.random.Generator, n: int, level: Jitter) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``n`` jitters of one level.

    ``A = R(theta) @ diag(exp(s1), exp(s2))`` with ``theta`` uniform in
    ``[-rotation_deg, rotation_deg]`` and ``s1, s2`` uniform in ``[-scale,
    scale]`` (independent: isotropic and anisotropic scale together); ``t`` is
    uniform in the disk of radius ``translation``. Draws happen in this order,
    so one generator state gives one result.

    Returns:
      ``(A, t)``: (n, 2, 2) and (n, 2) float64, in region-radius units.
    """
    theta = np.deg2rad(rng.uniform(-level.rotation_deg, level.rotation_deg, n))
    s = np.exp(rng.uniform(-level.scale, level.scale, (n, 2)))
    r = level.translation * np.sqrt(rng.uniform(0.0, 1.0, n))
    phi = rng.uniform(0.0, 2.0 * math.pi, n)
    c, si = np.cos(theta), np.sin(theta)
    rot = np.stack([np.stack([c, -si], -1), np.stack([si, c], -1)], -2)
    a = rot * s[:, None, :]
    t = np.stack([r * np.cos(phi), r * np.sin(phi)], 1)
    return a, t


def ellipse_overlap(a: np.ndarray, t: np.ndarray, *, samples: int = 256) -> np.ndarray:
    """Jaccard overlap of the unit disk and the ellipses ``A D + t``, (n,).

    The intersection is integrated over the disk's vertical chords: at abscissa
    ``x = sin(theta)`` the disk's chord is ``|y| <= cos(theta)`` and the
    ellipse's comes from a quadratic in y; the overlap of the two chords is
    summed with the midpoint rule over ``samples`` values of theta (the
    substitution removes the square-root end points; error below 1e-4 at 256).
    The union is ``pi + pi |det A| - intersection``.

    Args:
      a: (n, 2, 2) invertible matrices.
      t: (n, 2) shifts.
      samples: integration points.
    """
    a = np.asarray(a, np.float64).reshape(-1, 2, 2)
    t = np.asarray(t, np.float64).reshape(-1, 2)
    # The ellipse is (p - t)^T M (p - t) <= 1 with M = (A A^T)^-1.
    m = np.linalg.inv(a @ np.swapaxes(a, 1, 2))
    m00, m01, m11 = m[:, 0, 0, None], m[:, 0, 1, None], m[:, 1, 1, None]
    theta = ((np.arange(samples) + 0.5) / samples - 0.5) * math.pi
    x, half = np.sin(theta)[None], np.cos(theta)[None]
    dx = x - t[:, 0, None]
    disc = (m01 * dx) ** 2 - m11 * (m00 * dx * dx - 1.0)
    root = np.sqrt(np.maximum(disc, 0.0))
    lo = t[:, 1, None] + (-m01 * dx - root) / m11
    hi = t[:, 1, None] + (-m01 * dx + root) / m11
    chord = np.clip(np.minimum(hi, half) - np.maximum(lo, -half), 0.0, None)
    chord = np.where(disc > 0, chord, 0.0)
    inter = (chord * half).sum(1) * (math.pi / samples)
    union = math.pi * (1.0 + np.abs(np.linalg.det(a))) - inter
    return inter / union


def median_overlap(level: Jitter, *, n: int = 40_000, seed: int = 0) -> float:
    """Median :func:`ellipse_overlap` of ``n`` jitters of ``level`` (its calibration)."""
    a, t = sample_jitter(np.random.default_rng(seed), n, level)
    return float(np.median(ellipse_overlap(a, t)))


def disk_overlap(r1: np.ndarray, r2: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Jaccard overlap of two disks of radii ``r1``, ``r2`` whose centres are ``d`` apart.

    Closed form (the lens area of two circles); arrays broadcast.
    """
    r1, r2, d = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (r1, r2, d)))
    small, big = np.minimum(r1, r2), np.maximum(r1, r2)
    inter = np.zeros(d.shape)
    inside = d <= big - small
    inter[inside] = math.pi * small[inside] ** 2
    lens = ~inside & (d < r1 + r2)
    if lens.any():
        a, b, dd = r1[lens], r2[lens], d[lens]
        ca = np.clip((dd**2 + a**2 - b**2) / (2 * dd * a), -1.0, 1.0)
        cb = np.clip((dd**2 + b**2 - a**2) / (2 * dd * b), -1.0, 1.0)
        k = (-dd + a + b) * (dd + a - b) * (dd - a + b) * (dd + a + b)
        inter[lens] = a**2 * np.arccos(ca) + b**2 * np.arccos(cb) - 0.5 * np.sqrt(np.maximum(k, 0))
    union = math.pi * (r1**2 + r2**2) - inter
    return inter / union


def suppress_overlapping(
    x: np.ndarray, y: np.ndarray, radius: np.ndarray, max_overlap: float
) -> np.ndarray:
    """Greedy suppression of disks: indices kept, in input order.

    In input order (strongest first), a disk is kept unless its overlap
    (:func:`disk_overlap`) with a disk kept before exceeds ``max_overlap``; so
    of a cluster of detections (e.g. the several orientations SIFT gives at one
    location, overlap 1) one is kept.

    Args:
      x, y, radius: (n,) disks.
      max_overlap: in [0, 1].

    Returns:
      (k,) int indices into the input.
    """
    n = x.shape[0]
    kept = np.empty(n, np.intp)
    k = 0
    kx, ky, kr = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        if k:
            # Disks overlap only if their centres are closer than the sum of the radii.
            near = np.abs(kx[:k] - x[i]) < kr[:k] + radius[i]
            if near.any():
                d = np.hypot(kx[:k][near] - x[i], ky[:k][near] - y[i])
                if np.any(disk_overlap(kr[:k][near], radius[i], d) > max_overlap):
                    continue
        kx[k], ky[k], kr[k] = x[i], y[i], radius[i]
        kept[k] = i
        k += 1
    return kept[:k]
