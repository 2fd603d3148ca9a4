"""Reliability of the library and the ``ckn`` commands: outputs, signals, silent wrong answers.

One test (or more) per fault of the reliability issue; the numbers in the
section titles are the issue's. Bad input must give exit status 2, one line
on stderr naming the problem, no traceback and nothing written.
"""

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import test_cli
from flax import nnx
from test_cli import _assert_one_line_error

import ckn
import retrieval
from retrieval.cli.main import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "ckn-tiny", "--quiet"]
# Two layers of ckn-tiny, every per-layer list given (fault 9).
TWO_LAYERS = [
    "--filters", "8,8", "--subpatch", "3", "--subsampling", "2", "--sigma", "auto",
    "--pooling", "strided", "--pool-std", "default",
]  # fmt: skip


def _run(capsys, *argv):
    """``main(argv)`` in this process: (exit status, stdout, stderr)."""
    return test_cli._run(capsys, *map(str, argv))


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def _ckn(*argv, **kw):
    """``python -m retrieval.cli ARGV`` in a subprocess (stderr a pipe: not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "retrieval.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        **kw,
    )


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


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


def test_train_and_save_create_missing_parent_folders(tmp_path, data, tiny_model):
    out = tmp_path / "models" / "deeper" / "grad"
    assert main(["train", *TINY, "--patches", str(data / "p.npz"), "--out", str(out)]) == 0
    assert ckn.load(out).config.name == "ckn-tiny"
    ckn.save(tiny_model[0], tmp_path / "a" / "b" / "m")
    assert (tmp_path / "a" / "b" / "m" / "arrays.npz").is_file()
    assert _hidden(out.parent) == [] and not (tmp_path / "models" / "deeper" / "grad.ckpt").exists()


def test_atomic_path_removes_the_folders_it_made_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with ckn.files.atomic_path(tmp_path / "x" / "y" / "f.npy") as tmp:
            np.save(tmp, np.zeros(3))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", *TINY, "--patches", "{p}", "--out", "/proc/ckn-no/m"], "--out"),
        (
            ["describe", "--model", "{m}", "--patches", "{p}", "--out", "/proc/ckn-no/d.npy"],
            "--out",
        ),
        (
            ["eval-patches", "--model", "sift", "--patches", "{p}", "--json", "/proc/x.json"],
            "--json",
        ),
        (["reproduce", "--quick", "--descriptors", "sift", "--out", "/proc/ckn-no"], "--out"),
        (["patches", "--default", "--quick", "--out", "/proc/ckn-no/x.npz"], "--out"),
    ],
)
def test_unwritable_destination_fails_before_the_work(capsys, data, argv, flag):
    # /proc takes no new files, even for root (the tests may run as root: chmod cannot be used).
    argv = [a.format(p=data / "p.npz", m=data / "model") for a in argv]
    t0 = time.perf_counter()
    code, out, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, flag, "not writable")
    assert out == "" and time.perf_counter() - t0 < 10  # refused before any training or build


def test_file_where_a_folder_goes_and_folder_where_a_file_goes(capsys, tmp_path, data):
    (tmp_path / "d.npy").mkdir()
    code, _, err = _run(capsys, "describe", "--model", data / "model", "--patches", data / "p.npy",
                        "--out", tmp_path / "d.npy")  # fmt: skip
    _assert_one_line_error(code, err, "--out", "is a folder")
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, "train", *TINY, "--patches", data / "p.npz", "--out",
                        tmp_path / "file" / "m")  # fmt: skip
    _assert_one_line_error(code, err, "--out", "is not a folder")
    code, _, err = _run(capsys, "train", *TINY, "--patches", data / "p.npz", "--out",
                        tmp_path / "file", "--overwrite")  # fmt: skip
    _assert_one_line_error(code, err, "--out", "is a file, not a folder")


# ----- 2. silent wrong answers: the training patch size is recorded and checked ----------------


def test_model_records_its_training_patch_shape(capsys, tmp_path, data, photo_patches):
    model = ckn.load(data / "model")
    assert model.patch_shape == (16, 16, 1)
    assert json.loads((data / "model" / "config.json").read_text())["patch_shape"] == [16, 16, 1]
    with pytest.raises(ckn.InputError, match="trained on 16x16 patches, got 12x12"):
        ckn.describe(model, photo_patches[:5, :12, :12])
    colour = np.repeat(photo_patches[:5, :, :, None], 3, axis=3)
    with pytest.raises(ckn.InputError, match="trained on 1-channel patches.*got 3-channel"):
        ckn.describe(model, colour)
    assert ckn.describe(model, photo_patches[:5, :12, :12], any_size=True).shape == (5, 72)
    np.testing.assert_allclose(
        ckn.describe(model, colour, any_size=True),
        ckn.describe(model, photo_patches[:5]),
        atol=1e-6,
    )
    # The command line: one line naming both sizes, nothing written; --any-size describes.
    np.save(tmp_path / "small.npy", photo_patches[:5, :12, :12])
    argv = ["describe", "--model", data / "model", "--patches", tmp_path / "small.npy", "--quiet",
            "--out", tmp_path / "d.npy"]  # fmt: skip
    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, "16x16", "12x12", "--any-size")
    assert list(tmp_path.iterdir()) == [tmp_path / "small.npy"]
    assert _run(capsys, *argv, "--any-size")[0] == 0
    code, _, err = _run(capsys, "eval-patches", "--model", data / "model", "--patches",
                        _small_npz(tmp_path, photo_patches), "--quiet")  # fmt: skip
    _assert_one_line_error(code, err, "16x16", "12x12")


def _small_npz(tmp_path, photo_patches):
    path = tmp_path / "small.npz"
    np.savez(path, patches=photo_patches[:40, :12, :12], labels=np.arange(40) // 4)
    return path


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


# ----- 3. output over input ----------------------------------------------------------------------


def test_output_that_is_an_input_is_refused(capsys, tmp_path, data):
    src = tmp_path / "x.npy"
    src.write_bytes((data / "p.npy").read_bytes())
    before = src.read_bytes()
    (tmp_path / "link.npy").symlink_to(src)
    for out in (src, tmp_path / "link.npy", tmp_path / "." / "x.npy"):
        code, _, err = _run(capsys, "describe", "--model", data / "model", "--patches", src,
                            "--out", out)  # fmt: skip
        _assert_one_line_error(code, err, "--out", "is the input --patches")
    assert src.read_bytes() == before
    # A model folder that holds the training patches: --overwrite would delete them.
    m = tmp_path / "m"
    m.mkdir()
    (m / "p.npz").write_bytes((data / "p.npz").read_bytes())
    code, _, err = _run(capsys, "train", *TINY, "--patches", m / "p.npz", "--out", m, "--overwrite")
    _assert_one_line_error(code, err, "--out", "holds the input --patches")
    code, _, err = _run(capsys, "eval-patches", "--model", "sift", "--patches", m / "p.npz",
                        "--json", m / "p.npz")  # fmt: skip
    _assert_one_line_error(code, err, "--json", "is the input --patches")
    assert (m / "p.npz").read_bytes() == (data / "p.npz").read_bytes()


# ----- 4. file modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_get_the_modes_of_a_plain_open_and_mkdir(tmp_path, tiny_model, mask):
    old = os.umask(mask)
    try:
        with ckn.files.atomic_path(tmp_path / "f.npy") as tmp:
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


# ----- 5. signals and stale temporaries ----------------------------------------------------------


# `python -m retrieval.cli`, with SIGINT raising KeyboardInterrupt even where the shell that
# started the tests has it ignored (background jobs); main() runs as the process's entry.
_LAUNCH = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from retrieval.cli.main import main; sys.exit(main())"
)


def _start_describe(tmp_path, data, n=60_000):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "big.npy", rng.integers(0, 256, (n, 16, 16), dtype=np.uint8))
    out = tmp_path / "d.npy"
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, "describe", "--model", str(data / "model"),
         "--patches", str(tmp_path / "big.npy"), "--out", str(out), "--batch-size", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    deadline = time.time() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".d.npy.")]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # describing
    return proc, out


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_describe_removes_the_temporary(tmp_path, data, sig, code):
    proc, out = _start_describe(tmp_path, data)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("ckn describe: ")
    assert not out.exists() and _hidden(tmp_path) == []


def test_a_later_run_removes_the_temporaries_of_dead_processes(tmp_path, data):
    proc, out = _start_describe(tmp_path, data)
    proc.kill()  # SIGKILL: no cleanup can run
    proc.communicate(timeout=60)
    stale = _hidden(tmp_path)
    assert len(stale) == 1 and stale[0].startswith(f".d.npy.{proc.pid}@")
    # Another process's live temporary and a file of another form are left alone.
    live = tmp_path / f".d.npy.{os.getpid()}@{stale[0].split('@')[1].split('.')[0]}.abc.npy"
    live.write_text("")
    other = tmp_path / ".d.npy.notes"
    other.write_text("")
    r = _ckn("describe", "--model", data / "model", "--patches", data / "p.npy", "--out", out,
             "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _hidden(tmp_path) == sorted([live.name, other.name])
    assert np.load(out).shape == (40, 128)


# ----- 9. silent architecture changes, too small a training set ----------------------------------


def test_changing_the_number_of_layers_needs_every_per_layer_list(capsys, tmp_path, data):
    out = tmp_path / "m"
    code, _, err = _run(capsys, "train", *TINY, "--patches", data / "p.npz", "--out", out,
                        "--filters", "8,8")  # fmt: skip
    _assert_one_line_error(code, err, "--filters", "2 layers", "1", "--subpatch", "--pool-std")
    assert not out.exists()
    code, _, err = _run(capsys, "train", *TINY, "--patches", data / "p.npz", "--out", out,
                        *TWO_LAYERS[:-2], "--filters", "8,8,8")  # fmt: skip
    _assert_one_line_error(code, err, "--filters", "3 layers", "missing: --pool-std")
    # With every list (TWO_LAYERS), as the uninterrupted run of the resume test: two layers.


def test_too_small_a_training_set_is_refused_with_the_numbers(capsys, tmp_path, photo_patches):
    np.save(tmp_path / "one.npy", photo_patches[:1])
    code, _, err = _run(capsys, "train", *TINY, "--patches", tmp_path / "one.npy", "--out",
                        tmp_path / "m")  # fmt: skip
    _assert_one_line_error(code, err, "1 training patch of 16x16", "36 sub-patches", "8 filters",
                           "at least 80")  # fmt: skip
    with pytest.raises(ckn.InputError, match="num_patches 20 sub-patches are too few for 8"):
        cfg = ckn.get_preset("ckn-tiny")
        ckn.train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_patches=20)),
                  photo_patches)  # fmt: skip
    assert list(tmp_path.iterdir()) == [tmp_path / "one.npy"]


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


# ----- 12. help and messages, progress ----------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "describe", "patches", "eval-patches", "reproduce"])
def test_every_help_has_an_example_and_no_doubled_percent(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "\nexample:\n  ckn " in text and "%%" not in text


def test_help_shows_the_effective_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # no line breaks inside the phrases looked for
    helps = {}
    for command in ("train", "describe", "reproduce"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    assert "(default: the preset's: 100000; ckn-tiny 2000)" in helps["train"]
    assert "(default: the preset's: 30; ckn-tiny 10)" in helps["train"]
    assert "(default: all rows)" in helps["describe"]
    assert "patches per jitted describe call (default 256)" in helps["reproduce"]


def test_a_text_file_named_npy_gets_a_plain_message(capsys, tmp_path, data):
    (tmp_path / "t.npy").write_text("1 2 3\n")
    code, _, err = _run(capsys, "describe", "--model", data / "model", "--patches",
                        tmp_path / "t.npy", "--out", tmp_path / "d.npy")  # fmt: skip
    _assert_one_line_error(code, err, "t.npy: not a .npy file")
    assert "pickle" not in err
    with pytest.raises(ckn.InputError, match="not a .npy file"):
        ckn.files.load_array(tmp_path / "t.npy")


def test_eval_patches_table_has_units(capsys, data):
    code, out, err = _run(capsys, "eval-patches", "--model", "pixels", "--patches", data / "p.npz",
                          "--quiet")  # fmt: skip
    assert code == 0, err
    header = out.splitlines()[1].split()
    assert header[5:] == ["mAP%", "mAP-trap%", "NN-acc%", "FPR95%", "AUC", "patches/s"]


def test_reproduce_with_baselines_only_makes_no_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CKN_CACHE", str(tmp_path.parent.parent / "ckn_cache"))
    res = retrieval.reproduce(quick=True, out_dir=tmp_path / "r", descriptors=("pixels",),
                              progress=False, log=lambda s: None)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["results.json", "results.png"]
    assert res["rows"][0]["descriptor"] == "pixels"


def test_results_figure_is_zoomed_labelled_and_marks_the_paper():
    from retrieval.patches import make_figure

    rows = [
        {"descriptor": n, "train_map": tr, "test_map": te}
        for n, tr, te in (("ckn-grad", 99.7, 97.2), ("sift", 99.8, 95.7), ("pixels", 99.5, 92.1))
    ]
    curve = {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 0.9, 0.8]}
    fig = make_figure({"rows": rows, "data": {"description": "d"}}, {"sift": curve})
    ax, pr = fig.axes
    lo, hi = ax.get_ylim()
    assert 80 <= lo <= 87.9 and hi > 99.8  # from below the paper's 87.9 to above the best bar
    assert {"99.7", "97.2", "95.7", "92.1"} <= {t.get_text() for t in ax.texts}  # bar labels
    assert [c.get_segments()[0][0][1] for c in ax.collections] == [92.5, 91.6, 88.1, 87.9]
    legend = ax.get_legend()
    fig.canvas.draw()
    below = legend.get_window_extent().y1 <= ax.get_window_extent().y0
    assert below and "paper (RomePatches)" in [t.get_text() for t in legend.get_texts()]
    assert len(pr.lines) == 1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_kmeans_progress_gives_the_same_bits(capsys):
    x = jax.random.normal(jax.random.key(0), (3001, 27))
    x = x / jax.numpy.linalg.norm(x, axis=1, keepdims=True)
    plain = ckn.unsupervised.kmeans(x, 16, key=1, iters=12)
    shown = ckn.unsupervised.kmeans(x, 16, key=1, iters=12, progress="layer 9: k-means")
    np.testing.assert_array_equal(np.asarray(plain[0]), np.asarray(shown[0]))
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(shown[1]))


TRAIN_TWO = ["train", "--preset", "ckn-tiny", "--split", "train", *TWO_LAYERS]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, data):
    """``ckn train`` of two tiny layers, uninterrupted, with progress, stderr a pipe."""
    out = tmp_path_factory.mktemp("whole") / "m"
    r = _ckn(*TRAIN_TWO, "--patches", data / "p.npz", "--out", out)
    assert r.returncode == 0, r.stderr
    return r, out


def test_progress_in_a_log_file_is_plain_lines(whole_run):
    assert len(ckn.load(whole_run[1]).config.layers) == 2  # every per-layer list given (9)
    err = whole_run[0].stderr
    assert "\x1b[" not in err and "\r" not in err
    assert "training layers: done 2/2 layer" in err


# ----- features: precomputed descriptors, overwrite protection, resumable training -------------


def test_eval_patches_scores_precomputed_descriptors(capsys, tmp_path, data):
    desc = tmp_path / "all.npy"
    assert main(["describe", "--model", str(data / "model"), "--patches", str(data / "p.npz"),
                 "--out", str(desc), "--quiet"]) == 0  # fmt: skip
    jsons = {}
    for what in (["--model", data / "model"], ["--descriptors", desc]):
        jsons[what[0]] = tmp_path / f"{what[0][2:]}.json"
        code, _, err = _run(capsys, "eval-patches", "--patches", data / "p.npz", *what, "--quiet",
                            "--json", jsons[what[0]])  # fmt: skip
        assert code == 0, err
    a, b = (json.loads(jsons[k].read_text())["splits"] for k in ("--model", "--descriptors"))
    for split in ("train", "test"):
        assert a[split]["map"] == b[split]["map"] and a[split]["roc_auc"] == b[split]["roc_auc"]
    # One split's rows, as `ckn describe --split test` writes them.
    test = tmp_path / "test.npy"
    np.save(test, np.load(desc)[300:])
    code, out, err = _run(capsys, "eval-patches", "--patches", data / "p.npz", "--descriptors",
                          test, "--split", "test", "--quiet")  # fmt: skip
    assert code == 0, err
    assert f"{100 * a['test']['map']:.2f}" in out.splitlines()[2]
    code, _, err = _run(capsys, "eval-patches", "--patches", data / "p.npz", "--descriptors", test,
                        "--quiet")  # fmt: skip
    _assert_one_line_error(code, err, "100 rows", "400 patches", "train 300", "test 100")


def test_train_refuses_an_existing_output_unless_overwrite(capsys, tmp_path, data):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["train", *TINY, "--patches", data / "p.npz", "--out", out]
    code, _, err = _run(capsys, *argv)
    _assert_one_line_error(code, err, "exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    assert _run(capsys, *argv, "--overwrite")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["arrays.npz", "config.json"]


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


def test_ckn_train_interrupted_by_sigterm_resumes_to_the_same_model(tmp_path, data, whole_run):
    argv = [*TRAIN_TWO, "--patches", data / "p.npz", "--quiet"]
    out = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "retrieval.cli", *map(str, argv), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    deadline = time.time() + 300
    while not (out.parent / "m.ckpt" / "config.json").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # during layer 2
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert not out.exists() and (tmp_path / "m.ckpt").is_dir()
    r = _ckn(*argv, "--out", out)
    assert r.returncode == 2 and "use --resume" in r.stderr
    r = _ckn(*argv, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "m.ckpt").exists()
    _states_equal(ckn.load(whole_run[1]), ckn.load(out))


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ckn {ckn.__version__}"
