"""Whitening, multi-scale, query expansion and DBA against hand values and NumPy references.

Tolerances: outputs are float32 computed in float64, so rtol 1e-6 against
float64 values (atol 1e-7 near zero); fitted float64 matrices, 1e-9.
"""

import numpy as np
import pytest

from ckn import InputError
from retrieval import image as PP

RTOL, ATOL = 1e-6, 1e-7
S2 = np.sqrt(2.0)


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# --------------------------------------------------------------------------- learned whitening


def test_learned_whitening_hand_example():
    # Pairs (0, 1) and (2, 3) differ by (2, 0) and (0, 1): S = diag(4 + 0, 0 + 1) / 2
    # = diag(2, 1/2), so P1 = L^-1 = diag(1/sqrt 2, sqrt 2). m = mean(x0, x2) = (1, 1/2).
    # P1 (x - m) for the five rows: (1, -1/2), (-1, -1/2), (-1, 1/2), (-1, -1/2), (2, 0)
    # times diag(1/sqrt 2, sqrt 2) = (1, -1)/sqrt 2, (-1, -1)/sqrt 2, (-1, 1)/sqrt 2,
    # (-1, -1)/sqrt 2, (sqrt 2, 0); their scatter is diag(4/2 + 2, 4/2) = diag(4, 2):
    # V = I (already decreasing), so P = P1.
    x = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [3.0, 0.5]])
    w = PP.fit_learned_whitening(x, np.array([[0, 1], [2, 3]]))
    assert isinstance(w, PP.Whitening) and w.dim == 2 and w.input_dim == 2
    np.testing.assert_allclose(w.mean, [1.0, 0.5], rtol=1e-12)
    np.testing.assert_allclose(w.projection, np.diag([1 / S2, S2]), rtol=1e-12, atol=1e-15)
    # (3, 0.5) -> P (2, 0) = (sqrt 2, 0) -> (1, 0); (1, 1.5) -> (0, sqrt 2) -> (0, 1).
    y = PP.apply_whitening(w, np.array([[3.0, 0.5], [1.0, 1.5]]))
    np.testing.assert_allclose(y, [[1.0, 0.0], [0.0, 1.0]], atol=ATOL)
    assert y.dtype == np.float32
    np.testing.assert_allclose(
        PP.apply_whitening(w, [3.0, 0.5], l2_norm=False), [S2, 0.0], rtol=RTOL
    )
    # The tuple form of the pairs, and dim = 1 keeps the first row.
    w1 = PP.fit_learned_whitening(x, (np.array([0, 2]), np.array([1, 3])), dim=1)
    np.testing.assert_allclose(w1.projection, [[1 / S2, 0.0]], atol=1e-15)
    np.testing.assert_allclose(PP.apply_whitening(w, x, dim=1), PP.apply_whitening(w1, x))


def ref_whitenlearn(x, q, p):
    """The recipe of GLOBAL_NOTES section 3, with the eigenvectors from an SVD instead."""
    m = x[q].mean(axis=0)
    df = x[q] - x[p]
    s = df.T @ df / len(q)
    p1 = np.linalg.inv(np.linalg.cholesky(s))
    _, _, vt = np.linalg.svd((x - m) @ p1.T, full_matrices=False)
    return m, vt @ p1  # rows of vt: eigenvectors of the scatter, decreasing


def test_learned_whitening_properties_and_reference():
    rng = np.random.default_rng(0)
    n, d = 300, 12
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    q = rng.integers(0, n, 200)
    p = (q + rng.integers(1, n, 200)) % n
    w = PP.fit_learned_whitening(x, np.stack([q, p], axis=1))
    m, proj = ref_whitenlearn(x, q, p)
    np.testing.assert_allclose(w.mean, m, rtol=1e-12)
    # Up to the sign of each row (fixed here: largest-magnitude entry of V positive).
    np.testing.assert_allclose(np.abs(w.projection), np.abs(proj), rtol=1e-8, atol=1e-10)
    # Matching differences are white, and the whitened training set is decorrelated.
    df = x[q] - x[p]
    np.testing.assert_allclose(
        w.projection @ (df.T @ df / len(q)) @ w.projection.T, np.eye(d), atol=1e-9
    )
    y = (x - w.mean) @ w.projection.T
    scatter = y.T @ y
    off = scatter - np.diag(np.diag(scatter))
    assert np.abs(off).max() < 1e-8 * np.abs(scatter).max()
    assert np.all(np.diff(np.diag(scatter)) <= 0)


def test_learned_whitening_jitters_a_singular_covariance():
    """3 pairs in 20-D: S has rank 3. The documented jitter is the first of 0, 1e-10, 1e-9, ...
    times the mean diagonal that makes S + a I positive definite: here a = 1e-10 mean(diag S).
    Reference: the recipe with S + a I whitened by its symmetric inverse square root (an
    eigendecomposition, not a Cholesky factor: P = V^T P1 does not depend on that choice)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 20))
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    w = PP.fit_learned_whitening(x, pairs, dim=5)
    assert w.projection.shape == (5, 20) and np.all(np.isfinite(w.projection))
    q, p = pairs.T
    df = x[q] - x[p]
    s = df.T @ df / 3
    lam = np.linalg.eigvalsh(s)
    assert lam[-4] < 1e-12 * lam[-1]  # rank 3: a = 0 is refused
    sa = s + 1e-10 * np.trace(s) / 20 * np.eye(20)
    lam, u = np.linalg.eigh(sa)
    p1 = (u / np.sqrt(lam)) @ u.T
    m = x[q].mean(axis=0)
    y = (x - m) @ p1.T
    _, vec = np.linalg.eigh(y.T @ y)
    ref = vec[:, ::-1].T @ p1  # rows by decreasing eigenvalue
    np.testing.assert_allclose(w.mean, m, rtol=1e-12)
    # Up to the sign of each row. S + a I has a condition number of 1e10 and the whitened
    # scatter eigenvalues 1% apart: the rows agree to 4e-5 of the largest entry (measured).
    scale = np.abs(ref[:5]).max()
    np.testing.assert_allclose(np.abs(w.projection), np.abs(ref[:5]), atol=1e-3 * scale)
    # The kept rows make S + a I white (to 3e-6, measured) ...
    np.testing.assert_allclose(w.projection @ sa @ w.projection.T, np.eye(5), atol=1e-4)
    # ... and all of them decorrelate the whitened training set, by decreasing variance.
    full = PP.fit_learned_whitening(x, pairs)
    z = (x - full.mean) @ full.projection.T
    scatter = z.T @ z
    assert np.abs(scatter - np.diag(np.diag(scatter))).max() < 1e-6 * np.abs(scatter).max()
    assert np.all(np.diff(np.diag(scatter)) <= 0)
    # Applied: the reference's whitened vectors, up to the sign of each coordinate (5e-5).
    np.testing.assert_allclose(
        np.abs(PP.apply_whitening(w, x)), np.abs(unit((x - m) @ ref[:5].T)), atol=1e-3
    )


def test_pca_and_learned_whitening_share_apply():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 10)).astype(np.float32)
    pca = PP.fit_pca_whitening(x, 6)
    np.testing.assert_array_equal(PP.apply_whitening(pca, x), PP.apply_pca_whitening(pca, x))
    as_affine = PP.Whitening(pca.mean, pca.projection)
    np.testing.assert_allclose(
        PP.apply_whitening(as_affine, x), PP.apply_pca_whitening(pca, x), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        PP.apply_whitening(pca, x, dim=3),
        PP.apply_whitening(as_affine, x, dim=3),
        rtol=1e-5,
        atol=1e-6,
    )


def test_whitening_errors():
    x = np.random.default_rng(3).normal(size=(10, 4))
    with pytest.raises(
        InputError, match=r"pairs must be \(P, 2\) indices \(query, positive\), got shape \(3,\)"
    ):
        PP.fit_learned_whitening(x, np.array([0, 1, 2]))
    with pytest.raises(InputError, match="pair 1 names vector 10, outside 0..9"):
        PP.fit_learned_whitening(x, np.array([[0, 1], [10, 2]]))
    with pytest.raises(InputError, match="pairs is empty"):
        PP.fit_learned_whitening(x, np.zeros((0, 2), np.int64))
    with pytest.raises(InputError, match="pair indices must be integers"):
        PP.fit_learned_whitening(x, np.array([[0.0, 1.0]]))
    with pytest.raises(InputError, match=r"dim must be in 1..4 \(the vector dimension D\), got 5"):
        PP.fit_learned_whitening(x, np.array([[0, 1]]), dim=5)
    with pytest.raises(InputError, match=r"training vectors must be \(N, D\), got shape \(10,\)"):
        PP.fit_learned_whitening(x[:, 0], np.array([[0, 1]]))
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match="training vectors contains NaN"):
        PP.fit_learned_whitening(bad, np.array([[0, 1]]))
    w = PP.fit_learned_whitening(x, np.array([[0, 1], [2, 3]]))
    with pytest.raises(
        InputError, match="vectors have dimension 3 but the whitening has dimension 4"
    ):
        PP.apply_whitening(w, x[:, :3])
    with pytest.raises(InputError, match="dim must be in 1..4, got 0"):
        PP.apply_whitening(w, x, dim=0)


# --------------------------------------------------------------------------- multi-scale


def test_multiscale_combine_hand_values():
    v = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # S = 2 scales, N = 1, D = 2
    np.testing.assert_allclose(PP.multiscale_combine(v), [[1 / S2, 1 / S2]], rtol=RTOL)
    # p = 2: mean of squares (1, 1/2) -> sqrt (1, 1/sqrt 2) -> L2 (sqrt(2/3), sqrt(1/3)).
    v = np.array([[[1.0, 0.0]], [[1.0, 1.0]]])
    np.testing.assert_allclose(
        PP.multiscale_combine(v, p=2.0), [[np.sqrt(2 / 3), np.sqrt(1 / 3)]], rtol=RTOL
    )
    # A list of (N, D) arrays works too; p = 3 against the formula.
    rng = np.random.default_rng(4)
    scales = [rng.random((5, 7)) for _ in range(3)]
    want = unit(np.mean([s**3 for s in scales], axis=0) ** (1 / 3))
    out = PP.multiscale_combine(scales, p=3.0)
    assert out.shape == (5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=RTOL, atol=ATOL)


def test_multiscale_errors():
    with pytest.raises(InputError, match=r"vectors must be \(S, N, D\).*\(4, 3\)"):
        PP.multiscale_combine(np.ones((4, 3)))
    with pytest.raises(InputError, match="p must be > 0, got 0.0"):
        PP.multiscale_combine(np.ones((2, 1, 3)), p=0.0)
    with pytest.raises(
        InputError, match="negative entries: the power mean with p = 3.0 needs >= 0"
    ):
        PP.multiscale_combine(-np.ones((2, 1, 3)), p=3.0)
    PP.multiscale_combine(-np.ones((2, 1, 3)), p=1.0)  # a plain mean takes any sign


# --------------------------------------------------------------------------- QE


# q = (1, 0); similarities to the database rows: 0.8, 0.6, 0, -1.
Q = np.array([[1.0, 0.0]])
DB = np.array([[0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])


def test_query_expansion_hand_values():
    np.testing.assert_allclose(PP.query_expansion(Q, DB, k=1), unit([[1.8, 0.6]]), rtol=RTOL)
    np.testing.assert_allclose(PP.query_expansion(Q, DB, k=2), unit([[2.4, 1.4]]), rtol=RTOL)
    # k = 4 adds every row, the opposite one included: (1 + .8 + .6 + 0 - 1, .6 + .8 + 1 + 0).
    np.testing.assert_allclose(PP.query_expansion(Q, DB, k=4), unit([[1.4, 2.4]]), rtol=RTOL)


def test_alpha_qe_hand_values():
    # alpha = 1, k = 2: q + .8 (.8, .6) + .6 (.6, .8) = (2, .96).
    np.testing.assert_allclose(PP.alpha_qe(Q, DB, k=2, alpha=1.0), unit([[2.0, 0.96]]), rtol=RTOL)
    # alpha = 3, k = 4: weights .512, .216, 0, max(-1, 0)^3 = 0.
    np.testing.assert_allclose(
        PP.alpha_qe(Q, DB, k=4, alpha=3.0),
        unit([[1.0 + 0.4096 + 0.1296, 0.3072 + 0.1728]]),
        rtol=RTOL,
    )
    # A fractional alpha (an int in dirtorch's argparse): .8^0.5, .6^0.5.
    w = np.sqrt([0.8, 0.6])
    np.testing.assert_allclose(PP.alpha_qe(Q, DB, k=2, alpha=0.5), unit(Q + w @ DB[:2]), rtol=RTOL)
    # alpha = 0 weighs all neighbours 1 (0^0 = 1): average QE.
    np.testing.assert_allclose(
        PP.alpha_qe(Q, DB, k=4, alpha=0.0), PP.query_expansion(Q, DB, k=4), rtol=RTOL
    )


def test_qe_matches_numpy_on_random_data():
    rng = np.random.default_rng(5)
    db = unit(rng.normal(size=(200, 16)))
    q = unit(rng.normal(size=(7, 16)))
    sims = q @ db.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :5]
    want_avg = unit(q + db[top].sum(axis=1))
    want_alpha = unit(
        q + np.einsum("qk,qkd->qd", np.maximum(np.take_along_axis(sims, top, 1), 0) ** 3, db[top])
    )
    np.testing.assert_allclose(PP.query_expansion(q, db, k=5), want_avg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(PP.alpha_qe(q, db, k=5, alpha=3.0), want_alpha, rtol=1e-5, atol=1e-6)


def test_qe_errors():
    with pytest.raises(
        InputError, match="queries have dimension 3 but the database has dimension 2"
    ):
        PP.query_expansion(np.ones((1, 3)), DB)
    with pytest.raises(InputError, match="k = 5 exceeds the 4 database vectors"):
        PP.query_expansion(Q, DB, k=5)
    with pytest.raises(InputError, match="k must be an int >= 1, got 0"):
        PP.alpha_qe(Q, DB, k=0)
    with pytest.raises(InputError, match="alpha must be a finite float >= 0, got -1.0"):
        PP.alpha_qe(Q, DB, k=1, alpha=-1.0)
    with pytest.raises(InputError, match=r"queries must be \(Q, D\), got shape \(2,\)"):
        PP.query_expansion(Q[0], DB)


# --------------------------------------------------------------------------- DBA

# a . b = .8, a . c = 0, b . c = .6: a's nearest other is b, b's is a, c's is b.
A, B, C = [1.0, 0.0], [0.8, 0.6], [0.0, 1.0]
TRIO = np.array([A, B, C])


def test_dba_rank_weights_hand_values():
    # k = 2: itself weight 2/2, its nearest other 1/2.
    want = unit([[1.4, 0.3], [1.3, 0.6], [0.4, 1.3]])
    np.testing.assert_allclose(PP.database_augmentation(TRIO, k=2), want, rtol=RTOL)
    # k = 3: weights 1, 2/3, 1/3; a: a + 2/3 b + 1/3 c; b: b + 2/3 a + 1/3 c;
    # c: c + 2/3 b + 1/3 a.
    want = unit(
        [
            [1 + 2 / 3 * 0.8, 2 / 3 * 0.6 + 1 / 3],
            [0.8 + 2 / 3, 0.6 + 1 / 3],
            [2 / 3 * 0.8 + 1 / 3, 1 + 2 / 3 * 0.6],
        ]
    )
    np.testing.assert_allclose(PP.database_augmentation(TRIO, k=3), want, rtol=RTOL)
    # k = 1 only normalizes.
    np.testing.assert_allclose(PP.database_augmentation(2.0 * TRIO, k=1), TRIO, rtol=RTOL)


def test_dba_alpha_weights_hand_values():
    # alpha = 1, k = 2: a + .8 b, b + .8 a, c + .6 b.
    want = unit([[1.64, 0.48], [1.6, 0.6], [0.48, 1.36]])
    np.testing.assert_allclose(
        PP.database_augmentation(TRIO, k=2, weighting="alpha", alpha=1.0), want, rtol=RTOL
    )


def test_dba_matches_numpy_on_random_data():
    rng = np.random.default_rng(6)
    db = unit(rng.normal(size=(150, 8)))
    sims = db @ db.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :4]  # k = 5 with itself
    w = (5 - np.arange(1, 5)) / 5
    want = unit(db + np.einsum("k,nkd->nd", w, db[top]))
    np.testing.assert_allclose(PP.database_augmentation(db, k=5), want, rtol=1e-5, atol=1e-6)


def test_dba_errors():
    with pytest.raises(InputError, match="weighting must be one of rank, alpha, got 'gordo'"):
        PP.database_augmentation(TRIO, k=2, weighting="gordo")
    with pytest.raises(
        InputError, match=r"k = 4 exceeds the 3 database vectors \(k counts the vector itself\)"
    ):
        PP.database_augmentation(TRIO, k=4)
    with pytest.raises(InputError, match=r"database must be \(N, D\), got shape \(2, 3, 1\)"):
        PP.database_augmentation(np.ones((2, 3, 1)), k=1)
