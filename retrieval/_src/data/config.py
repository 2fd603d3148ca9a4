"""Detection, grouping and sampling parameters shared by every patch source."""

from __future__ import annotations

import dataclasses

from retrieval._src import regions as R


@dataclasses.dataclass(frozen=True)
class PatchSetConfig:
    """Detection, grouping and sampling parameters (all sources).

    The region detection and selection fields (``max_regions``,
    ``contrast_threshold``, ``edge_threshold``, ``min_size``, ``max_size``,
    ``nms_radius``, ``max_outside``, ``magnification``) are also given whole as
    :attr:`regions`, a :class:`~retrieval._src.regions.RegionSpec`; they stay
    flat fields here so that the constructor and the ``info`` JSON (and the
    cache keys made from it) keep their form.

    Attributes:
      size: patch side in pixels.
      magnification: patch side in image pixels = magnification * region size.
      color: RGB patches (N, S, S, 3) if True, else gray (N, S, S).
      max_regions: reference regions per scene (strongest first) before grouping.
      min_size, max_size: reference region size range (KeyPoint.size, pixels).
        min_size 4 (sigma 2) keeps patch sides >= 24 image pixels.
      nms_radius: reference regions closer than nms_radius * size are suppressed.
      max_outside: largest fraction of a patch square that may leave its image.
      center_px, center_rel, scale_ratio, angle_deg: grouping tolerances
        (:mod:`retrieval._src.data.grouping`).
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
            raise ValueError(
                "tolerances must be scale_ratio >= 1, angle_deg > 0, center_px, center_rel >= 0"
            )
        if not 2 <= self.min_group <= self.max_group:
            raise ValueError(
                f"need 2 <= min_group <= max_group, got {self.min_group}, {self.max_group}"
            )
        if self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1, got {self.max_regions}")

    @property
    def regions(self) -> R.RegionSpec:
        """The region detection and selection fields, as one ``RegionSpec``."""
        return R.RegionSpec(
            max_regions=self.max_regions,
            contrast_threshold=self.contrast_threshold,
            edge_threshold=self.edge_threshold,
            min_size=self.min_size,
            max_size=self.max_size,
            nms_radius=self.nms_radius,
            max_outside=self.max_outside,
            magnification=self.magnification,
        )
