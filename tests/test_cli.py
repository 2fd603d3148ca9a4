"""`ckn train` / `ckn describe`: round trip and every bad-input path.

Bad input must give exit status 2, exactly one line on stderr naming the
problem, no traceback, and no output file or model directory left behind.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ckn
from retrieval.cli.main import main

TINY = ["--preset", "ckn-tiny", "--quiet"]


def _run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def patch_file(tmp_path_factory, photo_patches):
    path = tmp_path_factory.mktemp("data") / "patches.npz"
    labels = np.arange(len(photo_patches)) // 4
    split = (np.arange(len(photo_patches)) >= 300).astype(np.int8)
    np.savez(path, patches=photo_patches, labels=labels, split=split)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, patch_file):
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert (
        main(["train", *TINY, "--patches", str(patch_file), "--out", str(out), "--split", "train"])
        == 0
    )
    return out


def test_train_writes_a_model_directory(model_dir):
    assert sorted(p.name for p in model_dir.iterdir()) == ["arrays.npz", "config.json"]
    meta = json.loads((model_dir / "config.json").read_text())
    assert meta["config"]["name"] == "ckn-tiny"
    assert meta["training"]["num_train_patches"] == 300  # the train split only
    # No temporary left.
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]


def test_describe_round_trip_equals_in_memory_model(
    capsys, tmp_path, model_dir, patch_file, photo_patches
):
    out = tmp_path / "desc.npy"
    code, stdout, _ = _run(
        capsys,
        "describe",
        "--model",
        str(model_dir),
        "--patches",
        str(patch_file),
        "--out",
        str(out),
        "--batch-size",
        "64",
        "--quiet",
    )
    assert code == 0 and "400 x 128" in stdout
    d = np.load(out)
    assert d.shape == (400, 128) and d.dtype == np.float32
    # The loaded model equals the model trained in memory with the same seed and data.
    model, _ = ckn.train(ckn.get_preset("ckn-tiny"), photo_patches[:300], seed=0)
    np.testing.assert_allclose(d, ckn.describe(model, photo_patches), atol=1e-6)
    # --split keeps the rows of one split.
    out2 = tmp_path / "test.npy"
    assert (
        main(
            [
                "describe",
                "--model",
                str(model_dir),
                "--patches",
                str(patch_file),
                "--out",
                str(out2),
                "--split",
                "test",
                "--quiet",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(out2), d[300:])


def test_describe_npy_input_and_channels(tmp_path, model_dir, photo_patches):
    src = tmp_path / "p.npy"
    np.save(src, photo_patches[:20, :, :, None])  # (N, H, W, 1)
    out = tmp_path / "d.npy"
    assert (
        main(
            [
                "describe",
                "--model",
                str(model_dir),
                "--patches",
                str(src),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    model = ckn.load(model_dir)
    np.testing.assert_allclose(np.load(out), ckn.describe(model, photo_patches[:20]), atol=1e-6)


def test_architecture_overrides(capsys, tmp_path, patch_file):
    out = tmp_path / "m"
    code, stdout, _ = _run(
        capsys,
        "train",
        *TINY,
        "--patches",
        str(patch_file),
        "--out",
        str(out),
        "--filters",
        "6",
        "--sigma",
        "0.5",
        "--input",
        "raw",
        "--num-patches",
        "500",
    )
    assert code == 0, stdout
    cfg = ckn.load(out).config
    assert cfg.input == "raw" and cfg.layers[0].filters == 6 and cfg.layers[0].sigma == 0.5
    assert cfg.train.num_patches == 500 and cfg.name == "ckn-tiny+custom"


# ----- bad input -------------------------------------------------------------------------------


def _bad_files(tmp_path, photo_patches):
    files = {}
    nan = photo_patches[:50].astype(np.float32)
    nan[3, 4, 5] = np.nan
    np.save(files.setdefault("nan", tmp_path / "nan.npy"), nan)
    np.save(files.setdefault("empty", tmp_path / "empty.npy"), np.zeros((0, 16, 16), np.uint8))
    np.save(files.setdefault("rank", tmp_path / "rank.npy"), np.zeros((16, 16), np.uint8))
    np.save(files.setdefault("small", tmp_path / "small.npy"), photo_patches[:50, :3, :3])
    np.save(files.setdefault("strings", tmp_path / "strings.npy"), np.full((3, 16, 16), "a"))
    (tmp_path / "corrupt.npz").write_bytes(b"this is not a zip file")
    files["corrupt"] = tmp_path / "corrupt.npz"
    np.savez(files.setdefault("nokey", tmp_path / "nokey.npz"), images=photo_patches[:5])
    files["missing"] = tmp_path / "missing.npy"
    return files


@pytest.mark.parametrize(
    "case, needle",
    [
        ("nan", "NaN"),
        ("empty", "empty"),
        ("rank", "(N, H, W)"),
        ("small", "too small"),
        ("strings", "dtype"),
        ("corrupt", "corrupt.npz"),
        ("nokey", "patches"),
        ("missing", "missing.npy"),
    ],
)
def test_bad_patch_files(capsys, tmp_path, photo_patches, model_dir, case, needle):
    files = _bad_files(tmp_path, photo_patches)
    out_model = tmp_path / "model_out"
    code, _, err = _run(
        capsys, "train", *TINY, "--patches", str(files[case]), "--out", str(out_model)
    )
    _assert_one_line_error(code, err, needle)
    assert not out_model.exists()
    out = tmp_path / "desc.npy"
    code, _, err = _run(
        capsys,
        "describe",
        "--model",
        str(model_dir),
        "--patches",
        str(files[case]),
        "--out",
        str(out),
        "--quiet",
    )
    _assert_one_line_error(code, err, needle)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_bad_model_and_preset(capsys, tmp_path, patch_file, model_dir):
    out = tmp_path / "d.npy"
    code, _, err = _run(
        capsys,
        "describe",
        "--model",
        str(tmp_path / "nope"),
        "--patches",
        str(patch_file),
        "--out",
        str(out),
    )
    _assert_one_line_error(code, err, "nope")
    assert not out.exists()
    # A corrupt model directory.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "arrays.npz").write_bytes((model_dir / "arrays.npz").read_bytes())
    (broken / "config.json").write_text("{not json")
    code, _, err = _run(
        capsys, "describe", "--model", str(broken), "--patches", str(patch_file), "--out", str(out)
    )
    _assert_one_line_error(code, err, "config.json")
    (broken / "config.json").write_text((model_dir / "config.json").read_text())
    (broken / "arrays.npz").write_bytes(b"garbage")
    code, _, err = _run(
        capsys, "describe", "--model", str(broken), "--patches", str(patch_file), "--out", str(out)
    )
    _assert_one_line_error(code, err, "arrays.npz")
    assert not out.exists()
    code, _, err = _run(
        capsys,
        "train",
        "--preset",
        "ckn-nope",
        "--patches",
        str(patch_file),
        "--out",
        str(tmp_path / "m"),
    )
    _assert_one_line_error(code, err, "ckn-nope")
    assert not (tmp_path / "m").exists()
    code, _, err = _run(
        capsys,
        "describe",
        "--model",
        str(model_dir),
        "--patches",
        str(patch_file),
        "--out",
        str(tmp_path / "d.txt"),
    )
    _assert_one_line_error(code, err, ".npy")


def test_bad_overrides_and_batch_size(capsys, tmp_path, patch_file, model_dir):
    code, _, err = _run(
        capsys,
        "train",
        *TINY,
        "--patches",
        str(patch_file),
        "--out",
        str(tmp_path / "m"),
        "--filters",
        "8,8,8",
        "--sigma",
        "0.5,0.5",
    )
    _assert_one_line_error(code, err, "--sigma")
    assert not (tmp_path / "m").exists()
    code, _, err = _run(
        capsys,
        "describe",
        "--model",
        str(model_dir),
        "--patches",
        str(patch_file),
        "--out",
        str(tmp_path / "d.npy"),
        "--batch-size",
        "0",
    )
    _assert_one_line_error(code, err, "batch size")
    assert not (tmp_path / "d.npy").exists()


def test_python_m_ckn_exits_cleanly_on_bad_input(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "retrieval.cli",
            "describe",
            "--model",
            str(tmp_path / "none"),
            "--patches",
            str(tmp_path / "none.npy"),
            "--out",
            str(tmp_path / "o.npy"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_describe_precision_flag(capsys, tmp_path, model_dir, patch_file):
    # "default" is the backend's fastest matmul precision: TF32/bf16 passes on
    # GPUs, fp32 on CPU, where it must then match "highest" to rounding.
    outs = {}
    for precision in ("highest", "default"):
        outs[precision] = tmp_path / f"{precision}.npy"
        assert (
            main(
                [
                    "describe",
                    "--model",
                    str(model_dir),
                    "--patches",
                    str(patch_file),
                    "--out",
                    str(outs[precision]),
                    "--precision",
                    precision,
                    "--quiet",
                ]
            )
            == 0
        )
    np.testing.assert_allclose(np.load(outs["default"]), np.load(outs["highest"]), atol=1e-6)
    code, _, err = _run(
        capsys,
        "describe",
        "--model",
        str(model_dir),
        "--patches",
        str(patch_file),
        "--out",
        str(tmp_path / "d.npy"),
        "--precision",
        "bf16",
    )
    _assert_one_line_error(code, err, "--precision", "bf16")
    assert not (tmp_path / "d.npy").exists()
