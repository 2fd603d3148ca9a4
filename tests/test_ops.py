"""Each pure op of ckn against a plain NumPy reference.

Tolerances (float32 computations vs float64 references):
  exact rearrangements (patch extraction, gradients): atol 1e-6
  sums / products of O(1) values:                     rtol 1e-5, atol 1e-5
  matrix functions (inverse square roots):            atol 1e-4
"""

import jax.numpy as jnp
import numpy as np
import pytest

import ckn
from ckn._src.ops import to_float

TOL = {
    "exact": dict(atol=1e-6, rtol=0),
    "sum": dict(atol=1e-5, rtol=1e-5),
    "matrix": dict(atol=1e-4, rtol=0),
}


def np_patches(x, e, padding):
    """(N,H,W,C) -> (N,H',W',e*e*C) in (row, column, channel) order, by loops."""
    if padding == "same":
        lo = (e - 1) // 2
        hi = e - 1 - lo
        x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    n, h, w, c = x.shape
    out = np.zeros((n, h - e + 1, w - e + 1, e * e * c))
    for i in range(h - e + 1):
        for j in range(w - e + 1):
            out[:, i, j] = x[:, i : i + e, j : j + e, :].reshape(n, -1)
    return out


def np_pool(x, s):
    """Zero-padded (s each side) separable Gaussian, stride s, by loops."""
    if s == 1:
        return x
    t = np.arange(-s, s + 1)
    g = np.exp(-(t**2) / (2 * (s / np.sqrt(2)) ** 2))
    g /= g.sum()

    def along(a, axis):
        a = np.moveaxis(a, axis, 0)
        n = a.shape[0]
        pad = np.concatenate([np.zeros((s, *a.shape[1:])), a, np.zeros((s, *a.shape[1:]))])
        out = np.stack(
            [sum(g[k] * pad[i * s + k] for k in range(2 * s + 1)) for i in range((n - 1) // s + 1)]
        )
        return np.moveaxis(out, 0, axis)

    return along(along(x, 1), 2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("e,c", [(1, 1), (3, 1), (3, 2), (4, 3)])
def test_extract_patches(rng, padding, e, c):
    x = rng.normal(size=(2, 7, 6, c)).astype(np.float32)
    got = ckn.ops.extract_patches(jnp.asarray(x), e, padding)
    np.testing.assert_allclose(got, np_patches(x, e, padding), **TOL["exact"])
    # The shifted-slice variant (used for small sub-patches) gives the same values exactly.
    np.testing.assert_array_equal(
        ckn.ops.extract_patches_shifted(jnp.asarray(x), e, padding), np_patches(x, e, padding)
    )


def test_normalize_patches(rng):
    x = rng.normal(size=(5, 4)).astype(np.float32)
    x[2] = 0.0
    xn, rho = ckn.ops.normalize_patches(jnp.asarray(x))
    ref_rho = np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(rho, ref_rho, **TOL["sum"])
    np.testing.assert_allclose(xn, x / np.maximum(ref_rho, 1e-5), **TOL["sum"])
    assert np.all(np.asarray(xn[2]) == 0) and np.isfinite(np.asarray(xn)).all()


def test_kappa_is_gaussian_on_the_sphere(rng):
    x = rng.normal(size=(6, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = x @ x.T
    sigma = 0.6
    np.testing.assert_allclose(
        ckn.ops.kappa(jnp.asarray(u, jnp.float32), sigma), np.exp((u - 1) / sigma**2), **TOL["sum"]
    )
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.testing.assert_allclose(
        ckn.ops.kappa(jnp.asarray(u, jnp.float32), sigma),
        np.exp(-d2 / (2 * sigma**2)),
        **TOL["sum"],
    )


def test_nystrom_projection(rng):
    z = rng.normal(size=(8, 12))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    sigma, lam = 0.5, 1e-3
    p = np.asarray(ckn.ops.nystrom_projection(jnp.asarray(z, jnp.float32), sigma, lam), np.float64)
    k = np.exp((z @ z.T - 1) / sigma**2) + lam * np.eye(8)
    w, v = np.linalg.eigh(k)
    ref = v @ np.diag(w**-0.5) @ v.T
    np.testing.assert_allclose(p, ref, **TOL["matrix"])
    np.testing.assert_allclose(p @ k @ p, np.eye(8), **TOL["matrix"])
    np.testing.assert_allclose(p, p.T, **TOL["matrix"])


def test_nystrom_map_is_exact_when_filters_are_the_data(rng):
    """psi(x_i).psi(x_j) = K (K + lam)^-1 K -> K when Z = X and lam -> 0."""
    n, d, sigma = 16, 10, 0.5
    x = rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = jnp.asarray(x, jnp.float32)
    out = ckn.kernel_layer_apply(
        jnp.asarray(x, jnp.float32).reshape(1, 1, n, d),
        ckn.LayerParams(
            filters=z,
            alpha=jnp.asarray(1 / sigma**2, jnp.float32),
            bias=jnp.full((n,), -1 / sigma**2, jnp.float32),
            linear=ckn.ops.nystrom_projection(z, sigma, 1e-6),
        ),
        ckn.LayerConfig(filters=n, subpatch=1, padding="valid", subsampling=1),
        precision="highest",
    )
    psi = np.asarray(out, np.float64).reshape(n, n)
    exact = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / (2 * sigma**2))
    np.testing.assert_allclose(psi @ psi.T, exact, atol=2e-3)


@pytest.mark.parametrize("s", [1, 2, 3, 6])
def test_gaussian_pool(rng, s):
    x = rng.normal(size=(2, 13, 10, 3)).astype(np.float32)
    got = ckn.ops.gaussian_pool(jnp.asarray(x), s)
    ref = np_pool(x.astype(np.float64), s)
    assert got.shape == (2, -(-13 // s), -(-10 // s), 3)
    np.testing.assert_allclose(got, ref, **TOL["sum"])


@pytest.mark.parametrize("n, s, std", [(13, 4, 1.0), (26, 2, None), (10, 3, 0.7), (7, 7, 2.0)])
def test_centered_pooling(rng, n, s, std):
    m = ckn.ops.pooling_matrix(n, s, mode="centered", std=std)
    n_out = -(-n // s)
    std = s / np.sqrt(2) if std is None else std
    # Plain reference: cell centres, Gaussian weights within distance s, zero padding.
    ref = np.zeros((n_out, n))
    for i in range(n_out):
        c = (i + 0.5) * n / n_out - 0.5
        taps = [t for t in range(int(np.floor(c - s)), int(np.ceil(c + s)) + 1) if abs(t - c) <= s]
        w = np.array([np.exp(-((t - c) ** 2) / (2 * std**2)) for t in taps])
        for t, wt in zip(taps, w / w.sum()):
            if 0 <= t < n:
                ref[i, t] = wt
    np.testing.assert_allclose(m, ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(m, m[::-1, ::-1], atol=1e-12)  # symmetric layout
    x = rng.normal(size=(2, n, n, 3)).astype(np.float32)
    got = ckn.ops.gaussian_pool(jnp.asarray(x), s, mode="centered", std=std)
    want = np.einsum("ah,bw,nhwc->nabc", ref, ref, x.astype(np.float64))
    np.testing.assert_allclose(got, want, **TOL["sum"])


@pytest.mark.parametrize("std", [0.0, 0.8, 1.5, 4.0])
def test_gaussian_blur(rng, std):
    x = rng.normal(size=(2, 11, 9, 2)).astype(np.float32)
    got = np.asarray(ckn.ops.gaussian_blur(jnp.asarray(x), std))
    if std == 0:
        np.testing.assert_array_equal(got, x)
        return
    r = int(np.ceil(4 * std))
    t = np.arange(-r, r + 1)
    g = np.exp(-(t**2) / (2 * std**2))
    g /= g.sum()
    # Plain reference: mirror-pad (repeatedly for radii larger than the image) and correlate.
    xp = x.astype(np.float64)
    pad = lambda a, axis: np.take(
        a,
        [
            (k % (2 * a.shape[axis]))
            if (k % (2 * a.shape[axis])) < a.shape[axis]  # noqa: E731
            else 2 * a.shape[axis] - 1 - (k % (2 * a.shape[axis]))
            for k in range(-r, a.shape[axis] + r)
        ],
        axis=axis,
    )
    xp = pad(pad(xp, 1), 2)
    ref = sum(g[i] * xp[:, i : i + 11] for i in range(2 * r + 1))
    ref = sum(g[j] * ref[:, :, j : j + 9] for j in range(2 * r + 1))
    np.testing.assert_allclose(got, ref, **TOL["sum"])
    flat = np.full((1, 11, 9, 1), 0.3, np.float32)
    np.testing.assert_allclose(ckn.ops.gaussian_blur(jnp.asarray(flat), std), flat, rtol=1e-6)


def test_pooling_mode_errors():
    with pytest.raises(ValueError, match="pooling mode"):
        ckn.ops.pooling_matrix(5, 2, mode="max")
    with pytest.raises(ckn.InputError, match="pooling"):
        ckn.LayerConfig(pooling="max")
    with pytest.raises(ckn.InputError, match="pool_std"):
        ckn.LayerConfig(pool_std=0.0)


def test_gaussian_filter_taps():
    for s in (1, 2, 5):
        g = ckn.ops.gaussian_filter_1d(s)
        t = np.arange(-s, s + 1)
        assert g.shape == (2 * s + 1,) and abs(g.sum() - 1) < 1e-12
        ref = np.exp(-(t**2) / s**2)  # exp(-t^2 / (2 (s/sqrt2)^2))
        np.testing.assert_allclose(g, ref / ref.sum(), rtol=1e-12)


def test_centering_matrix(rng):
    e, c = 3, 2
    x = rng.normal(size=(4, e * e * c))
    got = x @ ckn.ops.centering_matrix(e, c)
    r = x.reshape(4, e * e, c)
    ref = (r - r.mean(axis=1, keepdims=True)).reshape(4, -1)
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_whitening_matrix(rng):
    a = rng.normal(size=(6, 6))
    x = rng.normal(size=(5000, 6)) @ a
    x[:, 5] = x[:, 0]  # a rank-deficient direction is dropped, not blown up
    w = ckn.ops.whitening_matrix(x)
    y = x @ w
    cov = y.T @ y / x.shape[0]
    ev = np.linalg.eigvalsh(cov)
    np.testing.assert_allclose(ev[-5:], 1.0, atol=1e-6)
    assert abs(ev[0]) < 1e-6
    np.testing.assert_allclose(w, w.T, atol=1e-10)
    # Regularized: each eigenvalue lambda of the covariance becomes lambda / (lambda + reg * max).
    lam = np.linalg.eigvalsh(x.T @ x / x.shape[0])
    wr = ckn.ops.whitening_matrix(x, reg=0.1)
    evr = np.linalg.eigvalsh(wr @ (x.T @ x / x.shape[0]) @ wr)
    want = np.sort(np.where(lam >= 1e-8 * lam.max(), lam / (lam + 0.1 * lam.max()), 0.0))
    np.testing.assert_allclose(evr, want, atol=1e-6)


def test_central_gradient(rng):
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    gx, gy = ckn.ops.central_gradient(jnp.asarray(x))
    ref_gy, ref_gx = np.gradient(x.astype(np.float64), axis=(1, 2))
    np.testing.assert_allclose(gx, ref_gx, **TOL["exact"])
    np.testing.assert_allclose(gy, ref_gy, **TOL["exact"])


def test_gradient_map(rng):
    x = rng.normal(size=(2, 6, 7, 1)).astype(np.float32)
    x[1] = 0.5  # flat image: zero map, no NaN
    k, sigma = 8, 0.4
    got = np.asarray(ckn.ops.gradient_map(jnp.asarray(x), k, sigma))
    gy, gx = np.gradient(x[..., 0].astype(np.float64), axis=(1, 2))
    rho = np.hypot(gx, gy)
    ux, uy = gx / np.maximum(rho, 1e-5), gy / np.maximum(rho, 1e-5)
    th = 2 * np.pi * np.arange(k) / k
    d2 = (ux[..., None] - np.cos(th)) ** 2 + (uy[..., None] - np.sin(th)) ** 2
    ref = rho[..., None] * np.exp(-d2 / (2 * sigma**2))
    ref[1] = 0.0
    np.testing.assert_allclose(got, ref, **TOL["sum"])
    assert np.all(got[1] == 0)


def np_layer(x, z, sigma, lam, e, padding, s, preproc=None):
    """A Nystrom CKN layer by explicit patches, in float64."""
    p = np_patches(x.astype(np.float64), e, padding)
    if preproc is not None:
        p = p @ preproc
    rho = np.linalg.norm(p, axis=-1, keepdims=True)
    pn = p / np.maximum(rho, 1e-5)
    phi = rho * np.exp((pn @ z.T - 1) / sigma**2)
    phi = np_pool(phi, s)
    k = np.exp((z @ z.T - 1) / sigma**2) + lam * np.eye(z.shape[0])
    w, v = np.linalg.eigh(k)
    return phi @ (v @ np.diag(w**-0.5) @ v.T)


@pytest.mark.parametrize(
    "padding,s,centre", [("same", 2, False), ("valid", 3, False), ("same", 1, True)]
)
def test_kernel_layer_against_numpy(rng, padding, s, centre):
    e, c, pnum, sigma, lam = 3, 2, 5, 0.7, 1e-3
    x = rng.uniform(size=(2, 9, 8, c)).astype(np.float32)
    x[0, :4, :4] = 0.0  # zero sub-patches: finite output
    z = rng.normal(size=(pnum, e * e * c))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    pre = ckn.ops.centering_matrix(e, c) if centre else None
    got = ckn.kernel_layer_apply(
        jnp.asarray(x),
        ckn.LayerParams(
            filters=jnp.asarray(z, jnp.float32),
            alpha=jnp.asarray(1 / sigma**2, jnp.float32),
            bias=jnp.full((pnum,), -1 / sigma**2, jnp.float32),
            linear=ckn.ops.nystrom_projection(jnp.asarray(z, jnp.float32), sigma, lam),
            preproc=None if pre is None else jnp.asarray(pre, jnp.float32),
        ),
        ckn.LayerConfig(filters=pnum, subpatch=e, padding=padding, subsampling=s),
        precision="highest",
    )
    ref = np_layer(x, z, sigma, lam, e, padding, s, pre)
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_select_channels():
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 4, 4, 3)), jnp.float32)
    gray = ckn.ops.select_channels(x, "gray")
    np.testing.assert_allclose(
        gray[..., 0], 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2], atol=1e-6
    )
    np.testing.assert_array_equal(ckn.ops.select_channels(x, "green"), x[..., 1:2])
    assert ckn.ops.select_channels(x[..., 0], "gray").shape == (2, 4, 4, 1)
    with pytest.raises(ValueError, match="rgb"):
        ckn.ops.select_channels(x[..., :1], "rgb")


def test_to_float():
    assert np.allclose(to_float(np.array([0, 255], np.uint8)), [0.0, 1.0])
    assert to_float(np.array([0.5], np.float64)).dtype == jnp.float32
