"""Revisited Oxford / Paris protocol: a hand-checked example, a revisitop reference, gnd files.

Values are exact fractions computed by hand (float64 sums: rtol 1e-12).
"""

import pickle

import numpy as np
import pytest

from ckn import InputError
from retrieval import metrics as RV
from retrieval._src.revisited import PROTOCOLS, _protocol_lists

# --------------------------------------------------------------------------- hand example

# 8 database images, 3 queries; column q of RANKS is query q's ranking, best first.
RANKS = np.array(
    [
        [2, 7, 0],
        [1, 5, 1],
        [0, 3, 2],
        [4, 0, 3],
        [3, 1, 4],
        [6, 2, 5],
        [5, 4, 6],
        [7, 6, 7],
    ]
)
GND = [
    {"easy": [1, 4], "hard": [6], "junk": [2]},
    {"easy": [0, 7], "hard": [], "junk": [5]},
    {"easy": [], "hard": [3], "junk": []},
]
# Query 0. easy: ok {1, 4}, junk {2, 6}: ranking without junk 1 0 4 3 5 7, positives at
#   r = 0, 2 (0-based): AP = [(1 + 1/1)/2 + (1/2 + 2/3)/2] / 2 = (1 + 7/12) / 2 = 19/24.
#   Last positive at 1-based rank 3: P@1 = 1/1, P@5 = P@10 = (2 in top 3)/3 = 2/3.
# medium: ok {1, 4, 6}, junk {2}: 1 0 4 3 6 5 7, positives at r = 0, 2, 4:
#   AP = [1 + 7/12 + (2/4 + 3/5)/2] / 3 = (1 + 7/12 + 11/20) / 3 = 32/45.
#   Last positive at rank 5: P@1 = 1, P@5 = P@10 = 3/5.
# hard: ok {6}, junk {2, 1, 4}: 0 3 6 5 7, positive at r = 2: AP = (0/2 + 1/3)/2 = 1/6.
#   Last positive at rank 3: P@1 = 0, P@5 = P@10 = 1/3.
# Query 1. easy and medium: ok {0, 7}, junk {5}: 7 3 0 1 2 4 6, positives at r = 0, 2:
#   AP = 19/24, P@1 = 1, P@5 = P@10 = 2/3. hard: no positives: skipped.
# Query 2. easy: skipped. medium and hard: ok {3}, no junk: positive at r = 3:
#   AP = (0/3 + 1/4)/2 = 1/8; last positive at rank 4: P@1 = 0, P@5 = P@10 = 1/4.
WANT = {
    "easy": ([19 / 24, 19 / 24, None], [[1, 2 / 3, 2 / 3], [1, 2 / 3, 2 / 3]]),
    "medium": (
        [32 / 45, 19 / 24, 1 / 8],
        [[1, 3 / 5, 3 / 5], [1, 2 / 3, 2 / 3], [0, 1 / 4, 1 / 4]],
    ),
    "hard": ([1 / 6, None, 1 / 8], [[0, 1 / 3, 1 / 3], [0, 1 / 4, 1 / 4]]),
}


def test_hand_example():
    out = RV.revisited_map(RANKS, GND)
    assert set(out) == {"easy", "medium", "hard"}
    for protocol, (aps, prs) in WANT.items():
        r = out[protocol]
        assert r["kappas"] == [1, 5, 10]
        assert r["num_skipped"] == aps.count(None)
        assert r["num_queries"] == 3 - aps.count(None)
        for got, want in zip(r["ap"], aps):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-12)
        assert r["map"] == pytest.approx(np.mean([a for a in aps if a is not None]), rel=1e-12)
        np.testing.assert_allclose(r["mp@k"], np.mean(prs, axis=0), rtol=1e-12)
    assert out["easy"]["map"] == pytest.approx(19 / 24)
    assert out["hard"]["map"] == pytest.approx(7 / 48)
    assert out["hard"]["mp@k"] == pytest.approx([0.0, 7 / 24, 7 / 24])


def test_other_kappas_and_a_truncated_ranking():
    # k larger than the last positive rank is cut to it: P@100 = P@3 for query 0 (easy).
    out = RV.revisited_map(RANKS[:, :1], GND[:1], kappas=(2, 100))
    assert out["easy"]["mp@k"] == pytest.approx([1 / 2, 2 / 3])
    # Only the top 3 ranked (2 1 0): medium positives 4 and 6 never found, n_pos stays 3:
    # AP = (1 + 1/1)/2 / 3 = 1/3; hard: no positive retrieved: AP 0, P@k 0.
    out = RV.revisited_map(RANKS[:3, :1], GND[:1])
    assert out["medium"]["map"] == pytest.approx(1 / 3)
    assert out["hard"]["map"] == 0.0 and out["hard"]["mp@k"] == [0.0, 0.0, 0.0]


def test_all_queries_skipped_gives_none():
    out = RV.revisited_map(RANKS[:, 1:2], GND[1:2])
    assert out["hard"] == {
        "map": None,
        "mp@k": None,
        "kappas": [1, 5, 10],
        "ap": [None],
        "num_queries": 0,
        "num_skipped": 1,
    }


# --------------------------------------------------------------------------- reference


def ref_compute_map(ranks, ok_lists, junk_lists, kappas):
    """revisitop's procedure: positions in the full ranking, shifted by the junk before them."""
    aps, prs = [], []
    for q in range(ranks.shape[1]):
        ok, junk = np.asarray(ok_lists[q]), np.asarray(junk_lists[q])
        if ok.size == 0:
            aps.append(np.nan)
            continue
        pos = [i for i in range(ranks.shape[0]) if ranks[i, q] in set(ok.tolist())]
        jpos = [i for i in range(ranks.shape[0]) if ranks[i, q] in set(junk.tolist())]
        pos = [p - sum(1 for j in jpos if j < p) for p in pos]
        ap = 0.0
        for j, r in enumerate(pos):
            p0 = 1.0 if r == 0 else j / r
            ap += (p0 + (j + 1) / (r + 1)) / 2 / len(ok)
        aps.append(ap)
        one = [p + 1 for p in pos]
        if not one:
            prs.append([0.0] * len(kappas))
            continue
        prs.append(
            [sum(1 for p in one if p <= min(max(one), k)) / min(max(one), k) for k in kappas]
        )
    valid = [a for a in aps if not np.isnan(a)]
    return np.mean(valid), aps, np.mean(prs, axis=0)


def test_matches_reference_on_random_rankings():
    rng = np.random.default_rng(0)
    n_db, n_q = 60, 9
    gnd = []
    for _ in range(n_q):
        perm = rng.permutation(n_db)
        a, b, c = rng.integers(0, 6, 3)
        gnd.append({"easy": perm[:a], "hard": perm[a : a + b], "junk": perm[a + b : a + b + c]})
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    for rows in (n_db, 25):  # full and truncated rankings
        out = RV.revisited_map(ranks[:rows], gnd, kappas=(1, 3, 7))
        for protocol in PROTOCOLS:
            ok, junk = zip(*[_protocol_lists(g, protocol) for g in gnd])
            m, aps, pr = ref_compute_map(ranks[:rows], ok, junk, (1, 3, 7))
            r = out[protocol]
            got = np.array([np.nan if a is None else a for a in r["ap"]])
            np.testing.assert_allclose(got, aps, rtol=1e-12)
            assert r["map"] == pytest.approx(m, rel=1e-12)
            np.testing.assert_allclose(r["mp@k"], pr, rtol=1e-12)


def test_map_errors():
    with pytest.raises(InputError, match=r"ranks must be \(n_db, n_queries\), got shape \(8,\)"):
        RV.revisited_map(RANKS[:, 0], GND)
    with pytest.raises(InputError, match="ranks has 2 columns .* gnd has 3 queries"):
        RV.revisited_map(RANKS[:, :2], GND)
    dup = RANKS.copy()
    dup[3, 1] = 7
    with pytest.raises(InputError, match="ranks column 1 lists database image 7 twice"):
        RV.revisited_map(dup, GND)
    with pytest.raises(InputError, match="ranks must hold int database indices, got dtype float64"):
        RV.revisited_map(RANKS.astype(float), GND)
    with pytest.raises(InputError, match="ranks holds a negative index -1"):
        RV.revisited_map(RANKS - 1, GND)
    with pytest.raises(InputError, match=r"kappas must be >= 1, got \[0, 5\]"):
        RV.revisited_map(RANKS, GND, kappas=(0, 5))
    with pytest.raises(InputError, match="gnd\\[1\\] has no 'junk' list"):
        RV.revisited_map(RANKS, [GND[0], {"easy": [0], "hard": []}, GND[2]])
    with pytest.raises(InputError, match="query 0: image 4 is both in easy and junk"):
        RV.revisited_map(RANKS, [{"easy": [1, 4], "hard": [], "junk": [4]}] + GND[1:])
    with pytest.raises(InputError, match="gnd must be a list of per-query dicts, got dict"):
        RV.revisited_map(RANKS, {"gnd": GND})


# --------------------------------------------------------------------------- gnd files


def _cfg(as_arrays: bool):
    conv = (lambda v: np.asarray(v, np.int64)) if as_arrays else list
    box = (lambda v: np.asarray(v, np.float64)) if as_arrays else list
    return {
        "imlist": [f"db_{i}" for i in range(8)],
        "qimlist": ["q0", "q1", "q2"],
        "gnd": [
            {
                "bbx": box([10.5, 20.0, 300.0, 400.25]),
                **{k: conv(g[k]) for k in ("easy", "hard", "junk")},
            }
            for g in GND
        ],
    }


@pytest.mark.parametrize("as_arrays,protocol", [(False, 4), (True, 2), (True, 5)])
def test_load_gnd_lists_and_numpy_arrays(tmp_path, as_arrays, protocol):
    path = tmp_path / "gnd_test.pkl"
    path.write_bytes(pickle.dumps(_cfg(as_arrays), protocol=protocol))
    cfg = RV.load_gnd(path)
    assert cfg["imlist"][3] == "db_3" and cfg["qimlist"] == ["q0", "q1", "q2"]
    assert cfg["n_images"] == 8
    g = cfg["gnd"][0]
    assert g["easy"].dtype == np.int64 and g["easy"].tolist() == [1, 4]
    assert g["junk"].tolist() == [2] and cfg["gnd"][1]["hard"].tolist() == []
    np.testing.assert_array_equal(g["bbx"], [10.5, 20.0, 300.0, 400.25])
    out = RV.revisited_map(RANKS, cfg["gnd"])
    assert out["medium"]["map"] == pytest.approx((32 / 45 + 19 / 24 + 1 / 8) / 3)
    # Distractors after imlist (R1M style) are fine.
    assert RV.load_gnd(path, n_images=1000)["n_images"] == 1000


class _Sneaky:
    def __reduce__(self):
        return (print, ("this must never run",))


def _write(tmp_path, obj, name="gnd.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj, protocol=4))
    return path


def test_load_gnd_refuses_code_and_bad_files(tmp_path, capsys):
    cfg = _cfg(False)
    cfg["gnd"][0]["extra"] = _Sneaky()
    with pytest.raises(
        InputError, match="refusing the ground-truth pickle: it refers to builtins.print"
    ):
        RV.load_gnd(_write(tmp_path, cfg))
    assert capsys.readouterr().out == ""
    with pytest.raises(InputError, match="cannot read the ground truth"):
        RV.load_gnd(tmp_path / "missing.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(InputError, match="is not a readable ground-truth pickle"):
        RV.load_gnd(junk)


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda c: c["gnd"][1].update(junk=[5, 9]),
            r"query 1 \(q1\): junk index 9 is outside the 8 images of imlist",
        ),
        (lambda c: c["gnd"][2].update(easy=[-1]), r"query 2 \(q2\): easy index -1 is outside"),
        (
            lambda c: c["gnd"][0].update(bbx=[1.0, 2.0, 3.0]),
            r"query 0 \(q0\): bbx must be 4 finite numbers",
        ),
        (lambda c: c["gnd"][0].update(bbx=[5.0, 2.0, 3.0, 4.0]), r"x1 <= x2, y1 <= y2, got \[5.0"),
        (lambda c: c["gnd"][0].pop("bbx"), r"query 0 \(q0\) has no 'bbx' box"),
        (lambda c: c["gnd"][0].pop("hard"), r"query 0 \(q0\) has no 'hard' list"),
        (lambda c: c["gnd"][0].update(hard=[1]), "query 0: image 1 is both in easy and hard"),
        (lambda c: c["gnd"][0].update(easy=np.array([1, 4], dtype=object)), "got dtype object"),
        (
            lambda c: c["gnd"][0].update(easy=[0.5]),
            "easy must be a list of int indices, got dtype float64",
        ),
        (lambda c: c.pop("qimlist"), "the ground truth has no 'qimlist'"),
        (lambda c: c["qimlist"].append("q3"), "3 gnd entries for 4 query names"),
        (lambda c: c.update(imlist=[1, 2]), "'imlist' must be a list of image names"),
    ],
)
def test_load_gnd_validation(tmp_path, edit, message):
    cfg = _cfg(False)
    edit(cfg)
    with pytest.raises(InputError, match=message):
        RV.load_gnd(_write(tmp_path, cfg))


def test_load_gnd_n_images_below_imlist(tmp_path):
    with pytest.raises(InputError, match="lists 8 database images, n_images is only 5"):
        RV.load_gnd(_write(tmp_path, _cfg(False)), n_images=5)
