"""Data parallelism: describe and k-means split over 4 simulated CPU devices (conftest.py)
give the same bits as on one device."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ckn
from ckn._src.kmeans import NUM_BLOCKS
from ckn.sharding import apply_describe


@pytest.fixture(scope="module")
def devices(cpu_devices):
    """Four CPU devices (conftest.py forces them; fewer is a failure, not a skip)."""
    assert len(cpu_devices) == 4
    return cpu_devices


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_batch_mesh(devices):
    mesh = ckn.sharding.batch_mesh(devices)
    assert mesh.axis_names == ("batch",) and mesh.size == 4
    x = jax.device_put(
        np.arange(8.0, dtype=np.float32).reshape(8, 1), ckn.sharding.batch_sharding(mesh)
    )
    assert len(x.addressable_shards) == 4 and x.addressable_shards[1].data.shape == (2, 1)
    assert ckn.sharding.padded_size(9, 4) == 12 and ckn.sharding.padded_size(8, 4) == 8
    with pytest.raises(ValueError, match="at least one device"):
        ckn.sharding.batch_mesh([])


@pytest.mark.parametrize("n, batch_size", [(70, 32), (3, 256), (64, 16)])
def test_describe_same_bits_on_1_and_4_devices(photo_patches, tiny_model, devices, n, batch_size):
    model, _ = tiny_model
    one = ckn.describe(model, photo_patches[:n], batch_size=batch_size, devices=devices[:1])
    four = ckn.describe(model, photo_patches[:n], batch_size=batch_size, devices=devices)
    np.testing.assert_array_equal(one, four)
    # Nor do the batch size or the rows before a patch change its bits.
    np.testing.assert_array_equal(
        ckn.describe(model, photo_patches[:n], batch_size=7, devices=devices), one
    )
    np.testing.assert_array_equal(
        ckn.describe(model, photo_patches[1 : n + 1], devices=devices)[:-1], one[1:]
    )


def test_describe_sharded_call_puts_rows_on_every_device(photo_patches, tiny_model, devices):
    model, _ = tiny_model
    mesh = ckn.sharding.batch_mesh(devices)
    graphdef, state = nnx.split(model)
    x = jax.device_put(jnp.asarray(photo_patches[:8]), ckn.sharding.batch_sharding(mesh))
    y = apply_describe(graphdef, state, x, mesh=mesh)
    assert y.shape == (8, 128)
    assert {s.device for s in y.addressable_shards} == set(devices)
    # (Another row count per device than describe's groups: equal up to float32 rounding,
    # measured 1.2e-7.)
    np.testing.assert_allclose(
        np.asarray(y), ckn.describe(model, photo_patches[:8], devices=devices[:1]), atol=1e-6
    )


def test_describe_rgb_grad_and_raw_presets_on_4_devices(devices):
    rng = np.random.default_rng(0)
    for name, shape in (("ckn-raw", (5, 24, 24)), ("ckn-tiny", (6, 16, 16, 3))):
        model = ckn.CKN(ckn.get_preset(name), rngs=nnx.Rngs(0))
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        one = ckn.describe(model, x, devices=devices[:1])
        np.testing.assert_array_equal(one, ckn.describe(model, x, devices=devices))
        assert np.isfinite(one).all()


def clustered(n, d, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(20, d))
    return jnp.asarray(
        unit_rows(c[rng.integers(0, 20, n)] + 0.7 * rng.normal(size=(n, d))), jnp.float32
    )


@pytest.mark.parametrize("n", [2000, 1003])  # 1003: padded to a multiple of NUM_BLOCKS, masked
@pytest.mark.parametrize("spherical", [True, False])
def test_kmeans_same_bits_on_1_2_and_4_devices(devices, n, spherical):
    x = clustered(n, 16)
    ref = ckn.unsupervised.kmeans(x, 12, key=3, iters=8, spherical=spherical, devices=devices[:1])
    for devs in (devices[:2], devices):
        got = ckn.unsupervised.kmeans(x, 12, key=3, iters=8, spherical=spherical, devices=devs)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
    hist = np.asarray(ref[1])
    assert np.all(np.diff(hist) <= 1e-6 * hist[0])  # non-increasing up to float32 rounding


def test_kmeans_step_on_a_mesh_equals_one_device_step(devices):
    x = clustered(8 * NUM_BLOCKS * 4, 8, seed=1)
    mesh = ckn.sharding.batch_mesh(devices)
    state = ckn.unsupervised.kmeans_init(jax.random.key(0), x, 6)
    ref = ckn.unsupervised.kmeans_step(state, x)
    got = ckn.unsupervised.kmeans_step(
        state, jax.device_put(x, ckn.sharding.batch_sharding(mesh)), mesh=mesh
    )
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="multiple of the device count"):
        ckn.unsupervised.kmeans_step(state, x[:30], mesh=mesh)


def test_kmeans_reseeds_empty_clusters_the_same_way_on_4_devices(devices):
    # Duplicate initial centres leave clusters empty: each takes the r-th
    # worst-fitted point, found across the devices as on one.
    x = clustered(256, 4, seed=2)
    centres = jnp.concatenate([x[:3], x[:3]])
    state = ckn.unsupervised.KMeansState(
        centres, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32)
    )
    mesh = ckn.sharding.batch_mesh(devices)
    ref = ckn.unsupervised.kmeans_step(state, x)
    got = ckn.unsupervised.kmeans_step(
        state, jax.device_put(x, ckn.sharding.batch_sharding(mesh)), mesh=mesh
    )
    assert int(ref.num_empty) == 3 == int(got.num_empty)
    np.testing.assert_array_equal(got.centers, ref.centers)


@pytest.fixture
def small_groups(tiny_model, monkeypatch):
    """describe's CPU groups cut to 16 rows (the model's own would be 256), and a spy on
    its jitted calls: (thread, rows) of each, in call order."""
    import ckn._src.model as model_mod

    model, _ = tiny_model
    per_patch = model_mod._largest_map_bytes(model.config, 16, 16)
    monkeypatch.setattr(model_mod, "CPU_CALL_BYTES", 16 * per_patch)
    assert ckn.sharding.group_size(model.config, 16, 16) == 16
    calls, real = [], model_mod.apply_describe

    def spy(*args, **kw):
        calls.append((threading.get_ident(), args[2].shape[0]))
        return real(*args, **kw)

    monkeypatch.setattr(model_mod, "apply_describe", spy)
    return calls, real


def test_describe_cpu_calls_from_worker_threads_equal_the_calls_one_by_one(
    photo_patches, tiny_model, devices, small_groups
):
    """150 rows in batches of 64 (the last one padded): 12 calls of 16 rows, the first on the
    calling thread, the others from host_streams('cpu') workers; each row has the bits of its group
    run alone, in order."""
    model, _ = tiny_model
    calls, real = small_groups
    got = ckn.describe(model, photo_patches[:150], batch_size=64, devices=devices[:1])
    graphdef, state = nnx.split(model)
    x = np.concatenate([photo_patches[:150], np.zeros((42, 16, 16), np.uint8)])
    want = np.concatenate(
        [
            np.asarray(real(graphdef, state, jnp.asarray(x[i : i + 16]), precision=model.precision))
            for i in range(0, 192, 16)
        ]
    )[:150]
    np.testing.assert_array_equal(got, want)
    main = threading.main_thread().ident
    assert [rows for _, rows in calls] == [16] * 12
    assert calls[0][0] == main
    workers = {t for t, _ in calls[1:]}
    assert main not in workers and 1 < len(workers) <= ckn.sharding.host_streams("cpu")


def test_describe_cpu_calls_run_at_the_same_time(photo_patches, tiny_model, devices, monkeypatch):
    """Two calls wait for each other at a barrier: run one after the other, they would
    time out."""
    import ckn._src.model as model_mod

    model, _ = tiny_model
    per_patch = model_mod._largest_map_bytes(model.config, 16, 16)
    monkeypatch.setattr(model_mod, "CPU_CALL_BYTES", 16 * per_patch)
    barrier, real, n = threading.Barrier(2, timeout=20), model_mod.apply_describe, [0]

    def meet(*args, **kw):
        n[0] += 1
        if n[0] in (2, 3):
            barrier.wait()
        return real(*args, **kw)

    monkeypatch.setattr(model_mod, "apply_describe", meet)
    ckn.describe(model, photo_patches[:64], devices=devices[:1])
    assert n[0] == 4 and not barrier.broken


def test_describe_worker_error_reaches_the_caller_and_no_thread_is_left(
    photo_patches, tiny_model, devices, small_groups, monkeypatch
):
    import ckn._src.model as model_mod

    model, _ = tiny_model
    spy, count = model_mod.apply_describe, [0]

    def fail_fourth(*args, **kw):
        count[0] += 1
        if count[0] == 4:
            raise RuntimeError("planted failure")
        return spy(*args, **kw)

    monkeypatch.setattr(model_mod, "apply_describe", fail_fourth)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="planted failure"):
        ckn.describe(model, photo_patches[:150], batch_size=64, devices=devices[:1])
    assert set(threading.enumerate()) <= before
