"""The configuration of a learned global head and its training: :class:`GlobalHeadConfig`
(checked at construction) and the constants it draws on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

import ckn
from ckn import InputError

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
_LOSSES = {
    "triplet": ckn.losses.batch_triplet_loss,
    "contrastive": ckn.losses.batch_contrastive_loss,
}


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
            raise InputError(
                "dim needs head 'rmac' or whiten: a gem head without whitening keeps the C channels"
            )
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
