"""Synthetic views of ordinary photos: known random homographies plus photometric changes.

Each photo is one scene: view 0 is the photo itself, views 1..views-1 are
random warps of it (:class:`ViewParams`), so the geometry of every group is known.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ckn import InputError
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.geometry import Homography
from retrieval._src.data.grouping import (
    SceneResult,
    assemble,
    group_scene,
    prepare_image,
    run_scenes,
)
from retrieval._src.data.io import IMAGE_EXTENSIONS, image_problem, read_image, resize_max
from retrieval._src.data.patchset import PatchSet, SkippedItemWarning


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


def random_homography(
    shape: tuple[int, int], rng: np.random.Generator, vp: ViewParams
) -> np.ndarray:
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
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(
        np.float64
    )


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
    view = cv2.warpPerspective(
        image, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    valid = cv2.warpPerspective(
        np.ones((h, w), np.uint8),
        H,
        (w, h),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    valid = cv2.erode(valid, np.ones((3, 3), np.uint8))
    return photometric(view, rng, vp), H, valid


def _photo_rng(seed: int, name: str) -> np.random.Generator:
    # Seeded by photo name, not position, so adding a photo does not change the others.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def photo_scene(
    name: str,
    image: np.ndarray,
    *,
    views: int,
    seed: int,
    cfg: PatchSetConfig,
    view_params: ViewParams,
) -> SceneResult:
    """Groups of one photo: view 0 is the untouched photo, views 1..views-1 are synthetic."""
    rng = _photo_rng(seed, name)
    img = prepare_image(image, cfg.color)
    imgs, geoms, valid = [img], [None], [None]
    for _ in range(views - 1):
        v, H, m = synthetic_view(img, rng, view_params)
        imgs.append(v)
        geoms.append(Homography(H))
        valid.append(m)
    return group_scene(name, imgs, geoms, cfg, valid=valid)


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
        warnings.warn(
            f"views = {views} > max_group = {cfg.max_group}: groups keep the first {cfg.max_group}",
            SkippedItemWarning,
            stacklevel=2,
        )
    names = [n for n, _ in named_images]
    if len(set(names)) != len(names):
        raise InputError("photo names must be unique")

    def job(name, image):
        return lambda: photo_scene(name, image, views=views, seed=seed, cfg=cfg, view_params=vp)

    jobs = [job(n, resize_max(np.asarray(im), max_side)) for n, im in named_images]
    results = run_scenes(jobs, progress=progress, desc="photos", workers=workers)
    for r in results:
        if r.group.size == 0:
            warnings.warn(
                f"photo {r.name}: no matching regions, skipped", SkippedItemWarning, stacklevel=2
            )
    meta = {
        "source": "photos",
        "views": views,
        "seed": seed,
        "max_side": max_side,
        "view_params": dataclasses.asdict(vp),
        **(info or {}),
    }
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
    have up to ``views`` patches. Unreadable, truncated or too small images
    (:func:`image_problem`) are skipped with a SkippedItemWarning; InputError when
    no image is left.
    """
    if views < 2:
        raise InputError(f"views must be >= 2, got {views}")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"photos folder not found: {folder}"
            if not folder.exists()
            else f"not a folder: {folder}"
        )
    files = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    named = []
    for p in files:
        why = image_problem(p)  # the bad-image test of every command
        if why is not None:
            warnings.warn(f"skipped {p}: {why}", SkippedItemWarning, stacklevel=2)
            continue
        named.append((p.stem, read_image(p)))
    if not named:
        raise InputError(f"no readable image in {folder}")
    return build_from_images(
        named,
        views=views,
        seed=seed,
        config=config,
        view_params=view_params,
        max_side=max_side,
        test_scenes=test_scenes,
        progress=progress,
        workers=workers,
        info={"folder": str(folder)},
    )
