"""VLAD encoding, codebooks and PCA-whitening against plain NumPy references.

Tolerances (float32 JAX against a float64 NumPy reference):
  normalized outputs (intra or global L2 on): rtol 2e-5, atol 2e-6;
  unnormalized outputs: the same, relative to the largest magnitude.
PCA (float64 on float32 inputs): variances rtol 1e-7, directions atol 1e-7;
whitened outputs (float32): covariance = identity within 1e-5.
"""

import itertools

import numpy as np
import pytest

from ckn import InputError
from retrieval import image as PP
from retrieval import local as V
from retrieval._src.vlad import _vlad_batch

RTOL, ATOL = 2e-5, 2e-6


def ref_vlad(
    x, c, *, mass_norm=False, power=1.0, intra_norm=False, l2_norm=True, residual_norm=False
):
    """Plain NumPy VLAD in float64, VLFeat's normalization order."""
    x = np.asarray(x, np.float64)
    c = np.asarray(c, np.float64)
    k, d = c.shape
    d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    a = np.argmin(d2, axis=1)
    v = np.zeros((k, d))
    counts = np.zeros(k)
    for i in range(x.shape[0]):
        r = x[i] - c[a[i]]
        if residual_norm:
            r = r / max(np.linalg.norm(r), 1e-12)
        v[a[i]] += r
        counts[a[i]] += 1
    if mass_norm:
        v[counts > 0] /= counts[counts > 0, None]
    if power != 1.0:
        v = np.sign(v) * np.abs(v) ** power
    if intra_norm:
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    v = v.ravel()
    if l2_norm:
        v /= max(np.linalg.norm(v), 1e-12)
    return v


def _clear_margin(x, c, rel=1e-4):
    """True if every row's nearest centre wins by a margin (no float32 tie flips)."""
    d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    s = np.sort(d2, axis=1)
    return bool(np.all(s[:, 1] - s[:, 0] > rel * s[:, 1]))


@pytest.fixture(scope="module")
def data():
    """Clustered training vectors, a codebook fitted on them, and HELD-OUT vectors.

    Testing on the codebook's own training vectors would hit CKN_NOTES' trap
    (near-zero residuals blown up by intra-normalization).
    """
    rng = np.random.default_rng(0)
    d, k = 16, 8
    means = rng.normal(size=(12, d)) * 2.0

    def draw(n):
        return (means[rng.integers(0, 12, n)] + rng.normal(size=(n, d))).astype(np.float32)

    train = draw(2000)
    centers = V.fit_codebook(train, k, iters=20, seed=0)
    held = [draw(n) for n in (37, 1, 120, 64, 5)]
    assert all(_clear_margin(h, centers) for h in held)
    return centers, held


FLAGS = list(
    itertools.product([False, True], [1.0, 0.5], [False, True], [False, True], [False, True])
)


@pytest.mark.parametrize("mass_norm,power,intra_norm,l2_norm,residual_norm", FLAGS)
def test_vlad_encode_matches_numpy_every_flag(
    data, mass_norm, power, intra_norm, l2_norm, residual_norm
):
    centers, held = data
    flags = dict(
        mass_norm=mass_norm,
        power=power,
        intra_norm=intra_norm,
        l2_norm=l2_norm,
        residual_norm=residual_norm,
    )
    norm = V.VladNorm(
        mass=mass_norm, power=power, intra=intra_norm, l2=l2_norm, residual=residual_norm
    )
    # One image through vlad_encode, the others through one padded batch (one compilation).
    outs = [V.vlad_encode(held[0], centers, norm)]
    outs += list(V.vlad_encode_batch(held[1:], centers, norm, batch_size=len(held) - 1))
    for x, out in zip(held, outs):
        ref = ref_vlad(x, centers, **flags)
        assert out.shape == (centers.size,) and out.dtype == np.float32
        assert np.isfinite(out).all()
        scale = 1.0 if (l2_norm or intra_norm) else max(1.0, np.abs(ref).max())
        np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL * scale)


def test_power_other_than_half(data):
    centers, held = data
    out = V.vlad_encode(held[2], centers, V.VladNorm(power=0.2, intra=True))
    np.testing.assert_allclose(
        out, ref_vlad(held[2], centers, power=0.2, intra_norm=True), rtol=RTOL, atol=ATOL
    )


def test_empty_centres_stay_zero(data):
    centers, held = data
    x = held[1]  # one descriptor: k - 1 empty centres
    out = V.vlad_encode(x, centers, V.VladNorm(mass=True, power=0.5, intra=True)).reshape(
        centers.shape
    )
    assert np.isfinite(out).all()
    assert (np.abs(out).sum(axis=1) > 0).sum() == 1
    np.testing.assert_allclose(np.linalg.norm(out), 1.0, rtol=1e-6)


def test_batched_equals_per_image(data):
    centers, held = data
    norm = V.VladNorm(mass=True, power=0.5, intra=True)
    batch = V.vlad_encode_batch(held, centers, norm, batch_size=2)
    assert batch.shape == (len(held), centers.size)
    for i, x in enumerate(held):
        np.testing.assert_allclose(batch[i], V.vlad_encode(x, centers, norm), rtol=1e-6, atol=1e-7)


def test_batched_does_not_recompile(data):
    centers, held = data
    V.vlad_encode_batch(held[:3], centers, V.VladNorm(power=0.5, intra=True), batch_size=4)
    before = _vlad_batch._cache_size()
    # Other images, other counts (within one length bucket), other flags: no new compilation.
    rng = np.random.default_rng(1)
    others = [
        rng.normal(size=(n, centers.shape[1])).astype(np.float32) for n in (3, 90, 17, 100, 2)
    ]
    V.vlad_encode_batch(
        others, centers, V.VladNorm(power=0.3, residual=True, mass=True), batch_size=4
    )
    V.vlad_encode_batch(others[:2], centers, V.VladNorm(l2=False), batch_size=4)
    V.vlad_encode_batch(others[:2], centers, batch_size=4)  # the default norm
    assert _vlad_batch._cache_size() == before


def test_vlad_bad_input(data):
    centers, held = data
    with pytest.raises(InputError, match="dimension 15 but the codebook has dimension 16"):
        V.vlad_encode(held[0][:, :15], centers)
    with pytest.raises(InputError, match="empty"):
        V.vlad_encode(np.zeros((0, 16), np.float32), centers)
    bad = held[0].copy()
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        V.vlad_encode(bad, centers)
    with pytest.raises(InputError, match="image 1"):
        V.vlad_encode_batch([held[0], held[0][:, :4]], centers)
    with pytest.raises(InputError, match="power"):
        V.vlad_encode(held[0], centers, V.VladNorm(power=0.0))
    with pytest.raises(InputError, match="norm must be a VladNorm"):
        V.vlad_encode(held[0], centers, {"power": 0.5})
    with pytest.raises(InputError, match="must be \\(N, D\\)"):
        V.vlad_encode(held[0][0], centers)


def test_fit_codebook_seeded_and_checked():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    a = V.fit_codebook(x, 10, iters=5, seed=1)
    b = V.fit_codebook(x, 10, iters=5, seed=1)
    assert a.shape == (10, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # A subsample still gives k distinct centres.
    c = V.fit_codebook(x, 10, iters=5, max_samples=100, seed=1)
    assert len(np.unique(c, axis=0)) == 10
    with pytest.raises(InputError, match="at least 600 training descriptors"):
        V.fit_codebook(x, 600)


@pytest.mark.parametrize("n,big_d", [(300, 40), (60, 200)])  # covariance path, Gram path
def test_pca_whitening_unit_variance_on_training_set(n, big_d):
    rng = np.random.default_rng(4)
    # float32 input (what the PCA works from); the reference runs in float64 on the same values.
    x = (
        (rng.normal(size=(n, big_d)) @ rng.normal(size=(big_d, big_d)) + 3.0)
        .astype(np.float32)
        .astype(np.float64)
    )
    dim = 20
    pca = PP.fit_pca_whitening(x, dim)
    y = PP.apply_pca_whitening(pca, x, l2_norm=False).astype(np.float64)
    assert y.shape == (n, dim)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    # Unit variance (1/n) and decorrelated, up to the float32 output rounding.
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(dim), atol=1e-5)
    # The directions are NumPy's principal axes (up to sign), by decreasing variance.
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(pca.variances, s[:dim] ** 2 / n, rtol=1e-7)
    np.testing.assert_allclose(np.abs(pca.components @ vt[:dim].T), np.eye(dim), atol=1e-7)
    # With the default L2 after it, unit rows.
    z = PP.apply_pca_whitening(pca, x)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-6)
    # Without whitening: plain projection with the training variances.
    p = PP.fit_pca_whitening(x, dim, whiten=False)
    yp = PP.apply_pca_whitening(p, x, l2_norm=False).astype(np.float64)
    np.testing.assert_allclose(yp.var(axis=0), s[:dim] ** 2 / n, rtol=1e-5)


def test_pca_dimension_above_rank_is_refused():
    x = np.random.default_rng(5).normal(size=(30, 100))
    PP.fit_pca_whitening(x, 29)
    with pytest.raises(InputError, match="span 29"):
        PP.fit_pca_whitening(x, 30)
    pca = PP.fit_pca_whitening(x, 5)
    with pytest.raises(InputError, match="dimension 99 but the PCA has dimension 100"):
        PP.apply_pca_whitening(pca, x[:, :99])
