"""Global-descriptor pooling heads on convolutional feature maps: MAC, SPoC, GeM, R-MAC, CroW.

Every head maps channels-last maps ``x: (N, h, w, C)`` (float, usually >= 0
after a ReLU) to ``(N, C)``, is jitted, and takes an optional validity mask
``mask: (N, h, w)`` bool. Images of different sizes padded into one bucket
share one compilation; masked positions contribute nothing. The mask of an
image must be a rectangle anchored at the top-left corner (what padding at the
bottom and right produces): R-MAC reads each image's valid size from it. An
image whose mask is all False pools to zeros (no NaN).

Numerical parameters (``p``, ``eps`` of GeM, ``a``, ``b`` of CroW) are traced,
so a new value does not recompile; only ``levels`` and ``overlap`` of R-MAC are
static (they change the region grid).

The heads return the raw pooled vectors, except :func:`rmac` (L2-normalized
by construction); follow them with :func:`l2_normalize` (and whitening,
:mod:`retrieval._src.postprocess`) as the papers do.

R-MAC regions under a mask: the grid depends on each image's own valid size
``(h_i, w_i)``, a traced value. The geometry is therefore computed inside the
jitted function in integer arithmetic on a static table of region *slots*:
level ``l`` has ``l * (l + 6)`` slots (6 = the most extra positions along the
long side), of which the first ``n_rows * n_cols`` are the image's regions in
row-major order; the rest are masked out. The one float decision of the grid,
the number of extra positions along the long side, is taken on the host in
float64 (as Tolias's code) for every ``(h_i, w_i)`` up to the bucket size (a
small ``(h + 1, w + 1)`` int32 table).

Region maxima come from a sparse table of 2D block maxima (the max over every
2^k x 2^k block, k = 0..floor(log2 min(h, w))): a square of side s is covered
by the four 2^k blocks at its corners (k = floor(log2 s)), so each region costs
four lookups. That is floor(log2 min(h, w)) + 1 passes over x and as many
copies in memory (7 for a 64 x 64 map), against 50 passes (3 levels) region by
region; it also compiles about three times faster on CPU.

References:
  A. S. Razavian et al., "Visual instance retrieval with deep convolutional
  networks", ITE Trans. MTA 2016 (MAC). A. Babenko and V. Lempitsky,
  "Aggregating deep convolutional features for image retrieval", ICCV 2015
  (SPoC). F. Radenovic, G. Tolias, O. Chum, "Fine-tuning CNN image retrieval
  with no human annotation", TPAMI 2018 (GeM). G. Tolias, R. Sicre, H. Jegou,
  "Particular object retrieval with integral max-pooling of CNN activations",
  ICLR 2016, section 3 (R-MAC). Y. Kalantidis, C. Mellina, S. Osindero,
  "Cross-dimensional weighting for aggregated deep convolutional features",
  ECCV Workshops 2016, section 3 (CroW).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ckn import InputError

#: Norm floor of the L2 normalizations (as in vlad.py).
NORM_FLOOR = 1e-12
#: Candidate numbers of regions along the long side of R-MAC's first level.
_RMAC_STEPS = (2, 3, 4, 5, 6, 7)
#: The most extra region positions along the long side (len(_RMAC_STEPS)).
_MAX_EXTRA = len(_RMAC_STEPS)


# --------------------------------------------------------------------------- checks


def _check_maps(x, mask) -> None:
    """Static checks (shapes, dtypes); they run once per trace, at no cost per call."""
    if x.ndim != 4:
        raise InputError(f"x must be (N, h, w, C) channels-last maps, got shape {tuple(x.shape)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputError(f"x must be a float array, got dtype {x.dtype}")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InputError(f"x has an empty spatial or channel axis, shape {tuple(x.shape)}")
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape[:3]):
            raise InputError(
                f"mask must be (N, h, w) = {tuple(x.shape[:3])} like x's first axes, "
                f"got shape {tuple(mask.shape)}"
            )
        if mask.dtype != jnp.bool_:
            raise InputError(f"mask must be bool, got dtype {mask.dtype}")


def _counts(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """(N, 1) number of valid positions, in x's dtype."""
    if mask is None:
        return jnp.full((x.shape[0], 1), x.shape[1] * x.shape[2], x.dtype)
    return jnp.sum(mask, axis=(1, 2), dtype=x.dtype)[:, None]


# --------------------------------------------------------------------------- simple heads


@functools.partial(jax.jit, static_argnames=("axis",))
def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_FLOOR) -> jax.Array:
    """x / max(||x||, eps) along ``axis``; a zero vector stays zero.

    Jitted (one compilation per shape, not one per operation: four of a query's small
    compilations in a new process).

    Written as ``x * rsqrt(max(||x||^2, eps^2))`` so that the gradient at a zero
    vector is finite (that of ``jnp.linalg.norm`` is NaN there, and an empty
    R-MAC region or a dead feature map is a zero vector).

    Args:
      x: any float array, e.g. (N, D) descriptors.
      axis: the vector axis.
      eps: norm floor.

    Returns:
      Same shape and dtype as x.
    """
    x = jnp.asarray(x)
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


@jax.jit
def mac(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Maximum activation of convolutions: max over valid positions.

    Args:
      x: (N, h, w, C) feature maps.
      mask: (N, h, w) bool validity, or None (all valid).

    Returns:
      (N, C), x's dtype; zeros for an image without valid positions.

    References:
      Razavian et al. 2016; Tolias et al., ICLR 2016, section 3 (MAC).
    """
    _check_maps(x, mask)
    if mask is None:
        return jnp.max(x, axis=(1, 2))
    v = jnp.max(jnp.where(mask[..., None], x, -jnp.inf), axis=(1, 2))
    return jnp.where(jnp.any(mask, axis=(1, 2))[:, None], v, 0.0)


@jax.jit
def spoc(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Sum-pooled convolutional features, as a mean over valid positions (cirtorch's SPoC).

    Babenko & Lempitsky's centre prior and PCA are left out (as in cirtorch);
    the mean differs from their sum by a factor that L2 normalization removes.

    Args:
      x: (N, h, w, C) feature maps.
      mask: (N, h, w) bool validity, or None.

    Returns:
      (N, C), x's dtype; zeros for an image without valid positions.

    References:
      Babenko and Lempitsky, ICCV 2015, section 3.
    """
    _check_maps(x, mask)
    s = jnp.sum(x if mask is None else jnp.where(mask[..., None], x, 0.0), axis=(1, 2))
    return s / jnp.maximum(_counts(x, mask), 1.0)


#: Global average pooling of a conv map, the convolutional stand-in for
#: Babenko et al.'s "neural codes" (ECCV 2014); the fc6 neural code itself comes
#: from a VGG backbone. Same function as :func:`spoc`.
neural_codes = spoc


@jax.jit
def gem(
    x: jax.Array,
    p: float | jax.Array = 3.0,
    eps: float | jax.Array = 1e-6,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Generalized mean: (mean over valid positions of max(x, eps)^p)^(1/p).

    p = 1 is SPoC (on max(x, eps)), p -> inf tends to MAC. ``p`` and ``eps`` are
    traced (a new value does not recompile) and differentiable, so p can be
    learned.

    Args:
      x: (N, h, w, C) feature maps.
      p: scalar exponent > 0 (Python float or 0-d array; traced, so not checked).
      eps: clamp floor, keeps the fractional power away from 0.
      mask: (N, h, w) bool validity, or None.

    Returns:
      (N, C), x's dtype; zeros for an image without valid positions.

    References:
      Radenovic, Tolias, Chum, TPAMI 2018, section 3.2 (GeM), cirtorch ``gem``.
    """
    _check_maps(x, mask)
    y = jnp.power(jnp.maximum(x, eps), p)
    if mask is not None:
        y = jnp.where(mask[..., None], y, 0.0)
    n = _counts(x, mask)
    # Double where: an empty image must give 0 without a NaN gradient from pow(0, 1/p).
    m = jnp.where(n > 0, jnp.sum(y, axis=(1, 2)) / jnp.maximum(n, 1.0), 1.0)
    return jnp.where(n > 0, jnp.power(m, 1.0 / p), 0.0)


@jax.jit
def crow(
    x: jax.Array,
    a: float | jax.Array = 2.0,
    b: float | jax.Array = 2.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Cross-dimensional weighting (CroW): spatially and channel-weighted sum pooling.

    With S the channel sum of x at each valid position (negative sums clipped to
    0, so fractional powers stay real), the spatial weight is
    ``alpha = (S / ||S||_a)^(1/b)`` (norm over valid positions). With Q_k the
    fraction of valid positions where channel k is non-zero, the channel weight
    is ``beta_k = log(sum_j Q_j / Q_k)``, and 0 for a channel that is zero
    everywhere (as the authors' code; that channel sums to 0 anyway). Output
    ``f_k = beta_k * sum over valid positions of alpha * x_k``, not normalized
    (the paper then L2-normalizes, PCA-whitens, L2-normalizes).

    Args:
      x: (N, h, w, C) feature maps, >= 0 (post-ReLU).
      a: power of the spatial norm (2 in the paper); traced.
      b: root of the spatial weights (2 in the paper); traced.
      mask: (N, h, w) bool validity, or None.

    Returns:
      (N, C), x's dtype; zeros for an image without valid positions.

    References:
      Kalantidis, Mellina, Osindero, ECCVW 2016, sections 3.1-3.3.
    """
    _check_maps(x, mask)
    valid = jnp.ones(x.shape[:3], jnp.bool_) if mask is None else mask
    s = jnp.where(valid, jnp.maximum(jnp.sum(x, axis=3), 0.0), 0.0)  # (N, h, w)
    z = jnp.power(jnp.sum(jnp.power(s, a), axis=(1, 2)), 1.0 / a)  # (N,)
    alpha = jnp.power(s / jnp.maximum(z, NORM_FLOOR)[:, None, None], 1.0 / b)
    n = _counts(x, mask)  # (N, 1)
    nonzero = jnp.sum(jnp.logical_and(x != 0, valid[..., None]), axis=(1, 2), dtype=x.dtype)
    q = nonzero / jnp.maximum(n, 1.0)  # (N, C)
    qsum = jnp.sum(q, axis=1, keepdims=True)
    safe_q = jnp.where(q > 0, q, 1.0)
    beta = jnp.where(q > 0, jnp.log(jnp.where(q > 0, qsum, 1.0) / safe_q), 0.0)
    f = jnp.sum(x * alpha[..., None], axis=(1, 2))
    return beta * f


# --------------------------------------------------------------------------- R-MAC


def _extra_positions(h: int, w: int, overlap: float) -> int:
    """Extra region positions along the long side of an h x w map (0 for a square).

    Among n = 2..7 level-1 squares (side m = min(h, w)) along the long side L,
    the n whose neighbours overlap closest to ``overlap``: the overlap is
    ``1 - (L - m) / ((n - 1) m)``. Exact ties are frequent (3 x 11, 5 x 9,
    ...) and have no right answer; they are resolved as Tolias's code does,
    by its float64 expression and the first minimum (cirtorch's float32
    resolves some of them the other way, e.g. 5 x 9).
    """
    if h == w:
        return 0
    side, long = min(h, w), max(h, w)
    b = (long - side) / (np.asarray(_RMAC_STEPS, np.float64) - 1.0)
    crit = np.abs((side**2 - side * b) / side**2 - overlap)
    return int(np.argmin(crit)) + 1


def _check_rmac_args(levels, overlap) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise InputError(f"levels must be an int >= 1, got {levels!r}")
    if not 0.0 < float(overlap) < 1.0:
        raise InputError(f"overlap must be in (0, 1), got {overlap!r}")


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4) -> np.ndarray:
    """The R-MAC region grid of an h x w map (Tolias's grid, without a whole-map region).

    With m = min(h, w), level l = 1..levels has square regions of side
    ``s_l = floor(2 m / (l + 1))``: ``l`` positions along the short side and
    ``l + e`` along the long side, ``e`` extra positions chosen once (among
    2..7 regions on level 1) so that neighbouring level-1 regions overlap
    closest to ``overlap``. ``n`` positions along a side of length L start at
    ``floor(i (L - s_l) / (n - 1))``, i = 0..n-1 (0 when n = 1): evenly spread,
    the first and last touching the borders. A level with s_l = 0 is skipped.
    The start is cirtorch's ``floor(c + i b) - c`` (c = floor(s_l / 2 - 1),
    b = (L - s_l) / (n - 1)) evaluated exactly in integers: cirtorch's float32
    (and a float64 transcription) sometimes floors a product that should be
    an integer one cell low, so the last region misses the border (2 x 32,
    level 2: start 30 instead of 31). Among the sizes up to 129 x 129, the grid
    equals a float64 transcription of Tolias's code except for 94 sizes (such
    one-cell shifts), and cirtorch's except for 134 (the same kind, plus 48
    sizes where its float32 resolves an overlap tie the other way). cirtorch's ``roipool``
    also prepends the whole map as a region; Tolias's and Gordo's code do
    not, nor does this function.

    Args:
      h, w: map height and width, >= 1.
      levels: number of scales L.
      overlap: target overlap of neighbouring regions (0.4).

    Returns:
      (R, 4) int64 boxes (y, x, height, width), level by level, row-major
      within a level.

    Examples:
      >>> rmac_regions(7, 10, levels=1)
      array([[0, 0, 7, 7],
             [0, 3, 7, 7]])

    References:
      Tolias, Sicre, Jegou, ICLR 2016, section 3 (region sampling).
    """
    _check_rmac_args(levels, overlap)
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise InputError(f"rmac_regions needs h, w >= 1, got ({h}, {w})")
    extra = _extra_positions(h, w, float(overlap))
    m = min(h, w)
    boxes = []
    for level in range(1, levels + 1):
        side = (2 * m) // (level + 1)
        if side == 0:
            continue
        n_h = level + (extra if h > w else 0)
        n_w = level + (extra if w > h else 0)
        ys = [0 if n_h == 1 else i * (h - side) // (n_h - 1) for i in range(n_h)]
        xs = [0 if n_w == 1 else j * (w - side) // (n_w - 1) for j in range(n_w)]
        boxes += [(y, x, side, side) for y in ys for x in xs]
    return np.asarray(boxes, np.int64).reshape(-1, 4)


@functools.lru_cache(maxsize=64)
def _extra_table(h: int, w: int, overlap: float) -> np.ndarray:
    """(h + 1, w + 1) int32: extra long-side positions for every valid size (h_i, w_i)."""
    t = np.zeros((h + 1, w + 1), np.int32)
    for i in range(1, h + 1):
        for j in range(1, w + 1):
            t[i, j] = _extra_positions(i, j, overlap)
    return t


def _valid_size(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(N,) int32 valid heights and widths (rows / columns holding a valid position)."""
    n, h, w = x.shape[:3]
    if mask is None:
        return jnp.full((n,), h, jnp.int32), jnp.full((n,), w, jnp.int32)
    vh = jnp.sum(jnp.any(mask, axis=2), axis=1, dtype=jnp.int32)
    vw = jnp.sum(jnp.any(mask, axis=1), axis=1, dtype=jnp.int32)
    return vh, vw


def _div(a, b) -> jax.Array:
    """Integer a // b for a >= 0, b >= 1, by truncation.

    jnp's ``//`` adds a sign fix-up for negative operands; without it the grid
    compiles in about half the time on CPU (0.8 s -> 0.4 s measured). Both
    operands are cast to int32 first: ``lax.div`` takes no mixed dtypes, and with
    ``jax_enable_x64`` a Python int becomes int64 against the int32 sizes.
    """
    return jax.lax.div(*jnp.broadcast_arrays(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)))


def _rem(a, b) -> jax.Array:
    """Integer a % b for a >= 0, b >= 1 (int32, as :func:`_div`)."""
    return jax.lax.rem(*jnp.broadcast_arrays(jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)))


def _region_boxes(vh, vw, h: int, w: int, levels: int, overlap: float):
    """Traced R-MAC grid of each image in a padded slot table.

    Args:
      vh, vw: (N,) int32 valid sizes.
      h, w: static bucket size (vh <= h, vw <= w).

    Returns:
      (boxes (N, R, 4) int32 (y, x, height, width), valid (N, R) bool), with
      R = sum over levels of l (l + 6); an image's valid boxes equal
      ``rmac_regions(vh, vw, levels, overlap)`` in order.
    """
    extra = jnp.asarray(_extra_table(h, w, float(overlap)))[vh, vw]  # (N,)
    m = jnp.minimum(vh, vw)
    n_h_extra = jnp.where(vh > vw, extra, 0)[:, None]  # (N, 1)
    n_w_extra = jnp.where(vw > vh, extra, 0)[:, None]
    boxes, valid = [], []
    for level in range(1, levels + 1):
        side = _div(2 * m, level + 1)[:, None]  # (N, 1)
        n_h = level + n_h_extra
        n_w = level + n_w_extra
        t = jnp.arange(level * (level + _MAX_EXTRA), dtype=jnp.int32)[None, :]  # (1, T)
        row, col = _div(t, n_w), _rem(t, n_w)
        ys = _div(row * (vh[:, None] - side), jnp.maximum(n_h - 1, 1))  # 0 when n_h = 1
        xs = _div(col * (vw[:, None] - side), jnp.maximum(n_w - 1, 1))
        sides = jnp.broadcast_to(side, ys.shape)
        boxes.append(jnp.stack([ys, xs, sides, sides], axis=-1))
        valid.append(jnp.logical_and(t < n_h * n_w, side > 0))
    return jnp.concatenate(boxes, axis=1), jnp.concatenate(valid, axis=1)


@functools.partial(jax.jit, static_argnames=("levels", "overlap"))
def regional_mac(
    x: jax.Array, levels: int = 3, overlap: float = 0.4, mask: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """MAC of every R-MAC region, unnormalized, in a padded slot table.

    For Gordo-style pipelines that whiten each region before summing.

    Args:
      x: (N, h, w, C) feature maps.
      levels: R-MAC levels (static).
      overlap: target overlap (static).
      mask: (N, h, w) bool validity (top-left rectangle per image), or None.

    Returns:
      (regions (N, R, C), valid (N, R) bool), R = sum over levels of l (l + 6)
      slots; the valid slots of image i are the regions of
      ``rmac_regions(h_i, w_i, levels, overlap)`` in the same order, invalid
      slots are zeros.

    References:
      Tolias, Sicre, Jegou, ICLR 2016, section 3.
    """
    _check_maps(x, mask)
    _check_rmac_args(levels, overlap)
    n, h, w, _ = x.shape
    vh, vw = _valid_size(x, mask)
    boxes, valid = _region_boxes(vh, vw, h, w, levels, overlap)
    table = _block_max_table(x if mask is None else jnp.where(mask[..., None], x, -jnp.inf))
    # A square of side s is the union of the four 2^k x 2^k blocks at its corners,
    # k = floor(log2 s): its max is the max of four table entries.
    y, x0, side = boxes[..., 0], boxes[..., 1], jnp.maximum(boxes[..., 2], 1)  # (N, R)
    k = jnp.asarray(_floor_log2(min(h, w)))[side]
    p = side - jnp.left_shift(1, k)
    ys = jnp.stack([y, y, y + p, y + p], axis=-1)  # (N, R, 4)
    xs = jnp.stack([x0, x0 + p, x0, x0 + p], axis=-1)
    ys, xs = jnp.clip(ys, 0, h - 1), jnp.clip(xs, 0, w - 1)  # invalid slots: any cell
    img = jnp.arange(n, dtype=jnp.int32)[:, None, None]
    corners = table[k[..., None], img, ys, xs]  # (N, R, 4, C)
    v = jnp.max(corners, axis=2)
    keep = jnp.logical_and(valid[..., None], v > -jnp.inf)
    return jnp.where(keep, v, 0.0), valid


def _floor_log2(m: int) -> np.ndarray:
    """(m + 1,) int32 floor(log2 s) for s = 0..m (entry 0 unused, set to 0)."""
    s = np.arange(m + 1)
    return np.where(s > 0, np.floor(np.log2(np.maximum(s, 1))), 0).astype(np.int32)


def _block_max_table(x: jax.Array) -> jax.Array:
    """Sparse table of 2D block maxima: T[k, n, y, x] = max of x[n, y : y + 2^k, x : x + 2^k].

    Blocks reaching past the map take -inf from outside it; R-MAC only reads
    blocks inside a region. k = 0..floor(log2 min(h, w)).

    Args:
      x: (N, h, w, C).

    Returns:
      (K + 1, N, h, w, C): K + 1 copies of x in memory (7 for a 64 x 64 map),
      against R (50 for 3 levels) passes over x for region-by-region maxima.
    """
    h, w = x.shape[1], x.shape[2]
    out = [x]
    for k in range(int(np.floor(np.log2(min(h, w))))):
        s = 1 << k
        t = out[-1]
        t = jnp.maximum(
            t, jnp.pad(t[:, s:], ((0, 0), (0, s), (0, 0), (0, 0)), constant_values=-jnp.inf)
        )
        t = jnp.maximum(
            t, jnp.pad(t[:, :, s:], ((0, 0), (0, 0), (0, s), (0, 0)), constant_values=-jnp.inf)
        )
        out.append(t)
    return jnp.stack(out)


@functools.partial(jax.jit, static_argnames=("levels", "overlap"))
def rmac(
    x: jax.Array, levels: int = 3, overlap: float = 0.4, mask: jax.Array | None = None
) -> jax.Array:
    """Regional MAC: per region MAC -> L2, sum over regions -> L2.

    Regions from :func:`rmac_regions` of each image's valid size (no whole-map
    region; see the module docstring for padded batches). Norm floor 1e-12
    (cirtorch adds 1e-6 to the norm instead; the same up to ~1e-6 relative).

    Args:
      x: (N, h, w, C) feature maps.
      levels: number of scales (3; Gordo trains with 2). Static.
      overlap: target overlap of neighbouring regions (0.4). Static.
      mask: (N, h, w) bool validity (top-left rectangle per image), or None.

    Returns:
      (N, C) L2-normalized, x's dtype; zeros for an image without valid positions.

    References:
      Tolias, Sicre, Jegou, ICLR 2016, section 3.
    """
    regions, valid = regional_mac(x, levels, overlap, mask)
    v = jnp.sum(jnp.where(valid[..., None], l2_normalize(regions), 0.0), axis=1)
    return l2_normalize(v)
