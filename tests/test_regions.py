"""Interest regions and normalized patch sampling (retrieval.local)."""

import cv2
import numpy as np
import pytest
import skimage.data

from ckn import InputError
from retrieval import local as R
from retrieval._src.regions import inside_fraction, patch_frames


@pytest.fixture(scope="module")
def camera():
    return skimage.data.camera()[::2, ::2].copy()  # (256, 256) real photo


def _ncc(a, b):
    a = a.astype(np.float64).ravel() - a.mean()
    b = b.astype(np.float64).ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_detect_is_sorted_deterministic_and_typed(camera):
    a = R.detect_regions(camera)
    b = R.detect_regions(camera)
    assert len(a) > 50
    for f in R.Regions._fields:
        assert getattr(a, f).dtype == np.float64 and getattr(a, f).shape == (len(a),)
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert np.all(np.diff(a.response) <= 0)
    assert np.all((a.angle >= 0) & (a.angle < 360))
    rgb = np.repeat(camera[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(R.detect_regions(rgb).x, a.x)


def test_detect_flat_image_is_empty():
    r = R.detect_regions(np.full((64, 64), 128, np.uint8))
    assert len(r) == 0 and r.xy.shape == (0, 2)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), np.float32),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((4, 4), np.uint8),
        np.zeros(64, np.uint8),
    ],
)
def test_detect_rejects_bad_images(image):
    with pytest.raises(InputError):
        R.detect_regions(image)


def test_patch_frame_maps_centre_and_side():
    f = patch_frames([10.0], [20.0], [4.0], [90.0], size=51, magnification=6.0)
    c = 25.0
    np.testing.assert_allclose(f[0, :, :2] @ [c, c] + f[0, :, 2], [10.0, 20.0])
    # +x of the patch points along the orientation (90 degrees: image +y), one patch = 24 image
    # pixels.
    # float64 rotation of a 24-pixel vector: cos(90 deg) = 6e-17, far below 1e-12.
    np.testing.assert_allclose(f[0, :, :2] @ [50, 0], [0.0, 24.0 * 50 / 51], atol=1e-12)


def test_sample_patch_matches_batched_sampling(camera):
    r = R.select_regions(R.detect_regions(camera), camera.shape, max_regions=20, min_size=3)
    batch = R.sample_patches(camera, r.x, r.y, r.size, r.angle, size=32)
    assert batch.shape == (len(r), 32, 32) and batch.dtype == np.uint8
    for i in range(len(r)):
        one = R.sample_patch(camera, r.x[i], r.y[i], r.size[i], r.angle[i], size=32)
        diff = np.abs(one.astype(int) - batch[i])
        # warpAffine (one patch) and remap (the batch) both interpolate bilinearly in fixed
        # point but may round a pixel to the other grey level: measured at most 1 level, in
        # at most 1 pixel of the 1024 (mean 0.001). Allow 1 level in 1% of the pixels.
        assert diff.max() <= 1 and diff.mean() <= 0.01, (i, diff.max(), diff.mean())
    rgb = R.sample_patches(np.repeat(camera[:, :, None], 3, 2), r.x, r.y, r.size, r.angle, size=32)
    assert rgb.shape == (len(r), 32, 32, 3)
    # Each channel is resampled as the gray image (measured: identical).
    np.testing.assert_array_equal(rgb, np.repeat(batch[..., None], 3, axis=3))


def test_orientation_normalization_undoes_a_rotation(camera):
    """A region and its rotated counterpart give the same patch (OpenCV angle convention)."""
    h, w = camera.shape
    m = cv2.getRotationMatrix2D(
        ((w - 1) / 2, (h - 1) / 2), 35.0, 1.0
    )  # counter-clockwise on screen
    rotated = cv2.warpAffine(
        camera, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    r = R.select_regions(
        R.detect_regions(camera), camera.shape, max_regions=30, min_size=4, max_outside=0.0
    )
    xy = np.c_[r.xy, np.ones(len(r))] @ m.T
    # In image coordinates (y down) the rotation is by -35 degrees.
    a = R.sample_patches(camera, r.x, r.y, r.size, r.angle)
    b = R.sample_patches(rotated, xy[:, 0], xy[:, 1], r.size, (r.angle - 35.0) % 360.0)
    wrong = R.sample_patches(rotated, xy[:, 0], xy[:, 1], r.size, (r.angle + 35.0) % 360.0)
    good = np.mean([_ncc(p, q) for p, q in zip(a, b)])
    bad = np.mean([_ncc(p, q) for p, q in zip(a, wrong)])
    assert good > 0.95 and bad < good - 0.2


def test_select_regions_nms_size_and_border(camera):
    det = R.detect_regions(camera)
    sel = R.select_regions(
        det, camera.shape, min_size=4.0, max_size=30.0, nms_radius=1.0, max_outside=0.0
    )
    assert 0 < len(sel) < len(det)
    assert np.all((sel.size >= 4.0) & (sel.size <= 30.0))
    d = np.hypot(sel.x[:, None] - sel.x[None], sel.y[:, None] - sel.y[None])
    r = np.maximum(sel.size[:, None], sel.size[None])
    np.fill_diagonal(d, np.inf)
    assert np.all(d >= r)
    frac = inside_fraction(camera.shape, sel.x, sel.y, sel.size, sel.angle)
    np.testing.assert_array_equal(frac, 1.0)
    assert len(R.select_regions(det, camera.shape, max_regions=7)) == 7


def test_region_spec_passes_its_settings_whole(camera):
    spec = R.RegionSpec(
        max_regions=25, min_size=5.0, max_size=40.0, nms_radius=1.5, max_outside=0.0
    )
    det = spec.detect(camera)
    want_det = R.detect_regions(camera, contrast_threshold=0.03, edge_threshold=10.0)
    for a, b in zip(det, want_det):
        np.testing.assert_array_equal(a, b)
    mask = np.zeros(camera.shape, np.uint8)
    mask[:, : camera.shape[1] // 2] = 1
    for valid in (None, mask):
        sel = spec.select(det, camera.shape, valid=valid)
        want = R.select_regions(
            want_det, camera.shape, max_regions=25, min_size=5.0, max_size=40.0,
            nms_radius=1.5, max_outside=0.0, magnification=R.MAGNIFICATION, valid=valid,
        )  # fmt: skip
        assert 0 < len(sel) <= 25
        for a, b in zip(sel, want):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="max_regions must be >= 1"):
        R.RegionSpec(max_regions=0)
    with pytest.raises(ValueError, match="magnification must be > 0"):
        R.RegionSpec(magnification=0.0)
