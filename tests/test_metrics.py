"""Metrics on hand-made rankings with exact expected values (fractions)."""

from fractions import Fraction as F

import numpy as np
import pytest

from ckn import InputError
from retrieval import metrics as M
from retrieval._src.metrics import MODES
from retrieval._src.metrics.patch import _retrieval_pass


def _slow_ap(scores, relevant, mode):
    """Reference: full sort (non-relevant first among ties), then the loop of
    Oxford compute_ap.cpp (trapezoid) or the plain precision average."""
    order = np.lexsort((relevant, -np.asarray(scores, dtype=np.float64)))
    flags = np.asarray(relevant)[order]
    num_rel = flags.sum()
    old_recall, old_precision, trap, hits, plain = 0.0, 1.0, 0.0, 0, 0.0
    for j, f in enumerate(flags):
        if f:
            hits += 1
            plain += hits / (j + 1)
        recall, precision = hits / num_rel, hits / (j + 1)
        trap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    return plain / num_rel if mode == "noninterpolated" else trap


def _slow_map(x, labels, mode):
    n = x.shape[0]
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    out = np.full(n, np.nan)
    for q in range(n):
        others = np.arange(n) != q
        rel = (labels == labels[q])[others]
        if rel.any():
            out[q] = _slow_ap(s[q][others], rel, mode)
    return out


# --------------------------------------------------------------------------- AP


@pytest.mark.parametrize(
    "ranking, num_relevant, mode, expected",
    [
        # Relevant at ranks 1, 3, 6: (1/1 + 2/3 + 3/6) / 3.
        ([1, 0, 1, 0, 0, 1], None, "noninterpolated", F(13, 18)),
        # Trapezoid: [(1 + 1)/2 + (1/2 + 2/3)/2 + (2/5 + 3/6)/2] / 3.
        ([1, 0, 1, 0, 0, 1], None, "trapezoid", F(61, 90)),
        ([1, 1, 1], None, "noninterpolated", F(1)),
        ([1, 1, 1], None, "trapezoid", F(1)),
        # Truncated list: 2 relevant in all, one never retrieved.
        ([0, 1], 2, "noninterpolated", F(1, 4)),
        ([0, 1], 2, "trapezoid", F(1, 8)),  # (0/1 + 1/2) / 2 / 2
    ],
)
def test_ap_from_ranking_exact(ranking, num_relevant, mode, expected):
    ap = M.average_precision_from_ranking(ranking, num_relevant=num_relevant, mode=mode)
    assert ap == pytest.approx(float(expected), abs=1e-15)


def test_default_mode_is_noninterpolated():
    assert M.average_precision_from_ranking([1, 0, 1, 0, 0, 1]) == pytest.approx(13 / 18, abs=1e-15)
    assert M.average_precision([3.0, 2.0, 1.0], [True, False, True]) == pytest.approx(5 / 6)


def test_ap_from_scores_matches_ranking():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.6, 0.2])  # order: 0, 2, 3, 4, 5, 1
    relevant = np.array([True, True, True, False, False, False])  # ranks 1, 2, 6
    assert M.average_precision(scores, relevant) == pytest.approx((1 + 1 + F(3, 6)) / 3)
    assert M.average_precision(scores, relevant, mode="trapezoid") == pytest.approx(
        float((1 + 1 + (F(2, 5) + F(3, 6)) / 2) / 3)
    )


def test_ties_are_broken_against_relevant():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1])
    relevant = np.array([False, True, False, False, True])
    # The relevant 0.5 ranks after both non-relevant 0.5: ranks 4 and 5.
    assert M.average_precision(scores, relevant) == pytest.approx(float((F(1, 4) + F(2, 5)) / 2))
    assert M.average_precision(scores, relevant, mode="trapezoid") == pytest.approx(
        float(((0 + F(1, 4)) / 2 + (F(1, 4) + F(2, 5)) / 2) / 2)
    )  # 9/40
    # Two relevant items tied with each other: their order does not matter.
    assert M.average_precision([1.0, 1.0, 0.0], [True, True, False]) == 1.0


def test_ap_2d_and_no_relevant_is_nan():
    s = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    r = np.array([[False, False, True], [False, False, False]])
    out = M.average_precision(s, r)
    assert out.shape == (2,)
    assert out[0] == pytest.approx(1 / 3)
    assert np.isnan(out[1])


# --------------------------------------------------------------------------- mAP


def test_constant_descriptor_scores_exact_chance_level():
    # 4 groups of 3 plus one singleton; every dot product is exactly 1.0.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4])
    x = np.full((13, 4), 0.5, dtype=np.float32)
    res = M.patch_retrieval_map(x, labels, return_per_query=True)
    # Each query: M = 12 others, R = 2 relevant, both ranked last (11, 12):
    # AP = (1/11 + 2/12) / 2 = 17/132 (HPatches' rule would give 1.0).
    assert res.mean_ap == pytest.approx(17 / 132, abs=1e-15)
    assert (res.num_queries, res.num_skipped) == (12, 1)
    assert np.isnan(res.per_query[12])
    trap = M.patch_retrieval_map(x, labels, mode="trapezoid")
    # ((0/10 + 1/11)/2 + (1/11 + 2/12)/2) / 2 = 23/264.
    assert trap.mean_ap == pytest.approx(23 / 264, abs=1e-15)
    assert M.nn_matching_accuracy(x, labels) == 0.0


def test_perfect_descriptor_and_skipped_queries():
    labels = np.array([0, 0, 1, 1, 2, 7])
    x = np.eye(8, dtype=np.float32)[[0, 0, 1, 1, 2, 3]]
    res = M.patch_retrieval_map(x, labels)
    assert res == (1.0, 4, 2, None)
    assert M.nn_matching_accuracy(x, labels) == 1.0


def test_hand_made_retrieval():
    # 1-D descriptors: similarity = product.
    x = np.array([[1.0], [0.5], [0.25], [-1.0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    res = M.patch_retrieval_map(x, labels, return_per_query=True)
    # q0: others 0.5 (N), 0.25 (R), -1 (N) -> rank 2: 1/2.
    # q1: others 0.5 (N), 0.125 (N), -0.5 (R) -> rank 3: 1/3.
    # q2: others 0.25 (R), 0.125 (N), -0.25 (N) -> rank 1: 1.
    # q3: others -0.25 (N), -0.5 (R), -1 (N) -> rank 2: 1/2.
    np.testing.assert_allclose(res.per_query, [1 / 2, 1 / 3, 1, 1 / 2], rtol=0, atol=1e-15)
    assert M.nn_matching_accuracy(x, labels) == 0.25


@pytest.mark.parametrize("count_method", ["sort", "passes", "auto"])
def test_map_equals_slow_reference(count_method):
    rng = np.random.default_rng(0)
    for trial in range(12):
        n = int(rng.integers(2, 50))
        # Small integer entries: many exact ties in the similarities.
        x = rng.integers(-2, 3, size=(n, int(rng.integers(1, 4)))).astype(np.float32)
        labels = rng.integers(0, int(rng.integers(1, 8)), size=n)
        block = int(rng.integers(1, n + 1))
        res = _retrieval_pass(x, labels, block_size=block, count_method=count_method)
        for mode, got in (("noninterpolated", res.ap), ("trapezoid", res.ap_trapezoid)):
            ref = _slow_map(x, labels, mode)
            np.testing.assert_allclose(
                got, ref, rtol=0, atol=1e-12, err_msg=f"trial {trial} {mode}"
            )


def test_map_public_api_on_clustered_data():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((40, 16))
    labels = np.repeat(np.arange(40), 5)
    x = (centres[labels] + 0.8 * rng.standard_normal((200, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for mode in MODES:
        res = M.patch_retrieval_map(x, labels, mode=mode, return_per_query=True, block_size=37)
        ref = _slow_map(x, labels, mode)
        np.testing.assert_allclose(res.per_query, ref, rtol=0, atol=1e-12)
        assert res.mean_ap == pytest.approx(ref.mean(), abs=1e-12)
        assert 0.2 < res.mean_ap < 1.0
    assert M.patch_retrieval_map(x, labels, block_size=37) == M.patch_retrieval_map(x, labels)
    # NN accuracy: top-1 of each query from the same reference similarity.
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    expected = np.mean(labels[np.argmax(s, axis=1)] == labels)
    assert M.nn_matching_accuracy(x, labels) == pytest.approx(expected)


def test_map_input_errors():
    x = np.ones((4, 2), dtype=np.float32)
    lab = np.array([0, 0, 1, 1])
    with pytest.raises(InputError, match=r"\(N, D\)"):
        M.patch_retrieval_map(np.ones(4), lab)
    with pytest.raises(InputError, match="empty"):
        M.patch_retrieval_map(np.ones((0, 2)), np.array([]))
    with pytest.raises(InputError, match="NaN"):
        M.patch_retrieval_map(np.where(np.eye(4, 2) > 0, np.nan, 1.0), lab)
    with pytest.raises(InputError, match="labels must be"):
        M.patch_retrieval_map(x, lab[:3])
    with pytest.raises(InputError, match="mode"):
        M.patch_retrieval_map(x, lab, mode="interpolated")
    with pytest.raises(InputError, match="relevant must have"):
        M.average_precision([1.0, 2.0], [True])
    for err in (M.patch_retrieval_map, M.nn_matching_accuracy):
        with pytest.raises(InputError):
            err(x, np.array([0.0, np.nan, 1.0, 1.0]))


# --------------------------------------------------------------------------- pairs


def test_fpr95_hand_made():
    pos = np.arange(1.0, 21.0)  # 20 matches scored 1..20
    neg = np.array([0.0] * 10 + [1.5] * 4 + [2.0, 3.0, 10.0, 18.0, 19.0, 20.0])
    scores = np.r_[pos, neg]
    is_match = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    # 95% of 20 = 19 matches: threshold 2; non-matches >= 2 (the tie included): 6.
    assert M.fpr_at_recall(scores, is_match) == pytest.approx(6 / 20)
    assert M.fpr_at_recall(scores, is_match, recall=1.0) == pytest.approx(10 / 20)
    assert M.fpr_at_recall(scores, is_match, recall=0.5) == pytest.approx(3 / 20)  # threshold 11


def test_roc_auc_is_mann_whitney():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=60).astype(float)
    is_match = rng.random(60) < 0.4
    p, n = scores[is_match], scores[~is_match]
    expected = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (
        p.size * n.size
    )
    assert M.roc_auc(scores, is_match) == pytest.approx(expected)
    fpr, tpr, thr = M.roc_curve(scores, is_match)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(thr) < 0)


def test_pair_errors():
    with pytest.raises(InputError, match="both"):
        M.fpr_at_recall([1.0, 2.0], [True, True])
    with pytest.raises(InputError, match="recall"):
        M.fpr_at_recall([1.0, 2.0], [True, False], recall=0.0)
    with pytest.raises(InputError, match="equal length"):
        M.roc_curve([1.0, 2.0], [True])


def test_sample_pairs_deterministic_and_balanced():
    labels = np.array([5, 5, 5, 7, 7, 9, 1, 1])
    a = M.sample_pairs(labels, seed=3)
    b = M.sample_pairs(labels, seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    # All matching pairs: 3 + 1 + 1 = 5, then 5 non-matching.
    assert a.is_match.sum() == 5 and (~a.is_match).sum() == 5
    same = labels[a.i] == labels[a.j]
    np.testing.assert_array_equal(same, a.is_match)
    assert set(zip(a.i[a.is_match].tolist(), a.j[a.is_match].tolist())) == {
        (0, 1),
        (0, 2),
        (1, 2),
        (3, 4),
        (6, 7),
    }
    capped = M.sample_pairs(np.repeat(np.arange(10), 20), max_positive=50, seed=0)
    assert capped.is_match.sum() == 50
    assert np.all(capped.i != capped.j)
    with pytest.raises(InputError, match="no matching pair"):
        M.sample_pairs(np.arange(5))
    with pytest.raises(InputError, match="all labels are equal"):
        M.sample_pairs(np.zeros(5))


def test_pair_scores():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(M.pair_scores(x, [0, 1, 2], [2, 2, 2]), [0.6, 0.8, 1.0], atol=1e-6)
    with pytest.raises(InputError, match="out of range"):
        M.pair_scores(x, [0], [3])


# --------------------------------------------------------------------------- PR curve


def test_precision_recall_curve_pooled_and_per_query():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    relevant = np.array([True, False, True, False])
    precision, recall = M.precision_recall_curve(scores, relevant)
    # Ranked: R, N, R (after the tied N), N.
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(recall, [1 / 2, 1 / 2, 1, 1])
    pq, levels = M.precision_recall_curve(
        np.stack([scores, scores]),
        np.stack([relevant, np.zeros(4, bool)]),
        per_query=True,
        recall_levels=[0.0, 0.5, 1.0],
    )
    np.testing.assert_allclose(pq[0], [1, 1, 2 / 3])
    assert np.isnan(pq[1]).all()
    np.testing.assert_array_equal(levels, [0.0, 0.5, 1.0])


# --------------------------------------------------------------------------- one-pass summary


@pytest.mark.parametrize("block", [None, 7])
def test_retrieval_summary_equals_separate_metrics(block):
    rng = np.random.default_rng(5)
    # Small integer entries: many ties; labels include singletons (skipped).
    x = rng.integers(-2, 3, size=(60, 3)).astype(np.float32)
    labels = rng.integers(0, 25, size=60)
    levels = np.array([0.0, 0.1, 1 / 3, 0.5, 0.9, 1.0])
    summ = M.retrieval_summary(x, labels, recall_levels=levels, block_size=block)
    ref = M.patch_retrieval_map(x, labels, return_per_query=True)
    assert summ.mean_ap == ref.mean_ap
    assert summ.mean_ap_trapezoid == M.patch_retrieval_map(x, labels, mode="trapezoid").mean_ap
    assert (summ.num_queries, summ.num_skipped) == (ref.num_queries, ref.num_skipped)
    assert summ.num_skipped > 0
    np.testing.assert_array_equal(summ.per_query_ap, ref.per_query)
    assert summ.nn_accuracy == M.nn_matching_accuracy(x, labels)
    # Mean PR curve = mean over queries of precision_recall_curve(per_query=True).
    s = x @ x.T
    n = x.shape[0]
    others = ~np.eye(n, dtype=bool)
    scores = s[others].reshape(n, n - 1)
    rel = (labels[:, None] == labels[None, :])[others].reshape(n, n - 1)
    pq, _ = M.precision_recall_curve(scores, rel, per_query=True, recall_levels=levels)
    np.testing.assert_allclose(summ.mean_precision, np.nanmean(pq, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(summ.recall_levels, levels)


def test_retrieval_summary_constant_descriptor_and_no_query():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4])
    x = np.full((13, 4), 0.5, dtype=np.float32)
    summ = M.retrieval_summary(x, labels, recall_levels=[0.5, 1.0])
    assert summ.mean_ap == pytest.approx(17 / 132, abs=1e-15)
    assert summ.nn_accuracy == 0.0
    # Relevant items at ranks 11 and 12 of 12: precision 1/11 then 2/12.
    np.testing.assert_allclose(summ.mean_precision, [2 / 12, 2 / 12])
    # No two items share a label: nothing to evaluate, said by the counts.
    none = M.retrieval_summary(np.eye(3, dtype=np.float32), [0, 1, 2])
    assert (none.num_queries, none.num_skipped) == (0, 3)
    assert np.isnan(none.mean_ap) and np.isnan(none.mean_precision).all()
    with pytest.raises(InputError, match="recall_levels"):
        M.retrieval_summary(x, labels, recall_levels=[1.5])
