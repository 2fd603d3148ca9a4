"""Strict JAX settings for the whole test suite (as in equinox's conftest).

Four simulated CPU devices so that the sharding code paths run in CI.
"""

import dataclasses
import os

import jax

# The `ckn` command keeps compiled programs in $CKN_CACHE/xla (ckn.enable_compile_cache); the
# suite's in-process and subprocess runs do not (the compilation-cache tests turn it on in a
# temporary folder).
os.environ["CKN_COMPILE_CACHE"] = "0"

# Four CPU devices whatever XLA_FLAGS holds: jax_num_cpu_devices takes precedence over
# --xla_force_host_platform_device_count (checked with jax 0.10), so an XLA_FLAGS set
# for another purpose cannot silently turn the 4-device tests off. It must be set
# before JAX's first computation; later it raises instead of being ignored.
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

NUM_CPU_DEVICES = 4


@pytest.fixture(scope="session")
def cpu_devices():
    """The 4 simulated CPU devices; fails (does not skip) when there are fewer."""
    devs = jax.devices("cpu")
    assert len(devs) >= NUM_CPU_DEVICES, (
        f"the sharding tests need {NUM_CPU_DEVICES} CPU devices, JAX has {len(devs)}: "
        "was JAX used before tests/conftest.py set jax_num_cpu_devices?"
    )
    return devs[:NUM_CPU_DEVICES]


@pytest.fixture(scope="session")
def photo_patches():
    """(400, 16, 16) uint8 patches cut from scikit-image's real `camera` photo."""
    import skimage.data

    img = skimage.data.camera()
    rng = np.random.default_rng(0)
    ys = rng.integers(0, img.shape[0] - 16, 400)
    xs = rng.integers(0, img.shape[1] - 16, 400)
    return np.stack([img[y : y + 16, x : x + 16] for y, x in zip(ys, xs)])


@pytest.fixture(scope="session")
def tiny_model(photo_patches):
    """A ckn-tiny model trained once for the whole session."""
    import ckn

    model, reports = ckn.train(ckn.get_preset("ckn-tiny"), photo_patches, seed=0)
    return model, reports


@pytest.fixture(scope="session")
def colour_patches():
    """(240, 24, 24, 3) uint8 crops of scikit-image's `astronaut` photo.

    The first 200 train the ``two_layer_models``; the last 40 are held out.
    """
    import skimage.data

    img = skimage.data.astronaut()
    rng = np.random.default_rng(1)
    ys = rng.integers(0, img.shape[0] - 24, 240)
    xs = rng.integers(0, img.shape[1] - 24, 240)
    return np.stack([img[y : y + 24, x : x + 24] for y, x in zip(ys, xs)])


def _two_layer_config(inp: str):
    """Small two-layer networks, one per input map and training method.

    grad (k-means): green channel, blur 1, 6 orientations; 24 -> 12 -> 6 -> 2.
    raw (k-means + Nystrom refinement): RGB sub-patches (d = 27), then even 2 x 2
      sub-patches (the asymmetric "same" padding); 24 -> 12 -> 4.
    white (NIPS 2014 objective): gray, blur 1.5, damped whitening; 24 -> 8 -> 4.
    """
    import ckn

    train = ckn.TrainConfig(
        num_patches=2000, kmeans_iters=10, refine_steps=30, nips14_steps=60, batch_size=64
    )
    if inp == "grad":
        return ckn.CKNConfig(
            name="test-grad",
            input="grad",
            channels="green",
            blur=1.0,
            grad_orientations=6,
            grad_sigma=0.4,
            grad_subsampling=2,
            patch_size=24,
            layers=(ckn.LayerConfig(3, 8, 2), ckn.LayerConfig(3, 8, 3)),
            train=dataclasses.replace(train, method="kmeans"),
        )
    if inp == "raw":
        return ckn.CKNConfig(
            name="test-raw",
            input="raw",
            channels="rgb",
            patch_size=24,
            layers=(ckn.LayerConfig(3, 8, 2), ckn.LayerConfig(2, 8, 3)),
            train=dataclasses.replace(train, method="kmeans+nystrom"),
        )
    assert inp == "white", inp
    return ckn.CKNConfig(
        name="test-white",
        input="white",
        channels="gray",
        blur=1.5,
        patch_size=24,
        layers=(ckn.LayerConfig(3, 8, 3), ckn.LayerConfig(3, 8, 2)),
        train=dataclasses.replace(train, method="nips14", whiten_reg=0.1),
    )


@pytest.fixture(scope="session")
def two_layer_models(colour_patches):
    """{"grad" | "raw" | "white": (model, reports)} of ``_two_layer_config``.

    Trained once per session on colour_patches[:200] (test_reference_forward.py and
    test_training.py share them).
    """
    import ckn

    return {
        inp: ckn.train(_two_layer_config(inp), colour_patches[:200], seed=0)
        for inp in ("grad", "raw", "white")
    }


# --- HPatches: synthetic homography sequences, the official benchmark code -----------------------


def _homography(k: int, w: int, h: int) -> np.ndarray:
    """Rotation 4k degrees and scale 1 - 0.04k about the centre, a little perspective."""
    import math

    a = math.radians(4.0 * k)
    s = 1.0 - 0.04 * k
    c = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]])
    m = np.array([[s * math.cos(a), -s * math.sin(a), 0], [s * math.sin(a), s * math.cos(a), 0]])
    m = np.vstack([m, [2e-5 * k, -1e-5 * k, 1.0]])
    return c @ m @ np.linalg.inv(c)


def _write_homography_sequence(folder, image: np.ndarray, *, gain: float = 1.0) -> None:
    """An Oxford-layout sequence: image 1 and its 5 warps (img1..6.png, H1to2p..H1to6p)."""
    import cv2

    folder.mkdir(parents=True)
    h, w = image.shape
    cv2.imwrite(str(folder / "img1.png"), image)
    for k in range(2, 7):
        H = _homography(k - 1, w, h)
        warped = cv2.warpPerspective(image, H, (w, h), flags=cv2.INTER_LINEAR)
        warped = np.clip(warped.astype(np.float64) * gain**k, 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{k}.png"), warped)
        np.savetxt(folder / f"H1to{k}p", H)


@pytest.fixture(scope="session")
def homography_sequences(tmp_path_factory):
    """Two Oxford-layout sequences of real photos under known homographies: ``camera`` and
    ``leuven`` (the astronaut photo, darker in each image: an illumination sequence)."""
    import cv2
    import skimage.data

    root = tmp_path_factory.mktemp("seq")
    _write_homography_sequence(root / "camera", skimage.data.camera())
    gray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    _write_homography_sequence(root / "leuven", gray, gain=0.93)
    return root


@pytest.fixture(scope="session")
def hpatches_peers():
    """The official HPatches benchmark folder (it may be absent):
    ``$CKN_PEERS/hpatches-benchmark``, else ``shared/peers/hpatches-benchmark`` in the nearest
    folder above the repository that has one (``../shared`` for a checkout beside it)."""
    import os
    from pathlib import Path

    if os.environ.get("CKN_PEERS"):
        return Path(os.environ["CKN_PEERS"]) / "hpatches-benchmark"
    root = Path(__file__).resolve().parents[1]
    for up in root.parents:
        if (up / "shared" / "peers" / "hpatches-benchmark").is_dir():
            return up / "shared" / "peers" / "hpatches-benchmark"
    return root.parent / "shared" / "peers" / "hpatches-benchmark"


@pytest.fixture(scope="session")
def official_hpatches(hpatches_peers):
    """``run(descr_dir, tasks_dir, test_sequences, out_dir) -> dict``: the unmodified official
    HPatches Python benchmark (``tests/hpatches_official_runner.py``, run-time shims only) on
    a descriptor folder and task files of split ``all``; its raw figures. Skips when the
    official code, or pandas / joblib / scipy / tqdm that it needs, is missing."""
    import importlib.util
    import json
    import subprocess
    import sys
    from pathlib import Path

    peers = hpatches_peers
    if not (peers / "python" / "utils" / "tasks.py").is_file():
        pytest.skip(f"official HPatches code not found at {peers} (set CKN_PEERS)")
    missing = [m for m in ("pandas", "joblib", "scipy", "tqdm") if not importlib.util.find_spec(m)]
    if missing:
        pytest.skip(f"the official HPatches code needs {', '.join(missing)} (test extra)")
    runner = Path(__file__).with_name("hpatches_official_runner.py")

    def run(descr_dir, tasks_dir, test_sequences, out_dir) -> dict:
        split = Path(out_dir) / "split.json"
        split.write_text(json.dumps({"name": "all", "test": list(test_sequences)}))
        out = Path(out_dir) / "official.json"
        done = subprocess.run(
            [sys.executable, str(runner), str(peers / "python"), str(descr_dir)]
            + [str(tasks_dir), str(split), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(out.read_text())

    return run
