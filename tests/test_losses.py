"""Metric-learning losses: hand-computed values, mining, finite differences, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckn

# One-dimensional descriptors, so every distance is easy to read:
#   row    0  1  2  3     4     5
#   x      0  1  3  10    10.5  4
#   label  0  0  0  1     1     2
X = np.array([[0.0], [1.0], [3.0], [10.0], [10.5], [4.0]], np.float32)
LABELS = np.array([0, 0, 0, 1, 1, 2], np.int32)


def test_contrastive_loss_values():
    a = jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    b = jnp.array([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])  # d = 5
    same = jnp.array([True, False, False])
    # matching: 1/2 * 25 = 12.5; non-matching with margin 7: 1/2 * (7 - 5)^2 = 2
    np.testing.assert_allclose(ckn.losses.contrastive_loss(a, b, same, 7.0), [12.5, 2.0, 2.0])
    # margin 4 < d: a non-matching pair costs nothing
    np.testing.assert_allclose(ckn.losses.contrastive_loss(a, b, same, 4.0), [12.5, 0.0, 0.0])


def test_triplet_loss_values():
    a, p, n = jnp.array([[0.0, 0.0]]), jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 2.0]])
    # |a - p|^2 = 1, |a - n|^2 = 4: max(0, m + 1 - 4)
    np.testing.assert_allclose(ckn.losses.triplet_loss(a, p, n, 0.5), [0.0])
    np.testing.assert_allclose(ckn.losses.triplet_loss(a, p, n, 4.0), [1.0])


def test_hardest_in_batch_by_hand():
    m = ckn.losses.hardest_in_batch(jnp.asarray(X), jnp.asarray(LABELS))
    # anchor 0: positives 1 (d2 1), 2 (d2 9) -> 2; negatives 3 (100), 4, 5 (16) -> 5
    # anchor 2: positives 0 (9), 1 (4) -> 0; closest negative 5 (d2 1)
    # anchor 3: positive 4; negatives 5 (36), 2 (49) -> 5; row 5 has no positive
    np.testing.assert_array_equal(m.positive[:5], [2, 2, 0, 4, 3])
    np.testing.assert_array_equal(m.negative[:5], [5, 5, 5, 5, 5])
    np.testing.assert_array_equal(m.valid, [True, True, True, True, True, False])
    # Without row 5 (masked) the closest negative of the label-0 rows is row 3.
    mask = jnp.array([True] * 5 + [False])
    m = ckn.losses.hardest_in_batch(jnp.asarray(X), jnp.asarray(LABELS), mask)
    np.testing.assert_array_equal(m.negative[:3], [3, 3, 3])
    np.testing.assert_array_equal(m.negative[3:5], [2, 2])
    np.testing.assert_array_equal(m.valid, [True] * 5 + [False])


def test_batch_losses_by_hand():
    x, lab = jnp.asarray(X), jnp.asarray(LABELS)
    # margin 1: only anchor 2 is active, 1 + 9 - 1 = 9; mean over 5 valid anchors = 1.8
    np.testing.assert_allclose(ckn.losses.batch_triplet_loss(x, lab, 1.0), 1.8, rtol=1e-6)
    # row 5 masked, margin 50: anchor 2: 50 + 9 - 49 = 10; anchor 3: 50 + 0.25 - 49 = 1.25;
    # anchors 0, 1, 4: 50 + 9 - 100, 50 + 4 - 81, 50 + 0.25 - 56.25 < 0 -> (10 + 1.25) / 5
    mask = jnp.array([True] * 5 + [False])
    np.testing.assert_allclose(ckn.losses.batch_triplet_loss(x, lab, 50.0, mask), 2.25, rtol=1e-6)
    # contrastive, margin 5: 1/2 d_pos^2 + 1/2 max(0, 5 - d_neg)^2 per anchor:
    # a0: 4.5 + 0.5, a1: 2 + 2, a2: 4.5 + 8, a3: 0.125 + 0, a4: 0.125 + 0 -> 21.75 / 5
    np.testing.assert_allclose(ckn.losses.batch_contrastive_loss(x, lab, 5.0), 4.35, rtol=1e-6)


def _finite_difference_check(f, x, rng, eps=1e-6, trials=3):
    f = jax.jit(f)
    g = jax.jit(jax.grad(f))(x)
    assert bool(jnp.isfinite(g).all())
    for _ in range(trials):
        d = jnp.asarray(rng.normal(size=x.shape))
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(g * d)), float(fd), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["triplet", "contrastive"])
def test_batch_loss_gradients_match_finite_differences(name):
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(12, 5)))
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
        lab = jnp.asarray(np.repeat(np.arange(4), 3))
        mask = jnp.asarray(np.arange(12) != 7)
        if name == "triplet":
            f = lambda x: ckn.losses.batch_triplet_loss(x, lab, 1.5, mask)
        else:
            f = lambda x: ckn.losses.batch_contrastive_loss(x, lab, 1.2, mask)
        assert float(f(x)) > 0
        _finite_difference_check(f, x, rng)


def test_coincident_descriptors_give_finite_gradients():
    x = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    lab = jnp.array([0, 0, 1, 1])
    g = jax.jit(jax.grad(lambda x: ckn.losses.batch_contrastive_loss(x, lab, 0.7)))(x)
    assert bool(jnp.isfinite(g).all())


def test_jit_and_a_batch_without_triplets():
    f = jax.jit(lambda x, lab, m: ckn.losses.batch_triplet_loss(x, lab, 1.0, m))
    x = jnp.asarray(X)
    np.testing.assert_allclose(f(x, jnp.asarray(LABELS), jnp.ones(6, bool)), 1.8, rtol=1e-6)
    # Under jit there is nothing to check eagerly: no valid anchor gives 0, not NaN.
    assert float(f(x, jnp.arange(6, dtype=jnp.int32), jnp.ones(6, bool))) == 0.0


def test_errors():
    x = jnp.asarray(X)
    with pytest.raises(ckn.InputError, match="no positive pair"):
        ckn.losses.batch_triplet_loss(x, jnp.arange(6), 1.0)
    with pytest.raises(ckn.InputError, match="two groups"):
        ckn.losses.batch_contrastive_loss(x, jnp.zeros(6, jnp.int32), 1.0)
    with pytest.raises(ckn.InputError, match="two groups"):
        # Only the valid rows count: rows 0-2 hold one group.
        ckn.losses.batch_triplet_loss(x, jnp.asarray(LABELS), 1.0, jnp.arange(6) < 3)
    with pytest.raises(ckn.InputError, match="labels must be"):
        ckn.losses.batch_triplet_loss(x, jnp.arange(5), 1.0)
    with pytest.raises(ckn.InputError, match="descriptors must be"):
        ckn.losses.hardest_in_batch(jnp.zeros(6), jnp.arange(6))
    with pytest.raises(ckn.InputError, match="same shape"):
        ckn.losses.triplet_loss(x, x, x[:2], 1.0)
    with pytest.raises(ckn.InputError, match="one per pair"):
        ckn.losses.contrastive_loss(x, x, jnp.ones(5, bool), 1.0)
