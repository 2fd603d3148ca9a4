"""``ckn describe --distributed``: two processes joined by jax.distributed on this
machine (2 CPU devices each) write one descriptor file equal bit for bit to the one a
single process writes; bad settings and a failing process: one line, exit 2, nothing
written."""

import os
import socket
import subprocess
import sys

import numpy as np
from flax import nnx

import ckn

ENV = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def describe(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "retrieval.cli", "describe", "--quiet", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_processes(model, patch_files, out, count=2):
    port = free_port()
    procs = [
        describe(
            "--model",
            str(model),
            "--patches",
            str(patches),
            "--out",
            str(out),
            "--distributed",
            "--coordinator",
            f"localhost:{port}",
            "--num-processes",
            str(count),
            "--process-id",
            str(i),
        )  # fmt: skip
        for i, patches in enumerate(patch_files)
    ]
    return [(p.communicate(timeout=300), p.returncode) for p in procs]


def test_two_processes_write_the_one_process_file(tmp_path, photo_patches):
    model = ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=nnx.Rngs(0))
    ckn.save(model, tmp_path / "model")
    patches = photo_patches[:101]
    np.save(tmp_path / "p.npy", patches)
    one = describe(
        "--model", str(tmp_path / "model"), "--patches", str(tmp_path / "p.npy"),
        "--out", str(tmp_path / "one.npy"),
    )  # fmt: skip
    assert one.communicate(timeout=300) and one.returncode == 0
    (out0, err0), (out1, err1) = [
        r
        for r, rc in run_processes(
            tmp_path / "model", [tmp_path / "p.npy"] * 2, tmp_path / "two" / "d.npy"
        )
    ]
    assert "process 0/2: rows 0:50 on 2 local devices" in out0, (out0, err0)
    assert "process 1/2: rows 50:101 on 2 local devices" in out1, (out1, err1)
    assert "wrote" in out0 and "wrote" not in out1
    two = np.load(tmp_path / "two" / "d.npy")
    np.testing.assert_array_equal(two, np.load(tmp_path / "one.npy"))
    np.testing.assert_array_equal(two, ckn.describe(model, patches))
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["d.npy"]  # no temporaries


def test_a_failing_process_fails_both_and_nothing_is_written(tmp_path, photo_patches):
    ckn.save(ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=nnx.Rngs(0)), tmp_path / "model")
    np.save(tmp_path / "p.npy", photo_patches[:20])
    # Read by process 1 only; refused after the processes have joined (too small for the net).
    np.save(tmp_path / "small.npy", np.zeros((20, 4, 4), np.uint8))
    results = run_processes(
        tmp_path / "model", [tmp_path / "p.npy", tmp_path / "small.npy"], tmp_path / "o" / "d.npy"
    )
    (_, err0), rc0 = results[0]
    (_, err1), rc1 = results[1]
    assert (rc0, rc1) == (2, 2), (err0, err1)
    assert err1.strip().splitlines() == [err1.strip()] and "too small" in err1, err1
    assert err0.strip().splitlines() == [
        "ckn describe: error: process 1 failed (see its message); "
        f"{tmp_path / 'o' / 'd.npy'} not written"
    ], err0
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_bad_settings_are_one_line_and_exit_2(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((3, 16, 16), np.uint8))
    port = f"localhost:{free_port()}"
    for flags, needle in (
        (["--coordinator", port], "--coordinator needs --distributed"),
        (
            ["--distributed", "--coordinator", port, "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 is out of range for 2 processes",
        ),
        (["--distributed", "--coordinator", "nohost"], "--coordinator must be host:port"),
        (["--distributed", "--num-processes", "0"], "--num-processes must be >= 1"),
    ):
        p = describe(
            "--model", str(tmp_path / "model"), "--patches", str(tmp_path / "p.npy"),
            "--out", str(tmp_path / "o" / "d.npy"), *flags,
        )  # fmt: skip
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "o").exists()
