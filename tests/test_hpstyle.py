"""HPatches-style data from homography sequences, and HPatches folders as patch files.

A synthetic sequence (a real photo warped by known homographies, written as
Oxford ``img1..6`` + ``H1toNp``) is cut into HPatches-style patches; the tests
check the layout, that patch i of every file shows the same point (NCC against
the reference patch, with a shuffled control), the noise levels (NCC and the
measured overlap medians in order, near 0.85 / 0.72 / 0.60), determinism, the
overlap functions against closed forms and Monte Carlo, the converter's
groups and splits, and every bad input.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval._src.hpstyle import (
    Jitter,
    disk_overlap,
    ellipse_overlap,
    median_overlap,
    output_name,
    sample_jitter,
    suppress_overlapping,
)
from retrieval.patches import (
    HPATCHES_TYPES,
    HPatchesStyleConfig,
    build_hpatches_style,
    hpatches_to_patchset,
    load_patchset,
    read_hpatches_sequence,
    resize_patches,
    save_patchset,
)

LEVELS = ("easy", "hard", "tough")
TYPES = HPATCHES_TYPES

OXFORD = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_affine"
if not OXFORD.is_dir():
    OXFORD = Path("/work/shared/data/oxford_affine")

QUICK = HPatchesStyleConfig(max_patches=120)
NO_JITTER = HPatchesStyleConfig(
    max_patches=120, easy=Jitter(0, 0, 0), hard=Jitter(0, 0, 0), tough=Jitter(0, 0, 0)
)


@pytest.fixture(scope="module")
def sequences(homography_sequences) -> Path:
    return homography_sequences


@pytest.fixture(scope="module")
def built(sequences, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "hp"
    report = build_hpatches_style(sequences, out, config=QUICK)
    return out, report


def _ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, S, S) x2 -> (N,) zero-mean normalized cross-correlation."""
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


def test_layout(built):
    out, report = built
    assert sorted(p.name for p in out.iterdir()) == [
        "hpatches_style.json",
        "i_leuven",
        "v_camera",
    ]
    for name, n in report.sequences.items():
        assert 50 <= n <= QUICK.max_patches, (name, n)
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == sorted(f"{t}.png" for t in TYPES)
        for t in TYPES:
            img = cv2.imread(str(out / name / f"{t}.png"), cv2.IMREAD_UNCHANGED)
            assert img.dtype == np.uint8 and img.shape == (65 * n, 65)
    saved = json.loads((out / "hpatches_style.json").read_text())
    assert saved["sequences"] == report.sequences
    assert saved["config"]["max_patches"] == QUICK.max_patches


def test_same_point_without_jitter(sequences, tmp_path):
    # No jitter: every target patch is the reference patch mapped by the true homography.
    build_hpatches_style(sequences, tmp_path / "o", config=NO_JITTER)
    d = read_hpatches_sequence(tmp_path / "o" / "v_camera")
    ref = d[0]
    for k in range(1, 16):
        assert np.median(_ncc(ref, d[k])) > 0.9, TYPES[k]
        # The control: another patch of the same file does not match.
        assert np.median(_ncc(ref, np.roll(d[k], 1, axis=0))) < 0.4
    np.testing.assert_array_equal(d[1], d[6])  # e1 == h1 without jitter


def test_noise_levels_in_order(built):
    out, report = built
    for name in report.sequences:
        d = read_hpatches_sequence(out / name)
        ncc = [
            np.median(_ncc(np.tile(d[0], (5, 1, 1)), d[1 + 5 * i : 6 + 5 * i].reshape(-1, 65, 65)))
            for i in range(3)
        ]
        assert ncc[0] > ncc[1] > ncc[2], (name, ncc)
        assert ncc[0] > 0.6, (name, ncc)
    med = report.overlap_median
    assert abs(med["easy"] - 0.85) < 0.03 and abs(med["hard"] - 0.72) < 0.03, med
    assert abs(med["tough"] - 0.60) < 0.04, med


def test_deterministic(sequences, built, tmp_path):
    out, report = built
    # One sequence alone: its jitter is seeded by its name, not by the other sequences.
    build_hpatches_style(sequences / "camera", tmp_path / "a", config=QUICK)
    for t in ("ref", "e1", "t5"):
        a = (tmp_path / "a" / "v_camera" / f"{t}.png").read_bytes()
        assert a == (out / "v_camera" / f"{t}.png").read_bytes()
    # Another seed: other jitters (and so a somewhat different set of regions that fit).
    other = HPatchesStyleConfig(max_patches=120, seed=1)
    build_hpatches_style(sequences / "camera", tmp_path / "b", config=other)
    d0, d1 = (
        read_hpatches_sequence(tmp_path / "a" / "v_camera"),
        read_hpatches_sequence(tmp_path / "b" / "v_camera"),
    )
    ref0 = {p.tobytes() for p in d0[0]}
    assert np.mean([p.tobytes() in ref0 for p in d1[0]]) > 0.7
    common = min(len(d0[0]), len(d1[0]))
    assert not np.array_equal(d0[1, :common], d1[1, :common])


def test_calibrated_levels():
    cfg = HPatchesStyleConfig()
    got = [median_overlap(cfg.level(lv), n=10_000, seed=5) for lv in LEVELS]
    np.testing.assert_allclose(got, [0.85, 0.72, 0.60], atol=0.006)


def test_overlap_closed_forms():
    eye = np.eye(2)[None]
    zero = np.zeros((1, 2))
    # Isotropic scale s about the centre: overlap 1 / s^2.
    for s in (1.2, 0.8, 1.5):
        got = ellipse_overlap(eye * s, zero)[0]
        assert abs(got - min(s, 1 / s) ** 2) < 1e-4
    # A shifted unit disk: the lens of two unit circles.
    for d in (0.2, 0.7, 1.5, 2.5):
        lens = 2 * math.acos(min(d / 2, 1)) - d / 2 * math.sqrt(max(4 - d * d, 0))
        want = lens / (2 * math.pi - lens)
        assert abs(disk_overlap(1.0, 1.0, d) - want) < 1e-12
        for shift in ([d, 0.0], [0.0, -d], [d * 0.6, d * 0.8]):
            assert abs(ellipse_overlap(eye, np.array([shift]))[0] - want) < 3e-4
    # Axis-aligned ellipse (a, b) at the centre: polar integration of min / max radii.
    a, b = 1.3, 0.7
    phi = (np.arange(200_000) + 0.5) / 200_000 * 2 * math.pi
    rho = 1 / np.sqrt(np.cos(phi) ** 2 / a**2 + np.sin(phi) ** 2 / b**2)
    want = np.mean(np.minimum(rho, 1) ** 2) / np.mean(np.maximum(rho, 1) ** 2)
    assert abs(ellipse_overlap(np.diag([a, b])[None], zero)[0] - want) < 3e-4
    # Disks of different radii: inside one another, apart, and against a grid count.
    assert disk_overlap(2.0, 1.0, 0.5) == pytest.approx(0.25)
    assert disk_overlap(1.0, 1.0, 3.0) == 0.0
    g = (np.arange(2000) + 0.5) / 2000 * 6 - 3
    x, y = np.meshgrid(g, g)
    in1, in2 = x**2 + y**2 <= 1.5**2, (x - 1.2) ** 2 + y**2 <= 1.0
    assert disk_overlap(1.5, 1.0, 1.2) == pytest.approx((in1 & in2).sum() / (in1 | in2).sum(), 2e-3)


def test_overlap_against_a_lattice_count():
    rng = np.random.default_rng(3)
    a, t = sample_jitter(rng, 6, Jitter(30.0, 0.45, 0.45))
    got = ellipse_overlap(a, t)
    g = (np.arange(1000) + 0.5) / 1000 * 6 - 3  # cells of 0.006: count error ~1.5e-3
    gx, gy = np.meshgrid(g, g)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    in_disk = (pts**2).sum(1) <= 1
    for n in range(6):
        u = (pts - t[n]) @ np.linalg.inv(a[n]).T
        in_e = (u**2).sum(1) <= 1
        assert abs(got[n] - (in_disk & in_e).sum() / (in_disk | in_e).sum()) < 0.004


def test_sample_jitter_ranges():
    a, t = sample_jitter(np.random.default_rng(0), 5000, Jitter(20.0, 0.3, 0.25))
    s = np.linalg.svd(a, compute_uv=False)
    assert np.all(np.log(s) <= 0.3 + 1e-12) and np.all(np.log(s) >= -0.3 - 1e-12)
    assert np.all(np.linalg.norm(t, axis=1) <= 0.25 + 1e-12)
    theta = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    assert np.all(np.abs(theta) <= 20 + 1e-9) and np.abs(theta).max() > 19
    a0, t0 = sample_jitter(np.random.default_rng(0), 5, Jitter(0, 0, 0))
    np.testing.assert_array_equal(a0, np.broadcast_to(np.eye(2), (5, 2, 2)))
    np.testing.assert_array_equal(t0, 0)


def test_suppress_overlapping():
    x = np.array([0.0, 0.1, 10.0, 0.0, 3.0])
    y = np.zeros(5)
    r = np.array([2.0, 2.0, 2.0, 0.5, 2.0])
    # 1 overlaps 0 by 0.938; 3 is inside 0 (overlap 1/16 = 0.0625); 4 overlaps 0 by 0.0778.
    np.testing.assert_array_equal(suppress_overlapping(x, y, r, 0.5), [0, 2, 3, 4])
    np.testing.assert_array_equal(suppress_overlapping(x, y, r, 0.07), [0, 2, 3])
    np.testing.assert_array_equal(suppress_overlapping(x, y, r, 0.06), [0, 2])
    np.testing.assert_array_equal(suppress_overlapping(x, y, r, 1.0), [0, 1, 2, 3, 4])


def test_output_names():
    cfg = HPatchesStyleConfig()
    assert output_name("leuven", cfg) == "i_leuven"
    assert output_name("bark", cfg) == "v_bark"
    assert output_name("i_ajuntament", cfg) == "i_ajuntament"
    assert output_name("bark", HPatchesStyleConfig(illumination=("bark",))) == "i_bark"


def test_config_checks():
    with pytest.raises(InputError, match="max_patches"):
        HPatchesStyleConfig(max_patches=0)
    with pytest.raises(InputError, match="max_overlap"):
        HPatchesStyleConfig(max_overlap=1.5)
    with pytest.raises(InputError, match="translation"):
        Jitter(1.0, 0.1, -0.1)
    with pytest.raises(InputError, match="string"):
        HPatchesStyleConfig(illumination="leuven")


def test_bad_sequences(sequences, tmp_path):
    short = tmp_path / "short" / "s"
    short.mkdir(parents=True)
    img = cv2.imread(str(sequences / "camera" / "img1.png"))
    for k in range(1, 5):
        cv2.imwrite(str(short / f"img{k}.png"), img)
    for k in range(2, 5):
        np.savetxt(short / f"H1to{k}p", np.eye(3))
    with pytest.raises(InputError, match="needs 5 target images"):
        build_hpatches_style(short.parent, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    with pytest.raises(InputError, match="outside"):
        build_hpatches_style(sequences, sequences / "out")
    with pytest.raises(InputError, match="outside"):
        build_hpatches_style(sequences / "camera", sequences)
    (short / "img5.png").write_bytes(b"")
    np.savetxt(short / "H1to5p", np.eye(3))
    (short / "H1to6p").write_text("1 2 3\n")
    cv2.imwrite(str(short / "img6.png"), img)
    with pytest.raises(InputError, match="H1to6p"):
        build_hpatches_style(short.parent, tmp_path / "o2")
    flat = tmp_path / "flat" / "f"
    flat.mkdir(parents=True)
    for k in range(1, 7):
        cv2.imwrite(str(flat / f"img{k}.png"), np.full((100, 120), 128, np.uint8))
    for k in range(2, 7):
        np.savetxt(flat / f"H1to{k}p", np.eye(3))
    with pytest.raises(InputError, match="f: no region fits the reference and all 15 targets"):
        build_hpatches_style(flat.parent, tmp_path / "o4")
    assert not (tmp_path / "o4").exists()
    with pytest.raises(InputError, match="sequences folder not found"):
        build_hpatches_style(tmp_path / "nothing", tmp_path / "o3")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# --- the converter ---------------------------------------------------------------------------


def test_convert_groups_and_splits(built, tmp_path):
    out, report = built
    n_cam, n_leu = report.sequences["v_camera"], report.sequences["i_leuven"]
    ps = hpatches_to_patchset(out, split=["v_camera"], size=None)
    assert list(ps.scene_names) == ["i_leuven", "v_camera"]
    assert ps.patches.shape == (16 * (n_cam + n_leu), 65, 65)
    # One group per reference patch, its 16 files; numbered across the file.
    labels, counts = np.unique(ps.labels, return_counts=True)
    np.testing.assert_array_equal(labels, np.arange(n_cam + n_leu))
    assert np.all(counts == 16)
    for g in (0, n_leu - 1, n_leu, n_leu + n_cam - 1):
        rows = np.flatnonzero(ps.labels == g)
        np.testing.assert_array_equal(ps.image[rows], np.arange(16))
        assert len(set(ps.scene[rows])) == 1 and len(set(ps.split[rows])) == 1
    cam = read_hpatches_sequence(out / "v_camera")
    rows = np.flatnonzero(ps.scene == 1)
    np.testing.assert_array_equal(ps.patches[rows], cam.reshape(-1, 65, 65))
    np.testing.assert_array_equal(ps.split, (ps.scene == 1).astype(np.uint8))
    # Resized to 51 with INTER_AREA, recorded in info; saved and read back.
    small = hpatches_to_patchset(out, split={"v_camera": "train"})
    assert list(small.scene_names) == ["v_camera"] and np.all(small.split == 0)
    want = cv2.resize(cam[3, 7], (51, 51), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small.patches[3 * n_cam + 7], want)
    assert small.info["size"] == 51 and small.info["interpolation"] == "INTER_AREA"
    path = save_patchset(small, tmp_path / "hp.npz")
    back = load_patchset(path, require_split=True)
    np.testing.assert_array_equal(back.patches, small.patches)
    np.testing.assert_array_equal(back.labels, small.labels)
    every = hpatches_to_patchset(out)
    assert np.all(every.split == 1)
    named = hpatches_to_patchset(out, split="all")  # the HPatches split name: the same
    np.testing.assert_array_equal(named.split, every.split)
    np.testing.assert_array_equal(named.patches, every.patches)


def test_converted_file_runs_eval_patches(built, tmp_path, capsys):
    from retrieval.cli.main import main

    out, _ = built
    path = save_patchset(hpatches_to_patchset(out, split=["v_camera"]), tmp_path / "hp.npz")
    code = main(
        ["eval-patches", "--patches", str(path), "--model", "pixels", "--split", "test",
         "--json", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    test = json.loads((tmp_path / "r.json").read_text())["splits"]["test"]
    n_cam = built[1].sequences["v_camera"]
    assert test["num_patches"] == 16 * n_cam and test["num_groups"] == n_cam
    assert test["num_queries"] == 16 * n_cam and 0.0 < test["map"] <= 1.0


def _layout_copy(src: Path, dst: Path) -> Path:
    for p in src.iterdir():
        if p.is_dir():
            (dst / p.name).mkdir(parents=True)
            for f in p.iterdir():
                (dst / p.name / f.name).write_bytes(f.read_bytes())
    return dst


def test_convert_bad_layouts(built, tmp_path):
    out, _ = built
    with pytest.raises(InputError, match="absent from the folder: v_nothing"):
        hpatches_to_patchset(out, split=["v_nothing"])
    with pytest.raises(InputError, match="absent"):
        hpatches_to_patchset(out, split={"v_nothing": "test"})
    with pytest.raises(InputError, match="'train' or 'test'"):
        hpatches_to_patchset(out, split={"v_camera": "val"})
    with pytest.raises(InputError, match="unknown HPatches split 'z'"):
        hpatches_to_patchset(out, split="z")
    # i_leuven is one of the 57 official illumination sequences: 56 are missing.
    with pytest.raises(InputError, match="split 'illum' needs 56 sequences absent"):
        hpatches_to_patchset(out, split="illum")
    bad = _layout_copy(out, tmp_path / "missing")
    (bad / "v_camera" / "h3.png").unlink()
    with pytest.raises(InputError, match=r"v_camera: missing patch types h3\.png"):
        hpatches_to_patchset(bad)
    bad = _layout_copy(out, tmp_path / "height")
    cv2.imwrite(str(bad / "i_leuven" / "e2.png"), np.zeros((100, 65), np.uint8))
    with pytest.raises(InputError, match=r"e2\.png: height 100 is not a positive multiple of 65"):
        hpatches_to_patchset(bad)
    bad = _layout_copy(out, tmp_path / "counts")
    cv2.imwrite(str(bad / "i_leuven" / "t1.png"), np.zeros((130, 65), np.uint8))
    with pytest.raises(InputError, match=r"t1\.png: 2 patches, but ref\.png has"):
        hpatches_to_patchset(bad)
    (bad / "i_leuven" / "t1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="not a PNG"):
        hpatches_to_patchset(bad)
    (bad / "camera").mkdir()
    with pytest.raises(InputError, match="camera: not an HPatches sequence folder"):
        hpatches_to_patchset(bad)
    with pytest.raises(InputError, match="no HPatches sequence folder"):
        hpatches_to_patchset(tmp_path / "missing" / "v_camera")


@pytest.mark.parametrize("side", [65, 64])
def test_resize_patches_equals_one_resize_per_patch(side):
    # 1100 patches: across the 1024-patch column chunks.
    p = np.random.default_rng(side).integers(0, 256, (1100, side, side), dtype=np.uint8)
    want = np.stack([cv2.resize(x, (51, 51), interpolation=cv2.INTER_AREA) for x in p])
    np.testing.assert_array_equal(resize_patches(p, 51), want)
    assert resize_patches(p, side) is p


@pytest.mark.skipif(not OXFORD.is_dir(), reason="oxford_affine data not present")
def test_oxford_two_sequences(tmp_path):
    t0 = time.perf_counter()
    root = tmp_path / "in"
    root.mkdir()
    for name in ("leuven", "boat"):
        (root / name).symlink_to(OXFORD / name)
    report = build_hpatches_style(
        root, tmp_path / "out", config=HPatchesStyleConfig(max_patches=200)
    )
    seconds = time.perf_counter() - t0
    assert set(report.sequences) == {"i_leuven", "v_boat"}
    assert all(n == 200 for n in report.sequences.values()), report.sequences
    med = report.overlap_median
    assert med["easy"] > med["hard"] > med["tough"]
    assert seconds < 120, seconds
