"""Unsupervised training: sampling, sigma rule, methods, determinism, descriptors, errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ckn
from ckn import apply_describe


def tiny(**train):
    cfg = ckn.get_preset("ckn-tiny")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def subpatches(photo_patches):
    """Normalized 3x3 centred gray sub-patches of a real photo: (train 4000, held-out 1000)."""
    x = np.asarray(ckn.extract_patches(jnp.asarray(photo_patches[:200, ..., None] / 255.0, jnp.float32), 3))
    x = x.reshape(-1, 9) @ ckn.centering_matrix(3, 1)
    x = x[np.linalg.norm(x, axis=1) > 1e-3]
    x = unit_rows(x[np.random.default_rng(0).permutation(x.shape[0])[:5000]]).astype(np.float32)
    return jnp.asarray(x[:4000]), jnp.asarray(x[4000:])


def approximation_error(z, sigma, lam, held):
    """Mean |K(x, y) - psi(x).psi(y)| over held-out pairs (the diagonal included)."""
    proj = np.asarray(ckn.nystrom_projection(z, sigma, lam), np.float64)
    h = np.asarray(held, np.float64)
    psi = np.exp((h @ np.asarray(z, np.float64).T - 1) / sigma**2) @ proj
    exact = np.exp((h @ h.T - 1) / sigma**2)
    return np.abs(psi @ psi.T - exact).mean()


def test_more_filters_approximate_the_kernel_better(subpatches):
    train, held = subpatches
    sigma = ckn.sigma_from_quantile(train, 0.1, key=jax.random.key(0))
    errors = []
    for p in (4, 16, 64):
        z, _ = ckn.kmeans(train, p, key=0, iters=20)
        errors.append(approximation_error(z, sigma, 1e-3, held))
    assert errors[0] > errors[1] > errors[2], errors


def test_sigma_rule_matches_numpy(subpatches):
    train, _ = subpatches
    key = jax.random.key(5)
    got = ckn.sigma_from_quantile(train, 0.1, key=key)
    j = np.asarray(jax.random.permutation(key, train.shape[0]))
    x = np.asarray(train, np.float64)
    d = np.linalg.norm(x - x[j], axis=1)[j != np.arange(x.shape[0])]
    assert abs(got - np.quantile(d, 0.1)) < 1e-5


def test_nystrom_refinement_lowers_the_residual(subpatches):
    train, held = subpatches
    sigma = 0.5
    z0, _ = ckn.kmeans(train, 16, key=0, iters=10)
    z, losses = ckn.refine_nystrom(jax.random.key(1), z0, train, sigma=sigma, lam=1e-3, steps=200, batch=512, lr=5e-3)
    losses = np.asarray(losses)
    assert losses[-20:].mean() < losses[:20].mean()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert ckn.nystrom_residual(z, held, sigma) < ckn.nystrom_residual(z0, held, sigma)


def test_nips14_objective_decreases_and_eta_nonnegative(subpatches):
    train, _ = subpatches
    z0, _ = ckn.kmeans(train, 16, key=0, iters=10)
    w, eta, losses = ckn.fit_nips14(jax.random.key(2), z0, train, sigma=0.5, steps=300, batch=256, lr=1e-2)
    losses = np.asarray(losses)
    assert losses[-30:].mean() < losses[:30].mean()
    assert np.all(np.asarray(eta) >= 0)


def test_sampling_matches_the_maps(photo_patches):
    model = ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=__import__("flax").nnx.Rngs(0))
    sub = ckn.sample_subpatches(model, 0, photo_patches[:50], 300, key=jax.random.key(0), batch_size=16)
    assert sub.shape == (300, 3 * 3 * 4)
    # Every sampled vector is one of the sub-patches of the input maps.
    maps = ckn.extract_patches(model.input_map(jnp.asarray(photo_patches[:50])), 3)
    allv = np.asarray(maps).reshape(-1, sub.shape[1])
    d = ((sub[:20, None, :] - allv[None]) ** 2).sum(-1).min(axis=1)
    assert np.all(d < 1e-10)


def test_training_is_deterministic(photo_patches, tiny_model):
    model, _ = tiny_model
    again, _ = ckn.train(ckn.get_preset("ckn-tiny"), photo_patches, seed=0)
    other, _ = ckn.train(ckn.get_preset("ckn-tiny"), photo_patches, seed=1)
    np.testing.assert_array_equal(model.layers[0].filters.get_value(), again.layers[0].filters.get_value())
    assert not np.array_equal(model.layers[0].filters.get_value(), other.layers[0].filters.get_value())


def test_trained_model(photo_patches, tiny_model):
    model, reports = tiny_model
    z = np.asarray(model.layers[0].filters.get_value())
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    hist = np.asarray(reports[0].kmeans_objective)
    assert np.all(np.diff(hist) <= 1e-6)
    assert reports[0].sigma > 0 and reports[0].num_samples == 2000
    x = photo_patches[:10].copy()
    x[3] = 0  # flat patch: a finite (zero) descriptor
    x[4] = 200
    d = ckn.describe(model, x)
    assert d.shape == (10, 4 * 4 * 8) and d.dtype == np.float32
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d[[0, 1, 2, 5]], axis=1), 1.0, atol=1e-5)
    assert np.all(d[3] == 0) and np.all(d[4] == 0)
    # uint8, float in [0, 1] and (N, H, W, 1) give the same descriptors.
    np.testing.assert_allclose(ckn.describe(model, x.astype(np.float32) / 255), d, atol=1e-5)
    np.testing.assert_allclose(ckn.describe(model, x[..., None]), d, atol=1e-6)


def test_position_normalization_and_blur(photo_patches):
    cfg = dataclasses.replace(ckn.get_preset("ckn-tiny"), normalize="position", blur=1.0)
    model, _ = ckn.train(cfg, photo_patches[:200], seed=0)
    x = photo_patches[200:220]
    maps = np.asarray(model(jnp.asarray(x)), np.float64)
    ref = maps / np.maximum(np.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)
    ref = ref.reshape(len(x), -1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ckn.describe(model, x), ref, atol=1e-6)
    # The blur is part of the model: blurring the input of an unblurred copy is the same.
    plain = ckn.CKN(dataclasses.replace(cfg, blur=0.0), rngs=nnx.Rngs(0))
    nnx.update(plain, nnx.state(model))
    xf = jnp.asarray(x, jnp.float32)[..., None] * np.float32(1 / 255)
    np.testing.assert_allclose(
        plain(ckn.gaussian_blur(xf, 1.0)), model(jnp.asarray(x)), atol=1e-5
    )


def test_describe_does_not_recompile(photo_patches, tiny_model):
    model, _ = tiny_model
    ckn.describe(model, photo_patches[:100], batch_size=32)
    before = apply_describe._cache_size()
    ckn.describe(model, photo_patches[100:190], batch_size=32)  # a different N, same batch shape
    assert apply_describe._cache_size() == before


def test_batching_does_not_change_descriptors(photo_patches, tiny_model):
    model, _ = tiny_model
    a = ckn.describe(model, photo_patches[:70], batch_size=16)
    b = ckn.describe(model, photo_patches[:70], batch_size=128)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("method", ["kmeans+nystrom", "nips14"])
def test_methods_train_and_describe(photo_patches, method):
    model, reports = ckn.train(tiny(method=method), photo_patches[:200], seed=0)
    assert reports[0].method_loss is not None and len(reports[0].method_loss) > 0
    d = ckn.describe(model, photo_patches[:8])
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("inp", ["raw", "white"])
def test_raw_and_white_inputs(photo_patches, inp):
    cfg = dataclasses.replace(tiny(), input=inp)
    model, _ = ckn.train(cfg, photo_patches[:200], seed=0)
    pre = np.asarray(model.layers[0].preproc.get_value())
    centre = ckn.centering_matrix(3, 1)
    if inp == "raw":
        np.testing.assert_allclose(pre, centre, atol=1e-7)
    else:
        # Whitening after centring: sub-patch means stay removed.
        np.testing.assert_allclose(np.ones(9) @ pre, 0.0, atol=1e-3)
        assert not np.allclose(pre, centre)
    assert np.isfinite(ckn.describe(model, photo_patches[:8])).all()


def test_precision_is_an_argument_with_one_vocabulary(photo_patches, tiny_model, tmp_path):
    model, _ = tiny_model
    a = ckn.describe(model, photo_patches[:40], batch_size=16)
    b = ckn.describe(model, photo_patches[:40], batch_size=16, precision="default")
    np.testing.assert_allclose(b, a, atol=1e-6)  # CPU: "default" is fp32 too
    assert model.precision == "highest"  # a call's precision does not change the model
    ckn.save(model, tmp_path / "m")
    assert ckn.load(tmp_path / "m", precision="default").precision == "default"
    with pytest.raises(ValueError, match="precision must be one of highest, default, got 'bf16'"):
        ckn.describe(model, photo_patches[:4], precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=nnx.Rngs(0), precision="tf32")


def test_bad_input(photo_patches):
    cfg = ckn.get_preset("ckn-tiny")
    nan = photo_patches[:20].astype(np.float32)
    nan[3, 2, 2] = np.nan
    cases = [
        (nan, "NaN"),
        (photo_patches[:0], "empty"),
        (photo_patches[0], r"\(N, H, W\)"),
        (photo_patches[:20, :3, :3], "too small"),
        (photo_patches[:20].astype(np.complex64), "dtype"),
    ]
    for x, msg in cases:
        with pytest.raises(ckn.InputError, match=msg):
            ckn.train(cfg, x)
    with pytest.raises(ckn.InputError, match="rgb"):
        ckn.train(dataclasses.replace(tiny(), input="raw", channels="rgb"), photo_patches[:20])
    with pytest.raises(ckn.InputError, match="flat"):
        ckn.train(cfg, np.zeros((20, 16, 16), np.uint8))
    with pytest.raises(ckn.InputError, match="unknown preset"):
        ckn.get_preset("ckn-nope")
    with pytest.raises(ckn.InputError, match="method"):
        tiny(method="sgd")
