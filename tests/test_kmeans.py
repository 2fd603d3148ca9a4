"""k-means: NumPy reference step, objective monotonicity, determinism, empty clusters, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckn


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    centres = unit_rows(rng.normal(size=(6, 8)))
    x = unit_rows(centres[rng.integers(0, 6, 2000)] + 0.3 * rng.normal(size=(2000, 8)))
    return jnp.asarray(x, jnp.float32)


def np_step(x, c, spherical):
    if spherical:
        a = np.argmax(x @ c.T, axis=1)
    else:
        a = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    new = np.stack([x[a == j].sum(0) for j in range(c.shape[0])])
    if spherical:
        return unit_rows(new)
    return new / np.bincount(a, minlength=c.shape[0])[:, None]


@pytest.mark.parametrize("spherical", [True, False])
def test_step_matches_numpy(data, spherical):
    state = ckn.kmeans_init(jax.random.key(1), data, 5)
    new = ckn.kmeans_step(state, data, spherical=spherical, precision=jax.lax.Precision.HIGHEST)
    assert int(new.num_empty) == 0
    ref = np_step(np.asarray(data, np.float64), np.asarray(state.centers, np.float64), spherical)
    np.testing.assert_allclose(new.centers, ref, atol=1e-5)


@pytest.mark.parametrize("spherical", [True, False])
def test_objective_does_not_increase(data, spherical):
    _, hist = ckn.kmeans(data, 16, key=3, iters=15, spherical=spherical)
    hist = np.asarray(hist)
    assert hist.shape == (16,)
    assert np.all(np.diff(hist) <= 1e-6 * hist[0]), hist
    assert hist[-1] < hist[0]


def test_filters_unit_norm_and_deterministic(data):
    c1, h1 = ckn.kmeans(data, 12, key=7, iters=10)
    c2, h2 = ckn.kmeans(data, 12, key=7, iters=10)
    c3, _ = ckn.kmeans(data, 12, key=8, iters=10)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(h1, h2)
    assert not np.array_equal(c1, c3)


def test_empty_clusters_are_reseeded_with_worst_fitted_points():
    # Two identical initial centres: argmax ties send every point to the first,
    # so the second is empty and must take the worst-fitted point.
    x = jnp.asarray(unit_rows(np.array([[1, 0], [1, 0.1], [0, 1], [-1, 0.05]], np.float64)), jnp.float32)
    c0 = jnp.asarray([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], jnp.float32)
    state = ckn.KMeansState(c0, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32))
    new = ckn.kmeans_step(state, x)
    assert int(new.num_empty) == 1
    # The worst-fitted point is (-1, 0.05): cosine ~ -1 with (1, 0), ~0.05 with (0, 1).
    np.testing.assert_allclose(new.centers[1], x[3], atol=1e-6)
    assert ckn.kmeans_objective(x, new.centers) < new.objective


def test_errors(data):
    with pytest.raises(ValueError, match=r"x must be \(n, d\)"):
        ckn.kmeans(data[0], 2)
    with pytest.raises(ValueError, match="k must be"):
        ckn.kmeans(data[:3], 4)
    with pytest.raises(ValueError, match="float"):
        ckn.kmeans(jnp.ones((10, 2), jnp.int32), 2)
