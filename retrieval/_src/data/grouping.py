"""Matching detections of one scene into groups, and assembling scenes into a :class:`PatchSet`.

Grouping, with real detector noise. Regions are detected independently in
every image of a scene (SIFT / DoG, :mod:`retrieval._src.regions`). Reference
regions are selected in image 0 (strongest first, ``min_size`` or larger,
non-maximum suppression by distance, patch inside the image). Each reference
region is mapped into image k with the known geometry
(:func:`~retrieval._src.data.geometry.map_regions`): its centre by the map,
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

Splits are by scene (:func:`assemble`): never one scene in both train and test.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ckn import InputError
from retrieval._src import regions as R
from retrieval._src.data.config import PatchSetConfig
from retrieval._src.data.geometry import Geometry, map_regions
from retrieval._src.data.patchset import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VERSION,
    EmptySplitWarning,
    PatchSet,
    SkippedItemWarning,
)


@dataclasses.dataclass
class SceneResult:
    """The grouped patches of one scene, one row per patch (local group ids 0..n_groups-1)."""

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
        """Number of groups in the scene."""
        return int(self.group.max()) + 1 if self.group.size else 0


def prepare_image(image: np.ndarray, color: bool) -> np.ndarray:
    """An image as the patches are sampled: (H, W, 3) RGB if ``color``, else (H, W) gray."""
    if color:
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    return R.to_gray(image)


def _match(pred_xy, pred_size, pred_angle, cand: R.Regions, cfg: PatchSetConfig) -> np.ndarray:
    """For each prediction, the index of its candidate (one-to-one), or -1."""
    n = pred_xy.shape[0]
    out = np.full(n, -1, np.intp)
    ok = (
        np.isfinite(pred_xy).all(1)
        & np.isfinite(pred_size)
        & (pred_size > 0)
        & np.isfinite(pred_angle)
    )
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
) -> SceneResult:
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
    spec = cfg.regions
    dets = [spec.detect(im) for im in images]
    ref = spec.select(dets[0], images[0].shape[:2], valid=valid[0])
    members: list[list[tuple[int, int]]] = [[(0, i)] for i in range(len(ref))]
    for k in range(1, k_img):
        cand = dets[k]
        if len(cand):
            frac = R.inside_fraction(
                images[k].shape[:2] if valid[k] is None else valid[k],
                cand.x,
                cand.y,
                cand.size,
                cand.angle,
                magnification=cfg.magnification,
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
        return SceneResult(name, np.zeros((0,)), *(np.zeros((0,)) for _ in range(6)))
    g_arr = np.array([r[0] for r in rows], np.int64)
    k_arr = np.array([r[1] for r in rows], np.intp)
    j_arr = np.array([r[2] for r in rows], np.intp)
    sample0 = images[0]
    patches = np.zeros((n, cfg.size, cfg.size) + sample0.shape[2:], np.uint8)
    x = np.zeros(n)
    y = np.zeros(n)
    sc = np.zeros(n)
    an = np.zeros(n)
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
    return SceneResult(name, patches, g_arr, ids, x, y, sc, an)


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
    results: Sequence[SceneResult],
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
            warnings.warn(
                f"test scenes not in the data set: {', '.join(sorted(unknown))}",
                SkippedItemWarning,
                stacklevel=2,
            )
    for s, split_name in enumerate(SPLIT_NAMES):
        if all((s == TEST) != (n in test) for n in names):
            warnings.warn(
                f"the {split_name} split is empty ({len(names)} scene{'s' * (len(names) > 1)}: "
                f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); "
                "a split by scene needs 2 or more",
                EmptySplitWarning,
                stacklevel=2,
            )
    labels, offset = [], 0
    for r in results:
        labels.append(r.group + offset)
        offset += r.n_groups
    cat = lambda f, dt: np.concatenate([getattr(r, f) for r in results]).astype(dt)  # noqa: E731
    ps = PatchSet(
        patches=np.concatenate([r.patches for r in results]),
        labels=np.concatenate(labels).astype(np.int64),
        split=np.concatenate(
            [np.full(r.group.size, TEST if r.name in test else TRAIN, np.uint8) for r in results]
        ),
        scene=np.concatenate([np.full(r.group.size, i, np.int32) for i, r in enumerate(results)]),
        image=cat("image", np.int32),
        x=cat("x", np.float32),
        y=cat("y", np.float32),
        scale=cat("scale", np.float32),
        angle=cat("angle", np.float32),
        scene_names=np.asarray(names, dtype=str),
        # JSON-normalized (tuples -> lists), so that the info survives a save / load unchanged.
        info=json.loads(
            json.dumps({"version": VERSION, "config": dataclasses.asdict(cfg), **(info or {})})
        ),
    )
    return ps


def run_scenes(
    jobs: Sequence[Callable[[], SceneResult]], *, progress: bool, desc: str, workers: int | None
):
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
