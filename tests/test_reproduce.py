"""`ckn reproduce` end to end in a tiny configuration (small data, 8-filter networks)."""

import dataclasses
import json

import numpy as np
import pytest

import ckn
import retrieval
from ckn import InputError
from retrieval import reproduce
from retrieval.cli.main import main
from retrieval.patches import PAPER_ROMEPATCHES, describe_baseline, format_table


def _tiny(name):
    cfg = ckn.get_preset(name)
    last = 4 if name == "ckn-grad" else 7
    return dataclasses.replace(
        cfg,
        layers=(ckn.LayerConfig(3, 8, 2), ckn.LayerConfig(3, 8, last)),
        train=dataclasses.replace(cfg.train, num_patches=2000, kmeans_iters=5),
    )


def constant_descriptor_map(labels):
    """mAP (percent) of a constant descriptor under the protocol: every score ties and ties
    are broken against the relevant items, so the R relevant ones come last of the n - 1."""
    labels = np.asarray(labels)
    n = len(labels)
    aps = []
    for lab in labels:
        r = int((labels == lab).sum()) - 1
        if r > 0:
            aps.append(np.mean([i / (n - 1 - r + i) for i in range(1, r + 1)]))
    return 100 * float(np.mean(aps))


def test_reproduce_tiny_end_to_end(tmp_path):
    names = ("ckn-raw", "ckn-white", "ckn-grad", "sift", "rootsift", "pixels")
    res = reproduce(
        quick=True,
        out_dir=tmp_path,
        descriptors=names,
        configs={n: _tiny(n) for n in names[:3]},
        progress=False,
        log=lambda s: None,
    )
    assert [r["descriptor"] for r in res["rows"]] == list(names)
    rows = {r["descriptor"]: r for r in res["rows"]}
    for r in res["rows"]:
        assert 0 < r["train_map"] <= 100 and 0 < r["test_map"] <= 100
    # Chance: what a constant descriptor scores on the same test split (0.73%; the same
    # value as retrieval.evaluate_descriptors gives a constant descriptor).
    ps = retrieval.build_default(quick=True, seed=0, progress=False)  # cached by reproduce
    chance = constant_descriptor_map(ps.labels[ps.split == 1])
    assert 0 < chance < 2
    # Measured test mAP: ckn-grad 94.9, ckn-raw 89.3, ckn-white 82.6, sift 95.7, rootsift
    # 97.2, pixels 92.1. Every descriptor must be far above chance, and the tiny CKN-grad
    # (8 filters) must stay level with normalized pixels (a margin of 3 points).
    for r in res["rows"]:
        assert r["test_map"] > chance + 60, (r["descriptor"], r["test_map"], chance)
    assert rows["ckn-grad"]["test_map"] > rows["pixels"]["test_map"] - 3
    # Trained on the train split: CKN train mAP 97.9 - 99.4.
    assert all(rows[n]["train_map"] > 90 for n in names[:3])
    dims = {r["descriptor"]: r["dim"] for r in res["rows"]}
    assert dims["sift"] == 128 and dims["ckn-grad"] == 4 * 4 * 8
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"][2]["test_map"] == res["rows"][2]["test_map"]  # JSON keeps repr floats
    assert (tmp_path / "results.png").stat().st_size > 1000
    model = ckn.load(tmp_path / "models" / "ckn-grad")
    assert model.config.layers[0].filters == 8
    table = format_table(res)
    assert "ckn-grad" in table and f"{PAPER_ROMEPATCHES['sift']['test_map']:.1f}" in table


def test_reproduce_bad_input(tmp_path):
    with pytest.raises(InputError, match="unknown descriptor"):
        reproduce(quick=True, descriptors=("surf",), progress=False, log=lambda s: None)
    bad = tmp_path / "nosplit.npz"
    np.savez(bad, patches=np.zeros((10, 51, 51), np.uint8), labels=np.arange(10) // 2)
    with pytest.raises(InputError):
        reproduce(patches=str(bad), descriptors=("sift",), progress=False, log=lambda s: None)


def test_reproduce_on_homography_sequences(tmp_path):
    """`--sequences`: an Oxford-layout folder of two real-photo sequences, one per split."""
    import cv2
    import skimage.data

    from tests.test_patchsets import _write_sequence

    for name, img in (("astro", skimage.data.astronaut()), ("coffee", skimage.data.coffee())):
        _write_sequence(
            tmp_path / "seqs" / name, cv2.resize(img, (320, 320), interpolation=cv2.INTER_AREA)
        )
    res = reproduce(
        sequences=str(tmp_path / "seqs"),
        descriptors=("ckn-grad", "sift"),
        configs={"ckn-grad": _tiny("ckn-grad")},
        progress=False,
        log=lambda s: None,
    )
    assert res["data"]["description"].startswith("homography sequences")
    assert [r["descriptor"] for r in res["rows"]] == ["ckn-grad", "sift"]
    # Measured: 100.0 for both (synthetic views of two photos are easy); chance about 1%.
    ps = retrieval.patches.build_sequences(str(tmp_path / "seqs"))
    chance = constant_descriptor_map(ps.labels[ps.split == 1])
    assert 0 < chance < 2
    assert all(chance + 60 < r["test_map"] <= 100 for r in res["rows"])


def numpy_patch_map(descriptors, labels):
    """Patch retrieval mAP (percent), written out: each patch queries the others of its split
    by cosine, relevant = same group, non-interpolated AP, ties against the relevant patches,
    patches alone in their group skipped."""
    x = np.asarray(descriptors, np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    s = x @ x.T
    aps = []
    for q in range(len(labels)):
        others = np.flatnonzero(np.arange(len(labels)) != q)
        rel = labels[others] == labels[q]
        if rel.any():
            ranks = np.flatnonzero(rel[np.lexsort((rel, -s[q, others]))]) + 1
            aps.append(np.mean(np.arange(1, ranks.size + 1) / ranks))
    return 100 * float(np.mean(aps))


def test_cli_quick_sift_row_recomputed_independently(tmp_path, tmp_path_factory, monkeypatch,
                                                     capsys):  # fmt: skip
    """``ckn reproduce --quick``'s SIFT row: the patches of the quick default set (the cache
    the patch tests share), described by the public baseline, scored by the AP above."""
    monkeypatch.setenv("CKN_CACHE", str(tmp_path_factory.getbasetemp() / "ckn_cache"))
    out = tmp_path / "out"
    assert main(["reproduce", "--quick", "--descriptors", "sift", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    ps = retrieval.build_default(quick=True, seed=0, progress=False)  # from the cache
    desc = describe_baseline("sift", ps.patches)
    want = {}
    for name, value in (("train", 0), ("test", 1)):
        sel = ps.split == value
        want[name] = numpy_patch_map(desc[sel], ps.labels[sel])
        assert row[f"{name}_map"] == pytest.approx(want[name], abs=1e-9), name
        assert row[f"{name}_metrics"]["num_patches"] == int(sel.sum())
    line = next(ln for ln in printed.splitlines() if ln.startswith("sift "))
    assert line.split()[3:5] == [f"{want['train']:.1f}", f"{want['test']:.1f}"]
    assert row["dim"] == 128 and 50 < want["test"] < 100
