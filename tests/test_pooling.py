"""Pooling heads against float64 NumPy loops, padded masked batches, the R-MAC grid.

Tolerances (float32 JAX against float64 NumPy): rtol 1e-5, atol 1e-6; exact
equality for the integer R-MAC geometry.
"""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ckn import InputError
from retrieval import image as P
from retrieval._src.pooling import _region_boxes

RTOL, ATOL = 1e-5, 1e-6

# --------------------------------------------------------------------------- references


def ref_mac(x):
    """x (h, w, C) float64 -> (C,)."""
    out = np.full(x.shape[2], -np.inf)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out = np.maximum(out, x[i, j])
    return out


def ref_spoc(x):
    return x.reshape(-1, x.shape[2]).sum(axis=0) / (x.shape[0] * x.shape[1])


def ref_gem(x, p, eps=1e-6):
    acc = np.zeros(x.shape[2])
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            acc += np.maximum(x[i, j], eps) ** p
    return (acc / (x.shape[0] * x.shape[1])) ** (1.0 / p)


def ref_crow(x, a=2.0, b=2.0):
    """Kalantidis et al.'s aggregation, written from the paper (loops over channels)."""
    h, w, c = x.shape
    s = np.maximum(x.sum(axis=2), 0.0)
    z = (s**a).sum() ** (1.0 / a)
    alpha = (s / z) ** (1.0 / b)
    q = np.array([np.count_nonzero(x[:, :, k]) / (h * w) for k in range(c)])
    beta = np.array([math.log(q.sum() / q[k]) if q[k] > 0 else 0.0 for k in range(c)])
    return np.array([beta[k] * (alpha * x[:, :, k]).sum() for k in range(c)])


def ref_regions(h, w, levels=3, overlap=0.4):
    """The R-MAC grid from GLOBAL_NOTES section 1, written independently.

    Side m = min(h, w); level l squares of side floor(2m / (l + 1)); l positions on
    the short side, l + e on the long one, e + 1 in 2..7 picked by the overlap of
    level-1 neighbours, 1 - stride / m, closest to 40 %; positions evenly spread, first
    and last on the borders (exact rational stride, floored). Exact overlap ties (3 x 11:
    n = 5 and 6 are both 1/15 away) are decided by the rounding of Tolias's float64
    expression, so that expression is used here as it is.
    """
    m, long = min(h, w), max(h, w)
    e = 0
    if h != w:
        stride = np.array([(long - m) / (n - 1) for n in range(2, 8)])
        e = int(np.argmin(np.abs((m**2 - m * stride) / m**2 - overlap))) + 1
    out = []
    for level in range(1, levels + 1):
        side = math.floor(Fraction(2 * m, level + 1))
        if side < 1:
            continue
        counts = {"h": level + (e if h > w else 0), "w": level + (e if w > h else 0)}
        starts = {}
        for axis, length in (("h", h), ("w", w)):
            n = counts[axis]
            stride = Fraction(length - side, n - 1) if n > 1 else Fraction(0)
            starts[axis] = [math.floor(i * stride) for i in range(n)]
            assert starts[axis][-1] + side == length or n == 1  # last one on the border
        for y in starts["h"]:
            for x in starts["w"]:
                out.append((y, x, side, side))
    return np.array(out, np.int64).reshape(-1, 4)


def ref_rmac(x, levels=3, overlap=0.4):
    h, w, _ = x.shape
    v = np.zeros(x.shape[2])
    for y, x0, hh, ww in ref_regions(h, w, levels, overlap):
        r = ref_mac(x[y : y + hh, x0 : x0 + ww])
        v += r / max(np.linalg.norm(r), 1e-12)
    return v / max(np.linalg.norm(v), 1e-12)


# --------------------------------------------------------------------------- data


SIZES = [(7, 10), (10, 7), (3, 3), (1, 1), (9, 4)]  # valid sizes padded to (10, 10)


@pytest.fixture(scope="module")
def padded():
    """Five ReLU-like maps of different sizes in one (10, 10) bucket; padding holds junk."""
    rng = np.random.default_rng(0)
    c = 6
    x = np.full((len(SIZES), 10, 10, c), 50.0, np.float32)  # large junk: must not leak
    mask = np.zeros((len(SIZES), 10, 10), bool)
    maps = []
    for i, (h, w) in enumerate(SIZES):
        m = np.maximum(rng.normal(size=(h, w, c)), 0.0).astype(np.float32)
        m[..., 0] = 0.0  # an all-zero channel (CroW's Q_k = 0 guard)
        maps.append(m.astype(np.float64))
        x[i, :h, :w] = m
        mask[i, :h, :w] = True
    return x, mask, maps


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "head,ref",
    [
        (P.mac, ref_mac),
        (P.spoc, ref_spoc),
        (P.neural_codes, ref_spoc),
        (P.gem, lambda m: ref_gem(m, 3.0)),
        (P.crow, ref_crow),
        (P.rmac, ref_rmac),
    ],
    ids=["mac", "spoc", "neural_codes", "gem", "crow", "rmac"],
)
def test_heads_match_numpy_with_masks(padded, head, ref):
    x, mask, maps = padded
    out = np.asarray(head(jnp.asarray(x), mask=jnp.asarray(mask)))
    assert out.shape == (len(SIZES), x.shape[3]) and out.dtype == np.float32
    for i, m in enumerate(maps):
        np.testing.assert_allclose(out[i], ref(m), rtol=RTOL, atol=ATOL, err_msg=f"image {i}")
        # The image alone, unpadded and unmasked: the same vector.
        alone = np.asarray(head(jnp.asarray(m[None].astype(np.float32))))[0]
        np.testing.assert_allclose(out[i], alone, rtol=RTOL, atol=ATOL)


def test_full_mask_equals_no_mask(padded):
    x = jnp.asarray(padded[0])
    full = jnp.ones(x.shape[:3], bool)
    for head in (P.mac, P.spoc, P.gem, P.crow, P.rmac):
        np.testing.assert_array_equal(np.asarray(head(x, mask=full)), np.asarray(head(x)))


def test_gem_p_values():
    x = jnp.asarray(np.random.default_rng(1).random((2, 4, 5, 3)), jnp.float32)
    xd = np.asarray(x, np.float64)
    for p in (1.0, 2.5, 3.0, 7.0):
        np.testing.assert_allclose(
            np.asarray(P.gem(x, p)), [ref_gem(m, p) for m in xd], rtol=RTOL, atol=ATOL
        )
    # p = 1 is SPoC; large p tends to MAC.
    np.testing.assert_allclose(np.asarray(P.gem(x, 1.0)), np.asarray(P.spoc(x)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(P.gem(x, 300.0)), np.asarray(P.mac(x)), rtol=2e-2)


def test_empty_mask_gives_zeros_and_finite_gradients(padded):
    x, mask, _ = padded
    mask = mask.copy()
    mask[1] = False
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    for head in (P.mac, P.spoc, P.gem, P.crow, P.rmac):
        out = np.asarray(head(xj, mask=mj))
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[1], 0.0)
    g = jax.grad(lambda p: jnp.sum(P.gem(xj, p, mask=mj)))(jnp.float32(3.0))
    assert np.isfinite(float(g))
    gx = jax.grad(lambda v: jnp.sum(P.rmac(v, mask=mj)))(xj)
    assert np.all(np.isfinite(np.asarray(gx)))


def test_l2_normalize():
    v = jnp.asarray([[3.0, 4.0], [0.0, 0.0]], jnp.float32)
    np.testing.assert_allclose(np.asarray(P.l2_normalize(v)), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(P.l2_normalize(v, axis=0)), [[1.0, 1.0], [0.0, 0.0]], rtol=1e-6
    )


# --------------------------------------------------------------------------- R-MAC grid

# Hand-computed from the definition (y, x, height, width), level by level.
# 7 x 7: square, no extra. l=1: side 7 at 0. l=2: side floor(14/3)=4, starts 0, 7-4=3.
# l=3: side floor(14/4)=3, starts 0, 2, 4 (stride (7-3)/2).
GRID_7x7 = (
    [(0, 0, 7, 7)]
    + [(y, x, 4, 4) for y in (0, 3) for x in (0, 3)]
    + [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4)]
)
# 7 x 10: m = 7, long side 10; overlap 1 - (3/(n-1))/7 = .571, .786, .857, ... for n = 2, 3, 4:
# closest to .4 is n = 2, one extra column. l=1: x starts 0, 3. l=2: side 4, rows 0, 3,
# columns 0, 3, 6 (stride 6/2). l=3: side 3, rows 0, 2, 4, columns 0, 2, 4, 7 (stride 7/3).
GRID_7x10 = (
    [(0, 0, 7, 7), (0, 3, 7, 7)]
    + [(y, x, 4, 4) for y in (0, 3) for x in (0, 3, 6)]
    + [(y, x, 3, 3) for y in (0, 2, 4) for x in (0, 2, 4, 7)]
)
# 30 x 40: m = 30; overlap for n = 2: 1 - 10/30 = .667, n = 3: .833: n = 2. l=1: x 0, 10.
# l=2: side 20, rows 0, 10, columns 0, 10, 20. l=3: side 15, rows 0, 7, 15 (stride 15/2),
# columns 0, 8, 16, 25 (stride 25/3).
GRID_30x40 = (
    [(0, 0, 30, 30), (0, 10, 30, 30)]
    + [(y, x, 20, 20) for y in (0, 10) for x in (0, 10, 20)]
    + [(y, x, 15, 15) for y in (0, 7, 15) for x in (0, 8, 16, 25)]
)


@pytest.mark.parametrize(
    "h,w,table",
    [
        (7, 7, GRID_7x7),
        (7, 10, GRID_7x10),
        (10, 7, sorted([(x, y, s, s) for y, x, s, _ in GRID_7x10], key=lambda b: (-b[2], b))),
        (30, 40, GRID_30x40),
        (1, 1, [(0, 0, 1, 1)]),  # levels 2 and 3 have side 0: skipped
    ],
)
def test_rmac_regions_hand_tables(h, w, table):
    got = P.rmac_regions(h, w)
    np.testing.assert_array_equal(got, np.array(table, np.int64))
    np.testing.assert_array_equal(got, ref_regions(h, w))
    assert got.dtype == np.int64


def test_rmac_regions_match_independent_reference():
    for h in range(1, 41):
        for w in range(1, 41):
            for levels in (1, 3):
                np.testing.assert_array_equal(
                    P.rmac_regions(h, w, levels), ref_regions(h, w, levels), err_msg=f"{h}x{w}"
                )
    # Tie: 5 x 9 (n = 2 and 3 overlap .2 from .4 each); Tolias's float64 picks 3.
    assert len(P.rmac_regions(5, 9, levels=1)) == 3
    # Another overlap target moves the choice.
    # 10 x 30: overlaps 1 - 20 / (10 (n - 1)) = -1, 0, .33, .5, .6, .67 for n = 2..7.
    assert len(P.rmac_regions(10, 30, levels=1, overlap=0.4)) == 4
    assert len(P.rmac_regions(10, 30, levels=1, overlap=0.8)) == 7
    for h, w in ((10, 30), (64, 48), (100, 37)):
        np.testing.assert_array_equal(
            P.rmac_regions(h, w, 2, 0.7), ref_regions(h, w, 2, 0.7), err_msg=f"{h}x{w}"
        )


def test_traced_grid_equals_rmac_regions_for_every_valid_size():
    h, w = 13, 11
    vh, vw = np.meshgrid(np.arange(1, h + 1), np.arange(1, w + 1), indexing="ij")
    vh, vw = jnp.asarray(vh.ravel(), jnp.int32), jnp.asarray(vw.ravel(), jnp.int32)
    boxes, valid = jax.jit(lambda a, b: _region_boxes(a, b, h, w, 3, 0.4))(vh, vw)
    boxes, valid = np.asarray(boxes), np.asarray(valid)
    assert boxes.shape[1] == 7 + 16 + 27  # sum over levels of l (l + 6) slots
    for i in range(len(vh)):
        want = P.rmac_regions(int(vh[i]), int(vw[i]))
        got = boxes[i][valid[i]]
        np.testing.assert_array_equal(got, want, err_msg=f"{int(vh[i])}x{int(vw[i])}")
        # Valid slots come first within each level: order is the reference order.


def test_regional_mac_values(padded):
    x, mask, maps = padded
    regions, valid = P.regional_mac(jnp.asarray(x), mask=jnp.asarray(mask))
    regions, valid = np.asarray(regions), np.asarray(valid)
    for i, m in enumerate(maps):
        boxes = ref_regions(*m.shape[:2])
        want = np.stack([ref_mac(m[y : y + a, z : z + b]) for y, z, a, b in boxes])
        np.testing.assert_allclose(regions[i][valid[i]], want, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(regions[i][~valid[i]], 0.0)


# --------------------------------------------------------------------------- compilation


def test_new_p_and_new_masks_do_not_recompile(padded):
    x, mask, _ = padded
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    P.gem(xj, 3.0, mask=mj)
    P.rmac(xj, mask=mj)
    P.crow(xj, 2.0, 2.0, mask=mj)
    before = (P.gem._cache_size(), P.rmac._cache_size(), P.crow._cache_size())
    other = np.zeros_like(mask)
    other[:, :2, :9] = True  # other valid sizes, same bucket
    P.gem(xj, 2.25, mask=jnp.asarray(other))
    P.rmac(xj * 2.0, mask=jnp.asarray(other))
    P.crow(xj, 1.5, 3.0, mask=jnp.asarray(other))
    assert (P.gem._cache_size(), P.rmac._cache_size(), P.crow._cache_size()) == before


def test_jit_and_vmap_compose(padded):
    x, mask, _ = padded
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    per = jax.vmap(lambda a, m: P.rmac(a[None], mask=m[None])[0])(xj, mj)
    np.testing.assert_allclose(np.asarray(per), np.asarray(P.rmac(xj, mask=mj)), rtol=1e-6)
    inside = jax.jit(lambda a, m, p: P.gem(a, p, mask=m))(xj, mj, 2.0)
    np.testing.assert_allclose(np.asarray(inside), np.asarray(P.gem(xj, 2.0, mask=mj)), rtol=1e-6)


# --------------------------------------------------------------------------- errors


def test_bad_inputs():
    x = jnp.ones((2, 4, 4, 3), jnp.float32)
    with pytest.raises(InputError, match=r"x must be \(N, h, w, C\).*\(4, 4, 3\)"):
        P.mac(x[0])
    with pytest.raises(InputError, match="x must be a float array, got dtype int32"):
        P.spoc(jnp.ones((1, 2, 2, 1), jnp.int32))
    with pytest.raises(InputError, match=r"mask must be \(N, h, w\) = \(2, 4, 4\).*\(2, 4\)"):
        P.gem(x, mask=jnp.ones((2, 4), bool))
    with pytest.raises(InputError, match="mask must be bool, got dtype float32"):
        P.crow(x, mask=jnp.ones((2, 4, 4), jnp.float32))
    with pytest.raises(InputError, match="levels must be an int >= 1, got 0"):
        P.rmac(x, levels=0)
    with pytest.raises(InputError, match=r"overlap must be in \(0, 1\), got 1.0"):
        P.rmac_regions(4, 4, overlap=1.0)
    with pytest.raises(InputError, match=r"h, w >= 1, got \(0, 3\)"):
        P.rmac_regions(0, 3)


def test_rmac_larger_maps_in_a_bucket():
    """Sides up to 30 (sparse-table levels k = 0..4) and odd offsets, against the loops."""
    rng = np.random.default_rng(3)
    sizes = [(30, 40), (17, 5), (33, 47)]
    x = rng.normal(size=(3, 33, 47, 4)).astype(np.float32)  # signed values: maxima can be < 0
    mask = np.zeros((3, 33, 47), bool)
    for i, (h, w) in enumerate(sizes):
        mask[i, :h, :w] = True
    out = np.asarray(P.rmac(jnp.asarray(x), mask=jnp.asarray(mask)))
    for i, (h, w) in enumerate(sizes):
        want = ref_rmac(x[i, :h, :w].astype(np.float64))
        np.testing.assert_allclose(out[i], want, rtol=RTOL, atol=ATOL, err_msg=f"{h}x{w}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rmac_and_regional_mac_with_x64_enabled(padded, dtype):
    """Under ``jax_enable_x64`` (Python ints become int64) the int32 R-MAC grid still
    compiles and gives the NumPy values; float64 maps stay float64."""
    x, mask, maps = padded
    with jax.enable_x64(True):
        xj, mj = jnp.asarray(x.astype(dtype)), jnp.asarray(mask)
        out = np.asarray(P.rmac(xj, mask=mj))
        regions, valid = P.regional_mac(xj, mask=mj)
        regions, valid = np.asarray(regions), np.asarray(valid)
    assert not jax.config.jax_enable_x64  # restored
    assert out.dtype == dtype and regions.dtype == dtype
    for i, m in enumerate(maps):
        np.testing.assert_allclose(out[i], ref_rmac(m), rtol=RTOL, atol=ATOL, err_msg=f"{i}")
        boxes = ref_regions(*m.shape[:2])
        want = np.stack([ref_mac(m[y : y + a, z : z + b]) for y, z, a, b in boxes])
        np.testing.assert_allclose(regions[i][valid[i]], want, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(regions[i][~valid[i]], 0.0)
