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
