"""A backbone's CPU batch as calls of a few rows in flight (retrieval/_src/nets/row_calls.py)."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data

import ckn
from retrieval._src.nets import row_calls
from retrieval.nets import load_backbone


def _row_fn(x):
    """A per-row map whose output names its row: row r of x -> 3 * x[r] + sum(x[r])."""
    x = jnp.asarray(x, jnp.float32)
    return 3.0 * x + jnp.sum(x, axis=(1, 2), keepdims=True)


def _numpy_row_fn(x):
    x = x.astype(np.float64)
    return 3.0 * x + x.sum(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize(("n", "rows"), [(5, 2), (5, 1), (4, 4), (3, 8), (7, 3)])
def test_run_rows_equals_numpy_in_row_order_with_one_call_shape(n, rows):
    """Every call has ``rows`` rows (the last completed by repeats, its extra outputs dropped)
    and the rows come back in order, equal to a NumPy reference to 1e-6."""
    x = np.random.default_rng(n * 10 + rows).integers(0, 256, (n, 3, 4), np.uint8)
    shapes = []

    def fn(chunk):
        shapes.append(np.shape(chunk))
        return _row_fn(chunk)

    got = row_calls.run_rows(fn, x, rows, "cpu")
    assert isinstance(got, jax.Array) and got.shape == (n, 3, 4)
    np.testing.assert_allclose(np.asarray(got), _numpy_row_fn(x), rtol=1e-6)
    assert set(shapes) == {(min(rows, n), 3, 4)}
    assert len(shapes) == -(-n // rows)


def test_run_rows_keeps_calls_in_flight_and_propagates_an_error():
    """On the CPU two calls run at once from host threads (they meet at a barrier; one after
    the other they would time out); a call's error reaches the caller and no thread is left."""
    assert ckn.sharding.host_streams("cpu") >= 2
    barrier = threading.Barrier(2, timeout=20)
    seen = []

    def meeting(chunk):
        seen.append(threading.get_ident())
        if len(seen) <= 2:
            barrier.wait()
        return _row_fn(chunk)

    x = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    got = row_calls.run_rows(meeting, x, 1, "cpu")
    assert not barrier.broken and len(seen) == 4
    np.testing.assert_allclose(np.asarray(got), _numpy_row_fn(x), rtol=1e-6)

    before = threading.active_count()

    def failing(chunk):
        if int(np.asarray(chunk)[0, 0, 0]) == 8:
            raise ValueError("bad row")
        return _row_fn(chunk)

    with pytest.raises(ValueError, match="bad row"):
        row_calls.run_rows(failing, x, 1, "cpu")
    assert threading.active_count() == before


def test_rows_per_call_by_platform_and_size():
    """About ``CALL_PIXELS`` pixels per call on the CPU, at least one image, at most the batch;
    the whole batch in one call on an accelerator."""
    assert row_calls.rows_per_call(16, 224, 224, "cpu") == 2
    assert row_calls.rows_per_call(4, 512, 512, "cpu") == 1
    assert row_calls.rows_per_call(3, 64, 64, "cpu") == 3
    assert row_calls.rows_per_call(64, 64, 64, "cpu") == row_calls.CALL_PIXELS // 4096
    assert row_calls.rows_per_call(16, 224, 224, "gpu") == 16


def test_backbone_batch_in_row_calls_equals_one_call(monkeypatch):
    """Lite0 features and logits of a batch run in calls of 2 rows (forced by a small
    ``CALL_PIXELS``; the last call completed) equal the one-call program of the whole batch
    to 5e-5 (features in [0, 6]; XLA compiles each batch size to its own float32 rounding,
    measured 1.2e-5), rows in order; ``lower_features`` lowers the program that runs (2 rows)."""
    net = load_backbone("efficientnet-lite0")
    photo = skimage.data.astronaut()
    images = np.stack([photo[i * 40 : i * 40 + 96, i * 50 : i * 50 + 128] for i in range(5)])
    whole_f = np.asarray(net.features(images))  # 5 x 96 x 128 < CALL_PIXELS: one call
    whole_l = np.asarray(net.logits(images))
    assert net.rows_per_call(images) == 5
    monkeypatch.setattr(row_calls, "CALL_PIXELS", 2 * 96 * 128)
    assert net.rows_per_call(images) == 2
    assert net.lower_features(images).out_info.shape[0] == 2
    np.testing.assert_allclose(np.asarray(net.features(images)), whole_f, rtol=1e-5, atol=5e-5)
    np.testing.assert_allclose(np.asarray(net.logits(images)), whole_l, rtol=1e-5, atol=1e-4)
    # Rows are not mixed: each image's own maps differ from its neighbours'.
    assert np.abs(whole_f[0] - whole_f[1]).max() > 0.1
