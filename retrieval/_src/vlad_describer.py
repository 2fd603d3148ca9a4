"""VLAD of local descriptors as a describer of the image pipeline.

:class:`VladDescriber` (config :class:`VladDescription`): every image's local descriptors at
interest regions (:func:`retrieval.local.local_features`: SIFT, RootSIFT, pixels or a CKN
model), encoded by a VLAD model (:func:`retrieval.local.fit_vlad`: local PCA, k-means codebook,
VLAD normalizations, optional PCA-whitening of the VLADs) into one vector. It is the describer
that trains: ``train(images)`` fits the model on the local descriptors of training images
(``ckn eval-images --codebook-images``, else the evaluated images themselves); the local
descriptors of the images it trained on are kept and not computed again when they are
described.

References:
  Jegou et al., "Aggregating local descriptors into a compact image representation",
  CVPR 2010. Paulin et al., IJCV 2017, Sec. 6 (VLAD over Patch-CKN descriptors).
"""

from __future__ import annotations

import dataclasses
import os
import time

from ckn import InputError
from retrieval._src.data import read_image
from retrieval._src.describer import BaseDescriber, Described
from retrieval._src.local import LocalConfig, iter_local_features, make_local_describer
from retrieval._src.settings import check_settings, setting
from retrieval._src.vlad_fit import VladConfig, VladModel, encode_images, fit_vlad

#: Smallest side (px) of a query crop described by local descriptors.
MIN_SIDE = 16


@dataclasses.dataclass(frozen=True)
class VladDescription:
    """VLAD of local descriptors.

    Attributes:
      local: the local descriptor: "sift", "rootsift", "pixels" or a CKN model folder.
      local_config: interest regions and patches.
      vlad: codebook, normalizations and PCA.
    """

    local: str = setting(
        "", kind="str", help="VLAD of local descriptors: sift, rootsift, pixels or a model "
        "directory (ckn train)",
    )  # fmt: skip
    local_config: LocalConfig = LocalConfig()
    vlad: VladConfig = VladConfig()

    def __post_init__(self):
        object.__setattr__(self, "local", os.fspath(self.local))
        check_settings(self)
        if not self.local:
            raise InputError("local must name sift, rootsift, pixels or a model folder")
        if not isinstance(self.local_config, LocalConfig) or not isinstance(self.vlad, VladConfig):
            raise InputError("VladDescription needs a LocalConfig and a VladConfig")


class VladDescriber(BaseDescriber):
    """VLAD vectors of images (see the module docstring).

    Attributes:
      patches: the :class:`retrieval.local.LocalDescriber` of the patches.
      model: the fitted :class:`retrieval.local.VladModel` (None before ``train``).
      train_info: what ``train`` did (images, regions, seconds).

    ``memo``: {``os.fspath(path)``: :class:`retrieval.local.LocalFeatures`} of images already
    described (filled as images are described; shared with the describer ``train`` returns).
    """

    trains = True

    def __init__(self, config: VladDescription, *, patches=None, model: VladModel | None = None,
                 memo: dict | None = None):  # fmt: skip
        if not isinstance(config, VladDescription):
            raise InputError(f"VladDescriber needs a VladDescription, got {type(config).__name__}")
        self.config = config
        self.patches = make_local_describer(config.local) if patches is None else patches
        self.model = model
        self.min_size = MIN_SIDE
        self.label = f"VLAD of {self.patches.name}"
        self._memo = {} if memo is None else memo
        self.train_info: dict = {}

    def with_config(self, config: VladDescription) -> VladDescriber:
        """The same patch describer (and kept local descriptors) with another config."""
        return VladDescriber(config, patches=self.patches, memo=self._memo)

    def with_model(self, model: VladModel) -> VladDescriber:
        """The describer with a fitted model (e.g. an index's)."""
        return VladDescriber(self.config, patches=self.patches, model=model, memo=self._memo)

    def local_features(self, images, *, progress=False, desc="describing images") -> list:
        """The :class:`retrieval.local.LocalFeatures` of every image (paths read as RGB), the
        patches of consecutive images described together
        (:func:`retrieval.local.iter_local_features`)."""
        from tqdm.auto import tqdm

        keys = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else None for im in images]
        todo = [i for i, k in enumerate(keys) if k is None or k not in self._memo]

        def read():
            for i in todo:
                im = images[i]
                yield keys[i] or f"image {i}", read_image(im) if keys[i] is not None else im

        feats = iter_local_features(read(), self.patches, config=self.config.local_config)
        new = {}
        bar = tqdm(total=len(todo), desc=desc, unit="image", disable=not progress)
        for i, f in zip(todo, feats):
            new[i] = f
            if keys[i] is not None:
                self._memo[keys[i]] = f
            bar.update(1)
        bar.close()
        return [new[i] if i in new else self._memo[keys[i]] for i in range(len(images))]

    def train(self, images, *, progress=False) -> VladDescriber:
        """The describer with a VLAD model fitted on the local descriptors of ``images``."""
        feats = self.local_features(images, progress=progress, desc="describing training images")
        t0 = time.perf_counter()
        model = fit_vlad(feats, self.config.vlad)
        out = VladDescriber(self.config, patches=self.patches, model=model, memo=self._memo)
        out.train_info = {"images": len(feats), "seconds_fit": time.perf_counter() - t0}
        return out

    def describe(self, images, *, progress=False, keep=frozenset()) -> Described:
        """VLAD vectors; ``info``: regions per image and seconds (regions, describe, encode)."""
        if self.model is None:
            raise InputError("the VLAD describer has no codebook yet: train it first")
        feats = self.local_features(images, progress=progress)
        names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"image {i}"
                 for i, x in enumerate(images)]  # fmt: skip
        t0 = time.perf_counter()
        v = encode_images(self.model, feats, names=names)
        regions = [f.descriptors.shape[0] for f in feats]
        info = {
            "images": len(feats),
            "regions": regions,
            "seconds_regions": [f.seconds_regions for f in feats],
            "seconds_describe": [f.seconds_describe for f in feats],
            "seconds_encode": time.perf_counter() - t0,
        }
        return Described(v, {}, info)
