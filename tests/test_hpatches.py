"""HPatches: the release layout, splits, task files, descriptors and the three tasks.

The key test (``test_equals_the_official_benchmark``) writes a small HPatches-layout data set
(synthetic textures, per-level geometric jitter and noise, flat patches that make exact ties),
its descriptors as CSV and seeded task files, runs the unmodified official Python benchmark on
them in a subprocess (``hpatches_official_runner.py``, run-time shims only) and requires every
figure of the project to equal the official one to 1e-6: verification AUC / AP (3 levels x
inter / intra), matching AP per sequence, level and image, retrieval AP per query, level and
list size, and the summaries.

The official code lives in ``../shared/peers/hpatches-benchmark`` beside the repository, or in
``$CKN_PEERS/hpatches-benchmark``; it needs pandas and joblib (the ``test`` extra). The test
skips, saying so, when either is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval._src.hpatches import OFFICIAL_LIST_SIZES, official_splits
from retrieval._src.hpatches.matching import match_image
from retrieval._src.hpatches.retrieval_task import retrieval_task
from retrieval._src.hpatches.splits import Split
from retrieval._src.hpatches.task_files import Pairs, PatchList, read_patch_list
from retrieval._src.hpatches.verification import pair_distances
from retrieval._src.metrics.hpatches_ap import hpatches_ap_of_ranks
from retrieval.metrics import hpatches_pr, hpatches_roc
from retrieval.patches import (
    HPATCHES_TYPES,
    HPatchesConfig,
    HPatchesData,
    HPatchesTasks,
    evaluate_hpatches,
    format_hpatches,
    generate_hpatches_tasks,
    iter_hpatches_descriptors,
    load_hpatches,
    read_hpatches_descriptors,
    read_hpatches_sequence,
    read_hpatches_tasks,
    write_hpatches_descriptors,
    write_hpatches_sequence,
    write_hpatches_tasks,
)

TYPES = HPATCHES_TYPES
# --------------------------------------------------------------------------- the AP of metrics.pr

# Hand-computed areas. Ranks of the positives r_k; area = (1/P) sum (p(r_k - 1) + p(r_k)) / 2,
# p(0) = 1, p(r) = 1e-10 / r before the first positive; equal scores keep the input order.
PR_CASES = [
    ([3.0, 2.0, 1.0], [1, 0, 1], None, (1 + 1) / 4 + (1 / 2 + 2 / 3) / 4),
    ([3.0, 2.0, 1.0], [0, 0, 1], None, (1e-10 / 2 + 1 / 3) / 2),
    ([1.0, 1.0], [0, 1], None, (1e-10 + 1 / 2) / 2),  # a tie: the negative listed first wins
    ([1.0, 1.0], [1, 0], None, 1.0),
    ([2.0, 1.0], [1, 0], 3, 1 / 3),  # numpos: two positives never retrieved
    ([1.0, -np.inf], [0, 1], None, 0.0),  # -inf: never retrieved
    ([5.0, 4.0, 3.0, 2.0], [0, 1, 0, 1], 4, ((1e-10 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 4),
    ([1.0, 2.0, 3.0], [0, 0, 0], None, 0.0),
]


@pytest.mark.parametrize("scores, labels, numpos, expected", PR_CASES)
def test_hpatches_pr_hand_made(scores, labels, numpos, expected):
    assert hpatches_pr(scores, labels, numpos=numpos).ap == pytest.approx(expected, abs=1e-15)


def test_hpatches_pr_curve_points():
    pr = hpatches_pr([3.0, 2.0, 1.0], [1, 0, 1])
    np.testing.assert_allclose(pr.precision, [1.0, 1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(pr.recall, [0.0, 0.5, 0.5, 1.0])


@pytest.mark.parametrize(
    "scores, labels, expected",
    [
        ([3.0, 2.0, 1.0], [1, 0, 1], 0.5),
        ([1.0, 1.0], [0, 1], 0.0),  # stable order: the tie counts against the positive
        ([1.0, 1.0], [1, 0], 1.0),
        ([4.0, 3.0, 2.0, 1.0], [1, 1, 0, 0], 1.0),
        ([4.0, 3.0, 2.0, 1.0], [0, 1, 0, 1], 0.25),
    ],
)
def test_hpatches_roc_hand_made(scores, labels, expected):
    assert hpatches_roc(scores, labels).auc == pytest.approx(expected, abs=1e-15)


def test_hpatches_pr_refuses_bad_input():
    with pytest.raises(InputError, match="numpos"):
        hpatches_pr([1.0, 2.0], [1, 1], numpos=1)
    with pytest.raises(InputError, match="NaN"):
        hpatches_pr([np.nan, 2.0], [1, 0])
    with pytest.raises(InputError, match="0/1"):
        hpatches_pr([1.0, 2.0], [2, 0])


def test_ap_of_ranks_equals_the_curve_area():
    assert hpatches_ap_of_ranks([1, 3], 2) == pytest.approx(PR_CASES[0][3], abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 6, 30).astype(float)  # many ties
        labels = np.zeros(30, bool)
        labels[rng.choice(30, 5, replace=False)] = True
        order = np.argsort(-scores, kind="stable")
        ranks = np.flatnonzero(labels[order]) + 1
        assert hpatches_ap_of_ranks(ranks, 5) == pytest.approx(
            hpatches_pr(scores, labels).ap, abs=1e-12
        )


def _fractions_ap(ranks) -> float:
    """The area of ``hpatches_pr`` for positives at 1-based ``ranks``, all of them retrieved."""
    p = lambda k, r: k / r if r else 1.0
    return sum((p(k - 1, r - 1) + p(k, r)) / 2 for k, r in enumerate(ranks, 1)) / len(ranks)


def test_retrieval_hand_made():
    # Query (i_q, 0) at 0; its 5 positives at 1..5 at every level; distractors: i_q's other
    # patch at 0.5 (same sequence: left out) and v_d's patches at 1 and 3 (exact ties).
    q = np.zeros((16, 2, 1), np.float32)
    q[1:, 0, 0] = np.tile(np.arange(1, 6), 3)
    q[0, 1, 0] = 0.5
    d = np.array([1.0, 3.0], np.float32).reshape(1, 2, 1).repeat(16, axis=0)
    lists = [PatchList(np.array(["i_q"]), np.array([0]))]
    lists.append(PatchList(np.array(["i_q", "v_d", "v_d"]), np.array([1, 0, 1])))
    r = retrieval_task({"i_q": q, "v_d": d}, *lists, (6, 100))
    # Ties keep the positives (listed first) ahead: k = 6 keeps v_d's first patch only.
    expected = [_fractions_ap([1, 3, 4, 5, 6]), _fractions_ap([1, 3, 4, 6, 7])]
    np.testing.assert_allclose(r.ap, np.tile(expected, (1, 3, 1)), rtol=0, atol=1e-9)


def test_matching_hand_made():
    # Reference patch 0 is at distance 1 from both targets: the first one (correct) wins.
    ap, accuracy = match_image(np.array([[0.0], [10.0]], np.float32), np.array([[1.0], [-1.0]]))
    assert (ap, accuracy) == (pytest.approx((1 + 1) / 2 / 2, abs=1e-12), 0.5)
    # Matches ranked by distance, numpos = N: one correct match at rank 2 of 3.
    ref = np.array([[0.0], [10.0], [20.0]], np.float32)
    ap, _ = match_image(ref, np.array([[30.0], [12.0], [1.0]], np.float32))
    assert ap == pytest.approx((1e-10 + 1 / 2) / 2 / 3, abs=1e-12)


def test_pair_distances_are_the_official_float32_norms():
    from scipy.spatial.distance import euclidean

    rng = np.random.default_rng(4)
    d = {"i_a": rng.standard_normal((16, 50, 96)).astype(np.float32)}
    n = 5000
    image = rng.integers(0, 6, (2, n))
    idx = rng.integers(0, 50, (2, n))
    names = np.full(n, "i_a")
    pairs = Pairs(names, image[0], idx[0], names, image[1], idx[1])
    got = pair_distances(d, pairs, "h")
    rows = np.where(image == 0, 0, 5 + image)
    expected = [
        euclidean(d["i_a"][rows[0, k], idx[0, k]], d["i_a"][rows[1, k], idx[1, k]])
        for k in range(n)
    ]
    np.testing.assert_array_equal(got, expected)  # bit for bit


# --------------------------------------------------------------------------- layout


def _random_sequence(rng, n) -> np.ndarray:
    return rng.integers(0, 256, (len(TYPES), n, 65, 65), dtype=np.uint8)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    a = _random_sequence(rng, 7)
    folder = write_hpatches_sequence(tmp_path, "v_one", a)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}.png" for t in TYPES)
    assert cv2.imread(str(folder / "h3.png"), cv2.IMREAD_UNCHANGED).shape == (7 * 65, 65)
    np.testing.assert_array_equal(read_hpatches_sequence(folder), a)
    np.testing.assert_array_equal(read_hpatches_sequence(folder, ("t2", "ref")), a[[12, 0]])
    b = _random_sequence(rng, 3)
    write_hpatches_sequence(tmp_path, "i_two", dict(zip(TYPES, b)))
    data = load_hpatches(tmp_path, "all")
    assert data.sequences == ("i_two", "v_one") and data.counts == {"i_two": 3, "v_one": 7}
    np.testing.assert_array_equal(data.patches("i_two"), b)


def _corrupt(root: Path, how: str) -> str:
    """Breaks the written sequence ``v_bad`` of ``root``; returns what the message must name."""
    seq = root / "v_bad"
    if how == "missing type":
        (seq / "t4.png").unlink()
        return "t4"
    if how == "height":
        cv2.imwrite(str(seq / "e2.png"), np.zeros((3 * 65 + 1, 65), np.uint8))
        return "e2.png"
    if how == "width":
        cv2.imwrite(str(seq / "h1.png"), np.zeros((3 * 65, 64), np.uint8))
        return "h1.png"
    if how == "counts":
        cv2.imwrite(str(seq / "e5.png"), np.zeros((2 * 65, 65), np.uint8))
        return "e5.png"
    if how == "not png":
        (seq / "ref.png").write_bytes(b"not an image")
        return "ref.png"
    if how == "empty folder":
        (root / "i_empty").mkdir()
        return "i_empty"
    if how == "bad name":
        (root / "notes").mkdir()
        return "notes"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    ["missing type", "height", "width", "counts", "not png", "empty folder", "bad name"],
)
def test_bad_layout_refused(tmp_path, how):
    rng = np.random.default_rng(1)
    write_hpatches_sequence(tmp_path, "i_good", _random_sequence(rng, 3))
    write_hpatches_sequence(tmp_path, "v_bad", _random_sequence(rng, 3))
    name = _corrupt(tmp_path, how)
    with pytest.raises(InputError, match=name) as e:
        load_hpatches(tmp_path, "all")
    assert "\n" not in str(e.value)


def test_empty_or_missing_root_refused(tmp_path):
    with pytest.raises(InputError, match="no HPatches sequence folder"):
        load_hpatches(tmp_path, "all")
    with pytest.raises(InputError, match="not found"):
        load_hpatches(tmp_path / "nope", "all")


@pytest.mark.parametrize(
    "name, patches, match",
    [
        ("x_seq", np.zeros((16, 2, 65, 65), np.uint8), "sequence name"),
        ("i_a", np.zeros((15, 2, 65, 65), np.uint8), r"\(16, N, 65, 65\)"),
        ("i_a", np.zeros((16, 2, 64, 65), np.uint8), r"\(16, N, 65, 65\)"),
        ("i_a", np.zeros((16, 0, 65, 65), np.uint8), "N = 0"),
        ("i_a", np.zeros((16, 2, 65, 65), np.float32), "uint8"),
        ("i_a", {t: np.zeros((2, 65, 65), np.uint8) for t in TYPES[1:]}, "missing ref"),
        ("i_a", {t: np.zeros((2 + (t == "h2"), 65, 65), np.uint8) for t in TYPES}, "h2"),
    ],
)
def test_writer_refuses_bad_input(tmp_path, name, patches, match):
    with pytest.raises(InputError, match=match):
        write_hpatches_sequence(tmp_path, name, patches)
    assert not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------- splits


def test_official_splits():
    s = official_splits()
    assert set(s) == {"a", "b", "c", "full", "illum", "view"}
    for name in "abc":
        assert (len(s[name].test), len(s[name].train)) == (40, 76)
        assert not set(s[name].test) & set(s[name].train)
        assert sorted(s[name].test + s[name].train) == sorted(s["full"].test)
    assert len(s["full"].test) == 116
    assert len(s["illum"].test) == 57 and all(n.startswith("i_") for n in s["illum"].test)
    assert len(s["view"].test) == 59 and all(n.startswith("v_") for n in s["view"].test)


def test_split_checks(tmp_path):
    write_hpatches_sequence(tmp_path, "v_there", _random_sequence(np.random.default_rng(2), 2))
    with pytest.raises(InputError, match="unknown HPatches split 'd'"):
        load_hpatches(tmp_path, "d")
    # v_there is in the official lists; the others are absent: refused, naming some.
    with pytest.raises(InputError, match=r"split 'a' needs 115 sequences absent .*i_ajuntament"):
        load_hpatches(tmp_path, "a")
    assert load_hpatches(tmp_path, "all").sequences == ("v_there",)


# --------------------------------------------------------------------------- descriptors


def test_descriptor_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    d = {
        "i_x": (rng.standard_normal((16, 5, 9)) * 10.0 ** rng.integers(-30, 30, (16, 5, 9))),
        "v_y": rng.standard_normal((16, 4, 9)),
    }
    d = {k: v.astype(np.float32) for k, v in d.items()}
    write_hpatches_descriptors(tmp_path / "descr", d)
    assert (tmp_path / "descr" / "v_y" / "t5.csv").read_text().count("\n") == 4
    back = read_hpatches_descriptors(tmp_path / "descr")
    assert back.keys() == d.keys()
    for k in d:
        np.testing.assert_array_equal(back[k], d[k])
    with pytest.raises(InputError, match=r"t3\.csv"):
        (tmp_path / "descr" / "i_x" / "t3.csv").write_text("1,2\n")
        read_hpatches_descriptors(tmp_path / "descr")
    with pytest.raises(InputError, match=r"e1\.csv"):
        (tmp_path / "descr" / "v_y" / "e1.csv").unlink()
        read_hpatches_descriptors(tmp_path / "descr", ["v_y"])
    with pytest.raises(InputError, match="NaN or inf"):
        write_hpatches_descriptors(tmp_path / "bad", {"i_x": np.full((16, 2, 3), np.inf)})
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- synthetic release

#: Per-level jitter of the target patches: shift (px), rotation (deg), log-scale (std devs).
JITTER = {"e": (1.0, 3.0, 0.03), "h": (2.5, 8.0, 0.08), "t": (4.5, 15.0, 0.15)}
SEQUENCES = {"i_alpha": 40, "i_beta": 33, "v_gamma": 47, "v_delta": 36, "v_eps": 30}
DUPLICATES = range(3, 30)


def _textures(rng, n, bank) -> np.ndarray:
    x = rng.standard_normal((n, 65, 65)).astype(np.float32)
    x = np.stack([cv2.GaussianBlur(p, (0, 0), 2.5) for p in x])
    x = 0.6 * x / x.std(axis=(1, 2), keepdims=True) + bank[rng.integers(0, len(bank), n)]
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)
    return (128 + 45 * x).astype(np.float32)


def _jitter(rng, patch, level) -> np.ndarray:
    shift, angle, log_scale = JITTER[level]
    m = cv2.getRotationMatrix2D(
        (32, 32), rng.normal(0, angle), float(np.exp(rng.normal(0, log_scale)))
    )
    m[:, 2] += rng.normal(0, shift, 2)
    return cv2.warpAffine(patch, m, (65, 65), borderMode=cv2.BORDER_REFLECT)


def _synthetic_sequence(rng, n, bank, copies=None) -> dict:
    """The 16 types of a sequence; ``copies``: {index: patch} reference patches to use as given."""
    ref = _textures(rng, n, bank)
    ref[:3] = float(rng.integers(60, 200))  # flat patches, flat in every image: exact ties
    for i, patch in (copies or {}).items():
        ref[i] = patch
    out = {"ref": ref}
    for level in "eht":
        for i in range(1, 6):
            warped = np.stack([_jitter(rng, p, level) for p in ref])
            warped += rng.normal(0, 8, ref.shape)
            warped[:3] = ref[:3]
            out[f"{level}{i}"] = warped
    return {t: np.clip(np.rint(v), 0, 255).astype(np.uint8) for t, v in out.items()}


def tiny_describe(patches: np.ndarray) -> np.ndarray:
    """(M, 65, 65) uint8 -> (M, 64): 8 x 8 block means, centred, L2-normalized (flat: 0)."""
    m = patches.shape[0]
    x = patches[:, :64, :64].astype(np.float32).reshape(m, 8, 8, 8, 8).mean(axis=(2, 4))
    x = x.reshape(m, 64) - x.reshape(m, 64).mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 1e-6, x / np.maximum(norm, 1e-6), 0.0).astype(np.float32)


CONFIG = HPatchesConfig(n_pairs=3000, n_queries=60, n_distractors=150)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A written 5-sequence release, its descriptors (CSV) and generated task files."""
    root = tmp_path_factory.mktemp("hpatches")
    rng = np.random.default_rng(0)
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), 4.0)
    bank = np.stack([blur(rng.standard_normal((65, 65)).astype(np.float32)) for _ in range(6)])
    bank /= bank.std(axis=(1, 2), keepdims=True)
    written = {}
    for name, n in SEQUENCES.items():
        # v_eps's reference patches 3-29 are i_alpha's e1 patches 3-29: as distractors, they
        # tie exactly with the easy positives of i_alpha's queries there.
        copies = {i: written["i_alpha"]["e1"][i] for i in DUPLICATES} if name == "v_eps" else {}
        written[name] = _synthetic_sequence(rng, n, bank, copies)
        write_hpatches_sequence(root / "release", name, written[name])
    data = load_hpatches(root / "release", "all")
    write_hpatches_descriptors(
        root / "descr" / "tiny", iter_hpatches_descriptors(data, tiny_describe)
    )
    tasks = generate_hpatches_tasks(data, CONFIG)
    write_hpatches_tasks(root / "tasks", tasks)
    return root, data, tasks


def test_generated_tasks_follow_the_sampling_rules(release):
    _, data, tasks = release
    p, intra, inter = tasks.positives, tasks.intra, tasks.inter
    assert p.seq1.shape == (CONFIG.n_pairs,)
    assert (p.seq1 == p.seq2).all() and (p.idx1 == p.idx2).all() and (p.image1 != p.image2).all()
    assert (intra.seq1 == intra.seq2).all() and (intra.idx1 != intra.idx2).all()
    assert (inter.seq1 != inter.seq2).all()
    for part in (p, intra, inter):  # the first patch and the images are shared
        assert (part.seq1 == p.seq1).all() and (part.idx1 == p.idx1).all()
        assert (part.image1 == p.image1).all() and (part.image2 == p.image2).all()
    assert set(np.concatenate([p.image1, p.image2])) == set(range(6))
    q, d = tasks.queries, tasks.distractors
    total = sum(SEQUENCES.values()) - 3 * len(SEQUENCES)  # the flat patches are left out
    assert (q.seq.size, d.seq.size) == (total * 60 // 210, total - total * 60 // 210)
    keys = {(s, i) for s, i in zip(q.seq, q.idx)} | {(s, i) for s, i in zip(d.seq, d.idx)}
    assert len(keys) == total and all(i >= 3 for _, i in keys)
    again = generate_hpatches_tasks(data, CONFIG)
    np.testing.assert_array_equal(again.inter.idx2, inter.idx2)
    np.testing.assert_array_equal(again.distractors.idx, d.idx)


def test_task_files_round_trip(release):
    root, data, tasks = release
    back = read_hpatches_tasks(root / "tasks", data)
    for part in ("positives", "intra", "inter", "queries", "distractors"):
        for a, b in zip(getattr(tasks, part), getattr(back, part)):
            np.testing.assert_array_equal(a, b)
    head = (root / "tasks" / "verif_neg_inter_split-all.csv").read_text().splitlines()[:2]
    assert head[0] == "s1,t1,idx1,s2,t2,idx2" and len(head[1].split(",")) == 6


@pytest.mark.parametrize(
    "file, text, match",
    [
        ("retr_queries_split-all.csv", "seq,idx\ni_alpha,3\n", "header must be s,idx"),
        ("retr_queries_split-all.csv", "s,idx\ni_alpha,x\n", r"split-all\.csv:2: idx must be"),
        ("retr_queries_split-all.csv", "s,idx\ni_nope,3\n", "i_nope.* not a test sequence"),
        ("retr_distractors_split-all.csv", "s,idx\nv_eps,30\n", "index 30 out of range"),
        ("verif_pos_split-all.csv", "s1,t1,idx1,s2,t2,idx2\ni_beta,6,1,i_beta,0,1\n", "not in 0-5"),
        ("verif_neg_intra_split-all.csv", "s1,t1,idx1,s2,t2,idx2\n", "no rows"),
    ],
)
def test_bad_task_files_refused(release, tmp_path, file, text, match):
    root, data, tasks = release
    write_hpatches_tasks(tmp_path, tasks)
    (tmp_path / file).write_text(text)
    with pytest.raises(InputError, match=match):
        read_hpatches_tasks(tmp_path, data)


def test_unequal_pair_files_refused(release, tmp_path):
    _, data, tasks = release
    write_hpatches_tasks(tmp_path, tasks)
    lines = (tmp_path / "verif_neg_inter_split-all.csv").read_text().splitlines()
    (tmp_path / "verif_neg_inter_split-all.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match="as many negatives"):
        read_hpatches_tasks(tmp_path, data)
    with pytest.raises(InputError, match="retr_queries_split-all"):
        read_hpatches_tasks(tmp_path / "none", data, ("retrieval",))


def test_official_task_files_parse(hpatches_peers):
    tasks_dir = hpatches_peers / "tasks"
    if not (tasks_dir / "retr_queries_split-a.csv").is_file():
        pytest.skip(f"official task files not found in {tasks_dir} (set CKN_PEERS)")
    split = official_splits()["a"]
    q = read_patch_list(tasks_dir / "retr_queries_split-a.csv")
    d = read_patch_list(tasks_dir / "retr_distractors_split-a.csv")
    assert (q.seq.size, d.seq.size) == (10_000, 20_000)
    assert (q.seq[0], q.idx[0]) == ("v_birdwoman", 3)  # the first data line of the file
    assert set(q.seq) <= set(split.test) and set(d.seq) <= set(split.test)
    # Checked against a release of split a with (unknown here) large counts.
    data = HPatchesData(Path("/nonexistent"), split, dict.fromkeys(split.train + split.test, 10**6))
    back = read_hpatches_tasks(tasks_dir, data, ("retrieval",))
    np.testing.assert_array_equal(back.distractors.idx, d.idx)


# --------------------------------------------------------------------------- the three tasks


def test_describe_function_equals_csv_descriptors(release):
    root, data, _ = release
    config = HPatchesConfig(tasks=("matching", "retrieval"), n_queries=60, n_distractors=150)
    from_csv = evaluate_hpatches(
        read_hpatches_descriptors(root / "descr" / "tiny"), data, None, config
    )
    direct = evaluate_hpatches(tiny_describe, data, None, config)
    assert from_csv.as_dict() == direct.as_dict()
    assert from_csv.verification is None and from_csv.as_dict()["tasks"] == "generated (seed 42)"


def test_tasks_are_not_trivial(release):
    root, data, tasks = release
    r = evaluate_hpatches(
        read_hpatches_descriptors(root / "descr" / "tiny"), data, root / "tasks", CONFIG
    )
    s = r.as_dict()
    for task in ("matching", "retrieval"):
        assert 0.05 < s[task]["tough"] < s[task]["hard"] < s[task]["easy"] < 0.999, s[task]
    v = s["verification"]["imbalanced"]["intra"]
    assert 0.3 < v["tough"] < v["hard"] < v["easy"] < 0.99, v
    assert r.retrieval.ap[:, :, 0].mean() != r.retrieval.ap[:, :, -1].mean()  # sizes matter
    # Exact ties, where the order rules show: the flat patches in matching (all at distance
    # 0), easy positives and their copies among the distractors in retrieval.
    q = {(s, i) for s, i in zip(tasks.queries.seq, tasks.queries.idx)}
    d = {(s, i) for s, i in zip(tasks.distractors.seq, tasks.distractors.idx)}
    assert any(("i_alpha", i) in q and ("v_eps", i) in d for i in DUPLICATES)


def test_evaluate_refuses_bad_input(release):
    root, data, tasks = release
    descriptors = read_hpatches_descriptors(root / "descr" / "tiny")
    with pytest.raises(InputError, match="no descriptors for 1 test sequences: v_eps"):
        evaluate_hpatches({k: v for k, v in descriptors.items() if k != "v_eps"}, data, tasks)
    bad = dict(descriptors, i_beta=descriptors["i_beta"][:, :5])
    with pytest.raises(InputError, match="i_beta have 5 patches per type, not 33"):
        evaluate_hpatches(bad, data, tasks, CONFIG)
    with pytest.raises(InputError, match="needs verif_pos_split-all.csv"):
        evaluate_hpatches(descriptors, data, HPatchesTasks("all"), CONFIG)
    with pytest.raises(InputError, match="tasks must be distinct"):
        HPatchesConfig(tasks=("matching", "ranking"))
    with pytest.raises(InputError, match="list_sizes"):
        HPatchesConfig(list_sizes=(5, 100))


def test_equals_the_official_benchmark(release, official_hpatches, tmp_path):
    root, data, _ = release
    descr = root / "descr" / "tiny"
    official = official_hpatches(descr, root / "tasks", data.sequences, tmp_path)

    ours = evaluate_hpatches(
        read_hpatches_descriptors(root / "descr" / "tiny"), data, root / "tasks", CONFIG
    )
    tol = dict(rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.verification.auc, official["verification"]["auc"], **tol)
    np.testing.assert_allclose(ours.verification.ap, official["verification"]["ap"], **tol)
    matching = np.array([official["matching"][s] for s in ours.matching.sequences])
    np.testing.assert_allclose(ours.matching.ap, matching, **tol)
    assert official["retrieval"]["list_sizes"] == list(OFFICIAL_LIST_SIZES)
    np.testing.assert_allclose(ours.retrieval.ap, official["retrieval"]["ap"], **tol)

    # The summaries, as the official results script aggregates (utils/results.py).
    s = ours.as_dict()
    level_means = matching.mean(axis=(0, 2))
    assert s["matching"]["map"] == pytest.approx(level_means.mean(), abs=1e-6)
    assert s["matching"]["hard"] == pytest.approx(level_means[1], abs=1e-6)
    table = np.array(official["retrieval"]["ap"]).mean(axis=0)  # (3 levels, 7 sizes)
    assert s["retrieval"]["map"] == pytest.approx(table.mean(axis=0).mean(), abs=1e-6)
    assert s["retrieval"]["by_list_size"]["100"]["tough"] == pytest.approx(table[2, 0], abs=1e-6)
    assert s["verification"]["balanced"]["intra"]["easy"] == pytest.approx(
        official["verification"]["auc"][0][1], abs=1e-6
    )
    assert s["verification"]["imbalanced"]["inter"]["tough"] == pytest.approx(
        official["verification"]["ap"][2][0], abs=1e-6
    )


def test_split_sequences_must_be_the_test_ones(release):
    root, data, tasks = release
    sub = HPatchesData(data.root, Split("all", (), data.sequences[:4]), data.counts)
    with pytest.raises(InputError, match="v_gamma.* not a test sequence"):
        evaluate_hpatches(tiny_describe, sub, tasks, CONFIG)


def test_text_table(release):
    root, data, _ = release
    r = evaluate_hpatches(
        read_hpatches_descriptors(root / "descr" / "tiny"), data, root / "tasks", CONFIG
    )
    s = r.as_dict()
    json.dumps(s, allow_nan=False)  # strict JSON
    text = format_hpatches(s, name="tiny")
    assert f"{100 * s['matching']['hard']:6.2f}" in text
    assert f"{100 * s['verification']['imbalanced']['intra']['tough']:6.2f}" in text
    assert "published" not in text  # the published figures are for split full only
    assert "HardNet+ 52.76" in format_hpatches(dict(s, split="full"))
