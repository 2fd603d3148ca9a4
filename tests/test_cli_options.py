"""Command-line options that had no test: each reaches the model, the config or the results."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ckn
from retrieval.cli.main import main

TINY = ["--preset", "ckn-tiny", "--quiet"]


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory, photo_patches):
    path = tmp_path_factory.mktemp("data") / "patches.npz"
    labels = np.arange(len(photo_patches)) // 4
    split = (np.arange(len(photo_patches)) >= 300).astype(np.int8)
    np.savez(path, patches=photo_patches, labels=labels, split=split)
    return path


def test_train_overrides_reach_the_saved_model(tmp_path, patch_file, capsys):
    out = tmp_path / "m"
    argv = ["train", *TINY, "--patches", str(patch_file), "--out", str(out), "--split", "train",
            "--input", "grad", "--orientations", "6", "--normalize", "position",
            "--method", "kmeans+nystrom", "--kmeans-iters", "4", "--channels", "gray",
            "--subpatch", "2", "--subsampling", "2", "--pooling", "centered",
            "--num-patches", "2000"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    model = ckn.load(out)
    cfg = model.config
    assert (cfg.input, cfg.grad_orientations, cfg.normalize, cfg.channels) == (
        "grad",
        6,
        "position",
        "gray",
    )
    assert (cfg.train.method, cfg.train.kmeans_iters, cfg.train.num_patches) == (
        "kmeans+nystrom",
        4,
        2000,
    )
    layer = cfg.layers[0]
    assert (layer.subpatch, layer.subsampling, layer.pooling) == (2, 2, "centered")
    # The first layer sees 6 orientation channels of 2x2 sub-patches.
    assert model.layers[0].filters.get_value().shape[1] == 2 * 2 * 6
    report = ckn.read_training_report(out)
    assert report["seed"] == 0 and len(report["layers"]) == len(cfg.layers)
    assert report["layers"][0]["kmeans_objective"][-1] <= report["layers"][0]["kmeans_objective"][0]


def test_eval_patches_max_pairs_reaches_the_results(tmp_path, patch_file, capsys):
    out = tmp_path / "r.json"
    argv = ["eval-patches", "--patches", str(patch_file), "--model", "pixels", "--split", "test",
            "--max-pairs", "40", "--json", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["protocol"]["pairs"]["max_matching"] == 40
    # 100 test patches in groups of 4: 150 matching pairs exist, 40 are sampled.
    assert doc["splits"]["test"]["num_pairs"]["matching"] == 40


# --------------------------------------------------------------------------- ckn patches


def _photos(root):
    import cv2
    import skimage.data

    root.mkdir()
    for name in ("astro", "camera", "coffee"):
        img = getattr(skimage.data, "astronaut" if name == "astro" else name)()
        img = cv2.resize(img, (192, 192), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / f"{name}.png"), img[..., ::-1] if img.ndim == 3 else img)
    return root


def test_patches_test_scenes_are_the_test_split(tmp_path, capsys):
    from retrieval.patches import load_patchset

    photos = _photos(tmp_path / "photos")
    for test in (["astro", "coffee"], ["camera"]):
        out = tmp_path / f"{'_'.join(test)}.npz"
        argv = ["patches", "--photos", str(photos), "--views", "3", "--test-scenes",
                ",".join(test), "--out", str(out), "--quiet"]  # fmt: skip
        assert main(argv) == 0, capsys.readouterr().err
        ps = load_patchset(out)
        names = np.asarray(ps.scene_names)[ps.scene]
        assert set(names[ps.split == 1]) == set(test)
        assert set(names[ps.split == 0]) == {"astro", "camera", "coffee"} - set(test)


def test_patches_no_cache_neither_reads_nor_writes_the_cache(
    tmp_path, tmp_path_factory, monkeypatch, capsys
):
    """A cache entry that differs from the build (a patch zeroed) is what --default returns
    without --no-cache; with it the set is rebuilt, and the cache left as it was."""
    import shutil

    from retrieval.patches import build_default, default_cache_path, load_patchset, save_patchset

    # The quick default, built once per session (the cache of tests/test_cli_patches.py).
    monkeypatch.setenv("CKN_CACHE", str(tmp_path_factory.getbasetemp() / "ckn_cache"))
    built = build_default(quick=True, seed=0)
    shared = default_cache_path(quick=True)
    assert shared.is_file()
    monkeypatch.setenv("CKN_CACHE", str(tmp_path / "cache"))
    entry = default_cache_path(quick=True)
    entry.parent.mkdir(parents=True)
    shutil.copy(shared, entry)
    poisoned = load_patchset(entry)
    poisoned.patches[0] = 0
    save_patchset(poisoned, entry)
    before = entry.read_bytes()
    base = ["patches", "--default", "--quick", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "cached.npz")]) == 0
    assert "(from the cache)" in capsys.readouterr().out
    assert not load_patchset(tmp_path / "cached.npz").patches[0].any()
    assert main([*base, "--no-cache", "--out", str(tmp_path / "fresh.npz")]) == 0
    assert "(from the cache)" not in capsys.readouterr().out
    np.testing.assert_array_equal(load_patchset(tmp_path / "fresh.npz").patches, built.patches)
    assert entry.read_bytes() == before
    # And into an empty cache folder nothing is written.
    monkeypatch.setenv("CKN_CACHE", str(tmp_path / "empty"))
    assert main([*base, "--no-cache", "--out", str(tmp_path / "again.npz")]) == 0
    assert not (tmp_path / "empty").exists() or not any((tmp_path / "empty").iterdir())
