"""The one supervised step and batch plan (``ckn.finetune`` and the global heads share them),
against NumPy written here; the gradient-safe square root of ``kernel_layer_apply``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ckn
from ckn.supervised import epoch_batches, group_rows, step_optimizer, supervised_step


def _adam_step(g, m, v, t, b1=0.9, b2=0.999, eps=1e-8):
    """optax.scale_by_adam's direction at step t (1-based), in float64."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps), m, v


def test_two_steps_equal_adam_pull_rate_and_projection_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 4)).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "p": jnp.float32(3.0)}
    start = jax.tree.map(lambda x: x + 0.5, params)

    def loss(prm):
        return jnp.sum((prm["w"] - a) ** 2) + prm["p"] ** 2

    scales = {"w": jnp.float32(1.0), "p": jnp.float32(10.0)}
    project = lambda prm: {**prm, "p": jnp.clip(prm["p"], 2.92, 4.0)}  # noqa: E731
    step = jax.jit(
        lambda prm, st, lr, d: supervised_step(
            loss, prm, start, st, lr, d, scales=scales, project=project
        )
    )
    state = step_optimizer(start).init(params)
    w, p = np.asarray(params["w"], np.float64), 3.0
    mw = vw = np.zeros_like(w)
    mp = vp = 0.0
    for t, (lr, decay) in enumerate([(0.01, 0.1), (0.02, 0.0)], start=1):
        params, state, value, finite = step(params, state, jnp.float32(lr), jnp.float32(decay))
        assert bool(finite)
        uw, mw, vw = _adam_step(2 * (w - a), mw, vw, t)
        up, mp, vp = _adam_step(2 * p, mp, vp, t)
        w = w - lr * (uw + decay * (w - np.asarray(start["w"], np.float64)))
        p = float(np.clip(p - lr * 10 * (up + decay * (p - 3.5)), 2.92, 4.0))
        np.testing.assert_allclose(np.asarray(params["w"]), w, rtol=1e-5, atol=1e-6)
        assert float(params["p"]) == pytest.approx(p, rel=1e-5)
        if t == 1:
            assert p == 2.92  # clipped by the projection


def test_a_non_finite_gradient_is_skipped():
    params = {"w": jnp.ones(3, jnp.float32)}
    state = step_optimizer(params).init(params)
    ok = lambda prm: jnp.sum(prm["w"] ** 2)  # noqa: E731
    bad = lambda prm: jnp.sum(jnp.sqrt(prm["w"] - 1.0))  # noqa: E731  (sqrt'(0) = inf)
    p1, s1, _, f1 = supervised_step(ok, params, params, state, 0.1, 0.0)
    p2, s2, _, f2 = supervised_step(bad, p1, params, s1, 0.1, 0.0, project=lambda p: p)
    assert bool(f1) and not bool(f2)
    np.testing.assert_array_equal(np.asarray(p2["w"]), np.asarray(p1["w"]))
    for x, y in zip(jax.tree.leaves(s2.inner_state), jax.tree.leaves(s1.inner_state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # Adam state unchanged
    assert int(s2.total_notfinite) == 1


def test_epoch_batches_visit_every_group_once_with_its_members():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, -1, 2, 3, 3, 4, 4, 4])
    groups = group_rows(labels)
    assert [g.tolist() for g in groups] == [[0, 1], [2, 3, 4, 5, 6], [9, 10], [11, 12, 13]]
    rows, mask = epoch_batches(groups, 3, 3, seed=4, epoch=2, extra=2)
    assert rows.shape == mask.shape == (2, 3, 5) and not mask[..., 3:].any()
    seen = []
    for r, m in zip(rows.reshape(-1, 5), mask.reshape(-1, 5)):
        if m.any():
            members = r[m]
            g = [i for i, grp in enumerate(groups) if members[0] in grp][0]
            assert set(members) <= set(groups[g]) and len(set(members)) == m.sum()
            assert m.sum() == min(3, groups[g].size)
            seen.append(g)
    assert sorted(seen) == [0, 1, 2, 3]
    again = epoch_batches(groups, 3, 3, seed=4, epoch=2, extra=2)
    np.testing.assert_array_equal(again.rows, rows)  # drawn from (seed, epoch) alone
    assert not np.array_equal(epoch_batches(groups, 3, 3, seed=4, epoch=3).rows, rows[..., :3])


@pytest.mark.parametrize("input_map", ["raw", "grad"])
def test_the_safe_square_root_keeps_values_and_gives_finite_gradients(input_map):
    """The fine-tuning's descriptor (kernel_layer_apply with the gradient-safe square root, the
    small-sub-patch path for raw input) on patches with flat regions: describe's values, finite
    gradients."""
    cfg = dataclasses.replace(ckn.get_preset("ckn-tiny"), input=input_map)
    model, _ = ckn.train(cfg, np.random.default_rng(0).integers(0, 255, (64, 16, 16), np.uint8))
    fn = ckn.supervised.descriptor_function(model)
    params = ckn.supervised.initial_params(model)
    patches = np.zeros((2, 16, 16), np.float32)
    patches[1, 4:12, 4:12] = np.random.default_rng(1).uniform(0, 255, (8, 8))
    np.testing.assert_allclose(
        np.asarray(fn(params, jnp.asarray(patches))), model.describe(patches), atol=1e-5
    )
    grads = jax.grad(lambda p: jnp.sum(fn(p, jnp.asarray(patches))[:, :5]))(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
