"""The NNX module :class:`GlobalHead` (parameters + backbone record), describing maps
or images with it, and :func:`backbone_info` (the backbone's fingerprint)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ckn import InputError
from retrieval._src import feature_maps as F
from retrieval._src import global_desc as G
from retrieval._src.global_head.config import (
    HEAD_KINDS,
    GlobalHeadConfig,
    _is_int,
)
from retrieval._src.global_head.forward import (
    HeadParams,
    _chunks,
    _dtype,
    _forward,
    _pool,
    _whiten,
)
from retrieval._src.heads import pooling_head


def _fingerprint_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        flat = a.reshape(-1) if a.ndim else a.reshape(1)
        for i in range(0, flat.shape[0], 1 << 22):
            h.update(flat[i : i + (1 << 22)].tobytes())
    return h.hexdigest()


def backbone_info(backbone, spec: str | None = None) -> dict:
    """What a head records of its backbone: name, spec, channels, stride, parameter SHA-256."""
    leaves = jax.tree.leaves(nnx.state(backbone))
    return {
        "name": backbone.name,
        "spec": spec,
        "channels": int(backbone.channels),
        "stride": int(backbone.stride),
        "params_sha256": _fingerprint_arrays(*leaves),
    }


class GlobalHead(nnx.Module):
    """A learned global head: parameters (``nnx.Param``) and the backbone it was trained on.

    Built by :func:`train_global_head` or :func:`load_global_head`. Calling it runs
    :func:`head_forward` (jitted).

    Attributes:
      head: "gem" or "rmac" (the learned pooling; ``GlobalHeadConfig.head``).
      channels: C, the backbone channels the head takes.
      levels: R-MAC levels.
      p, shift, proj, w_shift, w_proj: ``nnx.Param`` or None (see :class:`HeadParams`).
      backbone: :func:`backbone_info` of the backbone it was trained on ({} if unknown).
      config: its :class:`GlobalHeadConfig` (None if unknown).
      training: the training report (a JSON-ready dict, {} if none).

    Examples:
      >>> head = retrieval.image.load_global_head("heads/gem")
      >>> v = head.describe(maps, mask)  # (N, h, w, C) backbone maps -> (N, D)
      >>> v = head.describe_images(net, ["a.jpg", "b.jpg"])  # images -> (2, D)
    """

    def __init__(
        self,
        params: HeadParams,
        *,
        head: str,
        channels: int,
        levels: int = 3,
        backbone: dict | None = None,
        config: GlobalHeadConfig | None = None,
        training: dict | None = None,
    ):
        if head not in HEAD_KINDS:
            raise InputError(f"head must be one of {', '.join(HEAD_KINDS)}, got {head!r}")
        need = ("p",) if head == "gem" else ("shift", "proj")
        if any(getattr(params, k) is None for k in need):
            raise InputError(f"a {head} head needs {', '.join(need)}")
        if (params.w_shift is None) != (params.w_proj is None):
            raise InputError("a whitening needs both w_shift and w_proj")
        if not _is_int(channels, 1):
            raise InputError(f"channels must be an int >= 1, got {channels!r}")
        for name, axis in (("proj", 0), ("w_shift", 0)):
            v = getattr(params, name)
            d0 = channels if name == "proj" or head == "gem" else params.proj.shape[1]
            if v is not None and jnp.shape(v)[axis] != d0:
                raise InputError(f"{name} has shape {jnp.shape(v)}, expected {d0} on axis {axis}")
        self.head, self.levels, self.channels = head, int(levels), int(channels)
        for name in HeadParams._fields:
            v = getattr(params, name)
            setattr(self, name, None if v is None else nnx.Param(jnp.asarray(v)))
        self.backbone = dict(backbone or {})
        self.config = config
        self.training = dict(training or {})

    def params(self) -> HeadParams:
        """The parameters as plain arrays (the ``params`` of :func:`head_forward`)."""
        return HeadParams(
            *(
                None if getattr(self, k) is None else getattr(self, k).get_value()
                for k in HeadParams._fields
            )
        )

    @property
    def dim(self) -> int:
        """D, the output dimension."""
        if self.w_proj is not None:
            return int(self.w_proj.shape[1])
        return int(self.proj.shape[1]) if self.head == "rmac" else self.channels

    @property
    def whitened(self) -> bool:
        return self.w_proj is not None

    @property
    def combine_p(self) -> float:
        """Power of the multi-scale mean: the pooling head's ``multiscale_p`` of its learned p
        (the learned p for gem, 1 for rmac, as cirtorch)."""
        p = 1.0 if self.p is None else float(self.p.get_value())
        return pooling_head(self.head).multiscale_p(p)

    def __call__(self, maps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return _forward(self.params(), maps, mask, head=self.head, levels=self.levels)

    def _check_maps(self, maps, mask):
        maps = np.asarray(maps) if not isinstance(maps, (np.ndarray, jax.Array)) else maps
        if maps.ndim != 4 or maps.shape[0] == 0:
            raise InputError(f"maps must be (N, h, w, C) with N >= 1, got {tuple(maps.shape)}")
        want = self.channels
        if maps.shape[3] != want:
            raise InputError(
                f"maps have {maps.shape[3]} channels, the head takes {want} "
                f"({self.backbone.get('name', 'its backbone')})"
            )
        if not jnp.issubdtype(maps.dtype, jnp.floating):
            raise InputError(f"maps must be float, got dtype {maps.dtype}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != tuple(maps.shape[:3]) or mask.dtype != bool:
                raise InputError(
                    f"mask must be bool (N, h, w) = {tuple(maps.shape[:3])}, got "
                    f"{mask.dtype} {mask.shape}"
                )
        if not bool(np.isfinite(np.asarray(maps)).all()):
            raise InputError("maps contain NaN or inf values")
        return np.asarray(maps), mask

    def describe(self, maps, mask=None) -> np.ndarray:
        """Backbone maps -> descriptors: (N, h, w, C) (+ (N, h, w) bool mask) -> (N, D) float32.

        Runs in chunks of ``DESCRIBE_CHUNK`` images (one compilation per map size).

        Raises:
          InputError: not (N, h, w, C), other channels than the head's, NaN, a bad mask.
        """
        maps, mask = self._check_maps(maps, mask)
        prm = self.params()
        fn = lambda x, m: _forward(prm, x, m, head=self.head, levels=self.levels)
        return _chunks(fn, maps, mask)

    def check_backbone(self, backbone) -> None:
        """InputError unless ``backbone`` is the network the head was trained on (same weights)."""
        want = self.backbone
        if not want:
            return
        got = backbone_info(backbone)
        if got["name"] != want.get("name") or got["channels"] != want.get("channels"):
            raise InputError(
                f"the head was trained on {want.get('name')} maps ({want.get('channels')} "
                f"channels), not on {got['name']} ({got['channels']} channels)"
            )
        if want.get("params_sha256") and got["params_sha256"] != want["params_sha256"]:
            raise InputError(
                f"the head was trained on {want.get('name')} with other weights (parameters "
                f"SHA-256 {want['params_sha256'][:12]}..., this backbone "
                f"{got['params_sha256'][:12]}...)"
            )

    def describe_images(
        self,
        backbone,
        images: Sequence,
        config: F.ScaleConfig = F.ScaleConfig(scales=(1.0,)),  # noqa: B008 (frozen)
        *,
        progress: bool = False,
        info: dict | None = None,
    ) -> np.ndarray:
        """Images -> descriptors, as :func:`retrieval.extract_global` with this head.

        The images are shrunk to ``config.max_side``, resized to each of ``config.scales``,
        bucketed and padded exactly as :func:`retrieval.extract_global` does (the pooling is
        the learned head's own; a ``GlobalConfig``'s head, p and levels are not used); the
        pre-whitening vectors of the scales are combined by the power mean (the learned
        p for gem, 1 for rmac), then whitened.

        Args:
          backbone: the backbone the head was trained on (checked: :meth:`check_backbone`).
          images: as :func:`retrieval.extract_global` (arrays or paths).
          config: a :class:`retrieval.image.ScaleConfig` (default: one scale, max side 1024).
          progress, info: as :func:`retrieval.extract_global`.

        Returns:
          (N, D) float32, L2-normalized.
        """
        self.check_backbone(backbone)
        prm = self.params()
        vecs = have = None  # (S, N, D0) pre-whitening vectors; (S, N) scales each image has
        for mb in F.iter_feature_maps(backbone, images, config, progress=progress, info=info):
            v = np.asarray(_pool(prm, mb.features, mb.mask, head=self.head, levels=self.levels))
            if vecs is None:  # config and images are checked by now
                have = np.zeros((len(config.scales), len(images)), bool)
                vecs = np.zeros((*have.shape, v.shape[1]), np.float32)
            for r, (i, s) in enumerate(mb.items):
                vecs[s, i], have[s, i] = v[r], True
        v = G.combine_scales(vecs, have, self.combine_p)
        return np.asarray(_whiten(prm, jnp.asarray(v, _dtype(prm))), np.float32)
