"""Learned global heads on a frozen backbone: GeM with a learned p, R-MAC with a learned projection.

Two heads map a backbone's last conv map ``(N, h, w, C)`` (with a validity mask
``(N, h, w)``) to one L2-normalized vector per image:

* ``gem``: GeM pooling with a learned exponent p (Radenovic et al.), then L2;
* ``rmac``: the R-MAC regions (:func:`retrieval._src.pooling.regional_mac`); per
  region L2 -> ``(x - m) W`` -> L2 -> sum over regions -> L2 (Gordo et al.:
  the PCA shift m and the fully connected projection W, both learned; W is
  initialized with the PCA-whitening of training regions, m with their mean);

each optionally followed by a learned whitening ``L2((v - m_w) W_w)``,
initialized with Radenovic's Lw (:func:`retrieval.fit_learned_whitening` on the
head's outputs for the training images, the images of one group as matching
pairs; by default with the covariance of matching differences shrunk towards the
identity, ``GlobalHeadConfig.whiten_shrinkage``) and then trained with the rest as
a linear layer.

The parameters live in :class:`GlobalHead` (an NNX module, ``nnx.Param``
leaves); the forward is the pure :func:`head_forward` on a :class:`HeadParams`.

Training (:func:`train_global_head`). The backbone is frozen, so its maps are
computed once (:func:`prepare_maps`: every image shrunk to at most ``side``
pixels, never enlarged, padded to ``side x side`` with a mask, one backbone
compilation) and kept in memory as float16, bounded by
``GlobalHeadConfig.max_cache_mib`` (an InputError before any image is
described when the maps would not fit). The last backbone stage is not
unfrozen: only the head trains. Batches hold G groups x K images (triplet or
contrastive loss from ``ckn``, hardest-in-batch positives and negatives); with
``mining="pool"`` each group also brings M hard negatives re-mined at the start
of every epoch from a random pool of training images with the current head
(cirtorch), at most one per other group. Adam (optax) with a warm-up + cosine
schedule (``optax.warmup_cosine_decay_schedule``, evaluated on the host and
passed traced, so one compilation serves every step); p learns ``p_lr_scale``
times faster and is kept in [1, 64] (GeM is computed as s GeM(x / s), s the
channel max, so that x^p cannot overflow); an optional decoupled decay pulls every
parameter towards its initialization (L2-SP). One jitted step per (head, loss,
region count: the R-MAC projection runs on the valid regions only, at most
:func:`region_cap` of the training maps, not on the 50 slots of the padded region
table); a non-finite gradient skips the step. Validation mAP on other
images (groups protocol, :func:`retrieval.evaluate_scores`) after each epoch:
the best epoch is kept, early stopping after ``patience`` epochs without
progress. A checkpoint after every epoch; a resumed run ends with the same bits
as an uninterrupted one (batches and pools are drawn from (seed, epoch)).

Scale of the initial matrices. A PCA-whitening or Lw matrix has entries of very
different magnitudes from one problem to the next (1 / sqrt of variances).
Adam moves every entry by about the learning rate, so each initial matrix is
multiplied by one scalar that brings its RMS entry to 1 / sqrt(input dim) (the
scale of a standard initialization); the L2 normalization that follows makes
the head's output independent of that scalar.

References:
  F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN image retrieval with no
  human annotation", TPAMI 2018, sections 3.2 (GeM, learned p), 3.3 (Lw), 4
  (hard-negative mining from a pool). A. Gordo, J. Almazan, J. Revaud, D.
  Larlus, "End-to-end learning of deep visual representations for image
  retrieval", IJCV 2017, section 3 (R-MAC with shift + projection). G. Tolias,
  R. Sicre, H. Jegou, ICLR 2016 (R-MAC).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

import ckn
from ckn import InputError
from retrieval._src import global_desc as G
from retrieval._src import pooling
from retrieval._src.global_eval import group_pairs
from retrieval._src.metrics.image import evaluate_scores
from retrieval._src.postprocess import Whitening, fit_learned_whitening, fit_pca_whitening

HEAD_KINDS = ("gem", "rmac")
MINING = ("batch", "pool")
SCHEDULES = ("cosine", "constant")
#: Margins when ``GlobalHeadConfig.margin`` is None (cirtorch: contrastive 0.7;
#: triplet 0.1 on pooled vectors, 0.5 with a projection). Triplet 0.5 here: with 0.1
#: the batch-hard loss of a whitened head is 0 from the first step (measured,
#: benchmarks/train_global.py's training set), nothing to learn.
HEAD_MARGINS = {"triplet": 0.5, "contrastive": 0.7}
#: The range p is kept in after each step (p = 1 is the mean; p = 64 is close to the max).
P_BOUNDS = (1.0, 64.0)
#: Region vectors used to fit R-MAC's initial PCA (a seeded sample beyond this).
MAX_PCA_REGIONS = 20000
#: Images per call of the jitted forward when describing a whole set (padded).
DESCRIBE_CHUNK = 64
FORMAT, VERSION = "ckn-global-head", 1
_CONFIG_FILE, _ARRAYS_FILE = "config.json", "arrays.npz"
_CKPT_FORMAT, _CKPT_VERSION, _CKPT_FILE = "ckn-global-head-checkpoint", 1, "state.npz"
_LOSSES = {"triplet": ckn.batch_triplet_loss, "contrastive": ckn.batch_contrastive_loss}


# --------------------------------------------------------------------------- configuration


def _is_int(v, low: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= low


@dataclass(frozen=True)
class GlobalHeadConfig:
    """A learned global head and how it is trained.

    Attributes:
      head: "gem" (learned p) or "rmac" (regions + learned shift and projection).
      whiten: follow the head with a learned whitening (Lw-initialized, then trained).
      dim: output dimension. rmac: the projection's (None: C), which a whitening keeps
        when it can (min(dim, training images - 1)); gem + whitening: the whitening's
        (None: min(C, training images - 1)); gem without whitening keeps C.
      p: initial GeM exponent (3, cirtorch).
      levels: R-MAC levels.
      loss: "triplet" or "contrastive" (``ckn`` batch losses, hardest in batch).
      margin: the loss margin; None: ``HEAD_MARGINS[loss]``.
      epochs: passes over the training groups.
      groups_per_batch: G groups per batch.
      images_per_group: K images drawn per group (all of a smaller one, the rest masked).
      mining: "batch" (hardest in batch only) or "pool" (plus ``negatives`` hard
        negatives per group re-mined every epoch from a pool).
      negatives: M hard negatives per group with ``mining="pool"``.
      pool_size: training images in the random pool of each epoch.
      lr: peak learning rate of Adam.
      p_lr_scale: p's learning rate relative to ``lr``. cirtorch uses 10 with the whole
        network training; on a frozen backbone p is the gem head's only parameter and
        10 moved it from 3 to 3.14 in 165 steps, 100 to 3.7 (6.1 with pool mining),
        closer to the best fixed p on the validation set (benchmarks/train_global.py).
      schedule: "cosine" (warm-up, then decay to 0 over the planned steps) or "constant".
      warmup: fraction of the planned steps with a linear warm-up.
      whiten_shrinkage: alpha in [0, 1): the whitening's initialization (Lw) whitens the
        covariance of matching differences shrunk towards a multiple of the identity,
        (1 - alpha) S + alpha tr(S) / D I. 0 is Radenovic's Lw exactly; on a small training
        set it makes every training triplet satisfied (training mAP 100 %, loss ~0:
        nothing left to learn) and generalizes less well: 0.3 was best on the validation
        set of benchmarks/train_global.py (val mAP 57.5 at 0, 59.4 at 0.3, 58.9 at 0.6).
      weight_decay: decoupled decay of every parameter towards its initial value (L2-SP:
        the PCA / Lw initialization is a good head; 0 = none).
      patience: stop after this many epochs without a better validation mAP (None: never).
      side: training images are shrunk to at most this many pixels (long side; never
        enlarged) and padded to side x side; a multiple of the backbone's stride.
      max_cache_mib: bound of the in-memory float16 maps (training + validation).
    """

    head: str = "gem"
    whiten: bool = False
    dim: int | None = None
    p: float = 3.0
    levels: int = 3
    loss: str = "triplet"
    margin: float | None = None
    epochs: int = 30
    groups_per_batch: int = 16
    images_per_group: int = 4
    mining: str = "batch"
    negatives: int = 2
    pool_size: int = 1000
    lr: float = 1e-3
    p_lr_scale: float = 100.0
    schedule: str = "cosine"
    warmup: float = 0.05
    whiten_shrinkage: float = 0.3
    weight_decay: float = 0.0
    patience: int | None = 5
    side: int = 320
    max_cache_mib: int = 2048

    def __post_init__(self):
        if self.head not in HEAD_KINDS:
            raise InputError(f"head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        if self.loss not in _LOSSES:
            raise InputError(f"loss must be one of {', '.join(_LOSSES)}, got {self.loss!r}")
        if self.mining not in MINING:
            raise InputError(f"mining must be one of {', '.join(MINING)}, got {self.mining!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if not isinstance(self.whiten, bool):
            raise InputError(f"whiten must be a bool, got {self.whiten!r}")
        if self.dim is not None and not _is_int(self.dim, 1):
            raise InputError(f"dim must be None or an int >= 1, got {self.dim!r}")
        if self.head == "gem" and not self.whiten and self.dim is not None:
            raise InputError("a gem head without whitening keeps the C channels: dim must be None")
        for name, low in (
            ("levels", 1),
            ("epochs", 1),
            ("groups_per_batch", 2),
            ("images_per_group", 2),
            ("negatives", 1),
            ("pool_size", 2),
            ("side", 1),
            ("max_cache_mib", 1),
        ):
            if not _is_int(getattr(self, name), low):
                raise InputError(f"{name} must be an int >= {low}, got {getattr(self, name)!r}")
        for name in ("p", "lr", "p_lr_scale", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{name} must be a finite number, got {v!r}")
        if not P_BOUNDS[0] <= self.p <= P_BOUNDS[1]:
            raise InputError(f"p must be in [{P_BOUNDS[0]:g}, {P_BOUNDS[1]:g}], got {self.p}")
        if not self.lr > 0 or not self.p_lr_scale >= 0 or not self.weight_decay >= 0:
            raise InputError("lr > 0, p_lr_scale >= 0 and weight_decay >= 0 are required")
        if self.margin is not None and not (
            isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0
        ):
            raise InputError(f"margin must be a number > 0, got {self.margin!r}")
        for name in ("warmup", "whiten_shrinkage"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise InputError(f"{name} must be in [0, 1), got {v!r}")
        if self.patience is not None and not _is_int(self.patience, 1):
            raise InputError(f"patience must be None or an int >= 1, got {self.patience!r}")

    @property
    def margin_value(self) -> float:
        """The margin used: ``margin`` or ``HEAD_MARGINS[loss]``."""
        return HEAD_MARGINS[self.loss] if self.margin is None else float(self.margin)

    @property
    def batch_size(self) -> int:
        """Rows per batch: G (K + M) with pool mining, G K otherwise."""
        m = self.negatives if self.mining == "pool" else 0
        return self.groups_per_batch * (self.images_per_group + m)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- the pure forward


class HeadParams(NamedTuple):
    """Parameters of a head (a pytree; absent parts are None).

    Attributes:
      p: () GeM exponent (gem).
      shift: (C,) region shift m (rmac).
      proj: (C, D0) region projection W (rmac).
      w_shift: (D0,) whitening shift (whiten).
      w_proj: (D0, D) whitening matrix (whiten).
    """

    p: jax.Array | None = None
    shift: jax.Array | None = None
    proj: jax.Array | None = None
    w_shift: jax.Array | None = None
    w_proj: jax.Array | None = None


def _dtype(params: HeadParams):
    return (params.p if params.p is not None else params.proj).dtype


def pool_forward(
    params: HeadParams,
    maps: jax.Array,
    mask: jax.Array | None = None,
    *,
    kind: str,
    levels: int = 3,
    max_regions: int | None = None,
) -> jax.Array:
    """The head before its whitening: (N, h, w, C) maps -> (N, D0), L2-normalized.

    gem: L2(GeM_p(x)). rmac: per region r of :func:`pooling.regional_mac`,
    y_r = L2((L2(r) - m) W); then L2(sum of y_r over the valid regions).

    Args:
      params: a :class:`HeadParams` (float32, or float64 under x64).
      maps: (N, h, w, C) float maps (any float dtype; cast to the parameters').
      mask: (N, h, w) bool validity (a top-left rectangle per image), or None.
      kind: "gem" or "rmac" (static).
      levels: R-MAC levels (static).
      max_regions: rmac only (static): at most this many valid regions per image
        (:func:`region_cap`); the valid slots are gathered first, so the projection
        runs on them only (the slot table has 50 slots for 3 levels, a 7 x 7 map 14
        regions). None: every slot. The result is the same when no image has more.

    Returns:
      (N, D0) in the parameters' dtype; zeros for an image without valid positions.
    """
    x = maps.astype(_dtype(params))
    if kind == "gem":
        return pooling.l2_normalize(_scaled_gem(x, params.p, mask))
    regions, valid = pooling.regional_mac(x, levels, mask=mask)  # (N, R, C), (N, R)
    if max_regions is not None and max_regions < valid.shape[1]:
        first = jnp.argsort(~valid, axis=1, stable=True)[:, :max_regions]  # valid slots first
        regions = jnp.take_along_axis(regions, first[..., None], axis=1)
        valid = jnp.take_along_axis(valid, first, axis=1)
    return project_regions(params, regions, valid)


def _scaled_gem(x: jax.Array, p: jax.Array, mask: jax.Array | None) -> jax.Array:
    """GeM computed as s * GeM(x / s), s = each channel's max (not differentiated).

    The same function of x and p (GeM is positively homogeneous: GeM(c x) = c GeM(x)),
    and the same gradients, but (x / s)^p <= 1 cannot overflow: in float32 a plain
    x^p overflows for p = 32 and x = 16 (EfficientNet's maps reach 6, and 6^64 does).
    """
    valid = jnp.ones(x.shape[:3], bool) if mask is None else mask
    top = jnp.max(jnp.where(valid[..., None], x, 0.0), axis=(1, 2), keepdims=True)
    s = jax.lax.stop_gradient(jnp.maximum(top, 1e-6))  # (N, 1, 1, C), >= GeM's eps
    return pooling.gem(x / s, p, eps=1e-6 / s, mask=mask) * s[:, 0, 0, :]


def project_regions(params: HeadParams, regions: jax.Array, valid: jax.Array) -> jax.Array:
    """Gordo's aggregation of region MACs: L2(sum over valid r of L2((L2(r) - m) W)).

    The part of the rmac head that depends on its parameters (the regions do not).

    Args:
      params: with ``shift`` (C,) and ``proj`` (C, D0).
      regions: (N, R, C) region MACs (:func:`pooling.regional_mac`).
      valid: (N, R) bool.

    Returns:
      (N, D0), L2-normalized.
    """
    r = pooling.l2_normalize(regions.astype(params.proj.dtype)) - params.shift[None, None, :]
    y = pooling.l2_normalize(jnp.matmul(r, params.proj, precision="highest"))
    y = jnp.where(valid[..., None], y, 0.0)
    return pooling.l2_normalize(jnp.sum(y, axis=1))


def whiten_forward(params: HeadParams, v: jax.Array) -> jax.Array:
    """The learned whitening L2((v - m_w) W_w) of (N, D0) vectors; identity without one."""
    if params.w_proj is None:
        return v
    y = jnp.matmul(v - params.w_shift[None, :], params.w_proj, precision="highest")
    return pooling.l2_normalize(y)


def head_forward(
    params: HeadParams,
    maps: jax.Array,
    mask: jax.Array | None = None,
    *,
    kind: str,
    levels: int = 3,
    max_regions: int | None = None,
) -> jax.Array:
    """A learned head: (N, h, w, C) maps (+ (N, h, w) mask) -> (N, D) L2-normalized.

    :func:`pool_forward` then :func:`whiten_forward`; pure and differentiable in
    every parameter (p included).
    """
    v = pool_forward(params, maps, mask, kind=kind, levels=levels, max_regions=max_regions)
    return whiten_forward(params, v)


def region_cap(mask: np.ndarray, levels: int = 3, overlap: float = 0.4) -> int:
    """The most R-MAC regions of any image of a (N, h, w) validity mask (host, exact)."""
    mask = np.asarray(mask, bool)
    vh = mask.any(axis=2).sum(axis=1)
    vw = mask.any(axis=1).sum(axis=1)
    sizes = {(int(a), int(b)) for a, b in zip(vh, vw) if a and b}
    return max((len(pooling.rmac_regions(a, b, levels, overlap)) for a, b in sizes), default=1)


_STATIC = ("kind", "levels", "max_regions")
_forward = jax.jit(head_forward, static_argnames=_STATIC)
_pool = jax.jit(pool_forward, static_argnames=_STATIC)
_whiten = jax.jit(whiten_forward)


def _chunks(fn, maps: np.ndarray, mask: np.ndarray | None, chunk: int = DESCRIBE_CHUNK):
    """fn over fixed-size chunks of rows (the last one padded): one compilation per map size."""
    n = maps.shape[0]
    out = None
    size = min(chunk, n)
    for start in range(0, n, size):
        stop = min(n, start + size)
        x = np.zeros((size, *maps.shape[1:]), maps.dtype)
        x[: stop - start] = maps[start:stop]
        m = None
        if mask is not None:
            m = np.zeros((size, *mask.shape[1:]), bool)
            m[: stop - start] = mask[start:stop]
        v = np.asarray(fn(x, m))
        if out is None:
            out = np.empty((n, v.shape[1]), np.float32)
        out[start:stop] = v[: stop - start]
    return out


# --------------------------------------------------------------------------- the NNX module


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
      kind: "gem" or "rmac".
      channels: C, the backbone channels the head takes.
      levels: R-MAC levels.
      p, shift, proj, w_shift, w_proj: ``nnx.Param`` or None (see :class:`HeadParams`).
      backbone: :func:`backbone_info` of the backbone it was trained on ({} if unknown).
      config: its :class:`GlobalHeadConfig` (None if unknown).
      training: the training report (a JSON-ready dict, {} if none).

    Examples:
      >>> head = retrieval.load_global_head("heads/gem")
      >>> v = head.describe(maps, mask)  # (N, h, w, C) backbone maps -> (N, D)
      >>> v = head.describe_images(net, ["a.jpg", "b.jpg"])  # images -> (2, D)
    """

    def __init__(
        self,
        params: HeadParams,
        *,
        kind: str,
        channels: int,
        levels: int = 3,
        backbone: dict | None = None,
        config: GlobalHeadConfig | None = None,
        training: dict | None = None,
    ):
        if kind not in HEAD_KINDS:
            raise InputError(f"kind must be one of {', '.join(HEAD_KINDS)}, got {kind!r}")
        need = ("p",) if kind == "gem" else ("shift", "proj")
        if any(getattr(params, k) is None for k in need):
            raise InputError(f"a {kind} head needs {', '.join(need)}")
        if (params.w_shift is None) != (params.w_proj is None):
            raise InputError("a whitening needs both w_shift and w_proj")
        if not _is_int(channels, 1):
            raise InputError(f"channels must be an int >= 1, got {channels!r}")
        for name, axis in (("proj", 0), ("w_shift", 0)):
            v = getattr(params, name)
            d0 = channels if name == "proj" or kind == "gem" else params.proj.shape[1]
            if v is not None and jnp.shape(v)[axis] != d0:
                raise InputError(f"{name} has shape {jnp.shape(v)}, expected {d0} on axis {axis}")
        self.kind, self.levels, self.channels = kind, int(levels), int(channels)
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
        return int(self.proj.shape[1]) if self.kind == "rmac" else self.channels

    @property
    def whitened(self) -> bool:
        return self.w_proj is not None

    @property
    def combine_p(self) -> float:
        """Power of the multi-scale mean: the learned p of a gem head, else 1 (cirtorch)."""
        return float(self.p.get_value()) if self.kind == "gem" else 1.0

    def __call__(self, maps: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return _forward(self.params(), maps, mask, kind=self.kind, levels=self.levels)

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
        fn = lambda x, m: _forward(prm, x, m, kind=self.kind, levels=self.levels)
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
        config: G.GlobalConfig = G.GlobalConfig(scales=(1.0,)),  # noqa: B008 (frozen)
        *,
        progress: bool = False,
        info: dict | None = None,
    ) -> np.ndarray:
        """Images -> descriptors, as :func:`retrieval.extract_global` with this head.

        The images are shrunk to ``config.max_side``, resized to each of ``config.scales``,
        bucketed and padded exactly as :func:`retrieval.extract_global` does (its
        ``head`` / ``p`` / ``levels`` are not used: the learned head's are); the
        pre-whitening vectors of the scales are combined by the power mean (the learned
        p for gem, 1 for rmac), then whitened.

        Args:
          backbone: the backbone the head was trained on (checked: :meth:`check_backbone`).
          images: as :func:`retrieval.extract_global` (arrays or paths).
          config: a :class:`retrieval.GlobalConfig` (default: one scale, max side 1024).
          progress, info: as :func:`retrieval.extract_global`.

        Returns:
          (N, D) float32, L2-normalized.
        """
        self.check_backbone(backbone)
        src, sizes, rec = G._prepare(backbone, images, config)
        prm = self.params()
        pool = lambda x, m: _pool(prm, x, m, kind=self.kind, levels=self.levels)
        vecs, have = _per_scale(backbone, src, sizes, config, pool, progress, rec)
        G._report(backbone, rec, info)
        v = G.combine_scales(vecs, have, self.combine_p)
        return np.asarray(_whiten(prm, jnp.asarray(v, _dtype(prm))), np.float32)


def _per_scale(backbone, src, sizes, config, pool, progress, rec):
    """Pooled (pre-whitening) vectors of every image at every scale: ((S, N, D0), have (S, N)).

    The bucketing of ``global_desc._extract_pooled`` (same sizes, padding, masks).
    """
    batch = G._batch_size(config)
    n_scales, n = len(config.scales), len(src)
    items: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    have = np.zeros((n_scales, n), bool)
    for i, (h, w) in enumerate(sizes):
        for s, (hs, ws) in enumerate(G.scaled_sizes(h, w, config, backbone.stride)):
            if min(hs, ws) < backbone.min_size:
                rec["skipped_scales"].append((src.name(i), config.scales[s]))
                continue
            key = (
                G._ceil_div(hs, config.bucket) * config.bucket,
                G._ceil_div(ws, config.bucket) * config.bucket,
            )
            items.setdefault(key, []).append((i, s, hs, ws))
            have[s, i] = True
        if not have[:, i].any():
            raise InputError(
                f"{src.name(i)}: {h}x{w} px is smaller than the {backbone.min_size} px that "
                f"{backbone.name} needs at every scale"
            )
    colour, stride = G.pad_colour(backbone), backbone.stride
    vecs = None
    bar = tqdm(total=int(have.sum()), desc="describing", unit="image-scale", disable=not progress)
    last = (-1, None)
    for key in sorted(items):
        rec["buckets"][f"{key[0]}x{key[1]}"] = len(items[key])
        group = items[key]
        for start in range(0, len(group), batch):
            chunk = group[start : start + batch]
            x = np.empty((batch, key[0], key[1], 3), np.uint8)
            x[:] = colour
            for r, (i, _, hs, ws) in enumerate(chunk):
                if last[0] != i:
                    last = (i, src.load(i))
                x[r, :hs, :ws] = G._resize(last[1], hs, ws)
            feats = backbone.features(x)
            mask = np.zeros(feats.shape[:3], bool)
            for r, (_, _, hs, ws) in enumerate(chunk):
                mask[r, : G._ceil_div(hs, stride), : G._ceil_div(ws, stride)] = True
            v = np.asarray(pool(feats, mask), np.float32)
            if vecs is None:
                vecs = np.zeros((n_scales, n, v.shape[1]), np.float32)
            for r, (i, s, _, _) in enumerate(chunk):
                vecs[s, i] = v[r]
            rec["batches"] += 1
            bar.update(len(chunk))
    bar.close()
    return vecs, have


# --------------------------------------------------------------------------- backbone maps


class HeadMaps(NamedTuple):
    """Backbone maps of a set of images, computed once for training.

    Attributes:
      maps: (N, h, w, C) float16.
      mask: (N, h, w) bool validity (each image's own cells, top-left).
    """

    maps: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.maps.nbytes + self.mask.nbytes)


def maps_bytes(n: int, backbone, side: int) -> int:
    """Bytes of the float16 maps (+ mask) of n images padded to side x side."""
    cells = -(-side // backbone.stride)
    return n * cells * cells * (2 * backbone.channels + 1)


def prepare_maps(
    backbone,
    images: Sequence,
    *,
    side: int = 320,
    max_bytes: int | None = None,
    progress: bool = False,
    info: dict | None = None,
) -> HeadMaps:
    """The backbone's maps of training images, float16, padded to one size.

    Every image is shrunk so that its long side is at most ``side`` (never
    enlarged; sides snapped to the stride, as :func:`retrieval.extract_global`),
    padded at the bottom and right with the backbone's mean colour to
    ``side x side``, and run through the backbone: one compilation for the whole set.

    Args:
      backbone: a :class:`retrieval.Backbone` (or the ``ckn`` backbone).
      images: N uint8 arrays or image paths (read one at a time).
      side: padded size in pixels, a multiple of the backbone's stride.
      max_bytes: refuse (before describing anything) maps above this many bytes.
      progress: a progress bar.
      info: filled with ``images``, ``gray``, ``seconds``, ``bytes``.

    Returns:
      A :class:`HeadMaps`.

    Raises:
      InputError: ``side`` not a multiple of the stride, an image too small or too
        elongated for the network, maps above ``max_bytes``, maps that overflow float16.
    """
    if not _is_int(side, 1) or side % backbone.stride:
        raise InputError(
            f"side must be a multiple of {backbone.name}'s stride ({backbone.stride} px), "
            f"got {side}"
        )
    cfg = G.GlobalConfig(scales=(1.0,), max_side=side, bucket=side)
    src, sizes, rec = G._prepare(backbone, images, cfg)
    n = len(src)
    need = maps_bytes(n, backbone, side)
    if max_bytes is not None and need > max_bytes:
        raise InputError(
            f"the float16 maps of {n} images at {side} px need {need / 2**20:.0f} MiB, above "
            f"the {max_bytes / 2**20:.0f} MiB limit: use a smaller side, fewer images or a "
            "higher limit"
        )
    stride = backbone.stride
    snapped = [G.scaled_sizes(h, w, cfg, stride)[0] for h, w in sizes]
    for i, (hs, ws) in enumerate(snapped):
        if min(hs, ws) < backbone.min_size:
            raise InputError(
                f"{src.name(i)}: {sizes[i][0]}x{sizes[i][1]} px shrunk to at most {side} px "
                f"is smaller than the {backbone.min_size} px that {backbone.name} needs"
            )
    t0 = time.perf_counter()
    batch = G._batch_size(cfg)
    colour = G.pad_colour(backbone)
    maps = mask = None
    bar = tqdm(total=n, desc="backbone maps", unit="image", disable=not progress)
    for start in range(0, n, batch):
        rows = range(start, min(n, start + batch))
        x = np.empty((batch, side, side, 3), np.uint8)
        x[:] = colour
        for r, i in enumerate(rows):
            hs, ws = snapped[i]
            x[r, :hs, :ws] = G._resize(src.load(i), hs, ws)
        f = np.asarray(backbone.features(x))
        if maps is None:
            maps = np.zeros((n, *f.shape[1:]), np.float16)
            mask = np.zeros((n, *f.shape[1:3]), bool)
        for r, i in enumerate(rows):
            maps[i] = f[r]
            hs, ws = snapped[i]
            mask[i, : G._ceil_div(hs, stride), : G._ceil_div(ws, stride)] = True
        bar.update(len(rows))
    bar.close()
    if not np.isfinite(maps).all():
        raise InputError(f"{backbone.name} feature values overflow float16")
    if info is not None:
        info.update(
            images=n,
            gray=rec["gray"],
            seconds=time.perf_counter() - t0,
            bytes=int(maps.nbytes + mask.nbytes),
        )
    return HeadMaps(maps, mask)


# --------------------------------------------------------------------------- initialization


def _learned_whitening(x: np.ndarray, pairs: np.ndarray, dim: int, shrinkage: float):
    """Radenovic's Lw (:func:`retrieval.fit_learned_whitening`), with the covariance of
    matching differences shrunk towards the identity when ``shrinkage`` > 0.

    Returns a :class:`retrieval.Whitening`-like (mean (D,), projection (dim, D)).
    """
    if shrinkage == 0:
        return fit_learned_whitening(x, pairs, dim=dim)
    a = np.asarray(x, np.float64)
    big_d = a.shape[1]
    q, p = pairs[:, 0], pairs[:, 1]
    mean = a[q].mean(axis=0)
    diff = a[q] - a[p]
    s = diff.T @ diff / diff.shape[0]
    s = (1.0 - shrinkage) * s + shrinkage * np.trace(s) / big_d * np.eye(big_d)
    p1 = np.linalg.inv(np.linalg.cholesky(s))  # positive definite: shrinkage > 0
    y = (a - mean) @ p1.T
    _, vec = np.linalg.eigh(y.T @ y)
    vec = vec[:, ::-1]
    big = np.argmax(np.abs(vec), axis=0)
    vec = vec * np.sign(vec[big, np.arange(big_d)])[None, :]
    return Whitening(mean, (vec.T @ p1)[:dim])


def _rescaled(matrix: np.ndarray) -> np.ndarray:
    """matrix times the scalar that brings its RMS entry to 1 / sqrt(rows) (module docstring)."""
    rms = float(np.sqrt(np.mean(matrix * matrix)))
    return matrix / max(rms * math.sqrt(matrix.shape[0]), 1e-30)


@functools.partial(jax.jit, static_argnames=("levels",))
def _unit_regions(x, mask, levels: int):
    r, valid = pooling.regional_mac(x.astype(jnp.float32), levels, mask=mask)
    return pooling.l2_normalize(r), valid


def _regions(maps: HeadMaps, levels: int, limit: int, seed: int) -> np.ndarray:
    """L2-normalized valid R-MAC region vectors of the images, at most ``limit`` (seeded sample)."""
    out = []
    for start in range(0, len(maps), DESCRIBE_CHUNK):
        sl = slice(start, start + DESCRIBE_CHUNK)
        r, valid = _unit_regions(maps.maps[sl], maps.mask[sl], levels)
        out.append(np.asarray(r)[np.asarray(valid)])
    regions = np.concatenate(out).astype(np.float64)
    if regions.shape[0] > limit:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(regions.shape[0], limit, False))
        regions = regions[keep]
    return regions


def init_head_params(maps: HeadMaps, labels, config: GlobalHeadConfig, *, seed: int = 0):
    """Initial parameters from the training maps (Gordo's PCA for rmac, Radenovic's Lw).

    Args:
      maps: the training images' :class:`HeadMaps`.
      labels: (N,) group ids (the Lw matching pairs).
      config: the head.
      seed: the region sample of the PCA when there are more than ``MAX_PCA_REGIONS``.

    Returns:
      (:class:`HeadParams` float32, info dict: dimensions and fitted sizes).

    Raises:
      InputError: a projection dimension above the regions' rank, no group of two
        images for the whitening.
    """
    c = maps.maps.shape[3]
    info: dict = {"channels": int(c)}
    params = HeadParams()
    if config.head == "gem":
        params = params._replace(p=jnp.asarray(config.p, jnp.float32))
    else:
        regions = _regions(maps, config.levels, MAX_PCA_REGIONS, seed)
        dim = c if config.dim is None else config.dim
        if dim > c:
            raise InputError(f"dim {dim} exceeds the backbone's {c} channels")
        pca = fit_pca_whitening(regions, dim)
        params = params._replace(
            shift=jnp.asarray(pca.mean, jnp.float32),
            proj=jnp.asarray(_rescaled(pca.projection.T), jnp.float32),
        )
        info.update(pca_regions=int(regions.shape[0]), projection_dim=int(dim))
    if config.whiten:
        cap = region_cap(maps.mask, config.levels) if config.head == "rmac" else None
        fn = lambda x, m: _pool(
            params, x, m, kind=config.head, levels=config.levels, max_regions=cap
        )
        v = _chunks(fn, maps.maps, maps.mask)
        pairs = group_pairs(labels)
        if pairs.shape[0] == 0:
            raise InputError("learned whitening needs groups: no group holds two training images")
        d_in = v.shape[1]
        if config.head == "gem" and config.dim is not None:
            dim = config.dim
        else:  # beyond n - 1 directions the training vectors have no variance
            dim = min(d_in, v.shape[0] - 1)
        if dim > d_in:
            raise InputError(f"whitening dim {dim} exceeds its input dimension {d_in}")
        lw = _learned_whitening(v, pairs, dim, config.whiten_shrinkage)
        params = params._replace(
            w_shift=jnp.asarray(lw.mean, jnp.float32),
            w_proj=jnp.asarray(_rescaled(lw.projection.T), jnp.float32),
        )
        info.update(whiten_pairs=int(pairs.shape[0]), whiten_dim=int(dim))
    return params, info


# --------------------------------------------------------------------------- report


@dataclass
class GlobalHeadReport:
    """What :func:`train_global_head` measured.

    Attributes:
      history: one dict per epoch (epoch, loss, val_map, p, seconds, steps); epoch 0 is
        the initial head (val_map only).
      best_epoch: epoch of the returned head (best validation mAP; the last without
        validation).
      best_val_map: its validation mAP in [0, 1] (None without validation).
      epochs_done, steps: totals, resumed part included.
      finished, stopped_early: the planned epochs ran / early stopping fired.
      resumed_from: epoch of the checkpoint resumed from, or None.
      seconds: wall time of this call; init_seconds: of the initialization;
        steps_per_second: of its training steps.
      nonfinite_steps: steps skipped for a non-finite gradient (expected 0).
      traces: compilations of the training step during this call (0 or 1).
      init: :func:`init_head_params`'s info.
      config: the GlobalHeadConfig as a dict.
    """

    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float | None = None
    epochs_done: int = 0
    steps: int = 0
    finished: bool = False
    stopped_early: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    init_seconds: float = 0.0
    steps_per_second: float = 0.0
    nonfinite_steps: int = 0
    traces: int = 0
    init: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- batches and step


def _group_rows(labels: np.ndarray) -> list[np.ndarray]:
    """Rows of every group with two or more members (labels >= 0), in label order."""
    out = []
    for g in np.unique(labels[labels >= 0]):
        rows = np.flatnonzero(labels == g)
        if rows.size >= 2:
            out.append(rows)
    return out


class _Plan(NamedTuple):
    rows: np.ndarray  # (S, B) int64 image rows
    labels: np.ndarray  # (S, B) int32 group ids (-1: padding)
    mask: np.ndarray  # (S, B) bool


def _epoch_plan(groups, labels, cfg: GlobalHeadConfig, seed: int, epoch: int, mine=None) -> _Plan:
    """One epoch: every group once, in an order drawn from (seed, epoch); K members each.

    ``mine(anchors (G,)) -> (G, M) rows, (G, M) valid`` adds hard negatives per group.
    """
    rng = np.random.default_rng([seed, epoch])
    g, k = cfg.groups_per_batch, cfg.images_per_group
    m = cfg.negatives if mine is not None else 0
    order = rng.permutation(len(groups))
    steps = -(-len(groups) // g)
    rows = np.zeros((steps, g, k + m), np.int64)
    mask = np.zeros((steps, g, k + m), bool)
    for j, gi in enumerate(order):
        members = groups[gi]
        take = rng.choice(members, size=min(k, members.size), replace=False)
        rows[j // g, j % g, : take.size] = take
        mask[j // g, j % g, : take.size] = True
    if mine is not None:
        for s in range(steps):
            have = mask[s, :, 0]
            neg, ok = mine(rows[s, have, 0])
            rows[s, have, k:], mask[s, have, k:] = neg, ok
    lab = np.where(mask, labels[rows], -1).astype(np.int32)
    return _Plan(rows.reshape(steps, -1), lab.reshape(steps, -1), mask.reshape(steps, -1))


def _pool_miner(desc: np.ndarray, labels: np.ndarray, cfg: GlobalHeadConfig, seed, epoch):
    """cirtorch's mining: a random pool of training images; per anchor the M most similar
    images of other groups in it, at most one per group (descriptors of this epoch's start)."""
    rng = np.random.default_rng([seed, epoch, 1])
    n = labels.shape[0]
    pool = np.sort(rng.choice(n, size=min(cfg.pool_size, n), replace=False))
    pdesc, plab = desc[pool], labels[pool]
    m = cfg.negatives

    def mine(anchors: np.ndarray):
        neg = np.zeros((anchors.size, m), np.int64)
        ok = np.zeros((anchors.size, m), bool)
        sims = desc[anchors] @ pdesc.T  # (G, P)
        for a, row in enumerate(anchors):
            seen = {int(labels[row])}
            j = 0
            for c in np.argsort(-sims[a], kind="stable"):
                if int(plab[c]) in seen:
                    continue
                seen.add(int(plab[c]))
                neg[a, j], ok[a, j] = pool[c], True
                j += 1
                if j == m:
                    break
        return neg, ok

    return mine


_ADAM = optax.scale_by_adam()
_TRACES = [0]  # compilations of _train_step (reported; tested)


@functools.partial(jax.jit, static_argnames=("kind", "levels", "cap", "loss"))
def _train_step(
    kind, levels, cap, loss, params, params0, opt_state, maps, mask, labels, rowmask, hyper
):
    """One Adam step on a batch; ``hyper`` = (lr, margin, p_lr_scale, weight decay), traced.

    Returns (params, opt_state, loss, finite); a non-finite gradient leaves the
    parameters and the optimizer state unchanged.
    """
    _TRACES[0] += 1
    lr, margin, p_scale, decay = hyper

    def objective(prm):
        v = head_forward(prm, maps, mask, kind=kind, levels=levels, max_regions=cap)
        return _LOSSES[loss](v, labels, margin, rowmask)

    value, grads = jax.value_and_grad(objective)(params)
    leaves = jax.tree.leaves(grads)
    finite = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.isfinite(g).all() for g in leaves]))
    grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    with jax.numpy_dtype_promotion("standard"):  # optax's b1 ** count (float ** int32)
        updates, new_opt = _ADAM.update(grads, opt_state)
    new = jax.tree.map(lambda p, u, p0: p - lr * (u + decay * (p - p0)), params, updates, params0)
    if params.p is not None:
        p = params.p - lr * p_scale * (updates.p + decay * (params.p - params0.p))
        new = new._replace(p=jnp.clip(p, *P_BOUNDS))
    keep = lambda a, b: jnp.where(finite, a, b)
    return jax.tree.map(keep, new, params), jax.tree.map(keep, new_opt, opt_state), value, finite


def _schedule(cfg: GlobalHeadConfig, total: int):
    warm = int(round(cfg.warmup * total))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, max(total, warm + 1), 0.0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(warm, 1)), optax.constant_schedule(cfg.lr)],
        [warm],
    )


# --------------------------------------------------------------------------- checkpoints


def _fingerprint(maps, labels, validation, cfg, seed) -> dict:
    doc = {
        "config": cfg.to_dict(),
        "seed": seed,
        "data": _fingerprint_arrays(maps.maps, maps.mask, labels)[:16],
        "validation": None
        if validation is None
        else _fingerprint_arrays(validation[0].maps, validation[0].mask, validation[1])[:16],
    }
    return json.loads(json.dumps(doc))


def _save_checkpoint(folder: Path, meta: dict, trees: dict) -> None:
    arrays = {"meta": np.asarray(json.dumps(meta))}
    for name, tree in trees.items():
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}.{i}"] = np.asarray(leaf)
    folder.mkdir(parents=True, exist_ok=True)
    with ckn.atomic_path(folder / _CKPT_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _load_checkpoint(folder: Path, expect: dict, templates: dict) -> tuple[dict, dict]:
    path = folder / _CKPT_FILE
    if not path.is_file():
        raise InputError(f"no checkpoint to resume in {folder} (missing {_CKPT_FILE})")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            stored = {k: z[k] for k in z.files if k != "meta"}
    except (ValueError, OSError, KeyError, EOFError) as e:
        raise InputError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
    if meta.get("format") != _CKPT_FORMAT or meta.get("version") != _CKPT_VERSION:
        raise InputError(f"{path}: not a global-head checkpoint of version {_CKPT_VERSION}")
    got = meta.get("fingerprint", {})
    diff = sorted(k for k in expect if k != "config" and got.get(k) != expect[k])
    diff += sorted(
        f"config.{k}" for k, v in expect["config"].items() if got.get("config", {}).get(k) != v
    )
    if diff:
        raise InputError(
            f"{path}: a checkpoint of another run (differs in: {', '.join(diff)}); start again "
            "without resuming"
        )
    trees = {}
    for name, template in templates.items():
        leaves, treedef = jax.tree.flatten(template)
        try:
            new = [stored[f"{name}.{i}"] for i in range(len(leaves))]
        except KeyError:
            raise InputError(f"{path}: checkpoint arrays do not match the head") from None
        if any(a.shape != jnp.shape(b) for a, b in zip(new, leaves)):
            raise InputError(f"{path}: checkpoint arrays do not match the head")
        trees[name] = jax.tree.unflatten(
            treedef, [jnp.asarray(a, jnp.result_type(b)) for a, b in zip(new, leaves)]
        )
    return meta, trees


# --------------------------------------------------------------------------- training


def _check_data(maps, labels, what: str) -> np.ndarray:
    if not isinstance(maps, HeadMaps):
        raise InputError(f"{what} maps must be HeadMaps (prepare_maps), got {type(maps).__name__}")
    if maps.maps.ndim != 4 or maps.mask.shape != maps.maps.shape[:3]:
        raise InputError(
            f"{what} maps must be (N, h, w, C) with a (N, h, w) mask, got "
            f"{maps.maps.shape} and {maps.mask.shape}"
        )
    lab = np.asarray(labels)
    if lab.shape != (len(maps),) or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"{what} labels must be (N,) ints with N = {len(maps)}, got {lab.shape}")
    return lab.astype(np.int64)


def validation_map(head_params: HeadParams, maps: HeadMaps, labels, config, cap=None) -> float:
    """Groups-protocol mAP (every image of a group queries the others) of a head on maps."""
    fn = lambda x, m: _forward(
        head_params, x, m, kind=config.head, levels=config.levels, max_regions=cap
    )
    v = _chunks(fn, maps.maps, maps.mask)
    return float(evaluate_scores(v.astype(np.float64) @ v.T.astype(np.float64), labels).mean_ap)


def train_global_head(
    maps: HeadMaps,
    labels,
    config: GlobalHeadConfig = GlobalHeadConfig(),  # noqa: B008 (frozen)
    *,
    seed: int = 0,
    validation: tuple[HeadMaps, np.ndarray] | None = None,
    backbone: dict | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> tuple[GlobalHead, GlobalHeadReport]:
    """Trains a global head on precomputed backbone maps of image groups.

    Args:
      maps: the training images' :class:`HeadMaps` (:func:`prepare_maps`).
      labels: (N,) int group ids (one group = one scene / object); -1: a distractor
        (never an anchor nor a positive; pool mining may pick it as a negative).
      config: the head and its training.
      seed: batches and pools are drawn from (seed, epoch): the same seed, the same head.
      validation: (maps, labels) of OTHER images, for the validation mAP, the best
        epoch and early stopping; None: the last epoch is kept.
      backbone: :func:`backbone_info` of the backbone, stored in the head.
      progress: a progress bar with the loss and the validation mAP.
      checkpoint: a folder; ``state.npz`` is written there (atomically) after every epoch.
      resume: continue from the checkpoint (same data, config, seed: checked).
      stop_after: return after this many epochs in total (the schedule still plans
        ``config.epochs``); resume later.

    Returns:
      (:class:`GlobalHead` of the best epoch, :class:`GlobalHeadReport`).

    Raises:
      InputError: bad maps or labels, fewer than two groups of two images, validation
        without a group of two, a checkpoint of another run or none to resume.
    """
    t_start = time.perf_counter()
    traces0 = _TRACES[0]
    if not isinstance(config, GlobalHeadConfig):
        raise InputError(f"config must be a GlobalHeadConfig, got {type(config).__name__}")
    lab = _check_data(maps, labels, "training")
    # A distractor is a group of its own: never an anchor nor a positive (not even of
    # another distractor), still a negative that pool mining can pick.
    lab = lab.copy()
    alone = lab < 0
    lab[alone] = lab.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    groups = _group_rows(lab)
    if len(groups) < 2:
        raise InputError(
            f"{len(groups)} group(s) of two or more images among {lab.shape[0]} training "
            "images: training needs at least two"
        )
    val_lab = None
    if validation is not None:
        val_lab = _check_data(validation[0], validation[1], "validation")
        if not _group_rows(val_lab):
            raise InputError("the validation images have no group of two or more images")
        if validation[0].maps.shape[3] != maps.maps.shape[3]:
            raise InputError("validation and training maps have different channels")
    if resume and checkpoint is None:
        raise InputError("resume needs a checkpoint folder")
    t0 = time.perf_counter()
    params0, init_info = init_head_params(maps, lab, config, seed=seed)
    report = GlobalHeadReport(config=config.to_dict(), init=init_info)
    report.init_seconds = time.perf_counter() - t0
    params, opt_state, best = params0, _ADAM.init(params0), params0
    fingerprint = _fingerprint(maps, lab, validation, config, seed)
    steps_per_epoch = -(-len(groups) // config.groups_per_batch)
    total = config.epochs * steps_per_epoch
    schedule = _schedule(config, total)
    epoch, step, bad = 0, 0, 0
    kind, levels = config.head, config.levels
    cap = cap_val = None
    if kind == "rmac":
        cap = region_cap(maps.mask, levels)
        cap_val = None if validation is None else region_cap(validation[0].mask, levels)

    def evaluate(p) -> float | None:
        if validation is None:
            return None
        return validation_map(p, validation[0], val_lab, config, cap_val)

    def p_value(p) -> float | None:
        return None if p.p is None else float(p.p)

    if resume:
        templates = {"params": params, "opt": opt_state, "best": best}
        meta, trees = _load_checkpoint(Path(checkpoint), fingerprint, templates)
        params, opt_state, best = trees["params"], trees["opt"], trees["best"]
        epoch, step, bad = meta["epoch"], meta["step"], meta["bad_epochs"]
        report.history, (report.best_epoch, report.best_val_map) = meta["history"], meta["best"]
        report.nonfinite_steps, report.finished = meta["nonfinite_steps"], meta["finished"]
        report.stopped_early, report.resumed_from = meta["stopped_early"], epoch
    else:
        v0 = evaluate(params)
        report.history.append(
            {
                "epoch": 0,
                "loss": None,
                "val_map": v0,
                "p": p_value(params),
                "seconds": 0.0,
                "steps": 0,
            }
        )
        report.best_val_map = v0
    hyper_fixed = tuple(
        np.float32(v) for v in (config.margin_value, config.p_lr_scale, config.weight_decay)
    )
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    bar = tqdm(total=total, initial=step, desc="training head", unit="step", disable=not progress)
    train_steps, train_seconds = 0, 0.0
    while not report.finished and epoch < last:
        epoch += 1
        t0 = time.perf_counter()
        mine = None
        if config.mining == "pool":
            fn = lambda x, m, p=params: _forward(p, x, m, kind=kind, levels=levels, max_regions=cap)
            desc = _chunks(fn, maps.maps, maps.mask)
            mine = _pool_miner(desc, lab, config, seed, epoch)
        plan = _epoch_plan(groups, lab, config, seed, epoch, mine)
        losses, weights = [], []
        for s in range(plan.rows.shape[0]):
            rows = plan.rows[s]
            hyper = (np.float32(schedule(step)), *hyper_fixed)
            params, opt_state, value, finite = _train_step(
                kind,
                levels,
                cap,
                config.loss,
                params,
                params0,
                opt_state,
                maps.maps[rows],
                maps.mask[rows],
                plan.labels[s],
                plan.mask[s],
                hyper,
            )
            step += 1
            report.nonfinite_steps += int(not bool(finite))
            losses.append(float(value))
            weights.append(int(plan.mask[s].sum()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
        seconds = time.perf_counter() - t0
        train_steps, train_seconds = train_steps + len(losses), train_seconds + seconds
        v = evaluate(params)
        loss = float(np.average(losses, weights=weights))
        report.history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "val_map": v,
                "p": p_value(params),
                "seconds": seconds,
                "steps": len(losses),
            }
        )
        if v is None or v > report.best_val_map:
            best, report.best_epoch, report.best_val_map, bad = params, epoch, v, 0
        else:
            bad += 1
        if v is not None:
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", val_mAP=f"{100 * v:.2f}")
        report.stopped_early = (
            config.patience is not None and v is not None and bad >= config.patience
        )
        report.finished = report.stopped_early or epoch == config.epochs
        if checkpoint is not None:
            meta = {
                "format": _CKPT_FORMAT,
                "version": _CKPT_VERSION,
                "fingerprint": fingerprint,
                "epoch": epoch,
                "step": step,
                "bad_epochs": bad,
                "history": report.history,
                "best": [report.best_epoch, report.best_val_map],
                "finished": report.finished,
                "nonfinite_steps": report.nonfinite_steps,
                "stopped_early": report.stopped_early,
            }
            _save_checkpoint(
                Path(checkpoint), meta, {"params": params, "opt": opt_state, "best": best}
            )
    bar.close()
    report.epochs_done, report.steps = epoch, step
    report.seconds = time.perf_counter() - t_start
    report.steps_per_second = train_steps / train_seconds if train_seconds else 0.0
    report.traces = _TRACES[0] - traces0
    head = GlobalHead(
        best,
        kind=kind,
        channels=maps.maps.shape[3],
        levels=levels,
        backbone=backbone,
        config=config,
        training={"report": report.to_dict()},
    )
    return head, report


# --------------------------------------------------------------------------- save / load


def save_global_head(head: GlobalHead, folder: str | os.PathLike, *, training=None) -> Path:
    """Writes a head folder atomically: ``config.json`` + ``arrays.npz``.

    Args:
      head: the head.
      folder: the folder (replaced as a whole if it exists; parents created).
      training: a JSON-ready dict stored as ``training`` (default: ``head.training``).

    Returns:
      The folder.
    """
    folder = Path(folder)
    prm = head.params()
    arrays = {
        k: np.asarray(getattr(prm, k)) for k in HeadParams._fields if getattr(prm, k) is not None
    }
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "kind": head.kind,
        "channels": head.channels,
        "levels": head.levels,
        "dim": head.dim,
        "whitened": head.whitened,
        "p": None if head.p is None else float(head.p.get_value()),
        "backbone": head.backbone,
        "config": None if head.config is None else head.config.to_dict(),
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "training": head.training if training is None else training,
    }
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise InputError(f"the head's record is not valid JSON ({e})") from None
    with ckn.atomic_path(folder, is_dir=True) as tmp:
        (tmp / _CONFIG_FILE).write_text(text)
        with open(tmp / _ARRAYS_FILE, "wb") as f:
            np.savez(f, **arrays)
    return folder


def load_global_head(folder: str | os.PathLike) -> GlobalHead:
    """Reads a head folder written by :func:`save_global_head` (``ckn train-global``).

    Returns:
      A :class:`GlobalHead`: ``head.describe(maps, mask)`` on backbone maps,
      ``head.describe_images(backbone, images, global_config)`` on images,
      ``head.check_backbone(backbone)``.

    Raises:
      InputError: a missing folder or file, another format or version, arrays that do
        not match the record.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"global head folder not found: {folder}")
    cfg_path, arr_path = folder / _CONFIG_FILE, folder / _ARRAYS_FILE
    for p in (cfg_path, arr_path):
        if not p.is_file():
            raise InputError(f"{folder} is not a global head folder (missing {p.name})")
    try:
        doc = json.loads(cfg_path.read_text())
    except (ValueError, OSError) as e:
        raise InputError(f"{cfg_path}: unreadable ({type(e).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{cfg_path}: not a global head (format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise InputError(f"{cfg_path}: version {doc.get('version')!r}, this code reads {VERSION}")
    try:
        with np.load(arr_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{arr_path}: corrupt ({type(e).__name__})") from None
    if set(arrays) - set(HeadParams._fields) or {
        k: list(v.shape) for k, v in arrays.items()
    } != doc.get("arrays"):
        raise InputError(f"{arr_path}: arrays do not match {cfg_path.name}")
    for k, v in arrays.items():
        if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
            raise InputError(f"{arr_path}: {k} is not a finite float array")
    config = None
    if doc.get("config") is not None:
        try:
            config = GlobalHeadConfig(**doc["config"])
        except TypeError as e:
            raise InputError(f"{cfg_path}: bad config ({e})") from None
    params = HeadParams(**{k: jnp.asarray(v) for k, v in arrays.items()})
    return GlobalHead(
        params,
        kind=doc.get("kind"),
        channels=doc.get("channels"),
        levels=int(doc.get("levels", 3)),
        backbone=doc.get("backbone") or {},
        config=config,
        training=doc.get("training") or {},
    )
