"""Brown / PhotoTour: files written here in the original format, read back; FPR95 exact values.

The test writes a small subset the way the originals are laid out (1024 x 1024
bitmaps of 16 x 16 patches of 64 x 64, row-major; ``info.txt``; an
``m50_*.txt`` pair file), placing each patch with its own index arithmetic.
FPR95 is checked on hand-made distances against exact values and a separate
threshold sweep written in plain NumPy.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval.patches import (
    PhotoTour,
    evaluate_phototour,
    fpr95,
    load_patchset,
    patch_describer,
    phototour_patchset,
    read_phototour_pairs,
    save_patchset,
)

N = 300  # two bitmaps: 256 + 44 patches


def _write_subset(root: Path, patches: np.ndarray, points: np.ndarray, pairs: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    n = patches.shape[0]
    for b in range(-(-n // 256)):
        sheet = np.zeros((1024, 1024), np.uint8)
        for k in range(b * 256, min(n, (b + 1) * 256)):
            r, c = (k % 256) // 16, k % 16
            sheet[r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = patches[k]
        assert cv2.imwrite(str(root / f"patch{b:04d}.bmp"), sheet)
    (root / "info.txt").write_text("".join(f"{p} 0\n" for p in points))
    lines = [f"{i} {points[i]} 0 {j} {points[j]} 0 0\n" for i, j in pairs]
    (root / "m50_100000_100000_0.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    rng = np.random.default_rng(0)
    points = np.arange(N) // 3  # 3 patches per 3D point
    base = rng.integers(0, 256, (N // 3, 64, 64))
    noise = rng.integers(-40, 41, (N, 64, 64))
    patches = np.clip(base[points] + noise, 0, 255).astype(np.uint8)
    pos = np.array([(3 * g, 3 * g + 1 + g % 2) for g in range(0, N // 3, 2)])
    neg = np.stack([rng.integers(0, N, 60), rng.integers(0, N, 60)], 1)
    neg = neg[points[neg[:, 0]] != points[neg[:, 1]]]
    pairs = np.concatenate([pos, neg])
    root = tmp_path_factory.mktemp("pt") / "liberty"
    _write_subset(root, patches, points, pairs)
    return root, patches, points, pairs


def test_read_back(subset):
    root, patches, points, _ = subset
    pt = PhotoTour(root)
    assert len(pt) == N and pt.num_bitmaps == 2
    np.testing.assert_array_equal(pt.points, points)
    idx = np.array([299, 0, 255, 256, 17, 17, 140])
    np.testing.assert_array_equal(pt.patches(idx), patches[idx])
    np.testing.assert_array_equal(pt.bitmap(1)[:44], patches[256:])


def test_patchset(subset, tmp_path):
    root, patches, points, _ = subset
    ps = phototour_patchset(root, size=None)
    np.testing.assert_array_equal(ps.patches, patches)
    np.testing.assert_array_equal(ps.labels, points)
    assert np.all(ps.split == 0) and list(ps.scene_names) == ["liberty"]
    small = phototour_patchset(root, split="test", max_patches=260)
    assert small.patches.shape == (260, 51, 51) and np.all(small.split == 1)
    for k in (0, 259):
        want = cv2.resize(patches[k], (51, 51), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(small.patches[k], want)
    assert small.info["resized_from"] == 64 and small.info["interpolation"] == "INTER_AREA"
    back = load_patchset(save_patchset(small, tmp_path / "lib.npz"), require_split=True)
    np.testing.assert_array_equal(back.labels, points[:260])


def test_read_phototour_pairs(subset):
    root, _, points, pairs = subset
    ps = read_phototour_pairs(root / "m50_100000_100000_0.txt", N)
    np.testing.assert_array_equal(ps.i, pairs[:, 0])
    np.testing.assert_array_equal(ps.j, pairs[:, 1])
    np.testing.assert_array_equal(ps.is_match, points[pairs[:, 0]] == points[pairs[:, 1]])


def _fpr95_sweep(dist: np.ndarray, match: np.ndarray) -> float:
    """Plain threshold sweep: the smallest distance accepting >= 95% of the positives."""
    pos, neg = dist[match], dist[~match]
    need = np.ceil(0.95 * pos.size - 1e-9)
    for thr in np.unique(dist):
        if (pos <= thr).sum() >= need:
            return 100.0 * (neg <= thr).sum() / neg.size
    raise AssertionError("unreachable")


def test_fpr95_exact_values():
    # 20 positives at 0.1 .. 2.0: 95% = 19 of them, threshold 1.9. Negatives at or
    # below 1.9: 0.5, 1.0 and 1.9 (a tie, accepted with the positive) -> 3 of 10.
    pos = np.arange(1, 21) / 10
    neg = np.array([0.5, 1.0, 1.9, 1.95, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0])
    dist = np.r_[pos, neg]
    match = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    assert fpr95(dist, match) == pytest.approx(30.0, abs=1e-12)
    # Order of the pairs does not matter.
    o = np.random.default_rng(0).permutation(30)
    assert fpr95(dist[o], match[o]) == pytest.approx(30.0, abs=1e-12)
    # 30 positives: 95% = 28.5 -> 29 accepted, threshold 2.9; negatives 0.5, 1.0, 1.9,
    # 1.95, 2.5 below -> 5 of 10.
    pos = np.arange(1, 31) / 10
    dist = np.r_[pos, neg]
    match = np.r_[np.ones(30, bool), np.zeros(10, bool)]
    assert fpr95(dist, match) == pytest.approx(50.0, abs=1e-12)
    # Many ties (integer distances): against the sweep.
    rng = np.random.default_rng(1)
    for _ in range(20):
        match = rng.random(200) < 0.5
        dist = np.where(match, rng.integers(0, 8, 200), rng.integers(3, 12, 200)).astype(float)
        assert fpr95(dist, match) == pytest.approx(_fpr95_sweep(dist, match), abs=1e-12)


def test_evaluate_matches_direct_computation(subset):
    root, patches, points, pairs = subset
    calls = []

    def describe(p):
        calls.append(p.shape[0])
        return p.reshape(p.shape[0], -1).astype(np.float32)

    r = evaluate_phototour(root, describe, chunk=50)
    flat = patches.reshape(N, -1).astype(np.float64)
    dist = np.linalg.norm(flat[pairs[:, 0]] - flat[pairs[:, 1]], axis=1)
    match = points[pairs[:, 0]] == points[pairs[:, 1]]
    assert r["fpr95"] == pytest.approx(_fpr95_sweep(dist, match), abs=1e-12)
    assert r["num_pairs"] == len(pairs) and r["num_matching"] == int(match.sum())
    assert r["pairs"] == "m50_100000_100000_0.txt"  # the standard file, found by itself
    assert r["num_patches_described"] == np.unique(pairs).size == sum(calls)
    assert max(calls) <= 50
    # The pixels baseline describes the native 64 x 64 patches: the same FPR95 as the
    # distances of its own descriptors of all patches.
    pixels = patch_describer("pixels", 64)
    assert pixels.size == 64 and pixels.info()["interpolation"] is None
    d = pixels(patches).astype(np.float64)
    dist = np.linalg.norm(d[pairs[:, 0]] - d[pairs[:, 1]], axis=1)
    r = evaluate_phototour(root, pixels, chunk=64)
    assert r["fpr95"] == pytest.approx(_fpr95_sweep(dist, match), abs=1e-12)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_inputs(subset, tmp_path):
    root, *_ = subset
    pairs = "m50_100000_100000_0.txt"

    bad = _copy(root, tmp_path / "size")
    cv2.imwrite(str(bad / "patch0001.bmp"), np.zeros((512, 1024), np.uint8))
    with pytest.raises(InputError, match=r"patch0001\.bmp: 1024 x 512 pixels, expected 1024"):
        PhotoTour(bad)

    bad = _copy(root, tmp_path / "missing")
    (bad / "patch0001.bmp").unlink()
    with pytest.raises(InputError, match=r"patch0001\.bmp: missing \(300 patches"):
        PhotoTour(bad)

    bad = _copy(root, tmp_path / "garbage")
    (bad / "patch0000.bmp").write_bytes(b"not an image at all, longer than a header.....")
    with pytest.raises(InputError, match=r"cannot read bitmap .*patch0000\.bmp"):
        PhotoTour(bad).patches([0])

    # info.txt shorter than the pair ids need.
    bad = _copy(root, tmp_path / "short")
    (bad / "info.txt").write_text("".join(f"{k // 3} 0\n" for k in range(200)))
    with pytest.raises(InputError, match=rf"{pairs}: patch id 2\d\d is beyond the 200 patches"):
        evaluate_phototour(bad, lambda p: p.reshape(len(p), -1))

    bad = _copy(root, tmp_path / "info")
    (bad / "info.txt").write_text("0 0\n0 0\nx 0\n")
    with pytest.raises(InputError, match=r"info\.txt: line 3 is not integers"):
        PhotoTour(bad)
    (bad / "info.txt").write_text("\n")
    with pytest.raises(InputError, match=r"info\.txt: no info\.txt lines"):
        PhotoTour(bad)
    (bad / "info.txt").unlink()
    with pytest.raises(InputError, match="info.txt not found"):
        PhotoTour(bad)

    bad = _copy(root, tmp_path / "pairs")
    f = bad / pairs
    f.write_text("0 0 0 1 0 0 0\n3 1 0 4 1 0\n")
    with pytest.raises(InputError, match=rf"{pairs}: line 2 has 6 fields, expected 7"):
        read_phototour_pairs(f, N)
    f.write_text("0 0 0 1 0 0 0\n3 1 0 four 1 0 0\n")
    with pytest.raises(InputError, match=rf"{pairs}: line 2 is not integers"):
        read_phototour_pairs(f, N)
    f.write_text("0 0 0 -1 0 0 0\n")
    with pytest.raises(InputError, match="negative patch ids"):
        read_phototour_pairs(f, N)
    f.write_text("0 0 0 300 100 0 0\n")
    with pytest.raises(InputError, match="patch id 300 is beyond the 300 patches"):
        read_phototour_pairs(f, N)

    f.unlink()
    describe = lambda p: p.reshape(len(p), -1)  # noqa: E731
    with pytest.raises(InputError, match="no m50_"):
        evaluate_phototour(bad, describe)
    (bad / "m50_1000_1000_0.txt").write_text("0 0 0 1 0 0 0\n3 1 0 9 3 0 0\n")
    (bad / "m50_2000_2000_0.txt").write_text("0 0 0 1 0 0 0\n")
    with pytest.raises(InputError, match="several m50_"):
        evaluate_phototour(bad, describe)
    r = evaluate_phototour(bad, describe, pairs="m50_1000_1000_0.txt")
    assert (r["pairs"], r["num_pairs"]) == ("m50_1000_1000_0.txt", 2)
    with pytest.raises(InputError, match="pair file not found"):
        evaluate_phototour(bad, describe, pairs="m50_5_5_0.txt")
    with pytest.raises(InputError, match="PhotoTour folder not found"):
        PhotoTour(tmp_path / "nothing")
    with pytest.raises(InputError, match="split must be"):
        phototour_patchset(root, split="val")
