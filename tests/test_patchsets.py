"""RomePatches-style patch sets (retrieval.patches): grouping, splits, sources, bad input."""

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from ckn import InputError
from ckn.files import load_patch_file
from retrieval import local as R
from retrieval._src import data as P

OXFORD = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford_affine"
SMALL = P.PatchSetConfig(max_regions=60)


def _homography(w, h, angle, scale, corners, shift=(0.0, 0.0)):
    """Rotation + scale about the centre, perspective corner moves (pixels) and a shift."""
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = np.deg2rad(angle)
    rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    dst = (src - c) @ rot.T + c + np.asarray(corners, np.float64) + np.asarray(shift)
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(
        np.float64
    )


def _warp(img, H, gamma=1.0):
    out = cv2.warpPerspective(
        img,
        H,
        (img.shape[1], img.shape[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


@pytest.fixture(scope="module")
def photo():
    return cv2.resize(skimage.data.astronaut(), (320, 320), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def synthetic(photo):
    """A real photo and three views under known homographies (plus a gamma change)."""
    w, h = 320, 320
    Hs = [
        _homography(w, h, 30.0, 0.85, np.zeros((4, 2))),
        _homography(w, h, -15.0, 1.2, [[12, -8], [-10, 6], [8, 10], [-6, -12]]),
        _homography(w, h, 5.0, 1.0, [[-20, 0], [20, 0], [0, 0], [0, 0]], shift=(6, -4)),
    ]
    gray = P.prepare_image(photo, False)
    images = [gray] + [_warp(gray, H, g) for H, g in zip(Hs, (0.8, 1.25, 1.0))]
    res = P.group_scene("astronaut", images, [None] + [P.Homography(H) for H in Hs], SMALL)
    return Hs, res


def test_grouped_regions_lie_where_the_homography_maps_them(synthetic):
    Hs, res = synthetic
    assert res.n_groups >= 30
    moved = []
    for g in range(res.n_groups):
        rows = np.flatnonzero(res.group == g)
        ref = rows[res.image[rows] == 0]
        assert ref.size == 1 and rows.size >= 2
        r = ref[0]
        regions = R.Regions(
            *(np.array([v]) for v in (res.x[r], res.y[r], res.scale[r], res.angle[r], 0.0))
        )
        for i in rows[res.image[rows] > 0]:
            xy, size, angle = P.map_regions(P.Homography(Hs[res.image[i] - 1]), regions)
            dist = np.hypot(res.x[i] - xy[0, 0], res.y[i] - xy[0, 1])
            assert dist <= max(SMALL.center_px, SMALL.center_rel * size[0]) + 1e-9
            assert max(res.scale[i] / size[0], size[0] / res.scale[i]) <= SMALL.scale_ratio + 1e-9
            assert abs((res.angle[i] - angle[0] + 180.0) % 360.0 - 180.0) <= SMALL.angle_deg + 1e-9
            moved.append(dist)
    # Each patch comes from its own detection (real detector noise), not from the prediction.
    assert np.median(moved) > 0.05


def test_group_patches_are_more_alike_than_random_pairs(synthetic):
    _, res = synthetic
    with pytest.warns(P.EmptySplitWarning, match="the test split is empty"):
        ps = P.assemble([res], SMALL)
    stats = P.patchset_stats(ps)
    assert stats["ncc_intra"] > 0.75
    assert stats["ncc_intra"] - stats["ncc_random"] > 0.4
    assert stats["patches"] == len(ps) and stats["groups"] == res.n_groups


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """build_default(quick=True) once, cached in a temporary cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        # One cache folder per test session, shared by the test files that build the quick default.
        mp.setenv("CKN_CACHE", str(tmp_path_factory.getbasetemp() / "ckn_cache"))
        ps = P.build_default(quick=True)
        assert P.default_cache_path(quick=True).is_file()
        again = P.build_default(quick=True)  # from the cache
    return ps, again


def test_quick_default_is_romepatches_like_and_cached(quick):
    ps, again = quick
    assert (
        500 < len(ps) < 2000 and ps.patches.shape[1:] == (51, 51) and ps.patches.dtype == np.uint8
    )
    _, counts = np.unique(ps.labels, return_counts=True)
    assert counts.min() >= 2 and counts.max() <= 10
    assert set(ps.scene_names) == set(P.DEFAULT_QUICK_TRAIN + P.DEFAULT_QUICK_TEST)
    for k, v in ps.as_dict().items():
        np.testing.assert_array_equal(v, again.as_dict()[k])


def test_splits_share_no_scene_and_no_group(quick):
    ps, _ = quick
    train, test = set(ps.scene[ps.split == 0]), set(ps.scene[ps.split == 1])
    assert train and test and not train & test
    assert not set(ps.labels[ps.split == 0]) & set(ps.labels[ps.split == 1])
    assert {str(ps.scene_names[s]) for s in test} == set(P.DEFAULT_QUICK_TEST)


def test_same_seed_same_dataset_other_seed_other_dataset(photo):
    imgs = [("a", photo), ("b", skimage.data.camera()[::2, ::2].copy())]
    kw = dict(views=4, config=P.PatchSetConfig(max_regions=25), max_side=256)
    a = P.build_from_images(imgs, seed=3, **kw)
    b = P.build_from_images(imgs, seed=3, workers=1, **kw)
    c = P.build_from_images(imgs, seed=4, **kw)
    for k in P.PatchSet.ARRAYS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.patches.shape != c.patches.shape or not np.array_equal(a.patches, c.patches)


def test_save_load_round_trip_and_ckn_patch_file(quick, tmp_path):
    ps, _ = quick
    path = P.save_patchset(ps, tmp_path / "p.npz")
    back = P.load_patchset(path)
    for k, v in ps.as_dict().items():
        np.testing.assert_array_equal(v, back.as_dict()[k])
    assert back.info == ps.info
    patches, labels = load_patch_file(path, split="test")
    np.testing.assert_array_equal(patches, ps.patches[ps.split == 1])
    np.testing.assert_array_equal(labels, ps.labels[ps.split == 1])
    with pytest.raises(InputError):
        P.save_patchset(ps, tmp_path / "p.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]


def test_contact_sheet(quick, tmp_path):
    from retrieval.patches import contact_sheet

    ps, _ = quick
    out = contact_sheet(ps, tmp_path / "sheet.png", groups=5)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] == 5 * (51 + 3) + 3
    with pytest.raises(InputError):
        contact_sheet(ps, tmp_path / "sheet.jpg")


# ------------------------------------------------------------------ homography sequences


def _write_sequence(folder: Path, photo, layout="oxford", n=3):
    folder.mkdir(parents=True)
    h, w = photo.shape[:2]
    ext = ".ppm"
    name = (lambda k: f"img{k}{ext}") if layout == "oxford" else (lambda k: f"{k}{ext}")
    hname = (lambda k: f"H1to{k}p") if layout == "oxford" else (lambda k: f"H_1_{k}")
    cv2.imwrite(str(folder / name(1)), photo[..., ::-1])
    for k in range(2, n + 1):
        H = _homography(w, h, 10.0 * (k - 1), 1.0 - 0.05 * k, np.zeros((4, 2)))
        if k == 3:
            H = -2.0 * H  # defined up to scale: a negative scale must work (Oxford leuven/H1to5p)
        cv2.imwrite(str(folder / name(k)), _warp(photo, H / H[2, 2])[..., ::-1])
        np.savetxt(folder / hname(k), H)
    return folder


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory, photo):
    root = tmp_path_factory.mktemp("seqs")
    _write_sequence(root / "astro", photo)
    _write_sequence(
        root / "cam",
        cv2.cvtColor(skimage.data.camera()[::2, ::2].copy(), cv2.COLOR_GRAY2RGB),
        layout="hpatches",
    )
    return root


def test_sequences_oxford_and_hpatches_layouts(seq_root):
    ps = P.build_sequences(seq_root, config=SMALL)
    assert list(ps.scene_names) == ["astro", "cam"]
    for s in range(2):
        m = ps.scene == s
        assert set(ps.image[m]) == {0, 1, 2}  # the negative-scale homography (image 3) matched too
        assert len(set(ps.split[m])) == 1
    assert set(ps.split) == {0, 1}
    with pytest.warns(P.EmptySplitWarning, match=r"test split is empty \(1 scene: cam\)"):
        one = P.build_sequences(seq_root / "cam", config=SMALL)
    assert list(one.scene_names) == ["cam"]


def _copy_sequence(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "img2.ppm").write_bytes(b"P6 not an image"), "cannot read image"),
        (lambda d: (d / "img2.ppm").unlink(), "image 2 missing"),
        (lambda d: (d / "img1.ppm").unlink(), "reference image missing"),
        (lambda d: (d / "H1to2p").write_text("1 2 3\n4 5\n"), "cannot parse homography"),
        (lambda d: (d / "H1to2p").write_text(""), "homography file is empty"),
        (lambda d: (d / "H1to2p").write_text("1 2 3\n4 5 6\n7 8 9\n"), "singular"),
        (lambda d: (d / "H1to2p").write_text("1 0 0\n0 nan 0\n0 0 1\n"), "NaN or inf"),
        (lambda d: (d / "H1to2p").write_text("1 0 0\n0 1 0\n"), "3x3"),
    ],
)
def test_sequence_bad_input_is_a_clear_error(seq_root, tmp_path, damage, message):
    d = _copy_sequence(seq_root / "astro", tmp_path / "astro")
    damage(d)
    with pytest.raises(InputError, match=message):
        P.build_sequences(tmp_path, config=SMALL)


def test_sequence_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        P.build_sequences(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image sequences"):
        P.build_sequences(tmp_path / "empty")


def test_sequence_without_matches_is_skipped_with_a_warning(seq_root, tmp_path):
    _copy_sequence(seq_root / "astro", tmp_path / "astro")
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in (1, 2):
        cv2.imwrite(str(flat / f"img{k}.png"), np.full((120, 160), 90, np.uint8))
    np.savetxt(flat / "H1to2p", np.eye(3))
    with (
        pytest.warns(P.EmptySplitWarning),
        pytest.warns(P.SkippedItemWarning, match="sequence flat: no match"),
    ):
        ps = P.build_sequences(tmp_path, config=SMALL)
    assert list(ps.scene_names) == ["astro"]
    with pytest.warns(P.SkippedItemWarning), pytest.raises(InputError, match="no groups"):
        P.build_sequences(flat, config=SMALL)


@pytest.mark.skipif(not OXFORD.is_dir(), reason=f"Oxford affine data not found at {OXFORD}")
def test_oxford_leuven_negative_scale_homography():
    """leuven/H1to5p is stored with a negative scale; image 5 must still be grouped."""
    imgs, geoms, ids = P.load_sequence(OXFORD / "leuven")
    assert ids == [0, 1, 2, 3, 4, 5] and geoms[4].H[2, 2] > 0
    cfg = P.PatchSetConfig(max_regions=150)
    res = P.group_scene(
        "leuven",
        [P.prepare_image(imgs[0], False), P.prepare_image(imgs[4], False)],
        [None, geoms[4]],
        cfg,
    )
    assert res.n_groups > 50
    with pytest.warns(P.EmptySplitWarning):
        stats = P.patchset_stats(P.assemble([res], cfg))
    assert stats["ncc_intra"] - stats["ncc_random"] > 0.4


# ------------------------------------------------------------------ photos, stereo, manual


def test_photos_folder_skips_unreadable_and_rejects_empty(tmp_path, photo):
    d = tmp_path / "photos"
    d.mkdir()
    cv2.imwrite(str(d / "astro.jpg"), photo[..., ::-1])
    (d / "broken.png").write_bytes(b"\x89PNG garbage")
    (d / "notes.txt").write_text("not an image")
    with pytest.warns(P.EmptySplitWarning), pytest.warns(P.SkippedItemWarning, match="broken.png"):
        ps = P.build_photos(d, views=3, config=P.PatchSetConfig(max_regions=20), max_side=256)
    assert list(ps.scene_names) == ["astro"] and len(ps) > 0
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no images"):
        P.build_photos(tmp_path / "none")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"nope")
    with pytest.warns(P.SkippedItemWarning), pytest.raises(InputError, match="no readable image"):
        P.build_photos(only_bad)
    with pytest.raises(InputError, match="views"):
        P.build_photos(d, views=1)


def test_stereo_folder_ground_truth(tmp_path, photo):
    """A pair with a known disparity: each right patch sits at x_left - d."""
    d = np.full(photo.shape[:2], 12.0, np.float32)
    d[:, :40] = np.inf  # unknown (Middlebury's inf): never grouped
    m = np.float32([[1, 0, -12], [0, 1, 0]])
    right = cv2.warpAffine(
        photo, m, (photo.shape[1], photo.shape[0]), borderMode=cv2.BORDER_REFLECT_101
    )
    pair = tmp_path / "pair"
    pair.mkdir()
    cv2.imwrite(str(pair / "im0.png"), photo[..., ::-1])
    cv2.imwrite(str(pair / "im1.png"), right[..., ::-1])
    np.save(pair / "disparity.npy", d)
    ps = P.build_stereo(tmp_path, config=SMALL)
    assert len(ps) > 20
    for g in np.unique(ps.labels):
        left, right_ = (
            np.flatnonzero((ps.labels == g) & (ps.image == 0)),
            np.flatnonzero((ps.labels == g) & (ps.image == 1)),
        )
        assert left.size == right_.size == 1
        assert ps.x[left[0]] >= 40
        assert abs(ps.x[right_[0]] - (ps.x[left[0]] - 12.0)) <= 2.5 + 0.25 * ps.scale[left[0]]
    (pair / "disparity.npy").unlink()
    with pytest.raises(InputError, match="missing disparity"):
        P.build_stereo(tmp_path)


def test_manual_folder_and_npz(tmp_path, quick):
    ps, _ = quick
    for split, lab in (("train", 0), ("train", 1), ("test", 7)):
        g = tmp_path / "m" / split / f"g{lab}"
        g.mkdir(parents=True)
        for i in np.flatnonzero(ps.labels == lab):
            cv2.imwrite(str(g / f"{i}.png"), ps.patches[i])
    (tmp_path / "m" / "test" / "g7" / "bad.png").write_bytes(b"bad")
    with pytest.warns(P.SkippedItemWarning, match="bad.png"):
        m = P.load_manual(tmp_path / "m")
    assert list(m.scene_names) == ["train", "test"]
    assert len(np.unique(m.labels)) == 3 and m.patches.shape[1:] == (51, 51)
    assert set(m.split[m.scene == 1]) == {1}
    npz = P.save_patchset(ps, tmp_path / "p.npz")
    np.testing.assert_array_equal(P.load_manual(npz).patches, ps.patches)
    with pytest.raises(InputError):
        P.load_manual(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no patch images"):
        P.load_manual(tmp_path / "empty")


def test_no_numpy_warnings_on_undefined_maps():
    H = np.array([[1.0, 0, 0], [0, 1, 0], [0.01, 0, 1]])  # the line x = -100 goes to infinity
    regions = R.Regions(
        *(
            np.array(v, np.float64)
            for v in ([-150.0, 10.0], [5.0, 5.0], [4.0, 4.0], [0.0, 0.0], [1.0, 1.0])
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xy, size, angle = P.map_regions(P.Homography(H), regions)
    assert np.isnan(xy[0]).all() and np.isnan(size[0]) and np.isnan(angle[0])
    assert np.isfinite(xy[1]).all() and np.isfinite(size[1])


def test_config_gives_its_region_settings_whole():
    assert P.PatchSetConfig().regions == R.RegionSpec()
    cfg = P.PatchSetConfig(max_regions=40, min_size=5.0, contrast_threshold=0.02, magnification=5.0)
    assert cfg.regions == R.RegionSpec(
        max_regions=40, min_size=5.0, contrast_threshold=0.02, magnification=5.0
    )


def test_package_names_are_bound():
    ns: dict = {}
    exec("from retrieval._src.data import *", ns)
    assert set(P.__all__) <= set(ns)
