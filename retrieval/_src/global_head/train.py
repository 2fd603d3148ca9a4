"""Training a head on precomputed maps: the report, batches (groups x images, pool
mining), the jitted Adam step, the schedule, validation and the loop
(:func:`train_global_head`)."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ckn
from ckn import InputError
from retrieval._src.global_head.checkpoint import CHECKPOINT_FORMAT, _fingerprint
from retrieval._src.global_head.config import (
    _LOSSES,
    P_BOUNDS,
    GlobalHeadConfig,
)
from retrieval._src.global_head.forward import (
    HeadParams,
    _chunks,
    _forward,
    head_forward,
    region_cap,
)
from retrieval._src.global_head.initialize import (
    init_head_params,
)
from retrieval._src.global_head.maps import (
    HeadMaps,
)
from retrieval._src.global_head.model import (
    GlobalHead,
)
from retrieval._src.metrics.image import evaluate_scores


@dataclass
class GlobalHeadReport(ckn.supervised.EpochsReport):
    """What :func:`train_global_head` measured: the fields of
    :class:`ckn.supervised.EpochsReport` (history entries also hold p; epoch 0 is the initial
    head; ``config`` the GlobalHeadConfig), and:

    Attributes:
      init_seconds: of the initialization.
      init: :func:`init_head_params`'s info.
    """

    init_seconds: float = 0.0
    init: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- batches and step


class _Plan(NamedTuple):
    rows: np.ndarray  # (S, B) int64 image rows
    labels: np.ndarray  # (S, B) int32 group ids (-1: padding)
    mask: np.ndarray  # (S, B) bool


def _epoch_plan(groups, labels, cfg: GlobalHeadConfig, seed: int, epoch: int, mine=None) -> _Plan:
    """One epoch: every group once, in an order drawn from (seed, epoch); K members each
    (:func:`ckn.supervised.epoch_batches`, ``ckn.finetune``'s plan too).

    ``mine(anchors (G,)) -> (G, M) rows, (G, M) valid`` adds hard negatives per group.
    """
    g, k = cfg.groups_per_batch, cfg.images_per_group
    m = cfg.negatives if mine is not None else 0
    rows, mask = ckn.supervised.epoch_batches(groups, g, k, seed, epoch, extra=m)
    steps = rows.shape[0]
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


_TRACES = [0]  # compilations of _train_step (reported; tested)


@functools.partial(jax.jit, static_argnames=("head", "levels", "cap", "loss"))
def _train_step(
    head, levels, cap, loss, params, params0, opt_state, maps, mask, labels, rowmask, hyper
):
    """The one supervised step (:func:`ckn.supervised.supervised_step`) on a batch, p's
    learning rate scaled by ``p_lr_scale`` and p clipped to ``P_BOUNDS``; ``hyper`` = (lr,
    margin, p_lr_scale, weight decay), traced.

    Returns (params, opt_state, loss, finite); a non-finite gradient leaves the
    parameters and the optimizer state unchanged.
    """
    _TRACES[0] += 1
    lr, margin, p_scale, decay = hyper

    def objective(prm):
        v = head_forward(prm, maps, mask, head=head, levels=levels, max_regions=cap)
        return _LOSSES[loss](v, labels, margin, rowmask)

    scales = project = None
    if params.p is not None:
        scales = jax.tree.map(lambda _: jnp.float32(1.0), params)._replace(p=p_scale)
        project = lambda prm: prm._replace(p=jnp.clip(prm.p, *P_BOUNDS))  # noqa: E731
    return ckn.supervised.supervised_step(
        objective, params, params0, opt_state, lr, decay, scales=scales, project=project
    )


def _schedule(cfg: GlobalHeadConfig, total: int):
    warm = int(round(cfg.warmup * total))
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warm, max(total, warm + 1), 0.0)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(warm, 1)), optax.constant_schedule(cfg.lr)],
        [warm],
    )


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
        head_params, x, m, head=config.head, levels=config.levels, max_regions=cap
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
    groups = ckn.supervised.group_rows(lab)
    if len(groups) < 2:
        raise InputError(
            f"{len(groups)} group(s) of two or more images among {lab.shape[0]} training "
            "images: training needs at least two"
        )
    val_lab = None
    if validation is not None:
        val_lab = _check_data(validation[0], validation[1], "validation")
        if not ckn.supervised.group_rows(val_lab):
            raise InputError("the validation images have no group of two or more images")
        if validation[0].maps.shape[3] != maps.maps.shape[3]:
            raise InputError("validation and training maps have different channels")
    if resume and checkpoint is None:
        raise InputError("resume needs a checkpoint folder")
    t0 = time.perf_counter()
    params0, init_info = init_head_params(maps, lab, config, seed=seed)
    report = GlobalHeadReport(config=config.to_dict(), init=init_info)
    report.init_seconds = time.perf_counter() - t0
    fingerprint = _fingerprint(maps, lab, validation, config, seed)
    steps_per_epoch = -(-len(groups) // config.groups_per_batch)
    schedule = _schedule(config, config.epochs * steps_per_epoch)
    head, levels = config.head, config.levels
    cap = cap_val = None
    if head == "rmac":
        cap = region_cap(maps.mask, levels)
        cap_val = None if validation is None else region_cap(validation[0].mask, levels)

    def evaluate(p) -> float | None:
        if validation is None:
            return None
        return validation_map(p, validation[0], val_lab, config, cap_val)

    def p_entry(p) -> dict:
        return {"p": None if p.p is None else float(p.p)}

    hyper_fixed = tuple(
        np.float32(v) for v in (config.margin_value, config.p_lr_scale, config.weight_decay)
    )

    def train_epoch(epoch: int, step: int, params, opt_state, tick) -> ckn.supervised.EpochResult:
        """Pool mining (with this epoch's starting head), then the batches of the epoch."""
        mine = None
        if config.mining == "pool":
            fn = lambda x, m, p=params: _forward(p, x, m, head=head, levels=levels, max_regions=cap)
            desc = _chunks(fn, maps.maps, maps.mask)
            mine = _pool_miner(desc, lab, config, seed, epoch)
        plan = _epoch_plan(groups, lab, config, seed, epoch, mine)
        losses, weights, nonfinite = [], [], 0
        for s in range(plan.rows.shape[0]):
            rows = plan.rows[s]
            hyper = (np.float32(schedule(step + s)), *hyper_fixed)
            params, opt_state, value, finite = _train_step(
                head,
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
            nonfinite += int(not bool(finite))
            losses.append(float(value))
            weights.append(int(plan.mask[s].sum()))
            tick(losses[-1])
        return ckn.supervised.EpochResult(params, opt_state, losses, weights, nonfinite)

    run = ckn.supervised.run_epochs(
        train_epoch,
        params0,
        ckn.supervised.step_optimizer(params0).init(params0),
        report,
        config,
        evaluate=evaluate,
        steps_per_epoch=steps_per_epoch,
        extra=p_entry,
        checkpoint=None
        if checkpoint is None
        else ckn.supervised.Checkpoint(checkpoint, CHECKPOINT_FORMAT, fingerprint),
        resume=resume,
        stop_after=stop_after,
        progress="training head" if progress else None,
    )
    report.seconds = time.perf_counter() - t_start
    report.steps_per_second = run.steps / run.seconds if run.seconds else 0.0
    report.traces = _TRACES[0] - traces0
    model = GlobalHead(
        run.best,
        head=head,
        channels=maps.maps.shape[3],
        levels=levels,
        backbone=backbone,
        config=config,
        training={"report": report.to_dict()},
    )
    return model, report
