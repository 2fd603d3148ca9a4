"""Strict JAX settings for the whole test suite (as in equinox's conftest).

Four simulated CPU devices so that the sharding code paths run in CI.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
