"""Class-weighted (CAM) pooling, OfA / OnA aggregation and CAM re-ranking vs NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckn import InputError
from retrieval import image as cam
from retrieval._src.cam_rerank import THRESHOLDS, _query_cams, _region_vectors
from retrieval.image import apply_whitening, fit_pca_whitening

# --------------------------------------------------------------------------- NumPy references


def ref_cams(x, w, valid=None):
    """x (h, w, C), w (K, C) -> (h, w, K) CAM / max over valid, negatives 0."""
    valid = np.ones(x.shape[:2], bool) if valid is None else valid
    raw = x.astype(np.float64) @ w.T.astype(np.float64)
    out = np.zeros_like(raw)
    for k in range(w.shape[0]):
        m = raw[..., k][valid].max() if valid.any() else 0.0
        if m > 0:
            out[..., k] = np.where(valid, np.maximum(raw[..., k] / m, 0.0), 0.0)
    return out


def ref_crow_cw(x, region):
    """CroW channel weights (Kalantidis et al.'s compute_crow_channel_weight) over region."""
    q = np.array([np.count_nonzero(x[..., k][region]) for k in range(x.shape[-1])], np.float64)
    q /= max(region.sum(), 1)
    return np.array([np.log(q.sum() / d) if d > 0 else 0.0 for d in q])


def ref_class_vectors(x, w_rows, valid=None, region=None):
    """(N_C, C): CW * sum over region of x * CAM_c (CAMs normalized over valid), L2."""
    valid = np.ones(x.shape[:2], bool) if valid is None else valid
    region = valid if region is None else region & valid
    cams = ref_cams(x, w_rows, valid)
    cw = ref_crow_cw(x, region)
    x64 = x.astype(np.float64)
    out = []
    for k in range(w_rows.shape[0]):
        f = (x64 * cams[..., k : k + 1])[region].sum(axis=0) * cw
        n = np.linalg.norm(f)
        out.append(f / n if n > 0 else f)
    return np.array(out)


def ref_aggregate(vectors, whitening=None):
    out = []
    for v in vectors:
        alive = np.linalg.norm(v, axis=1) > 0
        y = v if whitening is None else apply_whitening(whitening, v).astype(np.float64)
        s = y[alive].sum(axis=0)
        out.append(s / max(np.linalg.norm(s), 1e-12))
    return np.array(out)


def _maps(rng, n, h, w, c, sparsity=0.4):
    """Post-ReLU-like maps: non-negative with exact zeros (CroW's channel weights need them)."""
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    return np.where(x > sparsity, x, 0.0).astype(np.float32)


# --------------------------------------------------------------------------- CAMs


def test_class_activation_maps_hand_values():
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, :, :, 0] = [[1, 2], [3, 4]]
    x[0, :, :, 1] = [[4, 0], [1, 0]]
    w = np.array([[1, 0], [0, -1], [1, -1]], np.float32)
    got = np.asarray(cam.class_activation_maps(jnp.asarray(x), jnp.asarray(w)))[0]
    np.testing.assert_allclose(got[..., 0], [[0.25, 0.5], [0.75, 1.0]])  # divided by its max
    np.testing.assert_array_equal(got[..., 1], 0.0)  # max <= 0: zeros
    np.testing.assert_allclose(got[..., 2], [[0.0, 0.5], [0.5, 1.0]])  # -3 clipped
    mask = np.array([[[True, True], [True, False]]])
    got = np.asarray(cam.class_activation_maps(jnp.asarray(x), jnp.asarray(w), jnp.asarray(mask)))
    np.testing.assert_allclose(got[0, ..., 0], [[1 / 3, 2 / 3], [1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(got[0, ..., 2], [[0.0, 1.0], [1.0, 0.0]])


def test_class_activation_maps_vs_numpy_with_mask_and_float16():
    rng = np.random.default_rng(0)
    x = _maps(rng, 3, 5, 6, 8)
    w = rng.standard_normal((7, 8)).astype(np.float32)
    mask = np.ones((3, 5, 6), bool)
    mask[1, 3:] = False
    mask[2, :, 4:] = False
    got = np.asarray(cam.class_activation_maps(jnp.asarray(x), jnp.asarray(w), jnp.asarray(mask)))
    for i in range(3):
        np.testing.assert_allclose(got[i], ref_cams(x[i], w, mask[i]), atol=1e-6)
    assert got.min() >= 0.0 and got.max() <= 1.0 + 1e-6
    half = np.asarray(cam.class_activation_maps(jnp.asarray(x.astype(np.float16)), jnp.asarray(w)))
    np.testing.assert_allclose(half[0], ref_cams(x[0].astype(np.float16), w), atol=1e-6)


# --------------------------------------------------------------------------- cam_pool (OfA)


def test_cam_pool_top_classes_and_class_vectors():
    rng = np.random.default_rng(1)
    x = _maps(rng, 2, 5, 6, 8)
    w = rng.standard_normal((20, 8)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    out = cam.cam_pool(jnp.asarray(x), (jnp.asarray(w), jnp.asarray(b)), top_classes=4)
    logits = x.mean(axis=(1, 2)) @ w.T + b
    want = np.argsort(-logits, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(np.asarray(out.classes), want)
    assert out.classes.dtype == jnp.int32 and out.vectors.shape == (2, 4, 8)
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(out.vectors[i]), ref_class_vectors(x[i], w[want[i]]), atol=1e-5
        )
    # Given logits: their top classes, not the GAP ones.
    given = rng.standard_normal((2, 20)).astype(np.float32)
    out2 = cam.cam_pool(
        jnp.asarray(x), (jnp.asarray(w), jnp.asarray(b)), top_classes=3, logits=jnp.asarray(given)
    )
    np.testing.assert_array_equal(np.asarray(out2.classes), np.argsort(-given, axis=1)[:, :3])


def test_cam_pool_mask_equals_the_cropped_map():
    rng = np.random.default_rng(2)
    x = _maps(rng, 2, 6, 7, 5)
    w = rng.standard_normal((9, 5)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    mask = np.ones((2, 6, 7), bool)
    mask[1, 4:] = False
    mask[1, :, 5:] = False
    padded = x.copy()
    padded[1][~mask[1]] = 3.0  # padding content must not matter
    clf = (jnp.asarray(w), jnp.asarray(b))
    got = cam.cam_pool(jnp.asarray(padded), clf, top_classes=3, mask=jnp.asarray(mask))
    crop = cam.cam_pool(jnp.asarray(x[1:, :4, :5]), clf, top_classes=3)
    np.testing.assert_array_equal(np.asarray(got.classes[1]), np.asarray(crop.classes[0]))
    np.testing.assert_allclose(np.asarray(got.vectors[1]), np.asarray(crop.vectors[0]), atol=1e-6)
    empty = np.zeros((1, 6, 7), bool)
    z = cam.cam_pool(jnp.asarray(x[:1]), clf, top_classes=2, mask=jnp.asarray(empty))
    np.testing.assert_array_equal(np.asarray(z.vectors), 0.0)  # no NaN


def test_cam_class_vectors_given_classes():
    rng = np.random.default_rng(3)
    x = _maps(rng, 3, 4, 5, 6)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    shared = np.array([7, 2, 5], np.int32)
    got = np.asarray(cam.cam_class_vectors(jnp.asarray(x), jnp.asarray(w), jnp.asarray(shared)))
    per = np.array([[1, 2, 3], [7, 2, 5], [0, 0, 9]], np.int32)
    got2 = np.asarray(cam.cam_class_vectors(jnp.asarray(x), jnp.asarray(w), jnp.asarray(per)))
    for i in range(3):
        np.testing.assert_allclose(got[i], ref_class_vectors(x[i], w[shared]), atol=1e-5)
        np.testing.assert_allclose(got2[i], ref_class_vectors(x[i], w[per[i]]), atol=1e-5)
    np.testing.assert_allclose(got2[1], got[1], atol=1e-6)


# --------------------------------------------------------------------------- aggregation


def test_aggregate_class_vectors_with_and_without_whitening():
    rng = np.random.default_rng(4)
    v = rng.standard_normal((3, 4, 6))
    v /= np.linalg.norm(v, axis=2, keepdims=True)
    v[1, 2] = 0.0  # a dead CAM: contributes nothing, even after whitening
    got = cam.aggregate_class_vectors(v)
    np.testing.assert_allclose(got, ref_aggregate(v), atol=1e-6)
    pca = fit_pca_whitening(rng.standard_normal((50, 6)), 5)
    got = cam.aggregate_class_vectors(v, pca)
    assert got.shape == (3, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref_aggregate(v, pca), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert cam.aggregate_class_vectors(v, pca, dim=2).shape == (3, 2)
    with pytest.raises(InputError, match="dim needs a whitening"):
        cam.aggregate_class_vectors(v, dim=2)
    with pytest.raises(InputError, match=r"\(N, N_C, C\)"):
        cam.aggregate_class_vectors(v[0])
    with pytest.raises(InputError, match="NaN"):
        cam.aggregate_class_vectors(np.full((1, 2, 3), np.nan))


def _ofa_ona_example():
    """Query: a channel-0 object. A: the same object beside a larger channel-1 object (its own
    top class is 1). B: channel 0 weak everywhere plus a channel-2 object (top class 0)."""
    w = np.eye(3, dtype=np.float32)  # class c fires on channel c
    b = np.zeros(3, np.float32)
    q = np.zeros((4, 4, 3), np.float32)
    q[:2, :2, 0] = 1.0
    q[..., 2] = 0.1
    a = np.zeros((4, 4, 3), np.float32)
    a[:2, :2, 0] = 1.0
    a[2:, :, 1] = 2.0
    bb = np.zeros((4, 4, 3), np.float32)
    bb[..., 0] = 0.3
    bb[2:, 2:, 2] = 1.0
    return np.stack([q, a, bb]), w, b


def test_ofa_and_ona_differ_on_a_two_image_example():
    maps, w, b = _ofa_ona_example()
    clf = (jnp.asarray(w), jnp.asarray(b))
    out = cam.cam_pool(jnp.asarray(maps), clf, top_classes=1)
    np.testing.assert_array_equal(np.asarray(out.classes)[:, 0], [0, 1, 0])
    desc = cam.aggregate_class_vectors(out.vectors)
    query, db_ofa = desc[0], desc[1:]
    db_ona = cam.online_aggregation(maps[1:], w, np.asarray(out.classes[0]))
    # OnA pools A with the query's class 0: the reference with class 0 for both images.
    for i in range(2):
        want = ref_aggregate(ref_class_vectors(maps[1 + i], w[[0]])[None])[0]
        np.testing.assert_allclose(db_ona[i], want, atol=1e-6)
    np.testing.assert_allclose(db_ona[1], db_ofa[1], atol=1e-6)  # B's own class is the query's
    ofa, ona = db_ofa @ query, db_ona @ query
    assert ofa[0] < 1e-6 < ofa[1]  # OfA: A's class-1 vector is orthogonal to the query
    assert ona[0] > 0.99 > ona[1]  # OnA: A's class-0 vector is the query's object
    assert list(np.argsort(-ofa)) == [1, 0] and list(np.argsort(-ona)) == [0, 1]


def test_online_aggregation_batches_float16_and_whitening():
    rng = np.random.default_rng(5)
    x = _maps(rng, 5, 4, 5, 6)
    w = rng.standard_normal((10, 6)).astype(np.float32)
    classes = np.array([3, 1, 4], np.int32)
    pca = fit_pca_whitening(rng.standard_normal((40, 6)), 4)
    full = cam.online_aggregation(x, w, classes, whitening=pca)
    want = cam.aggregate_class_vectors(
        cam.cam_class_vectors(jnp.asarray(x), jnp.asarray(w), jnp.asarray(classes)), pca
    )
    np.testing.assert_allclose(full, want, atol=1e-6)
    batched = cam.online_aggregation(x, w, classes, whitening=pca, batch_size=2)  # 2 + 2 + 1
    np.testing.assert_allclose(batched, full, atol=1e-6)
    half = cam.online_aggregation(x.astype(np.float16), w, classes, whitening=pca)
    assert np.abs(half - full).max() < 5e-3  # float16 storage of the maps
    mask = np.ones((5, 4, 5), bool)
    mask[2, 2:] = False
    masked = cam.online_aggregation(x, w, classes, mask=mask, batch_size=2)
    crop = cam.online_aggregation(x[2:3, :2], w, classes)
    np.testing.assert_allclose(masked[2], crop[0], atol=1e-6)
    with pytest.raises(InputError, match="query_classes"):
        cam.online_aggregation(x, w, classes[None])
    with pytest.raises(InputError, match="batch_size"):
        cam.online_aggregation(x, w, classes, batch_size=0)


# --------------------------------------------------------------------------- boxes


def _hand_heatmap():
    hm = np.zeros((12, 10), np.float32)
    hm[1:11, 1:9] = 0.05  # faint: only above 1 % of the max
    hm[2:9, 2:5] = 0.25  # A, 7 x 3 (contour area 12): above 10 % and 20 %
    hm[2:4, 7:9] = 0.5  # C, 2 x 2 (area 1): above 30 %
    hm[10, 6] = 1.0  # B, one cell (area 0): the maximum
    return hm


def test_heatmap_boxes_at_each_threshold():
    hm = _hand_heatmap()
    got = cam.heatmap_boxes(hm, (0.01, 0.1, 0.2, 0.3), min_cells=1)
    np.testing.assert_array_equal(got, [[1, 1, 10, 8], [2, 2, 7, 3], [2, 2, 7, 3], [2, 7, 2, 2]])
    # Enlarged to 5 x 5 around the box centre, shifted back inside the map (C: x 6 -> 5).
    got = cam.heatmap_boxes(hm, (0.01, 0.1, 0.3))
    np.testing.assert_array_equal(got, [[1, 1, 10, 8], [2, 1, 7, 5], [1, 5, 5, 5]])
    # Nothing above the threshold, or an all-zero map: the whole (valid) map.
    np.testing.assert_array_equal(cam.heatmap_boxes(hm, (1.0,)), [[0, 0, 12, 10]])
    np.testing.assert_array_equal(cam.heatmap_boxes(np.zeros((3, 4)), (0.1,)), [[0, 0, 3, 4]])
    valid = np.zeros((12, 10), bool)
    valid[:8, :6] = True  # B and C outside: A is the largest, clipped to the valid rows
    got = cam.heatmap_boxes(hm, (0.01, 0.3, 1.0), valid=valid)
    np.testing.assert_array_equal(got, [[1, 1, 7, 5], [2, 1, 6, 5], [0, 0, 8, 6]])


def test_heatmap_boxes_errors():
    hm = _hand_heatmap()
    for bad, match in [
        (dict(heatmap=hm[0]), r"\(h, w\)"),
        (dict(heatmap=np.full((3, 3), np.nan)), "NaN"),
        (dict(heatmap=hm, thresholds=(0.1, 1.5)), "thresholds"),
        (dict(heatmap=hm, thresholds=()), "thresholds"),
        (dict(heatmap=hm, min_cells=0), "min_cells"),
        (dict(heatmap=hm, valid=np.ones((3, 3), bool)), "valid"),
    ]:
        with pytest.raises(InputError, match=match):
            cam.heatmap_boxes(**bad)


# --------------------------------------------------------------------------- re-ranking


def _ref_rerank(q, classes, maps, w, ids, thresholds, min_cells, whitening=None):
    scores, boxes = [], []
    for x in maps:
        heat = ref_cams(x, w[classes[:2]]).mean(axis=-1)
        bx = cam.heatmap_boxes(heat, thresholds, min_cells=min_cells)
        best = -np.inf
        for y0, x0, bh, bw in bx:
            region = np.zeros(x.shape[:2], bool)
            region[y0 : y0 + bh, x0 : x0 + bw] = True
            v = ref_aggregate(ref_class_vectors(x, w[classes], region=region)[None], whitening)
            best = max(best, float(v[0] @ q))
        scores.append(best)
        boxes.append(bx)
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.asarray(ids)[order], np.asarray(scores)[order], np.asarray(boxes)[order]


def _rerank_example():
    """Shortlist [10, 11, 12, 13] for a query whose classes are (0, 1): 10 has no class-0 or
    class-1 response (score 0), 11 is the query itself (score 1 from its 1 % box, the whole
    map), 12 and 13 are random maps."""
    rng = np.random.default_rng(6)
    w = np.abs(rng.standard_normal((5, 6))).astype(np.float32)
    w[:2, 3:] = -1.0  # classes 0, 1 respond to channels 0-2 only
    query = 0.05 + _maps(rng, 1, 8, 8, 6)[0]
    query[..., 3:] = 0.0
    dead = _maps(rng, 1, 8, 8, 6)[0]
    dead[..., :3] = 0.0
    maps = np.stack([dead, query, *_maps(rng, 2, 8, 8, 6)])
    return query, maps, w, np.array([10, 11, 12, 13])


def test_cam_rerank_order_scores_and_boxes_vs_reference():
    query, maps, w, ids = _rerank_example()
    classes = np.array([0, 1], np.int32)
    qv = cam.aggregate_class_vectors(ref_class_vectors(query, w[classes])[None])[0]
    got = cam.cam_rerank(qv, classes, maps, w, ids=ids, min_cells=3)
    want = _ref_rerank(qv, classes, maps, w, ids, THRESHOLDS, 3)
    np.testing.assert_array_equal(got.ids, want[0])
    np.testing.assert_allclose(got.scores, want[1], atol=1e-5)
    np.testing.assert_array_equal(got.boxes, want[2])
    assert got.ids[0] == 11 and got.ids[-1] == 10
    np.testing.assert_allclose(got.scores[[0, -1]], [1.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(got.boxes[0, 0], [0, 0, 8, 8])  # the 1 % box: the whole map
    assert got.boxes.shape == (4, 4, 4) and got.ids.dtype == np.int64
    batched = cam.cam_rerank(
        qv, classes, maps.astype(np.float16), w, ids=ids, min_cells=3, batch_size=3
    )
    np.testing.assert_array_equal(batched.ids, got.ids)  # batches of 3 + 1 (padded), float16
    np.testing.assert_allclose(batched.scores, got.scores, atol=1e-3)
    # With a whitening fitted on other vectors, still the reference.
    rng = np.random.default_rng(7)
    pca = fit_pca_whitening(rng.standard_normal((30, 6)), 6)
    qv = cam.aggregate_class_vectors(ref_class_vectors(query, w[classes])[None], pca)[0]
    got = cam.cam_rerank(qv, classes, maps, w, ids=ids, whitening=pca, thresholds=(0.01, 0.3))
    want = _ref_rerank(qv, classes, maps, w, ids, (0.01, 0.3), 5, pca)
    np.testing.assert_array_equal(got.ids, want[0])
    np.testing.assert_allclose(got.scores, want[1], atol=1e-5)


def test_cam_rerank_mask_and_errors():
    query, maps, w, ids = _rerank_example()
    classes = np.array([0, 1], np.int32)
    qv = cam.aggregate_class_vectors(ref_class_vectors(query, w[classes])[None])[0]
    padded = np.zeros((4, 10, 9, 6), np.float32)
    padded[:, :8, :8] = maps
    padded[:, 8:] = 5.0  # padding content must not matter
    mask = np.zeros((4, 10, 9), bool)
    mask[:, :8, :8] = True
    got = cam.cam_rerank(qv, classes, padded, w, ids=ids, mask=mask)
    want = cam.cam_rerank(qv, classes, maps, w, ids=ids)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    with pytest.raises(InputError, match="dimension"):
        cam.cam_rerank(qv[:3], classes, maps, w)
    with pytest.raises(InputError, match="ids"):
        cam.cam_rerank(qv, classes, maps, w, ids=ids[:2])
    with pytest.raises(InputError, match="query_classes"):
        cam.cam_rerank(qv, classes[None], maps, w)
    with pytest.raises(InputError, match="heatmap_classes"):
        cam.cam_rerank(qv, classes, maps, w, heatmap_classes=0)
    with pytest.raises(InputError, match="thresholds"):
        cam.cam_rerank(qv, classes, maps, w, thresholds=(2.0,))
    with pytest.raises(InputError, match="empty shortlist"):
        cam.cam_rerank(qv, classes, maps[:0], w)
    with pytest.raises(InputError, match="batch_size"):
        cam.cam_rerank(qv, classes, maps, w, batch_size=0)


# --------------------------------------------------------------------------- jit, errors


def test_compilations_top_classes_static_ids_and_thresholds_not():
    rng = np.random.default_rng(8)
    x = jnp.asarray(_maps(rng, 2, 4, 5, 6))
    w, b = jnp.asarray(rng.standard_normal((10, 6)), jnp.float32), jnp.zeros(10, jnp.float32)
    cam.cam_pool(x, (w, b), top_classes=3)
    n = cam.cam_pool._cache_size()
    cam.cam_pool(x + 1.0, (w * 2.0, b + 1.0), top_classes=3)  # new values: no recompile
    assert cam.cam_pool._cache_size() == n
    cam.cam_pool(x, (w, b), top_classes=4)  # a new output shape: compiles once more
    assert cam.cam_pool._cache_size() == n + 1
    cam.cam_class_vectors(x, w, jnp.asarray([1, 2], jnp.int32))
    n = cam.cam_class_vectors._cache_size()
    cam.cam_class_vectors(x, w, jnp.asarray([7, 0], jnp.int32))  # a new query's classes
    assert cam.cam_class_vectors._cache_size() == n
    query, maps, w2, ids = _rerank_example()
    qv = np.ones(6, np.float32) / np.sqrt(6.0)
    cam.cam_rerank(qv, np.array([0, 1]), maps, w2)
    sizes = _region_vectors._cache_size(), _query_cams._cache_size()
    cam.cam_rerank(qv, np.array([2, 3]), maps, w2, thresholds=(0.05, 0.5, 0.7))  # host-side
    assert (_region_vectors._cache_size(), _query_cams._cache_size()) == sizes


def test_input_errors():
    rng = np.random.default_rng(9)
    x = jnp.asarray(_maps(rng, 2, 4, 5, 6))
    w, b = jnp.asarray(rng.standard_normal((10, 6)), jnp.float32), jnp.zeros(10, jnp.float32)
    for fn, match in [
        (lambda: cam.class_activation_maps(x[0], w), r"\(N, h, w, C\)"),
        (lambda: cam.class_activation_maps(x.astype(jnp.int32), w), "float"),
        (lambda: cam.class_activation_maps(x, w[:, :5]), r"\(K, C\)"),
        (lambda: cam.class_activation_maps(x, w, jnp.ones((2, 4, 5), jnp.float32)), "bool"),
        (lambda: cam.cam_pool(x, (w, b), top_classes=11), "top_classes must be in 1..10"),
        (lambda: cam.cam_pool(x, (w, b), top_classes=0), "top_classes"),
        (lambda: cam.cam_pool(x, (w, b[:3]), top_classes=2), "bias"),
        (lambda: cam.cam_pool(x, (w, b), top_classes=2, logits=jnp.zeros((2, 3))), "logits"),
        (lambda: cam.cam_class_vectors(x, w, jnp.asarray([0.5])), "integer"),
        (lambda: cam.cam_class_vectors(x, w, jnp.zeros((3, 2), jnp.int32)), r"\(N, N_C\)"),
    ]:
        with pytest.raises(InputError, match=match):
            fn()


def test_vmap_matches_batch():
    rng = np.random.default_rng(10)
    x = jnp.asarray(_maps(rng, 3, 4, 5, 6))
    w = jnp.asarray(rng.standard_normal((10, 6)), jnp.float32)
    classes = jnp.asarray([[1, 2], [3, 4], [5, 6]], jnp.int32)
    per = jax.vmap(lambda xi, ci: cam.cam_class_vectors(xi[None], w, ci)[0])(x, classes)
    np.testing.assert_allclose(per, cam.cam_class_vectors(x, w, classes), atol=1e-6)
