"""Settings of HPatches-style data: one frozen :class:`HPatchesStyleConfig`, its noise levels."""

from __future__ import annotations

import dataclasses
import math

from ckn import InputError
from retrieval._src.hpatches.layout import LEVELS


@dataclasses.dataclass(frozen=True)
class Jitter:
    """One noise level: the random affine jitter of a reference frame (:func:`sample_jitter`).

    Lengths are in units of the measurement region's radius.

    Attributes:
      rotation_deg: rotation uniform in ``[-rotation_deg, rotation_deg]`` degrees.
      scale: the log-scale of each patch axis is uniform in ``[-scale, scale]``
        (isotropic and anisotropic scale).
      translation: the shift is uniform in the disk of this radius.
    """

    rotation_deg: float
    scale: float
    translation: float

    def __post_init__(self):
        for name in ("rotation_deg", "scale", "translation"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"jitter {name} must be finite and >= 0, got {v}")


# Calibrated with median_overlap (40,000 draws, bisection on scale = translation) so that
# the median overlap with the unperturbed frame is 0.85 (easy) and 0.72 (hard), as in
# HPatches (Balntas et al. 2017, Sec. 3), and 0.60 for tough (the paper says "lower"; 0.60
# is this project's choice). Measured at these values (seed 2): 0.850, 0.719, 0.599.
# Rotation does not change the overlap of a disk; its ranges (10 / 20 / 30 degrees) are a
# reconstruction: the paper gives none.
EASY = Jitter(rotation_deg=10.0, scale=0.139, translation=0.139)
HARD = Jitter(rotation_deg=20.0, scale=0.281, translation=0.281)
TOUGH = Jitter(rotation_deg=30.0, scale=0.436, translation=0.436)


@dataclasses.dataclass(frozen=True)
class HPatchesStyleConfig:
    """How HPatches-style data is cut from homography sequences (:func:`build_hpatches_style`).

    Patches are 65 x 65, the HPatches layout's side.

    Attributes:
      magnification: patch side in image pixels = magnification x region size
        (OpenCV ``KeyPoint.size`` = 2 sigma), i.e. a measurement region of
        radius 5 sigma at 5: HPatches' "scale magnified by a factor of 5".
      easy, hard, tough: the three noise levels.
      max_patches: patches per sequence, strongest detections first.
      max_overlap: detections whose measurement disks overlap more than this
        (Jaccard) with a stronger kept one are dropped (HPatches: 0.5).
      min_size, max_size: detected region size range (``KeyPoint.size``, pixels).
      contrast_threshold, edge_threshold: the DoG (SIFT) detector's thresholds.
      seed: the jitter of a sequence is drawn from ``(seed, crc32(name))``, so it
        does not depend on the other sequences or their order.
      illumination: folder names written as illumination sequences (``i_``
        prefix); every other folder gets ``v_``. A name that already starts with
        ``i_`` or ``v_`` is kept as is. Default: Oxford's ``leuven`` (light
        change, fixed camera).
      overlap_samples: integration points of the overlap measurement (:func:`ellipse_overlap`).
    """

    magnification: float = 5.0
    easy: Jitter = EASY
    hard: Jitter = HARD
    tough: Jitter = TOUGH
    max_patches: int = 1000
    max_overlap: float = 0.5
    min_size: float = 4.0
    max_size: float = 400.0
    contrast_threshold: float = 0.03
    edge_threshold: float = 10.0
    seed: int = 0
    illumination: tuple[str, ...] = ("leuven",)
    overlap_samples: int = 256

    def __post_init__(self):
        if not (math.isfinite(self.magnification) and self.magnification > 0):
            raise InputError(f"magnification must be > 0, got {self.magnification}")
        if self.max_patches < 1:
            raise InputError(f"max_patches must be >= 1, got {self.max_patches}")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise InputError(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if not 0.0 < self.min_size <= self.max_size:
            raise InputError(f"need 0 < min_size <= max_size, got {self.min_size}, {self.max_size}")
        if self.overlap_samples < 8:
            raise InputError(f"overlap_samples must be >= 8, got {self.overlap_samples}")
        for name in LEVELS:
            if not isinstance(getattr(self, name), Jitter):
                raise InputError(f"{name} must be a Jitter, got {getattr(self, name)!r}")
        if isinstance(self.illumination, str):
            raise InputError("illumination must be a tuple of sequence names, not a string")
        object.__setattr__(self, "illumination", tuple(self.illumination))

    def level(self, name: str) -> Jitter:
        """The :class:`Jitter` of level ``"easy"``, ``"hard"`` or ``"tough"``."""
        if name not in LEVELS:
            raise InputError(f"unknown level {name!r}; expected one of {', '.join(LEVELS)}")
        return getattr(self, name)
