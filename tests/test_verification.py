"""Spatial verification of a pair: mutual ratio-test matches, RANSAC geometry, inliers, cache.

References: a plain double loop for the matches; the KNOWN homography / affine map of a
constructed pair for the correspondences (which matches are true is decided by the map the
pair was made with, not by anything the library computes).
"""

import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval.local import (
    FeatureCache,
    LocalConfig,
    batch_matches,
    fit_geometry,
    local_features,
    make_local_describer,
    mutual_matches,
    transfer_error,
    verify_pair,
)
from retrieval.patches import default_photos


def _reference_matches(a, b, ratio):
    """Plain loops: mutual nearest neighbours (Euclidean) passing Lowe's ratio test."""
    out = []
    for i in range(len(a)):
        d = [float(np.sqrt(((a[i] - b[j]) ** 2).sum())) for j in range(len(b))]
        order = sorted(range(len(b)), key=lambda j: d[j])
        j = order[0]
        back = min(range(len(a)), key=lambda k: float(np.sqrt(((a[k] - b[j]) ** 2).sum())))
        if back != i:
            continue
        if len(b) > 1 and not d[j] < ratio * d[order[1]]:
            continue
        out.append((i, j))
    return out


@pytest.mark.parametrize("ratio", [0.6, 0.9, 1.0])
def test_mutual_matches_equal_plain_loops(ratio):
    rng = np.random.default_rng(0)
    b = rng.normal(size=(40, 16))
    # 25 noisy copies of database rows (some close, some far) and 15 unrelated rows.
    src = rng.choice(40, 25, replace=False)
    a = np.concatenate([b[src] + rng.normal(scale=rng.uniform(0.05, 1.2, (25, 1)), size=(25, 16)),
                        rng.normal(size=(15, 16))])  # fmt: skip
    m = mutual_matches(a, b, ratio)
    ref = _reference_matches(a, b, ratio)
    assert list(zip(m.query.tolist(), m.database.tolist())) == ref
    assert len(ref) >= 5
    np.testing.assert_allclose(
        m.distance, [np.linalg.norm(a[i] - b[j]) for i, j in ref], rtol=1e-9, atol=1e-9
    )


def test_batch_matches_equal_the_numpy_definition():
    """float32 BLAS matches of several images (one empty) = the float64 definition."""
    rng = np.random.default_rng(2)
    q = rng.normal(size=(70, 16)).astype(np.float32)
    images = []
    for m in (40, 1, 130, 0, 5):
        b = rng.normal(size=(m, 16)).astype(np.float32)
        k = min(m, 30)
        b[:k] = q[rng.choice(70, k, replace=False)] + rng.normal(scale=0.3, size=(k, 16))
        images.append(b)
    got = batch_matches(q, images, 0.8)
    for b, m in zip(images, got):
        ref = mutual_matches(q, b, 0.8)
        np.testing.assert_array_equal(m.query, ref.query)
        np.testing.assert_array_equal(m.database, ref.database)
        np.testing.assert_allclose(m.distance, ref.distance, rtol=1e-4, atol=1e-4)
    assert sum(len(m) for m in got) >= 40


def test_batch_matches_break_ties_as_the_numpy_definition():
    """Exact ties (duplicated rows, integer descriptors: exact float32 distances) resolve as
    NumPy's argmin does: the first row; with ratio 1 a tied nearest neighbour fails the test."""
    rng = np.random.default_rng(3)
    q = rng.integers(0, 4, size=(24, 8)).astype(np.float32)
    q[5] = q[2]  # a duplicated query row: only its first copy can be a mutual match
    b = np.concatenate([q[:12], q[:6], rng.integers(0, 4, size=(10, 8))]).astype(np.float32)
    for ratio in (1.0, 0.9):
        (got,) = batch_matches(q, [b], ratio)
        ref = mutual_matches(q, b, ratio)
        np.testing.assert_array_equal(got.query, ref.query)
        np.testing.assert_array_equal(got.database, ref.database)


def test_mutual_matches_edge_cases():
    a = np.eye(3)
    m = mutual_matches(a, np.eye(3)[:1], 0.8)  # one database row: no ratio test
    assert m.query.tolist() == [0] and m.database.tolist() == [0]
    assert len(mutual_matches(np.zeros((0, 3)), a)) == 0
    with pytest.raises(InputError, match="descriptors"):
        mutual_matches(a, np.eye(4))
    with pytest.raises(InputError, match="ratio"):
        mutual_matches(a, a, 1.5)


@pytest.mark.parametrize("model", ["affine", "homography"])
def test_fit_geometry_finds_the_planted_inliers(model):
    rng = np.random.default_rng(1)
    truth = np.array([[1.1, 0.2, 15.0], [-0.15, 0.9, -7.0], [0.0, 0.0, 1.0]])
    if model == "homography":
        truth[2, :2] = [4e-4, -3e-4]
    src = rng.uniform(0, 400, (120, 2))
    dst = src @ truth[:2, :2].T + truth[:2, 2]
    if model == "homography":
        p = np.c_[src, np.ones(120)] @ truth.T
        dst = p[:, :2] / p[:, 2:]
    dst = dst + rng.normal(scale=0.5, size=dst.shape)
    outliers = rng.choice(120, 50, replace=False)
    dst[outliers] = rng.uniform(0, 400, (50, 2))
    expected = transfer_error(truth, src, dst) <= 4.0  # decided by the planted map
    g = fit_geometry(src, dst, model, threshold=4.0, seed=3)
    assert g.count == int(expected.sum()) >= 65
    np.testing.assert_array_equal(g.inliers, expected)
    assert np.median(transfer_error(g.model, src[expected], dst[expected])) < 1.0
    again = fit_geometry(src, dst, model, threshold=4.0, seed=3)  # seeded: same answer
    np.testing.assert_array_equal(again.model, g.model)
    # Too few matches for the model: no model, no inlier.
    few = fit_geometry(src[:2], dst[:2], model)
    assert few.model is None and few.count == 0
    with pytest.raises(InputError, match="model must be one of"):
        fit_geometry(src, dst, "similarity")


@pytest.fixture(scope="module")
def constructed_pair():
    """astronaut and its rendering under a known homography (and an unrelated photo)."""
    (_, a), (_, other) = default_photos(["astronaut", "coffee"])
    truth = np.array([[0.9, 0.15, 30.0], [-0.1, 0.85, 40.0], [2e-4, 1e-4, 1.0]])
    warped = cv2.warpPerspective(a, truth, (a.shape[1], a.shape[0]))
    d = make_local_describer("rootsift")
    cfg = LocalConfig(max_regions=400)
    feats = [local_features(x, d, config=cfg) for x in (a, warped, other)]
    return truth, feats


@pytest.mark.parametrize("model,recall", [("homography", 0.97), ("affine", 0.85)])
def test_inlier_count_of_a_constructed_pair_matches_the_true_correspondences(
    constructed_pair, model, recall
):
    truth, (fa, fw, fo) = constructed_pair
    v = verify_pair(fa, fw, model=model, threshold=8.0)
    src = fa.regions.xy[v.matches.query]
    dst = fw.regions.xy[v.matches.database]
    true = transfer_error(truth, src, dst) <= 8.0  # the true correspondences among the matches
    assert true.sum() >= 80
    inl = v.geometry.inliers
    # Every inlier a true correspondence (up to 2 %), and most true correspondences found
    # (all of them with the right model; an affine map cannot follow the perspective part).
    assert (inl & ~true).sum() <= 0.02 * true.sum()
    assert (inl & true).sum() >= recall * true.sum()
    assert v.inliers == int(inl.sum())
    if model == "homography":
        assert abs(v.inliers - int(true.sum())) <= 0.03 * true.sum()
        # The fitted map is the true one where the image is (its region centres).
        p = np.c_[fa.regions.xy, np.ones(len(fa.regions))] @ truth.T
        assert np.median(transfer_error(v.geometry.model, fa.regions.xy, p[:, :2] / p[:, 2:])) < 2
    unrelated = verify_pair(fa, fo, model=model, threshold=8.0)
    assert unrelated.inliers < 10 < v.inliers


def test_feature_cache_is_bounded_and_least_recently_used():
    cache = FeatureCache(max_bytes=3 * 800)
    made = []

    def make(k):
        made.append(k)
        return np.full(100, k, np.float64)  # 800 bytes

    for k in [0, 1, 2, 0, 3]:  # 3 evicts 1 (0 was used again after 1)
        assert cache.get(k, lambda k=k: make(k))[0] == k
    assert made == [0, 1, 2, 3] and cache.hits == 1 and cache.misses == 4
    assert len(cache) == 3 and cache.nbytes == 2400 and cache.peak <= 2400
    cache.get(1, lambda: make(1))
    assert made[-1] == 1 and 2 not in cache._items  # 2 was the least recently used
    big = cache.get("big", lambda: np.zeros(1000))  # larger than the bound: not kept
    assert big.shape == (1000,) and "big" not in cache._items and cache.nbytes <= 2400
    with pytest.raises(InputError, match="max_bytes"):
        FeatureCache(-1)
