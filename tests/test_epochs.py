"""ckn.supervised.run_epochs and its checkpoints: best epoch, early stopping, exact resume, errors.

A toy "training" whose epochs are plain NumPy functions of (seed, epoch) and whose validation
scores are scripted, so every expected value is written out by hand. The report is a
``ckn.FinetuneReport`` (it has the fields of ``ckn.supervised.EpochsReport``).
"""

import dataclasses
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckn

FMT = ckn.supervised.CheckpointFormat("toy-checkpoint", 3, label="toy", subject="toy model")


@dataclasses.dataclass(frozen=True)
class Cfg:
    epochs: int = 5
    patience: int | None = 2


class Params(NamedTuple):
    w: jax.Array  # (3,) float32
    b: jax.Array | None  # () float32 or None (not a leaf)


STEPS = 3  # per epoch


def train_epoch(epoch, step, params, opt_state, tick):
    """Adds a (seed, epoch)-drawn vector per step; the 'optimizer state' counts the steps."""
    rng = np.random.default_rng([7, epoch])
    losses = []
    for s in range(STEPS):
        params = params._replace(w=params.w + jnp.asarray(rng.normal(size=3), jnp.float32))
        opt_state = opt_state + 1
        losses.append(float(step + s))
        tick(losses[-1])
    return ckn.supervised.EpochResult(params, opt_state, losses, [1, 1, 2], nonfinite=epoch % 2)


def start():
    return Params(jnp.zeros(3, jnp.float32), None), jnp.asarray(0, jnp.int32)


def templates():
    params, opt_state = start()
    return {"params": params, "opt": opt_state, "best": params}


def scores(*values):
    """evaluate(params) giving values[0] at epoch 0, values[1] after epoch 1, ..."""
    it = iter(values)
    return lambda p: next(it)


def run(report, cfg=Cfg(), values=(0.1, 0.2, 0.3, 0.25, 0.3, 0.1), **kw):
    return ckn.supervised.run_epochs(
        train_epoch,
        *start(),
        report,
        cfg,
        evaluate=scores(*values),
        steps_per_epoch=STEPS,
        extra=lambda p: {"w0": float(p.w[0])},
        **kw,
    )


def test_best_epoch_and_early_stopping():
    rep = ckn.FinetuneReport()
    out = run(rep)  # 0.3 at epoch 2, then 0.25 and 0.3 (not better): stops after epoch 4
    assert (rep.best_epoch, rep.best_val_map, rep.epochs_done, rep.steps) == (2, 0.3, 4, 12)
    assert rep.stopped_early and rep.finished and rep.resumed_from is None
    assert rep.nonfinite_steps == 2 and out.steps == 12 and out.seconds >= 0
    assert [h["epoch"] for h in rep.history] == [0, 1, 2, 3, 4]
    assert list(rep.history[1]) == ["epoch", "loss", "val_map", "w0", "seconds", "steps"]
    assert rep.history[0]["loss"] is None and rep.history[0]["w0"] == 0.0
    assert rep.history[1]["loss"] == (0 + 1 + 2 * 2) / 4  # weighted by [1, 1, 2]
    assert rep.history[2]["w0"] == float(out.best.w[0])  # the best epoch's parameters


def test_without_validation_or_patience_the_last_epoch_is_kept():
    rep = ckn.FinetuneReport()
    out = ckn.supervised.run_epochs(
        train_epoch, *start(), rep, Cfg(epochs=3), evaluate=lambda p: None, steps_per_epoch=STEPS
    )
    assert rep.best_epoch == 3 and rep.best_val_map is None and not rep.stopped_early
    assert rep.finished and list(rep.history[0]) == ["epoch", "loss", "val_map", "seconds", "steps"]
    assert float(out.best.w[1]) != 0.0  # epoch 3's parameters, not the start
    rep2 = ckn.FinetuneReport()
    run(rep2, cfg=Cfg(patience=None))  # validation without patience: all epochs, the best kept
    assert rep2.epochs_done == 5 and rep2.best_epoch == 2 and not rep2.stopped_early


def _no_time(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("stop", [1, 3])
def test_resume_equals_an_uninterrupted_run(tmp_path, stop):
    full = ckn.FinetuneReport()
    whole = run(
        full, checkpoint=ckn.supervised.Checkpoint(tmp_path / "a", FMT, {"config": {"x": 1}})
    )
    ck = ckn.supervised.Checkpoint(tmp_path / "b", FMT, {"config": {"x": 1}, "seed": 0})
    part = ckn.FinetuneReport()
    run(part, checkpoint=ck, stop_after=stop)
    assert part.epochs_done == stop and not part.finished
    meta, trees = ckn.supervised.load_checkpoint(tmp_path / "b", FMT, ck.fingerprint, templates())
    assert meta["epoch"] == stop and meta["step"] == STEPS * stop
    assert meta["format"] == "toy-checkpoint" and meta["version"] == 3
    resumed = ckn.FinetuneReport()
    values = (0.1, 0.2, 0.3, 0.25, 0.3, 0.1)[stop + 1 :]  # no epoch-0 validation on resume
    out = run(resumed, values=values, checkpoint=ck, resume=True)
    assert resumed.resumed_from == stop and out.steps == STEPS * (4 - stop)
    assert _no_time(resumed.history) == _no_time(full.history)
    for f in ("best_epoch", "best_val_map", "epochs_done", "steps", "stopped_early"):
        assert getattr(resumed, f) == getattr(full, f), f
    assert resumed.nonfinite_steps == full.nonfinite_steps
    np.testing.assert_array_equal(out.best.w, whole.best.w)
    assert out.best.b is None and out.best.w.dtype == jnp.float32
    # A finished run resumed again does nothing more.
    again = ckn.FinetuneReport()
    out2 = run(again, values=(), checkpoint=ck, resume=True)
    assert again.epochs_done == 4 and out2.steps == 0
    np.testing.assert_array_equal(out2.best.w, whole.best.w)


def test_save_load_round_trip_keeps_structure_dtype_and_device(tmp_path):
    dev = jax.devices()[-1]
    tree = {
        "a": jax.device_put(jnp.arange(4, dtype=jnp.int32), dev),
        "b": (jnp.ones((2, 3), jnp.float16), None),
    }
    ckn.supervised.save_checkpoint(
        tmp_path / "new" / "ck", {"format": "toy-checkpoint", "version": 3}, {"t": tree}
    )
    assert sorted(p.name for p in (tmp_path / "new" / "ck").iterdir()) == [
        ckn.supervised.CHECKPOINT_FILE
    ]
    fmt = FMT._replace(config_key="cfg")
    meta, got = ckn.supervised.load_checkpoint(
        tmp_path / "new" / "ck", fmt, {"cfg": {}}, {"t": tree}
    )
    assert jax.tree.structure(got["t"]) == jax.tree.structure(tree)
    assert got["t"]["a"].devices() == {dev} and got["t"]["b"][0].dtype == jnp.float16
    np.testing.assert_array_equal(got["t"]["a"], tree["a"])
    # A NumPy template gives an array on the default device.
    _, got = ckn.supervised.load_checkpoint(
        tmp_path / "new" / "ck", fmt, {"cfg": {}}, {"t": jax.tree.map(np.asarray, tree)}
    )
    assert isinstance(got["t"]["a"], jax.Array)


def test_errors(tmp_path):
    fp = {"config": {"lr": 0.1, "epochs": 5}, "seed": 0, "data": "abc"}
    ck = ckn.supervised.Checkpoint(tmp_path / "ck", FMT, fp)
    with pytest.raises(ckn.InputError, match="resume needs a checkpoint folder"):
        run(ckn.FinetuneReport(), resume=True)
    with pytest.raises(ckn.InputError, match="no checkpoint to resume in .* \\(missing state.npz"):
        run(ckn.FinetuneReport(), checkpoint=ck, resume=True)
    run(ckn.FinetuneReport(), checkpoint=ck, stop_after=1)
    tpl = templates()
    other = {"config": {"lr": 0.2, "epochs": 5}, "seed": 1, "data": "abc"}
    with pytest.raises(ckn.InputError, match=r"another run \(differs in: seed, config.lr\)$"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT, other, tpl)
    worded = FMT._replace(mismatch="not this one ({differs}); start again")
    with pytest.raises(
        ckn.InputError, match=r"ck/state.npz: not this one \(seed, config.lr\); start"
    ):
        ckn.supervised.load_checkpoint(tmp_path / "ck", worded, other, tpl)
    with pytest.raises(ckn.InputError, match="not a toy checkpoint of version 4"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT._replace(version=4), fp, tpl)
    bigger = dict(tpl, params=Params(jnp.zeros(4, jnp.float32), None))
    with pytest.raises(ckn.InputError, match="checkpoint arrays do not match the toy model"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT, fp, bigger)
    more = dict(tpl, params=Params(jnp.zeros(3, jnp.float32), jnp.zeros(())))
    with pytest.raises(ckn.InputError, match="checkpoint arrays do not match the toy model"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT, fp, more)
    (tmp_path / "ck" / "state.npz").write_bytes(b"not a zip file")
    with pytest.raises(ckn.InputError, match="corrupt checkpoint"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT, fp, tpl)
    # meta is JSON, not a pickle
    np.savez(tmp_path / "ck" / "state.npz", meta=np.asarray(json.dumps({"format": "x"})))
    with pytest.raises(ckn.InputError, match="not a toy checkpoint"):
        ckn.supervised.load_checkpoint(tmp_path / "ck", FMT, fp, tpl)
