"""The learned projection of the descriptor: ops, PCA start, model, save / load, fine-tuning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckn
from tests.test_finetune import make_groups, two_layers


def np_project(x, w):
    """Plain NumPy reference: x @ w, rows to unit norm, zero rows kept."""
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    n = np.linalg.norm(y, axis=1, keepdims=True)
    return np.where(n > 0, y / np.where(n > 0, n, 1.0), 0.0)


@pytest.fixture(scope="module")
def data():
    return make_groups(40, 4, seed=3)


@pytest.fixture(scope="module")
def model(data):
    return ckn.train(two_layers(), data[0], seed=0)[0]


def test_project_descriptors_value_zero_rows_and_gradient():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10)).astype(np.float32)
    x[2] = 0.0
    w = rng.normal(size=(10, 4)).astype(np.float32)
    y = ckn.ops.project_descriptors(jnp.asarray(x), jnp.asarray(w), precision="highest")
    np.testing.assert_allclose(y, np_project(x, w), atol=1e-6)
    assert not np.asarray(y[2]).any()
    with jax.enable_x64(True):
        x64, w64 = jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64)
        c = jnp.asarray(rng.normal(size=(6, 4)))
        f = lambda m: jnp.sum(c * ckn.ops.project_descriptors(x64, m))
        g = jax.grad(f)(w64)
        assert bool(jnp.isfinite(g).all())
        d = jnp.asarray(rng.normal(size=w.shape))
        fd = (f(w64 + 1e-6 * d) - f(w64 - 1e-6 * d)) / 2e-6
        np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=1e-6)


def test_pca_projection_against_the_covariance_eigenvectors():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)) * np.array([5, 4, 3, 2, 1, 0.5, 0.2, 0.1]) + 3.0
    w = ckn.supervised.pca_projection(x, 3)
    assert w.shape == (8, 3) and w.dtype == np.float32
    vals, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    ref = vecs[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(w.T @ ref), np.eye(3), atol=1e-5)  # same directions
    for j in range(3):  # the sign rule: the largest-magnitude entry positive
        assert w[np.argmax(np.abs(w[:, j])), j] > 0
    with pytest.raises(ckn.InputError, match="projection dim"):
        ckn.supervised.pca_projection(x, 9)


def test_model_with_projection_describe_save_load(model, data, tmp_path):
    x = data[0][:20]
    base = ckn.describe(model, x)
    w = np.random.default_rng(2).normal(size=(base.shape[1], 5)).astype(np.float32)
    pm = ckn.supervised.with_projection(model, w)
    assert pm.config.projection == (base.shape[1], 5) and model.projection is None
    np.testing.assert_allclose(ckn.describe(pm, x), np_project(base, w), atol=2e-6)
    # every layer array kept bit for bit; None removes the projection again
    bare = ckn.supervised.with_projection(pm, None)
    np.testing.assert_array_equal(ckn.describe(bare, x), base)
    ckn.save(pm, tmp_path / "m")
    back = ckn.load(tmp_path / "m")
    assert back.config == pm.config
    np.testing.assert_array_equal(back.projection.get_value(), pm.projection.get_value())
    np.testing.assert_array_equal(ckn.describe(back, x), ckn.describe(pm, x))
    assert ckn.CKNConfig.from_dict(pm.config.to_dict()) == pm.config
    # the differentiable descriptor applies it too (another compiled program: its float32
    # rounding differs by up to 2.1e-6 on unit-norm rows, measured on an AMD EPYC host)
    fn = ckn.supervised.descriptor_function(pm)
    for trainable in ("filters", "projection", "filters+projection"):
        params = ckn.supervised.initial_params(pm, trainable)
        np.testing.assert_allclose(fn(params, x), ckn.describe(pm, x), atol=5e-6)
    with pytest.raises(ckn.InputError, match="projection takes"):
        ckn.describe(pm, np.zeros((2, 20, 20), np.uint8), any_size=True)
    with pytest.raises(ckn.InputError, match="projection must be"):
        dataclasses.replace(model.config, projection=(4,))


def test_finetune_projection_alone_first_step_is_adams(model, data):
    """One step on one batch holding every row: P1 = P0 - lr g / (|g| + eps), Adam's first
    step, with g the gradient of the batch-hard triplet loss through the public
    differentiable descriptor (not the fixed-network path that training uses)."""
    p, lab = data
    cfg = ckn.FinetuneConfig(
        trainable="projection",
        projection=6,
        epochs=1,
        groups_per_batch=40,
        patches_per_group=4,
        lr=1e-3,
        schedule="constant",
        warmup=0.0,
        patience=None,
    )
    tuned, report = ckn.finetune(model, p, lab, config=cfg)
    assert report.steps == 1 and report.trained == ["projection"]
    base = ckn.describe(model, p)
    w0 = ckn.supervised.pca_projection(base, 6)
    start = ckn.supervised.with_projection(model, w0)
    fn = ckn.supervised.descriptor_function(start)
    loss = lambda w: ckn.losses.batch_triplet_loss(
        fn({"projection": w}, p), jnp.asarray(lab), cfg.margin_value
    )
    g = np.asarray(jax.grad(loss)(jnp.asarray(w0)))
    expected = w0 - 1e-3 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(tuned.projection.get_value(), expected, atol=2e-6)
    for old, new in zip(model.layers, tuned.layers):  # the network bit for bit
        for name in ("filters", "alpha", "bias", "linear"):
            np.testing.assert_array_equal(
                getattr(old, name).get_value(), getattr(new, name).get_value()
            )
    assert tuned.patch_shape == model.patch_shape


def test_finetune_projection_learns_and_with_filters(model, data):
    p, lab = data
    va = lab >= 30
    cfg = ckn.FinetuneConfig(
        trainable="projection",
        projection=8,
        epochs=20,
        groups_per_batch=10,
        lr=1e-2,
        warmup=0.0,
        patience=None,
    )
    tuned, report = ckn.finetune(model, p[~va], lab[~va], config=cfg, validation=(p[va], lab[va]))
    losses = [h["loss"] for h in report.history[1:]]
    assert losses[-1] < 0.9 * losses[0] and report.traces <= 1  # learns; one compilation
    both = dataclasses.replace(cfg, trainable="filters+projection", epochs=2)
    tuned2, report2 = ckn.finetune(model, p[~va], lab[~va], config=both)
    assert tuned2.projection.get_value().shape == (32, 8)
    assert not np.array_equal(
        tuned2.layers[0].filters.get_value(), model.layers[0].filters.get_value()
    )
    assert tuned2.patch_shape == model.patch_shape
    with pytest.raises(ckn.InputError, match="already has a projection"):
        ckn.finetune(tuned, p, lab, config=cfg)
    with pytest.raises(ckn.InputError, match="needs 'projection' in trainable"):
        ckn.FinetuneConfig(projection=8)
    with pytest.raises(ckn.InputError, match="needs a model with one"):
        ckn.finetune(model, p, lab, config=dataclasses.replace(cfg, projection=None))
    # the fixed network's descriptors given by the caller: the same model, bit for bit
    bare = (ckn.describe(model, p[~va]), ckn.describe(model, p[va]))
    same, _ = ckn.finetune(
        model, p[~va], lab[~va], config=cfg, validation=(p[va], lab[va]), features=bare
    )
    np.testing.assert_array_equal(same.projection.get_value(), tuned.projection.get_value())
    with pytest.raises(ckn.InputError, match="training features must be"):
        ckn.finetune(model, p[~va], lab[~va], config=cfg, features=(bare[0][:, :5], None))
    # a model with a projection fine-tunes it again without a new one
    again = dataclasses.replace(cfg, projection=None, epochs=1)
    assert ckn.finetune(tuned, p, lab, config=again)[0].config.projection == (32, 8)
