"""Reliability of the library and the ``ckn`` commands: outputs, signals, silent wrong answers.

One test (or more) per fault of the reliability issue; the numbers in the
section titles are the issue's. Bad input must give exit status 2, one line
on stderr naming the problem, no traceback and nothing written.
"""

import dataclasses
import json
import os
import stat

import jax
import numpy as np
import pytest
from flax import nnx

import ckn


def _two_layer_config():
    cfg = ckn.get_preset("ckn-tiny")
    return dataclasses.replace(cfg, layers=(cfg.layers[0], ckn.LayerConfig(3, 8, 2)))


@pytest.fixture(scope="module")
def data(tmp_path_factory, photo_patches, tiny_model):
    """A patch file (300 train, 100 test rows, groups of 4) and the session's tiny model."""
    d = tmp_path_factory.mktemp("rel")
    labels = np.arange(len(photo_patches)) // 4
    split = (np.arange(len(photo_patches)) >= 300).astype(np.int8)
    np.savez(d / "p.npz", patches=photo_patches, labels=labels, split=split)
    np.save(d / "p.npy", photo_patches[:40])
    ckn.save(tiny_model[0], d / "model")
    return d


# ----- 1. work thrown away: missing folders, outputs checked before the work -------------------


def test_save_creates_missing_parent_folders(tmp_path, tiny_model):
    ckn.save(tiny_model[0], tmp_path / "a" / "b" / "m")
    assert (tmp_path / "a" / "b" / "m" / "arrays.npz").is_file()
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["m"]


def test_atomic_path_removes_the_folders_it_made_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with ckn.atomic_path(tmp_path / "x" / "y" / "f.npy") as tmp:
            np.save(tmp, np.zeros(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


# ----- 2. silent wrong answers: the training patch size is recorded and checked ----------------


def test_describe_refuses_another_patch_size_or_channel_count(data, photo_patches):
    model = ckn.load(data / "model")
    assert model.patch_shape == (16, 16, 1)
    with pytest.raises(ckn.InputError, match="trained on 16x16 patches, got 12x12"):
        ckn.describe(model, photo_patches[:5, :12, :12])
    colour = np.repeat(photo_patches[:5, :, :, None], 3, axis=3)
    with pytest.raises(ckn.InputError, match="trained on 1-channel patches.*got 3-channel"):
        ckn.describe(model, colour)
    assert ckn.describe(model, photo_patches[:5, :12, :12], any_size=True).shape == (5, 72)


def test_old_model_folder_without_the_record_loads_and_is_not_checked(
    tmp_path, data, photo_patches
):
    old = tmp_path / "old"
    old.mkdir()
    (old / "arrays.npz").write_bytes((data / "model" / "arrays.npz").read_bytes())
    meta = json.loads((data / "model" / "config.json").read_text())
    del meta["patch_shape"]
    (old / "config.json").write_text(json.dumps(meta))
    model = ckn.load(old)
    assert model.patch_shape is None
    assert ckn.describe(model, photo_patches[:3, :12, :12]).shape == (3, 72)


# ----- 4. file modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_modes_of_a_plain_open_and_mkdir(tmp_path, tiny_model, mask):
    old = os.umask(mask)
    try:
        with ckn.atomic_path(tmp_path / "f.npy") as tmp:
            np.save(tmp, np.zeros(2))
        ckn.save(tiny_model[0], tmp_path / "m")
        with open(tmp_path / "plain", "w"):
            pass
        (tmp_path / "plain_dir").mkdir()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "f.npy") == mode(tmp_path / "plain") == 0o666 & ~mask
    assert mode(tmp_path / "m") == mode(tmp_path / "plain_dir") == 0o777 & ~mask
    assert mode(tmp_path / "m" / "arrays.npz") == 0o666 & ~mask


# ----- 9. too small a training set --------------------------------------------------------------


def test_too_small_a_training_set_is_refused_with_the_numbers(photo_patches):
    with pytest.raises(ckn.InputError, match="1 training patch of 16x16 hold 36 sub-patches"):
        ckn.train(ckn.get_preset("ckn-tiny"), photo_patches[:1])
    with pytest.raises(ckn.InputError, match="num_patches 20 sub-patches are too few for 8"):
        cfg = ckn.get_preset("ckn-tiny")
        ckn.train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_patches=20)),
                  photo_patches)  # fmt: skip


# ----- 11. Python API edges -----------------------------------------------------------------------


def test_describe_one_patch_lists_and_zero_patches(tiny_model, photo_patches):
    model, _ = tiny_model
    many = ckn.describe(model, photo_patches[:3])
    np.testing.assert_array_equal(ckn.describe(model, photo_patches[0]), many[:1])  # (H, W)
    np.testing.assert_array_equal(ckn.describe(model, photo_patches[:3].tolist()), many)
    empty = ckn.describe(model, photo_patches[:0])
    assert empty.shape == (0, 128) and empty.dtype == np.float32
    with pytest.raises(ckn.InputError, match="not an array"):
        ckn.describe(model, [np.zeros((16, 16)), np.zeros((8, 8))])
    with pytest.raises(ckn.InputError, match=r"\(N, H, W\)"):
        ckn.describe(model, 3.0)


# ----- 12. progress -------------------------------------------------------------------------------


def test_kmeans_progress_gives_the_same_bits(capsys):
    x = jax.random.normal(jax.random.key(0), (3001, 27))
    x = x / jax.numpy.linalg.norm(x, axis=1, keepdims=True)
    plain = ckn.kmeans(x, 16, key=1, iters=12)
    shown = ckn.kmeans(x, 16, key=1, iters=12, progress="layer 9: k-means")
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(shown[0]))
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(shown[1]))


# ----- features: resumable training --------------------------------------------------------------


def _states_equal(a, b):
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resumed_training_equals_an_uninterrupted_run_bit_for_bit(tmp_path, photo_patches):
    cfg, x = _two_layer_config(), photo_patches[:300]
    whole, reports = ckn.train(cfg, x, seed=3)
    half, _ = ckn.train(cfg, x, seed=3, checkpoint=tmp_path / "ck", stop_after=1)
    assert (
        json.loads((tmp_path / "ck" / "config.json").read_text())["training"]["checkpoint"][
            "layers_done"
        ]
        == 1
    )
    resumed, resumed_reports = ckn.train(cfg, x, seed=3, checkpoint=tmp_path / "ck", resume=True)
    _states_equal(whole, resumed)
    assert [r.sigma for r in reports] == [r.sigma for r in resumed_reports]
    assert resumed.patch_shape == whole.patch_shape == (16, 16, 1)
    # A checkpoint of another run is refused, naming what differs.
    with pytest.raises(ckn.InputError, match="differs in: seed"):
        ckn.train(cfg, x, seed=4, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(ckn.InputError, match="differs in: data"):
        ckn.train(cfg, x[::-1], seed=3, checkpoint=tmp_path / "ck", resume=True)
    with pytest.raises(ckn.InputError, match="no checkpoint to resume"):
        ckn.train(cfg, x, seed=3, checkpoint=tmp_path / "none", resume=True)
