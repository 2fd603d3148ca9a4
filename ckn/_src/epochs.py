"""A checkpointed epoch loop: validation, the best epoch, early stopping, exact resume.

The loop that ``ckn.finetune`` and retrieval's global-head training share. The
caller owns what an epoch is (batches, the jitted step, the learning rate) and
gives it as ``train_epoch``; :func:`run_epochs` owns what happens around it:

* epoch 0 is the starting point, validated once (not on resume);
* after every epoch: the validation score, the best parameters (the first
  epoch with the highest score; the last epoch without validation), the count
  of epochs without progress and early stopping after ``patience`` of them;
* a checkpoint (``state.npz``, written atomically) after every epoch: the
  parameters, the optimizer state, the best parameters, the counters, the
  history, and the caller's fingerprint of its settings and data, which
  :func:`load_checkpoint` compares before a resume;
* a run resumed from a checkpoint continues at the next epoch with the same
  trees and counters, so it ends with the bits of an uninterrupted run as long
  as ``train_epoch`` draws its batches from (seed, epoch) alone.

The trees are saved leaf by leaf (``jax.tree.leaves``) and read back into the
structure, dtypes and devices of templates: a checkpoint holds arrays only,
no pickled structure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ckn._src.errors import CORRUPT_FILE_ERRORS, InputError
from ckn._src.fileio import atomic_path

CHECKPOINT_FILE = "state.npz"

PyTree = Any
#: ``tick(loss)``: one training step done (advances the progress bar, shows the loss).
Tick = Callable[[float], None]


class CheckpointFormat(NamedTuple):
    """What a checkpoint file is, for the check on resume and the words of its errors.

    Attributes:
      tag: the format written into the file and required on resume.
      version: the version written and required.
      label: names the run in "not a LABEL checkpoint of version V".
      config_key: the fingerprint entry that is a dict of settings; its fields are
        compared (and named, ``config_key.field``) one by one.
      subject: what the arrays belong to, "checkpoint arrays do not match the SUBJECT".
      mismatch: the message for a checkpoint of another run; ``{differs}`` is replaced
        by the names of the fingerprint entries that differ.
    """

    tag: str
    version: int
    label: str
    config_key: str = "config"
    subject: str = "model"
    mismatch: str = "a checkpoint of another run (differs in: {differs})"


class Checkpoint(NamedTuple):
    """Where :func:`run_epochs` writes its checkpoint, and what it must match on resume.

    Attributes:
      folder: the folder of ``state.npz``.
      format: its :class:`CheckpointFormat`.
      fingerprint: a JSON-ready dict of everything that fixes the result (settings,
        seed, digests of the data); stored, and compared on resume.
    """

    folder: str | os.PathLike
    format: CheckpointFormat
    fingerprint: dict


class EpochResult(NamedTuple):
    """What one epoch of training gives back to :func:`run_epochs`.

    Attributes:
      params: the parameters after the epoch.
      opt_state: the optimizer state after the epoch.
      losses: (S,) the loss of every step.
      weights: (S,) the weight of every step's loss in the epoch's mean (its valid rows).
      nonfinite: steps skipped for a non-finite gradient.
    """

    params: PyTree
    opt_state: PyTree
    losses: list[float]
    weights: list[int]
    nonfinite: int = 0


class EpochsRun(NamedTuple):
    """What :func:`run_epochs` returns.

    Attributes:
      best: the parameters of the best epoch.
      steps: training steps run by this call (not those before a resume).
      seconds: wall time of those steps' epochs (validation and checkpoints left out).
    """

    best: PyTree
    steps: int
    seconds: float


class EpochsConfig(Protocol):
    """The settings :func:`run_epochs` reads (``ckn.FinetuneConfig`` has them)."""

    @property
    def epochs(self) -> int: ...  # planned epochs

    @property
    def patience(self) -> int | None: ...  # epochs without a better score before stopping


@dataclasses.dataclass
class EpochsReport:
    """What a training run measured: the fields :func:`run_epochs` fills, and the timing
    every trainer adds (``ckn.FinetuneReport`` and retrieval's global-head report extend it).

    Attributes:
      history: one dict per epoch (epoch, loss, val_map, the caller's extra fields,
        seconds, steps); epoch 0 is the start (val_map only).
      best_epoch: the kept epoch (the best validation mAP; the last without validation).
      best_val_map: its validation mAP in [0, 1] (None without validation).
      epochs_done, steps: totals, resumed part included.
      finished: the planned epochs ran or early stopping fired; stopped_early: it fired.
      resumed_from: epoch of the checkpoint resumed from, or None.
      seconds: wall time of the call; steps_per_second: of its training steps.
      nonfinite_steps: steps skipped for a non-finite gradient (expected 0).
      traces: compilations of the training step during the call (0 or 1).
      config: the trainer's config as a dict.
    """

    history: list = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float | None = None
    epochs_done: int = 0
    steps: int = 0
    finished: bool = False
    stopped_early: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    steps_per_second: float = 0.0
    nonfinite_steps: int = 0
    traces: int = 0
    config: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


# --- Checkpoint files ---------------------------------------------------------------------------


def save_checkpoint(folder: str | os.PathLike, meta: dict, trees: dict[str, PyTree]) -> None:
    """Writes ``folder/state.npz`` atomically: ``meta`` as JSON and every leaf of every tree.

    Args:
      folder: created if missing.
      meta: a JSON-ready dict (read back by :func:`load_checkpoint`).
      trees: {name: pytree of arrays}; leaf i of tree ``name`` is stored as ``name.i``.
    """
    arrays = {"meta": np.asarray(json.dumps(meta))}
    for name, tree in trees.items():
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{name}.{i}"] = np.asarray(leaf)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CHECKPOINT_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def _device(a) -> jax.Device | None:
    return next(iter(a.devices())) if isinstance(a, jax.Array) else None


def load_checkpoint(
    folder: str | os.PathLike,
    fmt: CheckpointFormat,
    fingerprint: dict,
    templates: dict[str, PyTree],
) -> tuple[dict, dict[str, PyTree]]:
    """Reads ``folder/state.npz`` after checking its format and fingerprint.

    Args:
      folder: the checkpoint folder.
      fmt: the format the file must have (``meta["format"]``, ``meta["version"]``).
      fingerprint: what ``meta["fingerprint"]`` must equal, entry by entry (the
        ``fmt.config_key`` entry field by field).
      templates: {name: pytree}: the structure, shapes, dtypes and devices to read
        each stored tree into (a leaf that is not a ``jax.Array`` gives an array on
        the default device).

    Returns:
      (meta dict, {name: pytree}).

    Raises:
      InputError: no file, a corrupt file, another format or version, another
        fingerprint (naming the entries that differ), arrays that do not fit the
        templates.
    """
    folder = Path(folder)
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"no checkpoint to resume in {folder} (missing {CHECKPOINT_FILE})")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            stored = {k: z[k] for k in z.files if k != "meta"}
    except CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{path}: corrupt checkpoint ({type(e).__name__})") from None
    if meta.get("format") != fmt.tag or meta.get("version") != fmt.version:
        raise InputError(f"{path}: not a {fmt.label} checkpoint of version {fmt.version}")
    got, key = meta.get("fingerprint", {}), fmt.config_key
    diff = sorted(k for k in fingerprint if k != key and got.get(k) != fingerprint[k])
    diff += sorted(
        f"{key}.{k}" for k, v in fingerprint[key].items() if got.get(key, {}).get(k) != v
    )
    if diff:
        raise InputError(f"{path}: " + fmt.mismatch.format(differs=", ".join(diff)))
    trees = {}
    for name, template in templates.items():
        leaves, treedef = jax.tree.flatten(template)
        try:
            new = [jax.device_put(stored[f"{name}.{i}"], _device(b)) for i, b in enumerate(leaves)]
        except KeyError:
            raise InputError(f"{path}: checkpoint arrays do not match the {fmt.subject}") from None
        if any(a.shape != jnp.shape(b) for a, b in zip(new, leaves)):
            raise InputError(f"{path}: checkpoint arrays do not match the {fmt.subject}")
        trees[name] = jax.tree.unflatten(
            treedef, [a.astype(jnp.result_type(b)) for a, b in zip(new, leaves)]
        )
    return meta, trees


# --- The loop -----------------------------------------------------------------------------------


def run_epochs(
    train_epoch: Callable[[int, int, PyTree, PyTree, Tick], EpochResult],
    params: PyTree,
    opt_state: PyTree,
    report: EpochsReport,
    config: EpochsConfig,
    *,
    evaluate: Callable[[PyTree], float | None],
    steps_per_epoch: int,
    extra: Callable[[PyTree], dict] | None = None,
    checkpoint: Checkpoint | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: str | None = None,
) -> EpochsRun:
    """Runs epochs 1..``config.epochs`` with validation, early stopping and checkpoints.

    Args:
      train_epoch: ``(epoch, step, params, opt_state, tick) -> EpochResult``: trains
        epoch ``epoch`` (1-based) from global step ``step`` (steps done before it), calling
        ``tick(loss)`` after every step. Its batches must depend on (seed, epoch) only for
        a resumed run to equal an uninterrupted one.
      params: the starting parameters (epoch 0, also the best until an epoch beats them).
      opt_state: the starting optimizer state.
      report: filled in place (:class:`EpochsReport`; on resume, from the checkpoint).
      config: ``epochs`` (planned) and ``patience`` (None: never stop early; only counts
        with validation).
      evaluate: ``params -> score`` (higher is better) or None without validation data.
      steps_per_epoch: for the progress bar's total.
      extra: ``params -> dict`` of more history fields (after ``val_map``).
      checkpoint: where to write ``state.npz`` after every epoch; None: nowhere.
      resume: continue from ``checkpoint`` (required), checked against its fingerprint.
      stop_after: return after this many epochs in total (the caller's schedule still
        plans ``config.epochs``); resume later.
      progress: the description of a progress bar (stderr); None: no bar.

    Returns:
      :class:`EpochsRun`: the best parameters, this call's training steps and seconds.

    Raises:
      InputError: ``resume`` without a checkpoint; from :func:`load_checkpoint`.
    """
    best = params
    epoch, step, bad = 0, 0, 0
    more = extra if extra is not None else lambda p: {}
    if resume:
        if checkpoint is None:
            raise InputError("resume needs a checkpoint folder")
        templates = {"params": params, "opt": opt_state, "best": best}
        meta, trees = load_checkpoint(
            checkpoint.folder, checkpoint.format, checkpoint.fingerprint, templates
        )
        params, opt_state, best = trees["params"], trees["opt"], trees["best"]
        epoch, step, bad = meta["epoch"], meta["step"], meta["bad_epochs"]
        report.history, (report.best_epoch, report.best_val_map) = meta["history"], meta["best"]
        report.nonfinite_steps, report.finished = meta["nonfinite_steps"], meta["finished"]
        report.stopped_early, report.resumed_from = meta["stopped_early"], epoch
    else:
        v0 = evaluate(params)
        report.history.append(
            {"epoch": 0, "loss": None, "val_map": v0, **more(params), "seconds": 0.0, "steps": 0}
        )
        report.best_val_map = v0
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        initial=step,
        desc=progress,
        unit="step",
        disable=progress is None,
    )
    run_steps, run_seconds = 0, 0.0
    while not report.finished and epoch < last:
        epoch += 1
        t0 = time.perf_counter()

        def tick(loss: float, epoch: int = epoch) -> None:
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}")

        params, opt_state, losses, weights, nonfinite = train_epoch(
            epoch, step, params, opt_state, tick
        )
        seconds = time.perf_counter() - t0
        step += len(losses)
        report.nonfinite_steps += nonfinite
        run_steps, run_seconds = run_steps + len(losses), run_seconds + seconds
        v = evaluate(params)
        loss = float(np.average(losses, weights=weights))
        report.history.append(
            {
                "epoch": epoch,
                "loss": loss,
                "val_map": v,
                **more(params),
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
                "format": checkpoint.format.tag,
                "version": checkpoint.format.version,
                "fingerprint": checkpoint.fingerprint,
                "epoch": epoch,
                "step": step,
                "bad_epochs": bad,
                "history": report.history,
                "best": [report.best_epoch, report.best_val_map],
                "finished": report.finished,
                "nonfinite_steps": report.nonfinite_steps,
                "stopped_early": report.stopped_early,
            }
            save_checkpoint(
                checkpoint.folder, meta, {"params": params, "opt": opt_state, "best": best}
            )
    bar.close()
    report.epochs_done, report.steps = epoch, step
    return EpochsRun(best, run_steps, run_seconds)
