"""The standard patch benchmarks through the ``ckn`` command line.

``ckn patches --hpatches-style / --hpatches / --phototour``, ``ckn describe --hpatches``,
``ckn eval-patches --hpatches / --phototour``. The end-to-end test writes HPatches-style data
with ``ckn patches`` from synthetic homography sequences, describes it with
``ckn describe --model sift`` (the official CSV layout), runs the unmodified official
benchmark on those CSV files and on task files written with the public API, and requires
``ckn eval-patches --json`` (the same task definitions, generated from the same seed) to give
the same figures to 1e-6. Every bad input is one line on stderr, exit status 2, nothing
written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from hpatches_official_runner import project_figures  # tests/, beside this file

import ckn
from retrieval.cli import patch_benchmarks
from retrieval.cli.main import main
from retrieval.patches import (
    HPATCHES_TYPES,
    HPatchesConfig,
    evaluate_hpatches,
    evaluate_phototour,
    generate_hpatches_tasks,
    load_hpatches,
    load_patchset,
    patch_describer,
    read_hpatches_descriptors,
    read_hpatches_sequence,
    sift_descriptors,
    write_hpatches_tasks,
)

N_PAIRS = 2000
LEVELS = ("easy", "hard", "tough")


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _fails(capsys, argv, match: str, *absent: Path) -> None:
    """Exit 2, one stderr line matching ``match``, none of ``absent`` written."""
    rc, out, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, (rc, out, err)
    assert re.search(match, lines[0]), lines[0]
    for p in absent:
        assert not Path(p).exists(), p


@pytest.fixture(scope="module")
def hp(homography_sequences, tmp_path_factory) -> Path:
    """HPatches-style data of the two synthetic sequences, written by ``ckn patches``."""
    out = tmp_path_factory.mktemp("hp") / "hp"
    argv = ["patches", "--sequences", homography_sequences, "--hpatches-style", out]
    assert main([str(a) for a in argv + ["--max-patches", "40", "--quiet"]]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    for p in src.rglob("*"):
        if p.is_file():
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / p.relative_to(src)).write_bytes(p.read_bytes())
    return dst


# --- HPatches ------------------------------------------------------------------------------------


def test_hpatches_style_layout(hp):
    assert sorted(p.name for p in hp.iterdir()) == ["hpatches_style.json", "i_leuven", "v_camera"]
    for seq in ("i_leuven", "v_camera"):
        assert sorted(p.name for p in (hp / seq).iterdir()) == sorted(
            f"{t}.png" for t in HPATCHES_TYPES
        )
        assert read_hpatches_sequence(hp / seq).shape == (16, 40, 65, 65)
    assert json.loads((hp / "hpatches_style.json").read_text())["config"]["max_patches"] == 40


def test_describe_then_the_official_code_equals_eval_patches(
    hp, official_hpatches, tmp_path, capsys
):
    descr = tmp_path / "descr" / "sift"
    rc, out, err = _run(capsys, "describe", "--hpatches", hp, "--out-dir", descr, "--model", "sift")
    assert rc == 0, err
    assert "2 sequences, 1280 patches, 128-D sift descriptors (patches 65x65)" in out
    # The CSV files hold SIFT of the native 65 x 65 patches, rows in patch order, per type.
    back = read_hpatches_descriptors(descr)
    assert sorted(back) == ["i_leuven", "v_camera"]
    for seq, d in back.items():
        patches = read_hpatches_sequence(hp / seq)
        want = sift_descriptors(patches.reshape(-1, 65, 65)).reshape(16, 40, 128)
        np.testing.assert_array_equal(d, want)  # 9 significant digits: float32 exactly

    data = load_hpatches(hp, "all")
    tasks = tmp_path / "tasks"
    write_hpatches_tasks(tasks, generate_hpatches_tasks(data, HPatchesConfig(n_pairs=N_PAIRS)))
    official = official_hpatches(descr, tasks, data.sequences, tmp_path)
    expected = official["figures"]  # aggregated as the official results script does

    runs = {
        "model": ["--model", "sift"],  # task files generated in the command (seed 42)
        "csv": ["--descriptors", descr, "--tasks-dir", tasks],
    }
    for name, extra in runs.items():
        js = tmp_path / f"{name}.json"
        argv = ["eval-patches", "--hpatches", hp, "--split", "all", "--n-pairs", N_PAIRS]
        rc, out, err = _run(capsys, *argv, *extra, "--json", js)
        assert rc == 0, err
        doc = json.loads(js.read_text())
        ours = project_figures(doc)
        for task, values in expected.items():
            for key, v in values.items():
                assert ours[task][key] == pytest.approx(v, abs=1e-6), (name, task, key)
        assert f"{100 * doc['matching']['hard']:6.2f}" in out
        assert len(doc["metadata"]["commit"]) == 40 and doc["published"] is None
        assert doc["verification"]["pairs"] == N_PAIRS
        all_values = [v for t in ours.values() for v in t.values()]
        assert all(0.0 <= v <= 1.0 for v in all_values)
    assert doc["descriptor"]["kind"] == "precomputed" and doc["tasks"].startswith("files in")


def test_a_model_describes_at_its_training_side(hp, tiny_model, tmp_path, capsys):
    model, _ = tiny_model  # trained on 16 x 16 patches
    folder = tmp_path / "tiny"
    ckn.save(model, folder)
    js = tmp_path / "m.json"
    argv = ["eval-patches", "--hpatches", hp, "--split", "all", "--model", folder]
    rc, out, err = _run(capsys, *argv, "--tasks", "matching", "--json", js)
    assert rc == 0, err
    assert "patches 16x16 resized from 65x65, INTER_AREA" in out
    doc = json.loads(js.read_text())
    assert doc["descriptor"]["described_size"] == 16
    assert doc["descriptor"]["interpolation"] == "INTER_AREA"
    assert "verification" not in doc and "retrieval" not in doc

    def by_hand(p):
        small = np.stack([cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA) for x in p])
        return ckn.describe(model, small)

    data = load_hpatches(hp, "all")
    want = evaluate_hpatches(by_hand, data, None, HPatchesConfig(tasks=("matching",)))
    for key in ("map", *LEVELS, "illum", "view"):
        assert doc["matching"][key] == pytest.approx(want.as_dict()["matching"][key], abs=1e-9)
    descr = tmp_path / "descr" / "tiny"
    rc, _, err = _run(capsys, "describe", "--hpatches", hp, "--out-dir", descr, "--model", folder)
    assert rc == 0, err
    got = read_hpatches_descriptors(descr)["v_camera"]
    patches = read_hpatches_sequence(hp / "v_camera").reshape(-1, 65, 65)
    np.testing.assert_allclose(got, by_hand(patches).reshape(16, 40, -1), rtol=0, atol=1e-7)


def test_hpatches_as_a_patch_file(hp, tmp_path, capsys):
    out = tmp_path / "hp.npz"
    argv = ["patches", "--hpatches", hp, "--out", out, "--test-scenes", "v_camera"]
    rc, stdout, err = _run(capsys, *argv)
    assert rc == 0, err
    ps = load_patchset(out)
    assert ps.patches.shape == (2 * 16 * 40, 51, 51) and ps.info["interpolation"] == "INTER_AREA"
    assert list(ps.scene_names) == ["i_leuven", "v_camera"]
    np.testing.assert_array_equal(ps.split, np.repeat([0, 1], 16 * 40))  # train, test
    assert np.all(np.bincount(ps.labels) == 16)  # a group: one reference patch, 16 images
    rc, _, err = _run(capsys, "patches", "--hpatches", hp, "--out", out, "--size", "65")
    assert rc == 0, err
    ps = load_patchset(out)
    assert ps.patches.shape[1:] == (65, 65) and np.all(ps.split == 1)  # split all: test
    np.testing.assert_array_equal(ps.patches[:40], read_hpatches_sequence(hp / "i_leuven")[0])


def _layout_faults(hp: Path, tmp_path: Path):
    """(folder, message) of HPatches folders that are not an HPatches layout."""
    stray = _copy(hp, tmp_path / "stray")
    (stray / "camera").mkdir()
    missing = _copy(hp, tmp_path / "missing")
    (missing / "v_camera" / "h3.png").unlink()
    height = _copy(hp, tmp_path / "height")
    cv2.imwrite(str(height / "i_leuven" / "e2.png"), np.zeros((100, 65), np.uint8))
    counts = _copy(hp, tmp_path / "counts")
    cv2.imwrite(str(counts / "i_leuven" / "t1.png"), np.zeros((130, 65), np.uint8))
    return [
        (stray, r"stray/camera: not an HPatches sequence folder"),
        (missing, r"missing/v_camera: missing patch types h3\.png"),
        (height, r"height/i_leuven/e2\.png: height 100 is not a positive multiple of 65"),
        (counts, r"counts/i_leuven/t1\.png: 2 patches, but ref\.png has 40"),
    ]


def test_hpatches_bad_input(hp, tmp_path, capsys):
    js, descr, npz = tmp_path / "r.json", tmp_path / "d" / "x", tmp_path / "p.npz"
    for folder, message in _layout_faults(hp, tmp_path):
        argv = ["eval-patches", "--hpatches", folder, "--split", "all", "--model", "sift"]
        _fails(capsys, argv + ["--json", js], message, js)
        argv = ["describe", "--hpatches", folder, "--model", "sift", "--out-dir", descr]
        _fails(capsys, argv, message, descr)
        _fails(capsys, ["patches", "--hpatches", folder, "--out", npz], message, npz)
    evaluate = ["eval-patches", "--hpatches", hp, "--model", "sift", "--json", js]
    _fails(capsys, evaluate + ["--split", "z"], "--split 'z' is not an HPatches split", js)
    # i_leuven is an official illumination sequence; the 56 others are absent.
    absent = r"split 'illum' needs 56 sequences absent from .*hp: i_ajuntament"
    _fails(capsys, evaluate + ["--split", "illum"], absent, js)
    _fails(capsys, evaluate, "--hpatches needs --split", js)
    _fails(capsys, evaluate + ["--split", "all", "--pairs", "x.txt"], "--pairs does not apply", js)
    _fails(capsys, evaluate + ["--split", "all", "--tasks", "sorting"], "tasks must be", js)
    bad_tasks = tmp_path / "tasks"
    bad_tasks.mkdir()
    _fails(capsys, evaluate + ["--split", "all", "--tasks-dir", bad_tasks], "task file missing", js)
    argv = ["describe", "--hpatches", hp, "--model", "sift", "--out-dir", descr, "--split", "b"]
    _fails(capsys, argv, "split 'b' needs 115 sequences absent", descr)
    argv = ["patches", "--hpatches", hp, "--out", npz, "--split", "view"]
    _fails(capsys, argv, "split 'view' needs 59 sequences absent", npz)
    # Outputs inside the input folder are refused before any work.
    argv = ["describe", "--hpatches", hp, "--model", "sift", "--out-dir", hp / "descr"]
    _fails(capsys, argv, "--out-dir .* is inside the input folder --hpatches", hp / "descr")
    rc, _, err = _run(capsys, "eval-patches", "--patches", npz, "--model", "sift", "--n-pairs", 5)
    assert rc == 2 and "--n-pairs does not apply to --patches" in err


def test_hpatches_style_bad_input(homography_sequences, hp, tmp_path, capsys):
    out = tmp_path / "style"
    inside = homography_sequences / "hp"
    argv = ["patches", "--sequences", homography_sequences, "--hpatches-style"]
    _fails(capsys, argv + [inside], "is inside the input folder --sequences", inside)
    _fails(capsys, argv + [out, "--max-patches", "0"], "--max-patches must be >= 1, got 0", out)
    _fails(capsys, argv + [out, "--size", "65"], "--size does not apply to --hpatches-style", out)
    npz = tmp_path / "p.npz"
    argv = ["patches", "--hpatches", hp, "--out", npz, "--max-patches", "3"]
    _fails(capsys, argv, "--max-patches applies to --hpatches-style only", npz)
    _fails(capsys, ["patches", "--hpatches", hp], "--out FILE.npz is needed", npz)


def test_describe_writes_nothing_on_error_or_interrupt(hp, tmp_path, capsys, monkeypatch):
    descr = tmp_path / "d" / "sift"
    descr.mkdir(parents=True)
    (descr / "old.txt").write_text("kept")
    # A PNG whose header is right and whose data is not: found while describing v_camera,
    # after i_leuven has been described and written.
    broken = _copy(hp, tmp_path / "broken")
    png = broken / "v_camera" / "t5.png"
    png.write_bytes(png.read_bytes()[:60] + b"\0" * 64)
    argv = ["describe", "--hpatches", broken, "--model", "sift", "--out-dir", descr, "--quiet"]
    _fails(capsys, argv, r"v_camera/t5\.png: cannot decode the PNG")
    assert [p.name for p in descr.parent.iterdir()] == ["sift"]  # no temporary left
    assert [p.name for p in descr.iterdir()] == ["old.txt"]  # the old folder untouched

    real = patch_benchmarks.patch_describer
    calls = []

    def interrupted(*args, **kwargs):
        describer = real(*args, **kwargs)

        def describe(patches):
            calls.append(len(patches))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return describer(patches)

        describe.info = describer.info
        return describe

    monkeypatch.setattr(patch_benchmarks, "patch_describer", interrupted)
    rc, _, err = _run(capsys, *argv[:2], hp, *argv[3:])
    assert rc == 130 and err.strip() == "ckn describe: interrupted" and len(calls) == 2
    assert [p.name for p in descr.parent.iterdir()] == ["sift"]
    assert [p.name for p in descr.iterdir()] == ["old.txt"]


# --- PhotoTour -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phototour(tmp_path_factory) -> Path:
    """A 300-patch subset in the original format: 2 bitmaps, info.txt, the standard pair file."""
    root = tmp_path_factory.mktemp("pt") / "liberty"
    root.mkdir()
    rng = np.random.default_rng(0)
    points = np.arange(300) // 3
    base = rng.integers(0, 256, (100, 64, 64))
    patches = np.clip(base[points] + rng.integers(-60, 61, (300, 64, 64)), 0, 255)
    for b in range(2):
        sheet = np.zeros((1024, 1024), np.uint8)
        for k in range(256 * b, min(300, 256 * (b + 1))):
            r, c = (k % 256) // 16, k % 16
            sheet[64 * r : 64 * r + 64, 64 * c : 64 * c + 64] = patches[k]
        cv2.imwrite(str(root / f"patch{b:04d}.bmp"), sheet)
    (root / "info.txt").write_text("".join(f"{p} 0\n" for p in points))
    pos = [(3 * g, 3 * g + 2) for g in range(100)]
    neg = [(int(i), int(j)) for i, j in rng.integers(0, 300, (150, 2)) if points[i] != points[j]]
    lines = [f"{i} {points[i]} 0 {j} {points[j]} 0 0\n" for i, j in pos + neg]
    (root / "m50_100000_100000_0.txt").write_text("".join(lines))
    return root


def test_phototour_fpr95(phototour, tiny_model, tmp_path, capsys):
    js = tmp_path / "pt.json"
    rc, out, err = _run(capsys, "eval-patches", "--phototour", phototour, "--model", "pixels",
                        "--json", js)  # fmt: skip
    assert rc == 0, err
    want = evaluate_phototour(phototour, patch_describer("pixels", 64))["fpr95"]
    assert f"FPR95 {want:.2f}%" in out and "patches 64x64)" in out
    doc = json.loads(js.read_text())
    assert doc["fpr95"] == pytest.approx(want / 100, abs=1e-12) and 0 <= doc["fpr95"] <= 1
    pairs = (phototour / "m50_100000_100000_0.txt").read_text().splitlines()
    assert doc["num_pairs"] == len(pairs) and doc["pairs"] == "m50_100000_100000_0.txt"
    # A model sees the patches at its training side (16 here), resized with INTER_AREA.
    model, _ = tiny_model
    ckn.save(model, tmp_path / "tiny")
    argv = ["eval-patches", "--phototour", phototour, "--model", tmp_path / "tiny"]
    rc, out, err = _run(capsys, *argv, "--pairs", "m50_100000_100000_0.txt")
    assert rc == 0, err

    def by_hand(p):
        small = np.stack([cv2.resize(x, (16, 16), interpolation=cv2.INTER_AREA) for x in p])
        return ckn.describe(model, small)

    want = evaluate_phototour(phototour, by_hand)["fpr95"]
    assert f"FPR95 {want:.2f}%" in out and "16x16 resized from 64x64, INTER_AREA" in out


def test_phototour_patch_file(phototour, tmp_path, capsys):
    out = tmp_path / "liberty.npz"
    rc, _, err = _run(capsys, "patches", "--phototour", phototour, "--out", out, "--split", "test")
    assert rc == 0, err
    ps = load_patchset(out)
    assert ps.patches.shape == (300, 51, 51) and np.all(ps.split == 1)
    np.testing.assert_array_equal(ps.labels, np.arange(300) // 3)


def test_phototour_bad_input(phototour, tmp_path, capsys):
    js, npz = tmp_path / "r.json", tmp_path / "p.npz"
    grid = _copy(phototour, tmp_path / "grid")
    cv2.imwrite(str(grid / "patch0001.bmp"), np.zeros((512, 1024), np.uint8))
    message = r"grid/patch0001\.bmp: 1024 x 512 pixels, expected 1024 x 1024"
    _fails(capsys, ["eval-patches", "--phototour", grid, "--model", "sift", "--json", js],
           message, js)  # fmt: skip
    _fails(capsys, ["patches", "--phototour", grid, "--out", npz], message, npz)
    beyond = _copy(phototour, tmp_path / "beyond")
    (beyond / "m50_100000_100000_0.txt").write_text("0 0 0 1 0 0 0\n5 1 0 300 100 0 0\n")
    message = r"m50_100000_100000_0\.txt: patch id 300 is beyond the 300 patches of info\.txt"
    argv = ["eval-patches", "--phototour", beyond, "--model", "sift", "--json", js]
    _fails(capsys, argv, message, js)
    _fails(capsys, argv + ["--pairs", "m50_1_1_0.txt"], "pair file not found: m50_1_1_0.txt", js)
    _fails(capsys, argv + ["--split", "all"], "--split does not apply to --phototour", js)
