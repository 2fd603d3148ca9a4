"""HPatches-style patches from any homography sequences (Oxford ``img1..6`` + ``H1toNp``).

For each sequence (:func:`cut_sequence`):

1. DoG (SIFT) regions are detected on the reference image (image 1) with the
   project's detector (:func:`~retrieval._src.regions.detect_regions`), one
   dominant orientation each; the measurement region is the disk of radius
   ``magnification / 2 x size`` (5 sigma at the default 5), the patch the
   square around it, oriented along the dominant orientation. HPatches also
   used Hessian and Harris detections; OpenCV has no scale-space Hessian or
   Harris detector, so DoG alone is used here.
2. Regions whose square leaves the reference image are dropped; of detections
   whose disks overlap (Jaccard) more than ``max_overlap``, the strongest is
   kept (HPatches keeps one at random).
3. For every target image k = 1..5 (images 2..6) and level easy / hard / tough,
   each reference frame is perturbed by an affine jitter
   (:func:`~retrieval._src.hpstyle.jitter.sample_jitter`), then mapped into
   the target with the ground-truth homography, locally affine: centre
   ``H(c')``, linear part ``J_H(c') @ L'`` (the homography's Jacobian at the
   jittered centre), as a frame is reprojected. A region is kept only if all
   15 mapped squares lie inside their target images; then the first
   ``max_patches`` (strongest) are kept.
4. Patches are resampled with
   :func:`~retrieval._src.regions.sample_patches` (bilinear, from the Gaussian
   pyramid level that matches the frame's scale).

:func:`build_hpatches_style` writes the ``hpatches-release`` layout
(:func:`~retrieval._src.hpatches.write_sequence`), plus ``hpatches_style.json``
(settings and the measured median overlaps per level) at the root.

References:
  V. Balntas et al., "HPatches", CVPR 2017, Sec. 3;
  ``../shared/peers/hpatches-benchmark/docs/extraction.md``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import atomic_path, progress_bar
from retrieval._src import regions as R
from retrieval._src.data.geometry import Homography, read_homography
from retrieval._src.data.sequences import find_sequences, load_sequence, sequence_files
from retrieval._src.hpatches.layout import LEVELS, PATCH_SIZE, TARGETS, TYPES, write_sequence
from retrieval._src.hpstyle.config import HPatchesStyleConfig
from retrieval._src.hpstyle.jitter import ellipse_overlap, sample_jitter, suppress_overlapping

#: The square of a patch in region-radius units, corner by corner.
_CORNERS = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


@dataclasses.dataclass
class SequenceCut:
    """The HPatches-style patches of one sequence.

    Attributes:
      patches: (16, N, 65, 65) uint8, in :data:`~retrieval._src.hpatches.TYPES` order.
      x, y, size, angle: (N,) the reference regions (centre, ``KeyPoint.size``,
        orientation in degrees).
      overlap: (3, 5, N) ellipse overlap of each jittered frame with its
        unperturbed frame, per level (easy, hard, tough) and target image.
    """

    patches: np.ndarray
    x: np.ndarray
    y: np.ndarray
    size: np.ndarray
    angle: np.ndarray
    overlap: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass(frozen=True)
class HPatchesStyleReport:
    """What :func:`build_hpatches_style` wrote.

    Attributes:
      sequences: output sequence name -> number of patches.
      overlap_median: level -> median overlap over every patch and target image.
      overlap_by_sequence: output name -> level -> median overlap.
      seconds: wall time.
      config: the settings (``dataclasses.asdict``).
    """

    sequences: dict
    overlap_median: dict
    overlap_by_sequence: dict
    seconds: float
    config: dict

    def as_dict(self) -> dict:
        """The report as JSON-ready values."""
        return dataclasses.asdict(self)


def output_name(name: str, config: HPatchesStyleConfig) -> str:
    """The HPatches name of a sequence folder: ``i_<name>`` for the configured
    illumination sequences, ``v_<name>`` otherwise; an ``i_`` / ``v_`` name as is."""
    if name.startswith(("i_", "v_")):
        return name
    return ("i_" if name in config.illumination else "v_") + name


def _inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(..., 4, 2) corners -> (...,) all corners finite and inside an (H, W) image."""
    h, w = shape
    x, y = points[..., 0], points[..., 1]
    ok = np.isfinite(x) & np.isfinite(y)
    with np.errstate(invalid="ignore"):
        ok &= (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return ok.all(axis=-1)


def _jitter_seed(config: HPatchesStyleConfig, name: str) -> np.random.Generator:
    return np.random.default_rng([config.seed, zlib.crc32(name.encode())])


def cut_sequence(
    name: str,
    images: list[np.ndarray],
    homographies: list[Homography],
    config: HPatchesStyleConfig | None = None,
) -> SequenceCut:
    """Cuts the HPatches-style patches of one sequence (module docstring, steps 1-4).

    Args:
      name: the sequence name (seeds its jitter with ``config.seed``).
      images: the reference and 5 target images, (H, W) or (H, W, 3) uint8
        (sizes may differ).
      homographies: 5 maps from the reference to each target.
      config: settings (default :class:`HPatchesStyleConfig`).

    Returns:
      A :class:`SequenceCut` (N may be 0).
    """
    cfg = config or HPatchesStyleConfig()
    if len(images) != TARGETS + 1 or len(homographies) != TARGETS:
        raise ValueError(
            f"need {TARGETS + 1} images and {TARGETS} homographies, "
            f"got {len(images)} and {len(homographies)}"
        )
    gray = [R.to_gray(im) for im in images]
    regs = R.detect_regions(
        gray[0], contrast_threshold=cfg.contrast_threshold, edge_threshold=cfg.edge_threshold
    )
    regs = regs.take((regs.size >= cfg.min_size) & (regs.size <= cfg.max_size))
    radius = cfg.magnification * regs.size / 2.0
    rot = R.rotation(regs.angle)  # (n, 2, 2): patch axes -> image axes
    corners = regs.xy[:, None, :] + radius[:, None, None] * np.einsum("nij,kj->nki", rot, _CORNERS)
    regs = regs.take(_inside(corners, gray[0].shape))
    regs = regs.take(
        suppress_overlapping(regs.x, regs.y, cfg.magnification * regs.size / 2.0, cfg.max_overlap)
    )
    n = len(regs)
    radius = cfg.magnification * regs.size / 2.0
    rot = R.rotation(regs.angle)
    rng = _jitter_seed(cfg, name)
    jit_a = np.empty((len(LEVELS), TARGETS, n, 2, 2))
    jit_t = np.empty((len(LEVELS), TARGETS, n, 2))
    for li, level in enumerate(LEVELS):
        for k in range(TARGETS):
            jit_a[li, k], jit_t[li, k] = sample_jitter(rng, n, cfg.level(level))
    # Jittered frames in the reference image: centre c + r R t, linear part r R A.
    centre = regs.xy[None, None] + radius[:, None] * np.einsum("nij,lknj->lkni", rot, jit_t)
    linear = radius[:, None, None] * np.einsum("nij,lknjm->lknim", rot, jit_a)
    keep = np.ones(n, bool)
    for k in range(TARGETS):
        pts = centre[:, k, :, None, :] + np.einsum("lnij,cj->lnci", linear[:, k], _CORNERS)
        mapped = homographies[k].map(pts.reshape(-1, 2)).reshape(pts.shape)
        keep &= _inside(mapped, gray[k + 1].shape).all(axis=0)
    sel = np.flatnonzero(keep)[: cfg.max_patches]
    regs = regs.take(sel)
    n = len(regs)
    jit_a, jit_t, centre = jit_a[:, :, sel], jit_t[:, :, sel], centre[:, :, sel]
    rot = R.rotation(regs.angle)
    patches = np.empty((len(TYPES), n, PATCH_SIZE, PATCH_SIZE), np.uint8)
    sample = dict(size=PATCH_SIZE, magnification=cfg.magnification)
    patches[0] = R.sample_patches(gray[0], regs.x, regs.y, regs.size, regs.angle, **sample)
    for k in range(TARGETS):
        pyramid = R.gaussian_pyramid(gray[k + 1], 16)
        for li in range(len(LEVELS)):
            c = centre[li, k]
            xy = homographies[k].map(c)
            jac = homographies[k].jacobian(c)
            # sample_patches applies affine @ R(angle): J R A R^T R = J R A, the jittered
            # frame's linear part (up to the common scale) mapped by the Jacobian.
            affine = jac @ rot @ jit_a[li, k] @ np.swapaxes(rot, 1, 2)
            patches[1 + li * TARGETS + k] = R.sample_patches(
                gray[k + 1],
                xy[:, 0],
                xy[:, 1],
                regs.size,
                regs.angle,
                affine=affine,
                pyramid=pyramid,
                **sample,
            )
    overlap = ellipse_overlap(
        jit_a.reshape(-1, 2, 2), jit_t.reshape(-1, 2), samples=cfg.overlap_samples
    )
    return SequenceCut(
        patches=patches,
        x=regs.x,
        y=regs.y,
        size=regs.size,
        angle=regs.angle,
        overlap=overlap.reshape(len(LEVELS), TARGETS, n),
    )


def _check_sequence_files(seq: Path) -> None:
    """Cheap checks before any work: 5 targets with images, homographies that parse."""
    images, homs = sequence_files(seq) or ({}, {})
    targets = sorted(k for k in homs if k != 1)
    if 1 not in images:
        raise InputError(f"{seq}: reference image missing (img1.* or 1.*)")
    if len(targets) < TARGETS:
        raise InputError(
            f"{seq}: an HPatches sequence needs {TARGETS} target images with homographies, "
            f"found {len(targets)}"
        )
    for k in targets[:TARGETS]:
        if k not in images:
            raise InputError(f"{seq}: image {k} missing (homography {homs[k].name} has no image)")
        read_homography(homs[k])


def _check_paths(root: Path, out: Path) -> None:
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents or o in r.parents:
        raise InputError(f"output folder {out} must be outside the sequences folder {root}")


def build_hpatches_style(
    sequences: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config: HPatchesStyleConfig | None = None,
    progress: bool = False,
) -> HPatchesStyleReport:
    """Writes HPatches-style data (``hpatches-release`` layout) from homography sequences.

    Args:
      sequences: one sequence folder or a folder of them (Oxford ``img1..6`` +
        ``H1toNp`` or ``1..6`` + ``H_1_N``; :func:`~retrieval._src.data.find_sequences`).
        Targets are the first 5 images with a homography (images 2..6 -> 1..5).
      out: the output root, written atomically (an existing folder is replaced
        as a whole). Sequence names: :func:`output_name`.
      config: settings (default :class:`HPatchesStyleConfig`).
      progress: a progress bar on stderr.

    Returns:
      A :class:`HPatchesStyleReport` (also written as ``out/hpatches_style.json``).

    Raises:
      InputError: no sequence, fewer than 5 targets, a missing image, a
        homography that does not parse, two folders with one output name, an
        output inside the input (or the reverse), a sequence without any patch.
    """
    cfg = config or HPatchesStyleConfig()
    root, out = Path(sequences), Path(out)
    seqs = find_sequences(root)
    _check_paths(root, out)
    names = [output_name(s.name, cfg) for s in seqs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{root}: several sequence folders are written as {dup[0]}")
    for s in seqs:
        _check_sequence_files(s)
    start = time.perf_counter()
    counts, by_seq = {}, {}
    all_overlaps = [[] for _ in LEVELS]
    with atomic_path(out, is_dir=True) as tmp:
        bar = progress_bar(
            list(zip(seqs, names)), desc="sequences", unit="seq", disable=not progress
        )
        for seq, name in bar:
            imgs, geoms, _ = load_sequence(seq)
            cut = cut_sequence(name, imgs[: TARGETS + 1], geoms[1 : TARGETS + 1], cfg)
            del imgs
            if len(cut) == 0:
                raise InputError(f"{seq}: no region fits the reference and all 15 targets")
            write_sequence(tmp, name, cut.patches)
            counts[name] = len(cut)
            by_seq[name] = {lv: float(np.median(cut.overlap[i])) for i, lv in enumerate(LEVELS)}
            for i in range(len(LEVELS)):
                all_overlaps[i].append(cut.overlap[i].ravel())
        report = HPatchesStyleReport(
            sequences=counts,
            overlap_median={
                lv: float(np.median(np.concatenate(all_overlaps[i]))) for i, lv in enumerate(LEVELS)
            },
            overlap_by_sequence=by_seq,
            seconds=time.perf_counter() - start,
            config=dataclasses.asdict(cfg),
        )
        (tmp / "hpatches_style.json").write_text(
            json.dumps({"source": str(root), **report.as_dict()}, indent=1, sort_keys=True)
        )
    return report
