"""HPatches-style data from homography sequences, and HPatches-layout folders as patch files.

* :mod:`.config`: :class:`HPatchesStyleConfig` and the noise levels (:class:`Jitter`);
* :mod:`.jitter`: affine jitter of a frame and its ellipse overlap;
* :mod:`.build`: :func:`cut_sequence`, :func:`build_hpatches_style` (writes the
  ``hpatches-release`` layout with :func:`retrieval._src.hpatches.write_sequence`);
* :mod:`.convert`: :func:`hpatches_to_patchset` (an HPatches folder -> a :class:`PatchSet`).
"""

from retrieval._src.hpstyle.build import (
    HPatchesStyleReport,
    SequenceCut,
    build_hpatches_style,
    cut_sequence,
    output_name,
)
from retrieval._src.hpstyle.config import HPatchesStyleConfig, Jitter
from retrieval._src.hpstyle.convert import hpatches_to_patchset
from retrieval._src.hpstyle.jitter import (
    disk_overlap,
    ellipse_overlap,
    median_overlap,
    sample_jitter,
    suppress_overlapping,
)

__all__ = [
    "HPatchesStyleConfig",
    "HPatchesStyleReport",
    "Jitter",
    "SequenceCut",
    "build_hpatches_style",
    "cut_sequence",
    "disk_overlap",
    "ellipse_overlap",
    "hpatches_to_patchset",
    "median_overlap",
    "output_name",
    "sample_jitter",
    "suppress_overlapping",
]
