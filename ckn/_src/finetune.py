"""Supervised end-to-end fine-tuning of a Nystrom CKN on groups of matching patches.

Starting from an unsupervised model (``ckn.train``), the filters of every
kernel layer are trained with a metric-learning loss (``ckn._src.losses``:
triplet or contrastive, batch-hard mining) on batches of G groups x K patches,
with gradients through the kernel and the Nystrom map
(``ckn._src.differentiable``). Choices (reconstructions: no source gives them):

* A pure functional split rather than ``nnx.Optimizer(model, tx, wrt=Filters)``:
  every layer array is a ``Filters`` variable, but only the filters (and
  optionally the input pre-processing matrix, log lam and a matrix W after
  each Nystrom map) are free parameters; the Nystrom map is a function of
  them, alpha and bias are fixed. The model passed in is not modified.
* One jitted step (``_train_step``), compiled once per model structure and
  loss: learning rate, margin and weight decay are traced, batches have a
  static shape (G * K rows, a mask for groups smaller than K and the last
  batch's missing groups).
* The one supervised step of ``ckn.supervised.supervised_step`` (shared with
  retrieval's global heads): Adam, the decoupled weight decay pulling towards
  the unsupervised start (L2-SP), not towards 0, which means nothing for unit
  filters, a non-finite gradient skipped (``optax.apply_if_finite``); the
  filters are renormalized after each step.
* One epoch = every group of two or more patches once, in an order drawn
  from (seed, epoch), K members drawn per group (``ckn.supervised.
  epoch_batches``, the global heads' plan too): a run resumed from a
  checkpoint draws the same batches and ends with the same bits.
* Training runs on one device (``jax.local_devices()[0]``).

Measured (benchmarks/finetune_patches.py, ckn-grad, 2-core CPU under load
~8): fine-tuning moves test mAP by +0.2 (default data 88.2 -> 88.5, Oxford
92.3 -> 92.5; SIFT 89.7 and 91.8): the filters (and sigma, tried by hand)
have little leverage on this architecture, whose gradient-orientation input
map and pooling are fixed. 0.5 - 0.8 steps/s for 256 patches, 8 - 11 minutes
for 8,200 patches with validation.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import numpy as np
from flax import nnx

from ckn._src.batches import epoch_batches, group_rows
from ckn._src.differentiable import (
    forward,
    initial_params,
    install,
    split,
    trainable_parts,
    unit_rows,
)
from ckn._src.epochs import (
    Checkpoint,
    CheckpointFormat,
    EpochResult,
    EpochsReport,
    run_epochs,
)
from ckn._src.errors import InputError
from ckn._src.fileio import check_patches
from ckn._src.layers import CKN
from ckn._src.losses import BATCH_LOSSES
from ckn._src.model import describe
from ckn._src.ops import project_descriptors
from ckn._src.projection import add_projection, with_projection
from ckn._src.supervised_step import step_optimizer, supervised_step
from ckn._src.validation import validation_map

LOSSES = tuple(BATCH_LOSSES)
SCHEDULES = ("cosine", "constant")
#: Margin of each loss when ``FinetuneConfig.margin`` is None (unit descriptors).
DEFAULT_MARGINS = {"triplet": 0.5, "contrastive": 0.7}


# --- Configuration and report -------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning settings (reconstructed: no source gives them).

    Attributes:
      loss: "triplet" or "contrastive" (batch-hard pairs, ``ckn._src.losses``).
      margin: the loss margin; None: ``DEFAULT_MARGINS[loss]``.
      epochs: passes over the training groups (each group once per epoch).
      groups_per_batch: G groups per batch.
      patches_per_group: K patches drawn per group (all of a smaller group, the
        rest of its rows masked); the batch has G * K rows.
      lr: peak learning rate of Adam.
      schedule: "cosine" (decay to 0 over the planned steps) or "constant".
      warmup: fraction of the planned steps with a linear warm-up.
      weight_decay: decoupled decay of the parameters towards the
        unsupervised start (L2-SP).
      trainable: "filters" plus any of "+input", "+lam", "+linear", "+projection",
        or "projection" alone (``ckn._src.differentiable``; alone, the network is
        fixed and its descriptors are computed once).
      projection: k: append a learned (D, k) projection of the descriptor (then L2),
        started from the k leading principal directions of the training
        descriptors (``ckn._src.projection``); needs "projection" in ``trainable``
        and a model without one. None: no new projection.
      patience: stop after this many epochs without a better validation mAP
        (None: never; only with validation data).
    """

    loss: str = "triplet"
    margin: float | None = None
    epochs: int = 20
    groups_per_batch: int = 64
    patches_per_group: int = 4
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: float = 0.05
    weight_decay: float = 0.0
    trainable: str = "filters"
    patience: int | None = 5
    projection: int | None = None

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.schedule not in SCHEDULES:
            raise InputError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        parts = trainable_parts(self.trainable)
        if self.projection is not None and (self.projection < 1 or "projection" not in parts):
            raise InputError(
                f"projection must be >= 1 and needs 'projection' in trainable, got "
                f"{self.projection} with {self.trainable!r}"
            )
        if self.margin is not None and not self.margin > 0:
            raise InputError(f"margin must be > 0, got {self.margin}")
        if self.epochs < 1 or self.groups_per_batch < 2 or self.patches_per_group < 2:
            raise InputError(
                "epochs >= 1, groups_per_batch >= 2 and patches_per_group >= 2 are required"
            )
        if not self.lr > 0 or not 0 <= self.warmup < 1 or not self.weight_decay >= 0:
            raise InputError("lr > 0, 0 <= warmup < 1 and weight_decay >= 0 are required")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be >= 1 or None, got {self.patience}")

    @property
    def batch_size(self) -> int:
        """Rows per batch, G * K."""
        return self.groups_per_batch * self.patches_per_group

    @property
    def margin_value(self) -> float:
        """The margin used: ``margin`` or the loss's default."""
        return DEFAULT_MARGINS[self.loss] if self.margin is None else float(self.margin)


@dataclass
class FinetuneReport(EpochsReport):
    """What :func:`finetune` measured: the fields of :class:`ckn.supervised.EpochsReport`
    (``steps_per_second`` after the first step; ``config`` the FinetuneConfig), and:

    Attributes:
      first_step_seconds: the first step (with compilation, if not cached).
      trained: names of the trained arrays.
    """

    first_step_seconds: float | None = None
    trained: list = field(default_factory=list)


# --- Batches and the training step -------------------------------------------------------------


class _Plan(NamedTuple):
    rows: np.ndarray  # (S, B) int64 patch rows
    labels: np.ndarray  # (S, B) int32 group slot within the batch
    mask: np.ndarray  # (S, B) bool


def _epoch_plan(groups: list[np.ndarray], cfg: FinetuneConfig, seed: int, epoch: int) -> _Plan:
    """The batches of one epoch (:func:`ckn.supervised.epoch_batches`), rows flattened, each
    group labelled by its slot in the batch."""
    g, k = cfg.groups_per_batch, cfg.patches_per_group
    rows, mask = epoch_batches(groups, g, k, seed, epoch)
    steps = rows.shape[0]
    labels = np.broadcast_to(np.arange(g, dtype=np.int32)[None, :, None], rows.shape)
    return _Plan(rows.reshape(steps, -1), labels.reshape(steps, -1).copy(), mask.reshape(steps, -1))


def _learning_rate(step: int, total: int, cfg: FinetuneConfig) -> float:
    warm = int(round(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))


_TRACES = [0]  # traces of _train_step (reported, and tested: once per process and config)


@functools.partial(jax.jit, static_argnames=("graphdef", "loss"))
def _train_step(graphdef, loss, state, params, params0, opt_state, patches, labels, mask, hyper):
    """The one supervised step (:func:`ckn.supervised.supervised_step`) on a batch, the filters
    back on the unit sphere; ``hyper`` = (lr, margin, weight decay), traced.

    Returns (params, opt_state, loss, finite): a non-finite gradient leaves the parameters and
    the optimizer state unchanged.
    """
    _TRACES[0] += 1
    lr, margin, decay = hyper

    def objective(p):
        return BATCH_LOSSES[loss](forward(graphdef, state, p, patches), labels, margin, mask)

    def unit_filters(p):
        return {**p, "filters": tuple(unit_rows(v) for v in p["filters"])}

    return supervised_step(objective, params, params0, opt_state, lr, decay, project=unit_filters)


@functools.partial(jax.jit, static_argnames=("loss",))
def _head_step(loss, params, params0, opt_state, features, labels, mask, hyper):
    """``_train_step`` for the projection alone: ``features`` are the fixed network's (B, D)
    descriptors; the same step (no projection of the parameters afterwards)."""
    _TRACES[0] += 1
    lr, margin, decay = hyper

    def objective(p):
        x = project_descriptors(features, p["projection"])
        return BATCH_LOSSES[loss](x, labels, margin, mask)

    return supervised_step(objective, params, params0, opt_state, lr, decay)


# --- Checkpoints -----------------------------------------------------------------------------

_CHECKPOINT = CheckpointFormat(
    "ckn-finetune-checkpoint",
    2,  # 2: the optimizer state of the one supervised step (optax.apply_if_finite)
    label="fine-tuning",
    config_key="finetune_config",
    subject="model",
    mismatch="a checkpoint of another configuration (differs in: {differs})",
)


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a) if not isinstance(a, np.ndarray) else a
        h.update(f"{a.dtype}{a.shape}".encode())
        for i in range(0, max(a.shape[0], 1) if a.ndim else 1, 4096):
            h.update(np.ascontiguousarray(a[i : i + 4096] if a.ndim else a).tobytes())
    return h.hexdigest()[:16]


def _fingerprint(model, patches, labels, validation, cfg, seed) -> dict:
    arrays = [v.get_value() for lay in model.layers for v in (lay.filters, lay.alpha, lay.bias)]
    doc = {
        "finetune_config": dataclasses.asdict(cfg),
        "seed": seed,
        "model": model.config.to_dict(),
        "model_arrays": _digest(*arrays),
        "data": _digest(patches, labels),
        "validation": None if validation is None else _digest(*validation),
    }
    return json.loads(json.dumps(doc))  # as it reads back from the checkpoint


# --- The training loop -------------------------------------------------------------------------


def _check_data(model: CKN, patches, labels, what: str) -> np.ndarray:
    check_patches(patches, name=f"{what} patches")
    if labels is None:
        raise InputError(f"fine-tuning needs {what} group labels (N,), got none")
    labels = np.asarray(labels)
    if labels.shape != (patches.shape[0],):
        raise InputError(
            f"{what} labels must be (N,) with N = {patches.shape[0]}, got {labels.shape}"
        )
    cfg = model.config
    if cfg.channels == "rgb" and (patches.ndim != 4 or patches.shape[3] != 3):
        raise InputError(f"this model needs (N, H, W, 3) colour patches, got {patches.shape}")
    cfg.output_shape(patches.shape[1], patches.shape[2])
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def _check_features(model: CKN, patches, validation, features) -> tuple:
    """The (N, D) and (M, D) or None float32 ``features`` of ``finetune``, checked."""
    dim = int(np.prod(model.config.output_shape(patches.shape[1], patches.shape[2])))
    rows = (patches.shape[0], None if validation is None else validation[0].shape[0])
    out = []
    for f, n, what in zip(features, rows, ("training", "validation")):
        if n is None or f is None:
            if (n is None) != (f is None):
                raise InputError(f"{what} features must be given exactly with {what} patches")
            out.append(None)
            continue
        f = np.asarray(f, np.float32)
        if f.shape != (n, dim) or not np.isfinite(f).all():
            raise InputError(
                f"{what} features must be finite ({n}, {dim}) descriptors of the network, "
                f"got {f.shape}"
            )
        out.append(f)
    return tuple(out)


def finetune(
    model: CKN,
    patches: np.ndarray,
    labels: np.ndarray,
    *,
    config: FinetuneConfig = FinetuneConfig(),
    seed: int = 0,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    features: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[CKN, FinetuneReport]:
    """Fine-tunes a Nystrom CKN end to end on groups of matching patches.

    Args:
      model: the starting (unsupervised) model; not modified.
      patches: (N, H, W[, C]) training patches, uint8 or float.
      labels: (N,) group ids (equal id = the same physical point); groups of
        one patch are never anchors.
      config: the settings.
      seed: batches are drawn from (seed, epoch): the same seed gives the same model.
      validation: (patches (M, H, W[, C]), labels (M,)) held out from the
        TRAIN split (``validation_split``), for early stopping: the returned
        model is the epoch with the best validation mAP (epoch 0 = the start).
      progress: a progress bar with the loss and the validation mAP (stderr).
      checkpoint: a folder; ``state.npz`` is written there (atomically) after
        every epoch: parameters, Adam state, best parameters, epoch, step,
        history, and a fingerprint of config, seed, model and data.
      resume: continue from the checkpoint (required to exist); the result is
        the same, bit for bit, as an uninterrupted run.
      stop_after: return after this many epochs in total (the schedule still
        plans ``config.epochs``); resume later from the checkpoint.
      features: with ``trainable = "projection"`` alone, the fixed network's
        descriptors (before any projection) of ``patches`` (N, D) and of the
        validation patches (M, D) or None, as ``ckn.describe`` of the model
        without its projection gives them: computed once by the caller for
        several runs (e.g. a sweep); None: computed here.

    Returns:
      (fine-tuned model, FinetuneReport).

    Raises:
      InputError: bad patches or labels (missing, all different, fewer than
        two groups of two or more patches, shapes), a NIPS 2014 model, a
        checkpoint of another configuration or none to resume.
    """
    t_start = time.perf_counter()
    traces0 = _TRACES[0]
    lab = _check_data(model, patches, labels, "training")
    groups = group_rows(lab)
    if len(groups) < 2:
        raise InputError(
            f"{len(groups)} group(s) of two or more patches among {lab.shape[0]} patches: "
            "fine-tuning needs at least two (are the labels all different?)"
        )
    if validation is not None:
        val_lab = _check_data(model, validation[0], validation[1], "validation")
        if not group_rows(val_lab):
            raise InputError("the validation labels have no group of two or more patches")
    if resume and checkpoint is None:
        raise InputError("resume needs a checkpoint folder")
    start = model
    frozen = trainable_parts(config.trainable) == ("projection",)
    trunk = val_trunk = None
    if features is not None and not frozen:
        raise InputError("features are only taken with trainable 'projection' alone")
    if frozen and features is not None:
        trunk, val_trunk = _check_features(model, patches, validation, features)
    elif frozen:  # a fixed network: its descriptors once, before the projection
        bare = with_projection(model, None)
        trunk = describe(bare, patches)
        val_trunk = None if validation is None else describe(bare, validation[0])
    if config.projection is not None:
        model = add_projection(model, patches, config.projection, trunk)
    # Everything on one device (a model trained with sharded k-means holds
    # arrays replicated on a mesh, which would run every step on each device).
    device = jax.local_devices()[0]
    params0 = jax.device_put(initial_params(model, config.trainable), device)
    graphdef, state = split(model)
    state = jax.device_put(state, device)
    report = FinetuneReport(trained=sorted(params0), config=dataclasses.asdict(config))
    fingerprint = _fingerprint(start, patches, labels, validation, config, seed)
    steps_per_epoch = -(-len(groups) // config.groups_per_batch)
    total = config.epochs * steps_per_epoch

    def evaluate(p) -> float | None:
        if validation is None:
            return None
        if frozen:
            x = project_descriptors(val_trunk, p["projection"])
            return validation_map(np.asarray(x), val_lab)
        return validation_map(describe(install(model, p), validation[0]), val_lab)

    def step(params, opt_state, batch, s, plan, hyper):
        if frozen:
            return _head_step(
                config.loss, params, params0, opt_state, batch, plan.labels[s], plan.mask[s], hyper
            )
        return _train_step(
            graphdef,
            config.loss,
            state,
            params,
            params0,
            opt_state,
            batch,
            plan.labels[s],
            plan.mask[s],
            hyper,
        )

    source = trunk if frozen else patches

    hyper_fixed = (np.float32(config.margin_value), np.float32(config.weight_decay))
    first_step = None  # seconds of the first step of this call (with compilation, if not cached)

    def train_epoch(epoch: int, step_at: int, params, opt_state, tick) -> EpochResult:
        """The batches of ``_epoch_plan(..., epoch)``, from global step ``step_at``."""
        nonlocal first_step
        t0 = time.perf_counter()
        plan = _epoch_plan(groups, config, seed, epoch)
        losses, weights, nonfinite = [], [], 0
        batch = np.asarray(source[plan.rows[0]])
        for s in range(plan.rows.shape[0]):
            hyper = (np.float32(_learning_rate(step_at + s, total, config)), *hyper_fixed)
            params, opt_state, value, finite = step(params, opt_state, batch, s, plan, hyper)
            if s + 1 < plan.rows.shape[0]:  # read the next batch while the step runs
                batch = np.asarray(source[plan.rows[s + 1]])
            nonfinite += int(not bool(finite))
            losses.append(float(value))
            if first_step is None:
                first_step = time.perf_counter() - t0
            weights.append(int(plan.mask[s].sum()))
            tick(losses[-1])
        return EpochResult(params, opt_state, losses, weights, nonfinite)

    run = run_epochs(
        train_epoch,
        params0,
        jax.device_put(step_optimizer(params0).init(params0), device),
        report,
        config,
        evaluate=evaluate,
        steps_per_epoch=steps_per_epoch,
        checkpoint=None if checkpoint is None else Checkpoint(checkpoint, _CHECKPOINT, fingerprint),
        resume=resume,
        stop_after=stop_after,
        progress="fine-tuning" if progress else None,
    )
    report.seconds = time.perf_counter() - t_start
    if run.steps > 1:  # steady state: the first step (and compilation) left out
        report.first_step_seconds = first_step
        report.steps_per_second = (run.steps - 1) / (run.seconds - first_step)
    report.traces = _TRACES[0] - traces0
    # The start is best: the input model itself, bit for bit (with a new projection: its PCA
    # start). The training patch shape is kept (describe and the benchmarks check it).
    tuned = nnx.clone(model) if report.best_epoch == 0 else install(model, run.best)
    tuned.patch_shape = getattr(start, "patch_shape", None)
    return tuned, report
