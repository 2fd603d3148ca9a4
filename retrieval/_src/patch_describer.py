"""Describing the patches of a standard benchmark, at the side each descriptor needs.

The standard benchmarks cut patches of their own side: HPatches 65 x 65, Brown / PhotoTour
64 x 64. The project's CKN models are trained on 51 x 51 patches (RomePatches' side,
:data:`~retrieval._src.regions.PATCH_SIZE`) and refuse other sizes: a CKN describes the
patches resized to its training side (``model.patch_shape``) with ``cv2.INTER_AREA``, the
interpolation the project shrinks images with. The baselines (SIFT, RootSIFT, pixels) describe
the native patch, as the literature evaluates SIFT on HPatches (on the 65 x 65 patch: the
HPatches paper, Balntas et al. CVPR 2017, and the benchmark's ``extract_opencv_sift.py``).
:meth:`PatchDescriber.info` records the choice.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ckn import CKN, InputError
from retrieval._src.evaluation import describe_with, descriptor_info, resolve_model

#: Patches resized in one ``cv2.resize`` call (a column of patches).
_COLUMN = 1024


def resize_patches(patches: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) uint8 -> (N, size, size) uint8, ``cv2.INTER_AREA`` (as is if S == size).

    Patches are resized as columns of up to 1024 patches in one call: the
    patch borders (rows S * i) fall on output rows size * i, so no output pixel
    mixes two patches (the test compares with one ``cv2.resize`` per patch).
    """
    n, s = patches.shape[0], patches.shape[1]
    if s == size:
        return patches
    out = np.empty((n, size, size), np.uint8)
    for c in range(0, n, _COLUMN):
        e = min(n, c + _COLUMN)
        column = np.ascontiguousarray(patches[c:e]).reshape((e - c) * s, s)
        out[c:e] = cv2.resize(column, (size, (e - c) * size), interpolation=cv2.INTER_AREA).reshape(
            e - c, size, size
        )
    return out


@dataclasses.dataclass(frozen=True)
class PatchDescriber:
    """A baseline or a CKN describing square patches of one native side (see the module).

    Call it on (M, native, native) uint8 patches to get (M, D) float32 descriptors.

    Attributes:
      model: a baseline name (``"sift"``, ``"rootsift"``, ``"pixels"``) or a ``ckn.CKN``.
      native: the benchmark's patch side (HPatches 65, PhotoTour 64).
      size: the side the descriptor sees: ``native`` for a baseline (and for a CKN without a
        recorded training size), the training side of a CKN.
      batch_size: patches per jitted batch (CKN).
      progress: progress bars on stderr.
    """

    model: str | CKN
    native: int
    size: int
    batch_size: int = 256
    progress: bool = False

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """(M, native, native) uint8 -> (M, D) float32 L2-normalized descriptors."""
        patches = np.asarray(patches)
        if patches.ndim != 3 or patches.shape[1:] != (self.native, self.native):
            raise InputError(
                f"patches must be (M, {self.native}, {self.native}), got {patches.shape}"
            )
        return describe_with(
            self.model,
            resize_patches(patches, self.size),
            batch_size=self.batch_size,
            progress=self.progress,
        )

    def info(self) -> dict:
        """Name, kind, dimension, and the native and described sides with the interpolation."""
        resized = self.size != self.native
        return {
            **descriptor_info(self.model, (self.size, self.size)),
            "native_size": self.native,
            "described_size": self.size,
            "interpolation": "INTER_AREA" if resized else None,
        }


def patch_describer(
    name_or_model, native: int, *, batch_size: int = 256, progress: bool = False
) -> PatchDescriber:
    """The describer of patches of side ``native`` for a baseline or a CKN (see the module).

    Args:
      name_or_model: ``"sift"``, ``"rootsift"``, ``"pixels"``, a model directory or a
        ``ckn.CKN`` (:func:`~retrieval._src.evaluation.resolve_model`).
      native: the benchmark's patch side.
      batch_size: patches per jitted batch (CKN).
      progress: progress bars on stderr.

    Raises:
      InputError: an unknown baseline or a missing / corrupt model directory, a
        ``batch_size`` < 1, a CKN trained on colour patches (the benchmarks are gray), a
        CKN whose receptive field exceeds the patches it would describe.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
    model = resolve_model(name_or_model)
    size = native
    shape = None if isinstance(model, str) else getattr(model, "patch_shape", None)
    if shape is not None:
        h, w, c = shape
        if h != w or c != 1:
            raise InputError(
                f"the model was trained on {h} x {w} x {c} patches; the standard benchmarks "
                "need a model of square gray patches"
            )
        size = int(h)
    out = PatchDescriber(model, int(native), size, batch_size, progress)
    descriptor_info(model, (size, size))  # a receptive field too large: refused now
    return out
