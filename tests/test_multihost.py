"""examples/describe_multihost.py: two processes joined by jax.distributed on
this machine describe halves of a patch file; the parts concatenated equal the
one-process descriptors bit for bit."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from flax import nnx

import ckn

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "describe_multihost.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_one_process_descriptors(tmp_path, photo_patches):
    model = ckn.CKN(ckn.get_preset("ckn-tiny"), rngs=nnx.Rngs(0))
    ckn.save(model, tmp_path / "model")
    patches = photo_patches[:101]
    np.save(tmp_path / "p.npy", patches)
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                str(tmp_path / "model"),
                str(tmp_path / "p.npy"),
                str(tmp_path / "out"),
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "rows 0:50 on 2 local device(s)" in outs[0] and "rows 50:101" in outs[1]
    parts = [np.load(tmp_path / "out" / f"descriptors.{i}-of-2.npy") for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), ckn.describe(model, patches))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "descriptors.0-of-2.npy",
        "descriptors.1-of-2.npy",
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((3, 16, 16), np.nan, np.float32))
    for patches, needle in (("missing.npy", "patch file not found"), ("nan.npy", "NaN")):
        r = subprocess.run(
            [
                sys.executable,
                str(SCRIPT),
                str(tmp_path / "model"),
                str(tmp_path / patches),
                str(tmp_path / "out"),
                "--coordinator",
                f"localhost:{free_port()}",
                "--num-processes",
                "1",
                "--process-id",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
        )
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.stderr
        assert not (tmp_path / "out").exists()
