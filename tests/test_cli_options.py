"""Command-line options that had no test: each reaches the model, the config or the results."""

from __future__ import annotations

import json

import jax
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


# --------------------------------------------------------------------------- ckn finetune


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory):
    """A ckn-tiny with the raw input map (a pre-processing matrix to train) whose unsupervised
    start saw vertical stripes only (fine-tuning on the camera groups then improves it, so the
    kept epoch is a trained one), and two patch files: 40 groups of 4 views in 5 scenes, and
    the same spots one patch twice (validation at mAP 1 from the start: it never improves)."""
    import dataclasses

    from test_finetune import make_groups

    root = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    waves = rng.uniform(0.2, 1.2, (400, 1)) * np.arange(16) + rng.uniform(0, 6.3, (400, 1))
    stripes = np.repeat(128 + 100 * np.sin(waves)[:, None, :], 16, axis=1)
    stripes = np.clip(stripes + rng.normal(0, 4, stripes.shape), 0, 255).astype(np.uint8)
    cfg = dataclasses.replace(ckn.get_preset("ckn-tiny"), input="raw")
    start = ckn.save(ckn.train(cfg, stripes)[0], root / "start")
    files = {}
    for name, views in (("views", 4), ("twice", 1)):
        p, lab = make_groups(40, views, seed=0)
        if views == 1:
            p, lab = np.repeat(p, 2, axis=0), np.repeat(lab, 2)
        files[name] = root / f"{name}.npz"
        scenes = {"scene": (lab // 8).astype(np.int32), "scene_names": [f"s{i}" for i in range(5)]}
        np.savez(files[name], patches=p, labels=lab, split=np.zeros(len(lab), np.uint8), **scenes)
    return start, files


def _finetune(start, patches, out, *flags):
    argv = ["finetune", "--model", str(start), "--patches", str(patches), "--out", str(out),
            "--batch-size", "32", "--lr", "0.01", "--quiet", *flags]  # fmt: skip
    assert main(argv) == 0
    return ckn.load(out), ckn.read_training_report(out)["finetune"]


def _layer(model):
    layer = model.layers[0]
    names = ("filters", "linear", "preproc", "alpha", "bias")
    return {k: np.asarray(getattr(layer, k).get_value()) for k in names}


def _nystrom(parts, lam):
    sigma = float(1.0 / np.sqrt(parts["alpha"]))
    return np.asarray(ckn.ops.nystrom_projection(parts["filters"], sigma, lam))


def test_finetune_trainable_loss_and_margin_reach_the_training(finetune_setup, tmp_path, capsys):
    """--trainable changes the named parts only; --loss and --margin reach the loss: with a
    margin of 10 every batch-hard triplet is active, so the triplet loss is 10 + d_ap^2 - d_an^2
    in [6, 14] for unit descriptors, and the contrastive one 1/2 d_ap^2 + 1/2 (10 - d_an)^2 in
    [32, 52] (the defaults, 0.5 and 0.7, give at most 4.5 and 2.3)."""
    start, files = finetune_setup
    s = _layer(ckn.load(start))
    lam = ckn.load(start).config.layers[0].lam
    model, report = _finetune(start, files["views"], tmp_path / "a", "--epochs", "2",
                              "--trainable", "filters", "--loss", "triplet", "--margin", "10",
                              "--patience", "0")  # fmt: skip
    assert report["best_epoch"] > 0  # a trained epoch is kept (not the start)
    assert all(6 <= h["loss"] <= 14 for h in report["history"][1:]), report["history"]
    a = _layer(model)
    assert not np.array_equal(a["filters"], s["filters"])
    for k in ("preproc", "alpha", "bias"):
        np.testing.assert_array_equal(a[k], s[k], err_msg=k)
    assert model.config.layers[0].lam == lam
    np.testing.assert_allclose(a["linear"], _nystrom(a, lam), atol=1e-4)  # still a Nystrom map
    model, report = _finetune(start, files["views"], tmp_path / "b", "--epochs", "2",
                              "--trainable", "filters+input+lam+linear", "--loss", "contrastive",
                              "--margin", "10", "--patience", "0")  # fmt: skip
    assert report["best_epoch"] > 0
    assert all(32 <= h["loss"] <= 52 for h in report["history"][1:]), report["history"]
    b = _layer(model)
    for k in ("filters", "preproc"):
        assert not np.array_equal(b[k], s[k]), k
    for k in ("alpha", "bias"):
        np.testing.assert_array_equal(b[k], s[k], err_msg=k)
    new_lam = model.config.layers[0].lam
    assert new_lam != lam
    assert np.abs(b["linear"] - _nystrom(b, new_lam)).max() > 1e-3  # a learned W after it


def test_finetune_patience_stops_at_the_right_epoch(finetune_setup, tmp_path, capsys):
    """Validation at mAP 1 from the start (each group one patch twice) never improves:
    --patience 3 stops after epoch 3 of 10 and keeps the start; --patience 0 never stops."""
    start, files = finetune_setup
    _, report = _finetune(start, files["twice"], tmp_path / "p3", "--epochs", "10",
                          "--patience", "3")  # fmt: skip
    assert [h["val_map"] for h in report["history"]] == [1.0] * 4
    assert report["epochs_done"] == 3 and report["stopped_early"] and report["best_epoch"] == 0
    _, report = _finetune(start, files["twice"], tmp_path / "p0", "--epochs", "4",
                          "--patience", "0")  # fmt: skip
    assert report["epochs_done"] == 4 and not report["stopped_early"]


# --------------------------------------------------------------------------- ckn train-global


def test_train_global_mining_negatives_and_pool_size_reach_the_training(tmp_path, capsys):
    """The head of ``--mining pool --negatives 1 --pool-size 4`` is, bit for bit, the one
    train_global_head trains with those settings, and each setting changes the head: with any
    one of them left at its default (batch mining, 2 negatives, a pool of 1000 = every image)
    the head differs."""
    import dataclasses

    import cv2
    import skimage.data
    from test_global_desc import random_state

    from retrieval.image import (
        GlobalHeadConfig,
        load_global_head,
        load_image_folder,
        prepare_maps,
        train_global_head,
    )
    from retrieval.nets import load_backbone, state_dict_shapes, write_state_dict

    weights = tmp_path / "r50.pth"
    write_state_dict(weights, random_state(state_dict_shapes("resnet50", 16), 5), format="zip")
    net = load_backbone("resnet50", weights, width_divisor=16)
    rng = np.random.default_rng(3)
    photo = skimage.data.astronaut()
    for g in range(4):
        (tmp_path / "train" / f"g{g}").mkdir(parents=True)
        y, x = rng.integers(0, 400, 2)
        for j in range(3):
            dy, dx = rng.integers(0, 12, 2)
            crop = photo[y + dy : y + dy + 72, x + dx : x + dx + 72, ::-1]
            cv2.imwrite(str(tmp_path / "train" / f"g{g}" / f"{j}.png"), np.ascontiguousarray(crop))
    out = tmp_path / "head"
    argv = ["train-global", "--images", str(tmp_path / "train"), "--backbone",
            f"resnet50:{weights}", "--side", "64", "--epochs", "2", "--groups", "2",
            "--group-size", "2", "--val-fraction", "0", "--head", "gem", "--mining", "pool",
            "--negatives", "1", "--pool-size", "4", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    coll = load_image_folder(tmp_path / "train")
    maps = prepare_maps(net, coll.paths, side=64)
    cfg = GlobalHeadConfig(head="gem", epochs=2, groups_per_batch=2, images_per_group=2,
                           mining="pool", negatives=1, pool_size=4, side=64)  # fmt: skip

    def leaves(head):
        return [np.asarray(a) for a in jax.tree.leaves(head.params())]

    want = leaves(train_global_head(maps, coll.labels, cfg)[0])
    got = leaves(load_global_head(out))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    for change in ({"mining": "batch"}, {"negatives": 2}, {"pool_size": 1000}):
        other = leaves(train_global_head(maps, coll.labels, dataclasses.replace(cfg, **change))[0])
        assert not all(np.array_equal(a, b) for a, b in zip(other, want)), change
