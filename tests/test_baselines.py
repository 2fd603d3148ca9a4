"""SIFT, RootSIFT and pixel baselines: shapes, dtypes, finiteness, relations."""
import cv2
import numpy as np
import pytest

from ckn import InputError
from retrieval._src import baselines as B


@pytest.fixture(scope="module")
def rgb_patches():
    """(12, 51, 51, 3) uint8 crops, on a 3 x 4 grid, of scikit-image's astronaut photo."""
    import skimage.data

    img = skimage.data.astronaut()
    return np.stack([img[60 + 120 * r : 111 + 120 * r, 40 + 110 * c : 91 + 110 * c]
                     for r in range(3) for c in range(4)])


@pytest.fixture(scope="module")
def patches(rgb_patches):
    """The same crops in gray, (12, 51, 51) uint8."""
    return np.stack([cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) for p in rgb_patches])


@pytest.mark.parametrize("name, dim", [("sift", 128), ("rootsift", 128), ("pixels", 51 * 51)])
def test_shape_dtype_finite_unit_norm(patches, name, dim):
    d = B.describe_baseline(name, patches)
    assert d.shape == (12, dim) and d.dtype == np.float32
    assert np.isfinite(d).all()
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    if name != "pixels":
        assert (d >= 0).all()


def test_sift_is_opencv_sift_at_the_centre(patches):
    d = B.describe_baseline("sift", patches[:3])
    sift = cv2.SIFT_create()
    for p, row in zip(patches[:3], d):
        _, ref = sift.compute(p, [cv2.KeyPoint(25.0, 25.0, 51 / 6, 0.0, 0.0, 0)])
        np.testing.assert_allclose(row, ref[0] / np.linalg.norm(ref[0]), rtol=1e-6)
    assert B.sift_keypoint_size(51, 51) == 8.5


def test_sift_grid_covers_the_patch(patches):
    # At size W/6 a change in the patch corner moves the descriptor ...
    p = patches[:1].copy()
    base = B.describe_baseline("sift", p)
    p[0, 1:4, 1:4] = 255 - p[0, 1:4, 1:4]
    assert np.abs(B.describe_baseline("sift", p) - base).max() > 1e-3
    # ... while at a third of that size the corner is outside the window.
    small = B.sift_descriptors(patches[:1], keypoint_size=51 / 18)
    assert np.array_equal(B.sift_descriptors(p, keypoint_size=51 / 18), small)


def test_rootsift_is_hellinger_of_sift(patches):
    sift = B.describe_baseline("sift", patches)
    root = B.describe_baseline("rootsift", patches)
    l1 = sift / sift.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(root, np.sqrt(l1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(root**2 / (root**2).sum(axis=1, keepdims=True), l1, atol=1e-6)


def test_colour_is_converted_to_gray(rgb_patches, patches):
    np.testing.assert_array_equal(B.describe_baseline("sift", rgb_patches),
                                  B.describe_baseline("sift", patches))
    np.testing.assert_array_equal(B.describe_baseline("sift", patches[:4, :, :, None]),
                                  B.describe_baseline("sift", patches[:4]))
    assert B.describe_baseline("pixels", rgb_patches).shape == (12, 51 * 51 * 3)


def test_pixels_mean_subtracted_and_invariant_to_affine_intensity(patches):
    d = B.describe_baseline("pixels", patches[:4])
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-4)
    brighter = patches[:4].astype(np.float32) * 0.5 + 40.0
    np.testing.assert_allclose(B.describe_baseline("pixels", brighter), d, atol=1e-6)


def test_flat_patch_gives_finite_zero_row(patches):
    p = np.concatenate([np.full((1, 51, 51), 128, np.uint8), patches[:1]])
    for name in B.BASELINES:
        d = B.describe_baseline(name, p)
        assert np.isfinite(d).all()
        assert not d[0].any() and np.linalg.norm(d[1]) == pytest.approx(1.0, abs=1e-5)


def test_even_sized_and_small_patches(patches):
    d = B.describe_baseline("sift", patches[:2, :16, :16])
    assert d.shape == (2, 128) and np.isfinite(d).all()


def test_baseline_errors(patches):
    with pytest.raises(InputError, match="unknown baseline"):
        B.describe_baseline("surf", patches)
    with pytest.raises(InputError, match="uint8"):
        B.describe_baseline("sift", patches.astype(np.float32))
    with pytest.raises(InputError, match="NaN"):
        B.describe_baseline("pixels", np.full((2, 8, 8), np.nan))
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        B.describe_baseline("sift", patches[0])
    with pytest.raises(InputError, match="keypoint_size"):
        B.sift_descriptors(patches, keypoint_size=0.0)
