"""SIFT, RootSIFT and pixel baselines: shapes, dtypes, finiteness, relations."""

import cv2
import numpy as np
import pytest

import retrieval
from ckn import InputError


@pytest.fixture(scope="module")
def rgb_patches():
    """(12, 51, 51, 3) uint8 crops, on a 3 x 4 grid, of scikit-image's astronaut photo."""
    import skimage.data

    img = skimage.data.astronaut()
    return np.stack(
        [
            img[60 + 120 * r : 111 + 120 * r, 40 + 110 * c : 91 + 110 * c]
            for r in range(3)
            for c in range(4)
        ]
    )


@pytest.fixture(scope="module")
def patches(rgb_patches):
    """The same crops in gray, (12, 51, 51) uint8."""
    return np.stack([cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) for p in rgb_patches])


@pytest.mark.parametrize("name, dim", [("sift", 128), ("rootsift", 128), ("pixels", 51 * 51)])
def test_shape_dtype_finite_unit_norm(patches, name, dim):
    d = retrieval.patches.describe_baseline(name, patches)
    assert d.shape == (12, dim) and d.dtype == np.float32
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)  # measured 6e-8
    if name != "pixels":
        assert (d >= 0).all()


def test_sift_is_opencv_sift_at_the_centre(patches):
    d = retrieval.patches.describe_baseline("sift", patches[:3])
    sift = cv2.SIFT_create()
    for p, row in zip(patches[:3], d):
        _, ref = sift.compute(p, [cv2.KeyPoint(25.0, 25.0, 51 / 6, 0.0, 0.0, 0)])
        # The same float32 normalization (measured: equal); rtol leaves a few ulps.
        np.testing.assert_allclose(row, ref[0] / np.linalg.norm(ref[0]), rtol=1e-6)
    assert retrieval.patches.sift_keypoint_size(51, 51) == 8.5


def test_sift_grid_covers_the_patch(patches):
    # At size W/6 a change in the patch corner moves the descriptor ...
    p = patches[:1].copy()
    base = retrieval.patches.describe_baseline("sift", p)
    p[0, 1:4, 1:4] = 255 - p[0, 1:4, 1:4]
    assert np.abs(retrieval.patches.describe_baseline("sift", p) - base).max() > 1e-3
    # ... while at a third of that size the corner is outside the window.
    small = retrieval.patches.sift_descriptors(patches[:1], keypoint_size=51 / 18)
    assert np.array_equal(retrieval.patches.sift_descriptors(p, keypoint_size=51 / 18), small)


def test_rootsift_is_hellinger_of_sift(patches):
    sift = retrieval.patches.describe_baseline("sift", patches)
    root = retrieval.patches.describe_baseline("rootsift", patches)
    l1 = sift / sift.sum(axis=1, keepdims=True)
    # float32 entries below 0.5 through L1 and sqrt: measured 3e-8, about one ulp.
    np.testing.assert_allclose(root, np.sqrt(l1), rtol=0, atol=2e-7)


def test_colour_is_converted_to_gray(rgb_patches, patches):
    np.testing.assert_array_equal(
        retrieval.patches.describe_baseline("sift", rgb_patches),
        retrieval.patches.describe_baseline("sift", patches),
    )
    np.testing.assert_array_equal(
        retrieval.patches.describe_baseline("sift", patches[:4, :, :, None]),
        retrieval.patches.describe_baseline("sift", patches[:4]),
    )
    assert retrieval.patches.describe_baseline("pixels", rgb_patches).shape == (12, 51 * 51 * 3)


def test_pixels_match_numpy_reference(rgb_patches, patches):
    """Per-channel mean subtracted, then L2 over all values, in float64."""
    for p in (patches, rgb_patches):
        x = p.astype(np.float64).reshape(len(p), p.shape[1] * p.shape[2], -1)
        x = (x - x.mean(axis=1, keepdims=True)).reshape(len(p), -1)
        ref = x / np.linalg.norm(x, axis=1, keepdims=True)
        # Unit-norm rows rounded to float32 (entries < 0.1): measured 3.5e-9.
        np.testing.assert_allclose(retrieval.patches.describe_baseline("pixels", p), ref, atol=1e-7)


def test_pixels_mean_subtracted_and_invariant_to_affine_intensity(patches):
    d = retrieval.patches.describe_baseline("pixels", patches[:4])
    # Sums of 2601 float32 values of ~0.02: measured 1.2e-7.
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-6)
    brighter = patches[:4].astype(np.float32) * 0.5 + 40.0
    # Centred and normalized in float64, so the affine change cancels (measured: equal).
    np.testing.assert_allclose(
        retrieval.patches.describe_baseline("pixels", brighter), d, atol=1e-6
    )


def test_flat_patch_gives_finite_zero_row(patches):
    p = np.concatenate([np.full((1, 51, 51), 128, np.uint8), patches[:1]])
    for name in retrieval.patches.BASELINES:
        d = retrieval.patches.describe_baseline(name, p)
        assert np.isfinite(d).all()
        assert not d[0].any() and np.linalg.norm(d[1]) == pytest.approx(1.0, abs=1e-6)  # 6e-8


def test_even_sized_and_small_patches(patches):
    p = np.ascontiguousarray(patches[:2, :16, :16])
    d = retrieval.patches.describe_baseline("sift", p)
    assert d.shape == (2, 128) and np.isfinite(d).all()
    # The keypoint sits at the centre of an even patch, between pixels: (7.5, 7.5), size 16/6.
    sift = cv2.SIFT_create()
    for q, row in zip(p, d):
        _, ref = sift.compute(q, [cv2.KeyPoint(7.5, 7.5, 16 / 6, 0.0, 0.0, 0)])
        np.testing.assert_allclose(row, ref[0] / np.linalg.norm(ref[0]), rtol=1e-6)  # equal


def test_baseline_errors(patches):
    with pytest.raises(InputError, match="unknown baseline"):
        retrieval.patches.describe_baseline("surf", patches)
    with pytest.raises(InputError, match="uint8"):
        retrieval.patches.describe_baseline("sift", patches.astype(np.float32))
    with pytest.raises(InputError, match="NaN"):
        retrieval.patches.describe_baseline("pixels", np.full((2, 8, 8), np.nan))
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        retrieval.patches.describe_baseline("sift", patches[0])
    with pytest.raises(InputError, match="keypoint_size"):
        retrieval.patches.sift_descriptors(patches, keypoint_size=0.0)
