"""Pure, jit-able array functions of a convolutional kernel network.

Everything is channels last: feature maps are (N, H, W, C). A sub-patch of
size e at a position is the vector of the e x e x C values below it, flattened
in (row, column, channel) order, so a matrix Z of shape (p, e*e*C) reshapes to
a convolution kernel (e, e, C, p) without any transposition.

References:
  [P2] Mairal et al., Convolutional Kernel Networks, NIPS 2014.
  [P3] Mairal, End-to-End Kernel Learning with Supervised CKNs, NIPS 2016,
       section 3 (Nystrom form of a layer).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Below this norm a sub-patch is treated as empty (CKN_NOTES section 1.3).
NORM_EPS = 1e-5

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv(x: jax.Array, kernel: jax.Array, padding: str = "same", *, precision=None) -> jax.Array:
    """Stride-1 convolution of (N, H, W, C) with an (e, e, C, P) kernel -> (N, H', W', P)."""
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding.upper(), dimension_numbers=_DIMS, precision=precision
    )


def box_sum(x: jax.Array, size: int, padding: str = "same") -> jax.Array:
    """Sum over every size x size window at stride 1 of (N, H, W, C), per channel.

    The same windows (and zero padding) as :func:`conv` with an (e, e, C, C)
    identity-per-channel kernel of ones, as 2(e-1) shifted adds.
    """
    for axis in (1, 2):
        if padding.lower() == "same":
            lo = (size - 1) // 2  # XLA's SAME: the extra row of an even e at the end
            pads = [(0, 0, 0)] * x.ndim
            pads[axis] = (lo, size - 1 - lo, 0)
            x = lax.pad(x, np.zeros((), x.dtype), pads)
        m = x.shape[axis] - size + 1
        acc = lax.slice_in_dim(x, 0, m, axis=axis)
        for k in range(1, size):
            acc = acc + lax.slice_in_dim(x, k, k + m, axis=axis)
        x = acc
    return x


def extract_patches(x: jax.Array, size: int, padding: str = "valid") -> jax.Array:
    """All size x size sub-patches at stride 1.

    Args:
      x: (N, H, W, C) feature maps.
      size: sub-patch side e.
      padding: "valid" (only positions fully inside) or "same" (zero padding,
        output keeps H x W; XLA puts the extra row/column of an even e at the end).

    Returns:
      (N, H', W', e*e*C) sub-patch vectors in (row, column, channel) order.
    """
    c = x.shape[-1]
    d = size * size * c
    kernel = jnp.eye(d, dtype=x.dtype).reshape(size, size, c, d)
    return conv(x, kernel, padding, precision=lax.Precision.HIGHEST)


def shifted_maps(x: jax.Array, size: int, padding: str = "valid") -> list[jax.Array]:
    """The size*size shifted views of x that make up its sub-patches, in (row, column) order.

    Args:
      x: (N, H, W, C) feature maps.
      size: sub-patch side e.
      padding: "valid" or "same" (zero padding, XLA's convention as in :func:`extract_patches`).

    Returns:
      e*e arrays (N, H', W', C): entry i*e + j holds, at each position, the value
      at row offset i and column offset j of the sub-patch there.
    """
    if padding.lower() == "same":
        lo = (size - 1) // 2
        x = jnp.pad(x, ((0, 0), (lo, size - 1 - lo), (lo, size - 1 - lo), (0, 0)))
    h, w = x.shape[1] - size + 1, x.shape[2] - size + 1
    return [x[:, i : i + h, j : j + w, :] for i in range(size) for j in range(size)]


def extract_patches_shifted(x: jax.Array, size: int, padding: str = "valid") -> jax.Array:
    """As :func:`extract_patches`, by e*e shifted slices (no convolution).

    Faster on CPU when e*e*C is small (one input channel); same values exactly.
    """
    return jnp.concatenate(shifted_maps(x, size, padding), axis=-1)


def normalize_patches(x: jax.Array, eps: float = NORM_EPS) -> tuple[jax.Array, jax.Array]:
    """rho = ||x|| over the last axis and x / max(rho, eps).

    Returns:
      (x normalized, same shape as x; rho with a trailing axis of size 1).
    """
    rho = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(rho, eps), rho


def kappa(u: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """Exponential dot-product kernel on the sphere, exp((u - 1) / sigma^2).

    For unit vectors x, y with u = <x, y> this equals exp(-||x - y||^2 / (2 sigma^2)).
    """
    return jnp.exp((u - 1.0) / (sigma * sigma))


def inverse_sqrt_psd(k: jax.Array, floor: float = 1e-12) -> jax.Array:
    """K^{-1/2} of a symmetric positive (semi-)definite matrix by eigendecomposition.

    Eigenvalues are floored at ``floor`` times the largest one.
    """
    w, v = jnp.linalg.eigh(k)
    w = jnp.maximum(w, floor * jnp.max(w))
    return (v * lax.rsqrt(w)[None, :]) @ v.T


def nystrom_projection(filters: jax.Array, sigma: float, lam: float = 1e-3) -> jax.Array:
    """(kappa(Z Z^T) + lam I)^{-1/2}, the p x p linear map of a Nystrom layer.

    Computed once after training, not per input.

    Args:
      filters: (p, d) unit-norm filters Z (one per row).
      sigma: kernel bandwidth.
      lam: ridge lambda added to the diagonal.

    Returns:
      (p, p) symmetric matrix.
    """
    p = filters.shape[0]
    gram = kappa(filters @ filters.T, sigma)
    return inverse_sqrt_psd(gram + lam * jnp.eye(p, dtype=gram.dtype))


def gaussian_filter_1d(subsampling: int, std: float | None = None) -> np.ndarray:
    """The 2s+1 taps of the pooling filter, std s / sqrt(2) unless given, summing to one."""
    s = int(subsampling)
    std = s / math.sqrt(2.0) if std is None else float(std)
    t = np.arange(-s, s + 1, dtype=np.float64)
    g = np.exp(-(t * t) / (2.0 * std**2))
    return g / g.sum()


POOLINGS = ("strided", "centered")


def pooling_matrix(
    n: int, subsampling: int, *, mode: str = "strided", std: float | None = None
) -> np.ndarray:
    """Dense (n_out, n) matrix of 1-D Gaussian pooling, n_out = ceil(n / s).

    Modes:
      "strided" (the papers'): output i is centred on input i * s, taps at
        integer offsets -s..s (2s+1 taps), zero padding s, stride s.
      "centered" (a reconstruction, see ``LayerConfig.pooling``): the n_out
        outputs are the centres of n_out equal cells tiling the input,
        c_i = (i + 1/2) n / n_out - 1/2, so no output sits on the border
        with half its window in the zero padding (the layout of SIFT's cells).

    Weights exp(-d^2 / (2 std^2)) for inputs within distance s of the centre,
    normalized as if the input continued with zeros (border rows lose mass),
    std = s / sqrt(2) unless given.
    """
    if mode not in POOLINGS:
        raise ValueError(f"pooling mode must be one of {POOLINGS}, got {mode!r}")
    s = int(subsampling)
    std = s / math.sqrt(2.0) if std is None else float(std)
    n_out = (n - 1) // s + 1
    if mode == "strided":
        centres = np.arange(n_out, dtype=np.float64) * s
    else:
        centres = (np.arange(n_out, dtype=np.float64) + 0.5) * n / n_out - 0.5
    m = np.zeros((n_out, n), dtype=np.float64)
    for i, c in enumerate(centres):
        t = np.arange(math.ceil(c - s - 1e-9), math.floor(c + s + 1e-9) + 1)
        g = np.exp(-((t - c) ** 2) / (2.0 * std**2))
        g /= g.sum()
        inside = (t >= 0) & (t < n)
        m[i, t[inside]] = g[inside]
    return m


def pooled_size(n: int, subsampling: int) -> int:
    """Spatial size after ``gaussian_pool`` with this subsampling."""
    return n if subsampling == 1 else (n - 1) // subsampling + 1


def gaussian_pool(
    x: jax.Array,
    subsampling: int,
    *,
    mode: str = "strided",
    std: float | None = None,
    precision=None,
) -> jax.Array:
    """Separable linear Gaussian pooling with subsampling s.

    By default (``mode="strided"``) a 2s+1-tap Gaussian of std s/sqrt(2) along
    H then W, zero padding s, stride s (CKN_NOTES section 1.6); see
    :func:`pooling_matrix` for ``mode="centered"`` and ``std``. s = 1 is the
    identity (no pooling).

    Args:
      x: (N, H, W, C).
      subsampling: s >= 1.

    Returns:
      (N, ceil(H/s), ceil(W/s), C).
    """
    return _separable_pool(x, subsampling, mode, std, precision, h_axis=1)


def _separable_pool(x, subsampling, mode, std, precision, *, h_axis: int) -> jax.Array:
    """Pooling along axes h_axis (H) and h_axis + 1 (W) of x (see :func:`gaussian_pool`)."""
    if subsampling == 1:
        return x
    w_axis = h_axis + 1
    if mode == "strided":
        # A 2s+1-tap filter at stride s on a zero-padded map: 2s+1 strided
        # slices summed in one elementwise fusion, which XLA can also fuse with
        # the producer (the exp of a kernel layer). Measured 2-4x faster on CPU
        # than the dense pooling matrices, which need a transpose per axis.
        g = gaussian_filter_1d(subsampling, std)
        x = _strided_filter(x, g, subsampling, h_axis)
        return _strided_filter(x, g, subsampling, w_axis)
    ph = pooling_matrix(x.shape[h_axis], subsampling, mode=mode, std=std)
    pw = pooling_matrix(x.shape[w_axis], subsampling, mode=mode, std=std)
    # W first: its product keeps the minor axis of the map it reads, so XLA
    # fuses the map's producer (a kernel embedding) without merging W and C into
    # one axis, which left that loop unvectorized (ckn-grad layer 2: -19% time).
    if w_axis == x.ndim - 1:
        x = jnp.matmul(x, jnp.asarray(pw.T, x.dtype), precision=precision)
    else:
        x = _matrix_along(x, pw, w_axis, precision)
    return _matrix_along(x, ph, h_axis, precision)


def _strided_filter(x: jax.Array, taps: np.ndarray, stride: int, axis: int) -> jax.Array:
    """1-D correlation along ``axis`` with centred taps (2r+1), zero padding r, stride s."""
    n = x.shape[axis]
    r = (len(taps) - 1) // 2
    n_out = (n - 1) // stride + 1
    span = stride * (n_out - 1) + 1
    pads = [(0, 0, 0)] * x.ndim
    pads[axis] = (r, span + 2 * r - n - r, 0)
    xp = lax.pad(x, np.zeros((), x.dtype), pads)
    out = None
    for k, w in enumerate(np.asarray(taps, np.float32)):
        term = lax.slice_in_dim(xp, k, k + span, stride, axis=axis) * w.astype(x.dtype)
        out = term if out is None else out + term
    return out


def _matrix_along(x: jax.Array, m: np.ndarray, axis: int, precision=None) -> jax.Array:
    """Applies (n_out, n) matrix m along ``axis`` of x, keeping the axis order.

    A dot batched over the leading axes, with the result already in place: no
    transpose of the map, unlike an einsum contracting a middle axis.
    """
    n_out, n = m.shape
    lead = math.prod(x.shape[:axis])
    tail = math.prod(x.shape[axis + 1 :])
    mb = jnp.broadcast_to(jnp.asarray(m, x.dtype), (lead, n_out, n))
    y = lax.dot_general(
        mb, x.reshape(lead, n, tail), (((2,), (1,)), ((0,), (0,))), precision=precision
    )
    return y.reshape(*x.shape[:axis], n_out, *x.shape[axis + 1 :])


def blur_matrix(n: int, std: float) -> np.ndarray:
    """Dense (n, n) matrix of a 1-D Gaussian blur, radius ceil(4 std), symmetric border.

    The border mirrors the edge pixel (numpy ``pad(mode="symmetric")``, OpenCV
    ``BORDER_REFLECT``), so a flat patch stays flat. std = 0 is the identity.
    """
    if std == 0:
        return np.eye(n)
    r = max(1, math.ceil(4.0 * std))
    t = np.arange(-r, r + 1)
    g = np.exp(-(t * t) / (2.0 * std * std))
    g /= g.sum()
    m = np.zeros((n, n))
    for i in range(n):
        for k, w in zip(i + t, g):
            # Mirror into [0, n): ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...
            k = k % (2 * n)
            m[i, k if k < n else 2 * n - 1 - k] += w
    return m


def gaussian_blur(x: jax.Array, std: float, *, precision=None) -> jax.Array:
    """Separable Gaussian blur of (N, H, W, C) with a mirrored border (see :func:`blur_matrix`)."""
    if std == 0:
        return x
    bh = jnp.asarray(blur_matrix(x.shape[1], std), dtype=x.dtype)
    bw = jnp.asarray(blur_matrix(x.shape[2], std), dtype=x.dtype)
    x = jnp.einsum("ah,nhwc->nawc", bh, x, precision=precision)
    return jnp.einsum("bw,nawc->nabc", bw, x, precision=precision)


def centering_matrix(size: int, channels: int) -> np.ndarray:
    """(d, d) symmetric matrix that subtracts the per-channel mean of a sub-patch.

    Acting on row vectors in (row, column, channel) order: x_centred = x @ M.
    """
    d = size * size * channels
    same_channel = np.tile(np.eye(channels), (size * size, size * size))
    return np.eye(d) - same_channel / (size * size)


def whitening_matrix(x: np.ndarray, rel_eps: float = 1e-8, reg: float = 0.0) -> np.ndarray:
    """ZCA whitening (d, d) learned from centred sub-patches x (n, d).

    W = U diag(1/sqrt(lambda + reg * max(lambda))) U^T over the eigen-directions
    of the covariance with lambda >= rel_eps * max(lambda); the others are
    dropped (mapped to 0). reg = 0 is plain whitening (CKN_NOTES); reg > 0
    damps the low-variance (noise) directions instead of blowing them up.
    """
    x = np.asarray(x, dtype=np.float64)
    cov = x.T @ x / max(x.shape[0], 1)
    w, u = np.linalg.eigh(cov)
    keep = w >= rel_eps * w.max()
    u = u[:, keep]
    return (u / np.sqrt(w[keep] + reg * w.max())[None, :]) @ u.T


def central_gradient(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Central-difference gradient of (N, H, W), one-sided at the borders (numpy.gradient).

    Returns:
      (gx, gy), each (N, H, W): derivative along columns (x) and rows (y).
    """

    def grad_axis(a, axis):
        n = a.shape[axis]
        if n < 2:
            return jnp.zeros_like(a)
        take = lambda lo, hi: lax.slice_in_dim(a, lo, hi, axis=axis)  # noqa: E731
        first = take(1, 2) - take(0, 1)
        last = take(n - 1, n) - take(n - 2, n - 1)
        if n == 2:
            return jnp.concatenate([first, last], axis=axis)
        mid = (take(2, n) - take(0, n - 2)) * 0.5
        return jnp.concatenate([first, mid, last], axis=axis)

    return grad_axis(x, 2), grad_axis(x, 1)


def gradient_map(x: jax.Array, orientations: int, sigma: float, eps: float = NORM_EPS) -> jax.Array:
    """The CKN-grad input map: a smooth orientation histogram of gradients.

    phi_k = rho * exp(-||g / rho - (cos t_k, sin t_k)||^2 / (2 sigma^2)) with
    t_k = 2 pi k / K and rho = ||g||; 0 where rho <= eps (CKN_NOTES section 2).

    Args:
      x: (N, H, W, 1) single-channel images.
      orientations: K.
      sigma: bandwidth on the unit circle.

    Returns:
      (N, H, W, K).
    """
    return jnp.moveaxis(gradient_planes(x, orientations, sigma, eps), 1, -1)


def gradient_planes(
    x: jax.Array, orientations: int, sigma: float, eps: float = NORM_EPS
) -> jax.Array:
    """:func:`gradient_map` channels first: (N, H, W, 1) -> (N, K, H, W), the same values.

    With K = 12 channels last, XLA's loops over the map (and its pooling) ran
    unvectorized; planes keep the W axis minor.
    """
    gx, gy = central_gradient(x[..., 0])
    rho = jnp.sqrt(gx * gx + gy * gy)
    inv = 1.0 / jnp.maximum(rho, eps)
    rho = jnp.where(rho > eps, rho, 0.0)  # rounding noise of a flat region counts as flat
    theta = 2.0 * np.pi * np.arange(orientations) / orientations
    cos_t = jnp.asarray(np.cos(theta), dtype=x.dtype).reshape(1, orientations, 1, 1)
    sin_t = jnp.asarray(np.sin(theta), dtype=x.dtype).reshape(1, orientations, 1, 1)
    u = (gx * inv)[:, None] * cos_t + (gy * inv)[:, None] * sin_t
    # ||a - b||^2 / (2 sigma^2) = (1 - <a, b>) / sigma^2 for unit a, b.
    return rho[:, None] * kappa(u, sigma)


def gaussian_pool_planes(
    x: jax.Array,
    subsampling: int,
    *,
    mode: str = "strided",
    std: float | None = None,
    precision=None,
) -> jax.Array:
    """:func:`gaussian_pool` of channels-first maps: (N, C, H, W) -> (N, C, H', W')."""
    return _separable_pool(x, subsampling, mode, std, precision, h_axis=2)


def project_descriptors(x: jax.Array, matrix: jax.Array, *, precision=None) -> jax.Array:
    """A linear projection of descriptors, then L2 normalization of each row.

    The norm's derivative is finite at 0 (a flat patch's zero descriptor
    stays zero, with zero gradient), so the map can be trained.

    Args:
      x: (N, D) descriptors.
      matrix: (D, k) projection.

    Returns:
      (N, k) rows of unit norm (zero rows stay zero).
    """
    y = jnp.matmul(x, matrix, precision=precision)
    sq = jnp.sum(y * y, axis=1, keepdims=True)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, y * lax.rsqrt(jnp.maximum(safe, 1e-24)), 0.0)


def to_float(patches) -> jax.Array:
    """uint8 (or any integer) -> float32 in [0, 1]; floats -> float32 unchanged.

    A multiplication, not a division: XLA's CPU backend may divide with a
    vectorized approximation in some lanes and exactly in others, so equal
    pixels could map to unequal floats and a flat patch would get a tiny
    non-zero gradient (which the final L2 normalization then blows up).
    """
    patches = jnp.asarray(patches)
    if jnp.issubdtype(patches.dtype, jnp.integer):
        return patches.astype(jnp.float32) * np.float32(1.0 / 255.0)
    return patches.astype(jnp.float32)


_LUMA = (0.299, 0.587, 0.114)


def select_channels(x: jax.Array, mode: str) -> jax.Array:
    """(N, H, W) or (N, H, W, C) -> (N, H, W, C') for mode gray (C'=1), green (C'=1), rgb (C'=3)."""
    if x.ndim == 3:
        x = x[..., None]
    c = x.shape[-1]
    if mode == "rgb":
        if c != 3:
            raise ValueError(f"channels='rgb' needs (N, H, W, 3) input, got {c} channel(s)")
        return x
    if c == 1:
        return x
    if mode == "gray":
        return x @ jnp.asarray(_LUMA, dtype=x.dtype)[:, None]
    if mode == "green":
        return x[..., 1:2]
    raise ValueError(f"unknown channels mode {mode!r}; expected gray, green or rgb")
