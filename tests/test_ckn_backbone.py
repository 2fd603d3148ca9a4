"""A trained CKN as a backbone: load_backbone("ckn", weights=MODEL_DIR), features, tiling."""

import re
import warnings

import numpy as np
import pytest
from flax import nnx

import ckn
from ckn import InputError
from retrieval import nets as B
from retrieval._src.nets import ckn_backbone as CB


def jit_map(model, images):
    """The model's own map, jitted: ``features`` gives the same bits (eager ops round apart)."""
    return np.asarray(nnx.jit(lambda m, x: m(x))(model, images))


@pytest.fixture(scope="module")
def camera():
    import skimage.data

    return skimage.data.camera()  # (512, 512) uint8


@pytest.fixture(scope="module")
def tiny_net(tiny_model):
    return B.load_backbone("ckn", weights=tiny_model[0])


def test_geometry_of_the_presets():
    # (stride, reach): reach 51 for ckn-grad = blur 6 + gradient 1 + 2 + 2 * (1 + 2) + 4 * (1 + 8).
    want = {"ckn-tiny": (4, 9), "ckn-grad": (16, 51), "ckn-raw": (14, 39), "ckn-ref64": (12, 17)}
    for name, geo in want.items():
        assert CB.network_geometry(ckn.get_preset(name)) == geo, name
    # ckn-tiny: the grad map 16 x 16 x 4 is larger than the layer's 8 x 8 x 8 embeddings.
    assert CB.largest_map_bytes(ckn.get_preset("ckn-tiny"), 16, 16) == 4 * 16 * 16 * 4
    # ckn-raw: the first layer's 3 x 3 x 1 sub-patch vectors count too (64 filters are larger).
    assert CB.largest_map_bytes(ckn.get_preset("ckn-raw"), 28, 28) == 4 * 28 * 28 * 64


def test_shapes_stride_and_patch_equality(tiny_model, tiny_net, photo_patches):
    model = tiny_model[0]
    assert (tiny_net.stride, tiny_net.channels, tiny_net.receptive_field) == (4, 8, 19)
    assert tiny_net.min_size == 5 and tiny_net.name == "ckn"
    patch = photo_patches[:3]  # (3, 16, 16): a multiple of the stride, not padded
    got = np.asarray(tiny_net.features(patch))
    np.testing.assert_array_equal(got, jit_map(model, patch))
    np.testing.assert_allclose(got, np.asarray(model(patch)), rtol=0, atol=1e-6 * got.max())
    assert got.shape == (3, 4, 4, 8) and got.dtype == np.float32
    rgb = np.repeat(patch[..., None], 3, axis=-1)  # the gray model takes the luminance
    np.testing.assert_array_equal(np.asarray(tiny_net.features(rgb)), jit_map(model, rgb))


def test_padding_to_the_stride(tiny_model, tiny_net, camera):
    img = camera[None, 40:57, 100:130]  # 17 x 30 -> edge-padded to 20 x 32
    got = np.asarray(tiny_net.features(img))
    assert got.shape == (1, 5, 8, 8) and tiny_net.output_size(17, 30) == (5, 8)
    padded = np.pad(img, ((0, 0), (0, 3), (0, 2)), mode="edge")
    np.testing.assert_array_equal(got, jit_map(tiny_model[0], padded))


def test_one_compilation_per_padded_size(tiny_net, camera):
    tiny_net.features(camera[None, :17, :30])
    n = CB._ckn_map._cache_size()
    tiny_net.features(camera[None, 5:25, 10:42])  # 20 x 32: the same padded size
    tiny_net.features(camera[None, 1:19, 2:31])  # 18 x 29 -> 20 x 32
    assert CB._ckn_map._cache_size() == n


def test_load_from_a_model_directory(tiny_model, tiny_net, tmp_path, photo_patches):
    path = ckn.save(tiny_model[0], tmp_path / "tiny")
    net = B.load_backbone("ckn", weights=path)
    assert isinstance(net, CB.CknBackbone) and net.name == f"ckn:{path}"
    np.testing.assert_array_equal(
        np.asarray(net.features(photo_patches[:2])),
        np.asarray(tiny_net.features(photo_patches[:2])),
    )


def test_tiled_equals_untiled(tiny_model, camera):
    model = tiny_model[0]
    img = camera[None, 200:270, 150:203]  # 70 x 53 -> 18 x 14 cells
    full = np.asarray(CB.CknBackbone(model).features(img))
    for divisor in (3, 12):  # cores of 3 and 1 cells, margin 3 cells
        net = CB.CknBackbone(
            model, max_bytes=CB.CknBackbone(model).estimate_bytes(70, 53) // divisor
        )
        assert net._tile_cells(72, 56) < 14
        np.testing.assert_allclose(np.asarray(net.features(img)), full, rtol=0, atol=1e-5)
    # A reach one stride short misses border effects: the margin is not oversized.
    net = CB.CknBackbone(model, max_bytes=CB.CknBackbone(model).estimate_bytes(70, 53) // 3)
    net._reach -= net.stride
    assert np.abs(np.asarray(net.features(img)) - full).max() > 1e-5


def test_tiled_equals_untiled_with_centered_pooling(camera):
    # ckn-grad (random filters: tiling does not depend on them): blur, grad map, centered pooling.
    model = ckn.CKN(ckn.get_preset("ckn-grad"), rngs=nnx.Rngs(0))
    img = np.repeat(camera[None, 100:250, 50:165, None], 3, axis=-1)  # 150 x 115 RGB
    full = np.asarray(CB.CknBackbone(model).features(img))
    assert full.shape == (1, 10, 8, 64)
    net = CB.CknBackbone(model, max_bytes=CB.CknBackbone(model).estimate_bytes(150, 115) // 3)
    got = np.asarray(net.features(img))
    scale = np.abs(full).max()
    np.testing.assert_allclose(got / scale, full / scale, rtol=0, atol=1e-5)


def test_batches_split_into_groups(tiny_model, photo_patches):
    model = tiny_model[0]
    one = CB.CknBackbone(model).estimate_bytes(16, 16)
    grouped = CB.CknBackbone(model, max_bytes=2 * one)  # 5 images: groups 2, 2, 1 (+1 padding)
    np.testing.assert_array_equal(
        np.asarray(grouped.features(photo_patches[:5])), jit_map(model, photo_patches[:5])
    )


def test_gray_images_to_an_rgb_model():
    cfg = ckn.CKNConfig(
        name="rgb-raw", input="raw", channels="rgb", patch_size=8,
        layers=(ckn.LayerConfig(subpatch=3, filters=4, subsampling=2, sigma=0.6),),
    )  # fmt: skip
    model = ckn.CKN(cfg, rngs=nnx.Rngs(1))
    net = CB.CknBackbone(model)
    gray = np.random.default_rng(0).integers(0, 256, (2, 12, 10), dtype=np.uint8)
    with pytest.warns(UserWarning, match="repeated to RGB"):
        got = np.asarray(net.features(gray))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_array_equal(got, jit_map(model, rgb))
    assert net.stride == 2 and net.channels == 4


def test_no_classifier_and_input_errors(tiny_model, tiny_net, photo_patches, tmp_path):
    msg = "ckn has no classifier; CAM pooling needs efficientnet-lite0, resnet50 or resnet101"
    with pytest.raises(InputError, match=msg):
        _ = tiny_net.classifier
    with pytest.raises(InputError, match="no classifier"):
        tiny_net.logits(photo_patches[:1])
    with pytest.raises(InputError, match="no classifier"):
        tiny_net.head(np.zeros((1, 4, 4, 8), np.float32))
    with pytest.raises(InputError, match="no fc6 codes"):
        tiny_net.codes(photo_patches[:1])
    path = ckn.save(tiny_model[0], tmp_path / "m")
    with pytest.raises(InputError, match=re.escape(f"ckn:{path} has no classifier")):
        _ = B.load_backbone("ckn", weights=path).classifier
    with pytest.raises(InputError, match="ckn needs weights=MODEL_DIR"):
        B.load_backbone("ckn")
    with pytest.raises(InputError, match="model directory not found"):
        B.load_backbone("ckn", weights=tmp_path / "missing")
    with pytest.raises(InputError, match="width_divisor must be 1 for ckn"):
        B.load_backbone("ckn", weights=path, width_divisor=2)
    with pytest.raises(InputError, match="precision"):
        B.load_backbone("ckn", weights=path, precision="fast")
    with pytest.raises(InputError, match="max_bytes"):
        CB.CknBackbone(tiny_model[0], max_bytes=0)
    with pytest.raises(
        InputError,
        match="known: efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, vgg16, "
        "resnet50, resnet101, ckn",
    ):
        B.load_backbone("vgg19")
    p = photo_patches[:2]
    for bad, match in [
        (p[:, :4, :4], "smaller than the 5 px that ckn needs"),
        (p.astype(np.float32), "must be uint8"),
        (p[..., None], r"must be \(N, H, W, 3\) RGB or \(N, H, W\) gray"),
        (p[:0], "empty batch"),
    ]:
        with pytest.raises(InputError, match=match):
            tiny_net.features(bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_net.features(p[:, :5, :5])  # min_size itself is accepted, without a warning
    assert B.BACKBONE_NAMES == (*B.BACKBONES, "ckn")
