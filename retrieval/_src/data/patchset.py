"""What a patch set is: :class:`PatchSet`, its splits, format version and the builders' warnings.

Output (:class:`PatchSet`, saved by :func:`~retrieval._src.data.io.save_patchset` as one ``.npz``):

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

import dataclasses
import json

import numpy as np

#: Bumped whenever the output of a builder changes for the same parameters (cache key).
VERSION = "patchsets-1"

TRAIN, TEST = 0, 1
SPLIT_NAMES = ("train", "test")


class SkippedItemWarning(UserWarning):
    """An input item (image, sequence, photo) was skipped; the message says which and why."""


class EmptySplitWarning(UserWarning):
    """The train or the test split of a patch set is empty (e.g. a single scene)."""


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

    @classmethod
    def without_frames(
        cls, patches, labels, split, scene, image, scene_names, info: dict
    ) -> PatchSet:
        """Patches cut elsewhere (a manual set, HPatches, PhotoTour): ``x``, ``y``, ``scale``,
        ``angle`` NaN, the other arrays as given (converted to their dtypes)."""
        n = int(np.asarray(patches).shape[0])
        nan = np.full(n, np.nan, np.float32)
        return cls(
            patches=np.asarray(patches),
            labels=np.asarray(labels, np.int64),
            split=np.asarray(split, np.uint8),
            scene=np.asarray(scene, np.int32),
            image=np.asarray(image, np.int32),
            x=nan,
            y=nan.copy(),
            scale=nan.copy(),
            angle=nan.copy(),
            scene_names=np.asarray(scene_names, dtype=str),
            info=info,
        )

    def subset(self, index: np.ndarray) -> PatchSet:
        """Rows ``index`` (labels, scene names and info kept)."""
        kw = {k: getattr(self, k)[index] for k in self.ARRAYS}
        return PatchSet(**kw, scene_names=self.scene_names, info=dict(self.info))

    def split_subset(self, split: str | int) -> PatchSet:
        """The ``"train"`` (0) or ``"test"`` (1) rows."""
        s = SPLIT_NAMES.index(split) if isinstance(split, str) else int(split)
        return self.subset(np.flatnonzero(self.split == s))

    def as_dict(self) -> dict[str, np.ndarray]:
        """The arrays as saved in the ``.npz`` file."""
        d = {k: getattr(self, k) for k in self.ARRAYS}
        d["scene_names"] = np.asarray(self.scene_names, dtype=str)
        d["info"] = np.asarray(json.dumps(self.info, sort_keys=True))
        return d
