"""An independent NumPy forward pass of a two-layer CKN, compared with ``ckn.describe``.

The reference below is written from the math (CKN_NOTES sections 1-2, the docstrings of
``CKNConfig`` / ``LayerConfig``), in float64 with explicit loops and einsums, and calls
no ``ckn`` function: it reads only a model's stored arrays (``filters``, ``alpha``,
``bias``, ``linear``, ``preproc`` of each layer) and its config. Three small models are
trained (CKN-grad with k-means, CKN-raw on RGB with k-means + Nystrom refinement,
CKN-white with the NIPS 2014 objective); the pooling geometry, the normalization, the
channel selection, the blur and the padding are then varied on the trained arrays, since
they are config, not parameters.

A second group of tests checks that the comparison has teeth: a reference with one
deliberate mistake (a wrong pooling std, a strided pooling for a centred one, no
per-position normalization, no Nystrom map, no blur, a wrong orientation bandwidth)
must FAIL the same tolerance.
"""

import dataclasses
import math

import numpy as np
import pytest
from flax import nnx

import ckn

# Descriptors are unit-norm float32; the library computes in float32 with HIGHEST
# matmul precision, the reference in float64. Measured max abs difference over the nine
# cases: 1.1e-6 (grad), at most 3.2e-7 (raw, white). 1e-5 leaves ~10x for other CPUs
# and XLA builds; the smallest deliberate mistake below moves descriptors by 3.4e-2.
TOL = 1e-5
NORM_EPS = 1e-5  # CKN_NOTES 1.3: below this norm a sub-patch counts as empty
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the "gray" channel


# --- The reference ----------------------------------------------------------------------


def ref_pool_matrix(n, s, mode, std):
    """(n_out, n) weights of 1-D Gaussian pooling with subsampling s (identity for s = 1).

    Outputs: n_out = ceil(n / s). "strided": output i centred on input i * s (the papers');
    "centered": centred on the middle of the i-th of n_out equal cells tiling [0, n).
    Taps: the integer positions within distance s of the centre, weights
    exp(-d^2 / (2 std^2)) normalized over all those taps (positions outside the map are
    zero padding, so a border output loses their mass), std = s / sqrt(2) by default.
    """
    if s == 1:
        return np.eye(n)
    std = s / math.sqrt(2.0) if std is None else std
    n_out = -(-n // s)
    m = np.zeros((n_out, n))
    for i in range(n_out):
        c = i * s if mode == "strided" else (i + 0.5) * n / n_out - 0.5
        taps = [
            t for t in range(math.floor(c) - s - 1, math.ceil(c) + s + 2) if abs(t - c) <= s + 1e-9
        ]
        w = np.array([math.exp(-((t - c) ** 2) / (2 * std * std)) for t in taps])
        w /= w.sum()
        for t, wt in zip(taps, w):
            if 0 <= t < n:
                m[i, t] = wt
    return m


def ref_pool(x, s, mode, std):
    """Separable pooling of (N, H, W, C)."""
    ph = ref_pool_matrix(x.shape[1], s, mode, std)
    pw = ref_pool_matrix(x.shape[2], s, mode, std)
    return np.einsum("ah,nhwc,bw->nabc", ph, x, pw)


def ref_blur(x, std):
    """Gaussian blur of (N, H, W, C), radius max(1, ceil(4 std)), mirrored border.

    The mirror repeats the edge pixel (... 1 0 | 0 1 ...), so a flat patch stays flat.
    """
    if std == 0:
        return x
    r = max(1, math.ceil(4 * std))
    t = np.arange(-r, r + 1)
    g = np.exp(-(t * t) / (2 * std * std))
    g /= g.sum()
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="symmetric")
    h, w = x.shape[1:3]
    rows = sum(g[k] * xp[:, k : k + h] for k in range(2 * r + 1))
    return sum(g[k] * rows[:, :, k : k + w] for k in range(2 * r + 1))


def ref_input_map(patches, cfg):
    """The map feeding layer 1: channels, blur, then for "grad" the pooled orientation map."""
    x = patches.astype(np.float64) / 255.0
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 3 and cfg.channels == "gray":
        x = (x @ LUMA)[..., None]
    elif x.shape[-1] == 3 and cfg.channels == "green":
        x = x[..., 1:2]
    x = ref_blur(x, cfg.blur)
    if cfg.input != "grad":
        return x
    # Central differences, one-sided at the borders; gx along columns, gy along rows.
    gy, gx = np.gradient(x[..., 0], axis=(1, 2))
    rho = np.hypot(gx, gy)
    k = cfg.grad_orientations
    out = np.zeros((*rho.shape, k))
    ok = rho > NORM_EPS
    for j in range(k):
        theta = 2 * np.pi * j / k
        ux, uy = (
            np.where(ok, gx / np.where(ok, rho, 1), 0),
            np.where(ok, gy / np.where(ok, rho, 1), 0),
        )
        d2 = (ux - np.cos(theta)) ** 2 + (uy - np.sin(theta)) ** 2
        out[..., j] = np.where(ok, rho * np.exp(-d2 / (2 * cfg.grad_sigma**2)), 0.0)
    return ref_pool(out, cfg.grad_subsampling, cfg.grad_pooling, cfg.grad_pool_std)


def ref_subpatches(x, e, padding):
    """(N, H', W', e*e*C) vectors of every e x e sub-patch, (row, column, channel) order.

    "same": zero padding keeping H x W, the extra row / column of an even e after the map.
    """
    if padding == "same":
        lo = (e - 1) // 2
        x = np.pad(x, ((0, 0), (lo, e - 1 - lo), (lo, e - 1 - lo), (0, 0)))
    n, h, w, c = x.shape
    ho, wo = h - e + 1, w - e + 1
    out = np.zeros((n, ho, wo, e, e, c))
    for i in range(e):
        for j in range(e):
            out[:, :, :, i, j, :] = x[:, i : i + ho, j : j + wo, :]
    return out.reshape(n, ho, wo, e * e * c)


def ref_layer(x, lc, arrays):
    """psi(x) = pool(rho * exp(alpha <z_l, x / rho> + b_l)) @ L, rho = ||x|| (0 below NORM_EPS)."""
    sub = ref_subpatches(x, lc.subpatch, lc.padding)
    if arrays["preproc"] is not None:
        sub = sub @ arrays["preproc"]
    rho = np.linalg.norm(sub, axis=-1, keepdims=True)
    u = sub @ arrays["filters"].T / np.maximum(rho, NORM_EPS)
    rho = np.where(rho > NORM_EPS, rho, 0.0)
    phi = rho * np.exp(arrays["alpha"] * u + arrays["bias"])
    return ref_pool(phi, lc.subsampling, lc.pooling, lc.pool_std) @ arrays["linear"]


def ref_describe(patches, cfg, arrays):
    """(N, D) unit-norm descriptors ("position": each position to unit norm first)."""
    y = ref_input_map(patches, cfg)
    for lc, a in zip(cfg.layers, arrays):
        y = ref_layer(y, lc, a)
    if cfg.normalize == "position":
        y = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    y = y.reshape(len(y), -1)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def stored_arrays(model):
    """The arrays of each kernel layer as float64 NumPy (preproc None where absent)."""
    filters = nnx.state(model, ckn.Filters)  # the learned arrays, all of them Filters
    out = []
    for layer in filters["layers"].values():
        a = {
            k: np.asarray(layer[k].get_value(), np.float64)
            for k in ("filters", "alpha", "bias", "linear")
        }
        a["preproc"] = (
            np.asarray(layer["preproc"].get_value(), np.float64) if "preproc" in layer else None
        )
        out.append(a)
    return out


# --- Configurations compared ---------------------------------------------------------------


INPUTS = ("grad", "raw", "white")


def _relayer(cfg, **per_layer):
    """cfg with layer i's fields replaced by per_layer[field][i] (None: keep)."""
    layers = []
    for i, lc in enumerate(cfg.layers):
        kw = {k: v[i] for k, v in per_layer.items() if v[i] is not None}
        layers.append(dataclasses.replace(lc, **kw))
    return dataclasses.replace(cfg, layers=tuple(layers))


# Geometry / normalization variants applied to a trained model. Across them every
# pooling mode appears with and without pool_std, with both normalizations, both
# paddings, and (for single-channel inputs) both gray and green.
def _variant(cfg, name):
    if name == "papers":  # as trained: strided pooling, default std, global L2
        return cfg
    if name == "centered":
        cfg = _relayer(cfg, pooling=("centered", "centered"), pool_std=(None, 0.75))
        cfg = dataclasses.replace(
            cfg, normalize="position", grad_pooling="centered", grad_pool_std=0.9
        )
        return cfg
    assert name == "mixed"
    cfg = _relayer(cfg, pool_std=(1.2, None), pooling=(None, "centered"), padding=(None, "valid"))
    swap = {"green": "gray", "gray": "green", "rgb": "rgb"}[cfg.channels]
    return dataclasses.replace(cfg, normalize="position", channels=swap, grad_pool_std=1.1)


VARIANTS = ("papers", "centered", "mixed")


def with_config(model, cfg):
    """A model with ``cfg`` and the trained arrays of ``model`` (same parameter shapes)."""
    other = ckn.CKN(cfg, rngs=nnx.Rngs(0))
    nnx.update(other, nnx.state(model, ckn.Filters))
    return other


@pytest.fixture(scope="module")
def compared(two_layer_models, colour_patches):
    """{(input, variant): (describe, reference, config, stored arrays, patches)} on 40 held-out."""
    x = colour_patches[200:].copy()
    x[0] = 128  # a flat patch (see the test for what each input map makes of it)
    out = {}
    for inp in INPUTS:
        model, _ = two_layer_models[inp]
        arrays = stored_arrays(model)
        for v in VARIANTS:
            cfg = _variant(model.config, v)
            got = ckn.describe(with_config(model, cfg), x)
            out[inp, v] = (got, ref_describe(x, cfg, arrays), cfg, arrays, x)
    return out


# --- The comparison ------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("inp", INPUTS)
def test_describe_matches_the_numpy_reference(compared, inp, variant):
    got, ref, cfg, _, x = compared[inp, variant]
    h, w, c = cfg.output_shape(*x.shape[1:3])
    assert got.shape == ref.shape == (len(x), h * w * c)
    # Patch 0 is flat (zero descriptor for "grad"; the zero padding of "same" gives its
    # border an edge for "raw" / "white"), as are a few crops of the photo's background.
    flat = np.linalg.norm(ref, axis=1) == 0
    assert flat[0] == (inp == "grad") and flat.sum() < len(x) // 4
    np.testing.assert_array_equal(got[flat], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[~flat], axis=1), 1.0, atol=1e-5)
    err = np.abs(got - ref).max()
    assert err < TOL, f"{inp}/{variant}: max |describe - reference| = {err:.2e}"


def test_stored_arrays_follow_each_methods_math(two_layer_models):
    """The arrays the reference reads are the ones each method defines (CKN_NOTES 1.2-1.5)."""
    for inp in INPUTS:
        model, reports = two_layer_models[inp]
        for i, (a, r, lc) in enumerate(zip(stored_arrays(model), reports, model.config.layers)):
            z, s2 = a["filters"], r.sigma**2
            # Tolerances: float32 storage (measured relative errors in comments), ~10x room.
            if model.config.train.method == "nips14":
                np.testing.assert_allclose(a["alpha"], 2 / s2, rtol=1e-6)  # measured 1e-7
                np.testing.assert_array_equal(a["linear"], np.eye(len(z)))
            else:
                np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)  # 1.6e-7
                np.testing.assert_allclose(a["alpha"], 1 / s2, rtol=1e-6)  # 4e-8
                np.testing.assert_allclose(a["bias"], -1 / s2, rtol=1e-6)  # 4e-8
                # (kappa(Z Z^T) + lam I)^{-1/2} by float64 eigh; the library's float32 eigh of
                # these 8 x 8 matrices (condition 10 - 20): measured 9e-7 of the largest entry.
                vals, vecs = np.linalg.eigh(np.exp((z @ z.T - 1) / s2) + lc.lam * np.eye(len(z)))
                expected = (vecs / np.sqrt(vals)) @ vecs.T
                np.testing.assert_allclose(
                    a["linear"], expected, atol=1e-5 * np.abs(expected).max()
                )
            if i > 0 or inp == "grad":
                assert a["preproc"] is None
            elif inp == "raw":
                # Subtract each channel's mean over the 3 x 3 sub-patch (measured 7e-9).
                e2, c = lc.subpatch**2, 3
                centre = np.eye(e2 * c) - np.kron(np.ones((e2, e2)), np.eye(c)) / e2
                np.testing.assert_allclose(a["preproc"], centre, atol=1e-7)
            else:
                # Centring then symmetric whitening on the centred subspace: P = C W = W,
                # symmetric positive semi-definite (measured: 4e-9, exact, -1e-10 of max |P|).
                p, e2 = a["preproc"], lc.subpatch**2
                scale = np.abs(p).max()
                centre = np.eye(e2) - np.ones((e2, e2)) / e2
                np.testing.assert_allclose(centre @ p, p, atol=1e-6 * scale)
                np.testing.assert_allclose(p, p.T, atol=1e-6 * scale)
                assert np.linalg.eigvalsh(p).min() > -1e-6 * scale


# --- Teeth: the tolerance separates right from wrong ---------------------------------------


def _scale_last_pool_std(cfg, arrays):
    lc = cfg.layers[-1]
    std = lc.subsampling / math.sqrt(2) if lc.pool_std is None else lc.pool_std
    return _relayer(cfg, pool_std=(None, 1.25 * std)), arrays


def _strided_everywhere(cfg, arrays):
    assert any(lc.pooling == "centered" for lc in cfg.layers)
    return _relayer(cfg, pooling=("strided", "strided")), arrays


def _global_norm_only(cfg, arrays):
    assert cfg.normalize == "position"
    return dataclasses.replace(cfg, normalize="global"), arrays


def _no_nystrom_map(cfg, arrays):
    return cfg, [{**a, "linear": np.eye(len(a["linear"]))} for a in arrays]


def _no_blur(cfg, arrays):
    assert cfg.blur > 0
    return dataclasses.replace(cfg, blur=0.0), arrays


def _wrong_grad_sigma(cfg, arrays):
    return dataclasses.replace(cfg, grad_sigma=1.2 * cfg.grad_sigma), arrays


MISTAKES = [
    ("grad", "papers", _scale_last_pool_std),
    ("raw", "papers", _scale_last_pool_std),
    ("white", "centered", _scale_last_pool_std),
    ("grad", "centered", _strided_everywhere),
    ("raw", "mixed", _strided_everywhere),
    ("grad", "mixed", _global_norm_only),
    ("white", "centered", _global_norm_only),
    ("grad", "papers", _no_nystrom_map),
    ("raw", "centered", _no_nystrom_map),
    ("white", "papers", _no_blur),
    ("grad", "papers", _wrong_grad_sigma),
]


@pytest.mark.parametrize(
    "inp, variant, mistake", MISTAKES, ids=[f"{i}-{v}-{m.__name__[1:]}" for i, v, m in MISTAKES]
)
def test_a_wrong_reference_fails_the_tolerance(compared, inp, variant, mistake):
    got, _, cfg, arrays, x = compared[inp, variant]
    wrong = ref_describe(x, *mistake(cfg, arrays))
    err = np.abs(got - wrong).max()
    # A hundred times the tolerance at least (measured 3.4e-2 to 3.0e-1): no near miss.
    assert err > 100 * TOL, f"{inp}/{variant}/{mistake.__name__}: only {err:.2e} off"


# --- Layer geometry and the FLOP count of the benchmarks, by hand ------------------------

# Non-zero taps of 1-D pooling (the benchmark counts 2 flops per non-zero tap), listed
# output by output from the definition (taps within distance s of the centre, inside).
POOL_TAPS = {
    # 64 -> 32, s = 2, strided: centre 0 keeps {0, 1, 2}, centre 62 {60..63}, 30 others 5.
    (64, 2, "strided", None): 3 + 30 * 5 + 4,
    # 32 -> 6, s = 6: centres 0, 6, ..., 30: {0..6}, 4 x 13 taps, {24..31}.
    (32, 6, "strided", None): 7 + 4 * 13 + 8,
    # 51 -> 26, s = 2: centres 0 and 50 keep 3 taps, 24 others 5.
    (51, 2, "strided", None): 3 + 24 * 5 + 3,
    # 26 -> 13, s = 2: centre 0 keeps 3, centre 24 keeps {22..25}, 11 others 5.
    (26, 2, "strided", None): 3 + 11 * 5 + 4,
    # 13 -> 4, s = 4, centred cells: centres 1.125, 4.375, 7.625, 10.875 keep
    # {0..5}, {1..8}, {4..11}, {7..12}.
    (13, 4, "centered", 0.75): 6 + 8 + 8 + 6,
}


def test_layer_geometry_and_benchmark_flops_by_hand():
    """CKNConfig.layer_geometry and the FLOPs recorded by benchmarks/bench_encode.py
    (benchmarks/results/bench_encode_cpu.json) against a hand count, for ckn-ref64
    (CKN_NOTES 7: "about 0.31 GFLOP per patch") and ckn-grad (1024-D)."""
    import json
    from pathlib import Path

    for (n, s, mode, std), taps in POOL_TAPS.items():
        assert np.count_nonzero(ref_pool_matrix(n, s, mode, std)) == taps, (n, s, mode)

    ref64, grad = ckn.get_preset("ckn-ref64"), ckn.get_preset("ckn-grad")
    # ckn-ref64, 64 x 64 gray: 3x3 "same" sub-patches keep 64 x 64, pooled by 2 -> 32; then
    # 32 x 32 positions of 3x3x64 sub-patches, pooled by 6 -> ceil(32 / 6) = 6.
    assert ref64.layer_geometry(64, 64) == [
        ckn.LayerGeometry(in_channels=1, positions=(64, 64), pooled=(32, 32)),
        ckn.LayerGeometry(in_channels=64, positions=(32, 32), pooled=(6, 6)),
    ]
    assert ref64.output_shape(64, 64) == (6, 6, 256)
    # ckn-grad, 51 x 51: 12-orientation map pooled by 2 -> 26; -> 13; -> 4 x 4 x 64 = 1024.
    assert grad.layer_geometry(51, 51) == [
        ckn.LayerGeometry(in_channels=12, positions=(26, 26), pooled=(13, 13)),
        ckn.LayerGeometry(in_channels=64, positions=(13, 13), pooled=(4, 4)),
    ]
    assert grad.output_shape(51, 51) == (4, 4, 64)

    def pool(n, s, mode, std, channels):  # separable: H pass on n columns, W pass on n_out rows
        taps = POOL_TAPS[n, s, mode, std]
        return 2 * channels * (taps * n + (-(-n // s)) * taps)

    hand = {
        "ckn-ref64": {
            "layer1_preprocess": 2 * 64 * 64 * 9 * 9,  # centring, a 9 x 9 matrix per position
            "layer1_norms": 2 * 64 * 64 * 9,
            "layer1_filters": 2 * 64 * 64 * 9 * 64,
            "layer1_pool": pool(64, 2, "strided", None, 64),
            "layer1_nystrom": 2 * 32 * 32 * 64 * 64,
            "layer2_norms": 2 * 32 * 32 * 576,
            "layer2_filters": 2 * 32 * 32 * 576 * 256,
            "layer2_pool": pool(32, 6, "strided", None, 256),
            "layer2_nystrom": 2 * 6 * 6 * 256 * 256,
        },
        "ckn-grad": {
            "blur": 2 * 2 * 13 * 51 * 51,  # 13 taps (radius ceil(4 * 1.5)), two passes
            "grad_map": 51 * 51 * (4 + 3 * 12),
            "grad_pool": pool(51, 2, "strided", None, 12),
            "layer1_norms": 2 * 26 * 26 * 108,
            "layer1_filters": 2 * 26 * 26 * 108 * 64,
            "layer1_pool": pool(26, 2, "strided", None, 64),
            "layer1_nystrom": 2 * 13 * 13 * 64 * 64,
            "layer2_norms": 2 * 13 * 13 * 576,
            "layer2_filters": 2 * 13 * 13 * 576 * 64,
            "layer2_pool": pool(13, 4, "centered", 0.75, 64),
            "layer2_nystrom": 2 * 4 * 4 * 64 * 64,
        },
    }
    assert sum(hand["ckn-ref64"].values()) == 324_965_376  # 0.325 GFLOP per patch
    assert hand["ckn-ref64"]["layer2_filters"] / 324_965_376 > 0.92  # "93% in layer 2"
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench_encode_cpu.json"
    recorded = {r["preset"]: r["flops_per_patch"] for r in json.loads(path.read_text())["results"]}
    for preset, parts in hand.items():
        assert recorded[preset]["parts"] == parts, preset
        assert recorded[preset]["total"] == sum(parts.values()), preset
