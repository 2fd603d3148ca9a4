"""SIGTERM and SIGINT end every command with one line of its own (faults 9 and 11, round 3).

One of 22 ``timeout -s TERM N ckn reproduce --quick`` runs ended with JAX's
traceback-filtering text instead of ``terminated (SIGTERM)``. The window: on CPU, JAX runs host
callbacks (the k-means progress ticks) on the main thread, so the signal handler ran inside
one, and the ``Terminated`` it raised came out of the jitted call as a ``JaxRuntimeError``,
which main did not catch. Now main installs its handlers before the long imports, records the
signal, and takes any exception raised after it for its consequence.
"""

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ckn

REPO = Path(__file__).resolve().parents[1]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


# `python -c` as the console script runs it (main() with no argv: the process's entry), after a
# "ready" line once `retrieval.cli.main` is imported (a light import: JAX loads inside main(),
# after the handlers are installed); SIGINT raises KeyboardInterrupt even where the shell that
# started the tests ignores it.
_LAUNCH = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from retrieval.cli.main import main; sys.stderr.write('ready\\n'); sys.stderr.flush(); "
    "sys.exit(main())"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory, photo_patches, tiny_model):
    d = tmp_path_factory.mktemp("sig")
    labels = np.arange(len(photo_patches)) // 4
    split = (np.arange(len(photo_patches)) >= 300).astype(np.int8)
    np.savez(d / "p.npz", patches=photo_patches, labels=labels, split=split)
    ckn.save(tiny_model[0], d / "model")
    return d


def _last_line(err: str) -> str:
    """The last line as a terminal shows it (after its last carriage return)."""
    return err.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_sigterm_inside_a_jax_host_callback_ends_with_the_terminated_line(tmp_path):
    # Deterministic: the callback sends SIGTERM to its own process, so the handler runs inside
    # the callback, inside the jitted call (before: a JaxRuntimeError traceback, exit 1).
    code = (
        "import os, signal, sys, time\n"
        "import jax\n"
        "import retrieval.cli.describe as D\n"
        "def fake(args):\n"
        "    def tick(x):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)  # the handler runs here, in the callback\n"
        "    @jax.jit\n"
        "    def f(x):\n"
        "        def body(c, _):\n"
        "            jax.debug.callback(tick, c)\n"
        "            return c + 1.0, None\n"
        "        return jax.lax.scan(body, x, None, length=3)[0]\n"
        "    jax.block_until_ready(f(0.0))\n"
        "    jax.effects_barrier()\n"
        "    return 0\n"
        "D.cmd_describe = fake\n"
        "from retrieval.cli.main import main\n"
        "sys.exit(main())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "describe", "--model", str(tmp_path / "m"), "--patches",
         str(tmp_path / "p.npz"), "--out", str(tmp_path / "d.npy")],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr and "JAX" not in r.stderr, r.stderr
    assert _last_line(r.stderr) == "ckn describe: terminated (SIGTERM)", r.stderr


def test_sigterm_at_any_moment_of_a_run_ends_with_the_terminated_line(data, tmp_path):
    # Ten runs of `ckn train` (k-means with its progress callbacks, never finishing within the
    # test), each sent SIGTERM at another moment: during the imports, the compilation, the
    # callbacks. Run side by side, so the test takes about the longest offset.
    offsets = np.linspace(0.5, 6.0, 10)
    procs = []
    for i, _ in enumerate(offsets):
        argv = ["train", "--preset", "ckn-tiny", "--patches", str(data / "p.npz"),
                "--out", str(tmp_path / f"m{i}"), "--kmeans-iters", "1000000",
                "--num-patches", "2000"]  # fmt: skip
        p = subprocess.Popen([sys.executable, "-c", _LAUNCH, *argv], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
        procs.append(p)
    for p in procs:  # "ready": the interpreter is up and main() is about to be called
        assert p.stderr.readline() == "ready\n"
    t0 = time.monotonic()
    outputs = [None] * len(procs)
    readers = []
    for i, p in enumerate(procs):

        def read(i=i, p=p):
            outputs[i] = p.stderr.read()

        readers.append(threading.Thread(target=read))
        readers[-1].start()
    for off, p in zip(offsets, procs):
        time.sleep(max(0.0, t0 + off - time.monotonic()))
        p.send_signal(signal.SIGTERM)
    for p, r in zip(procs, readers):
        p.wait(timeout=120)
        r.join(timeout=120)
        p.stderr.close()
    for off, p, err in zip(offsets, procs, outputs):
        assert p.returncode == 143, (off, err)
        assert "Traceback" not in err, (off, err)
        assert _last_line(err).startswith("ckn train: terminated (SIGTERM)"), (off, err)
    assert not any(tmp_path.glob("m[0-9]"))  # no model half-written


def _run_on_a_terminal(argv, ready, sig):
    """Runs ``argv`` with stderr on a pseudo-terminal (tqdm draws its bars), sends ``sig``
    once ``ready()`` holds; returns (exit status, everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm's width
    p = subprocess.Popen([sys.executable, "-c", _LAUNCH, *map(str, argv)],
                         stdout=subprocess.DEVNULL, stderr=slave, env=_env())  # fmt: skip
    os.close(slave)
    chunks = []

    def read():
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=read)
    t.start()
    deadline = time.time() + 300
    while not ready():
        assert p.poll() is None and time.time() < deadline, b"".join(chunks)
        time.sleep(0.05)
    time.sleep(1.0)  # a bar on the screen
    p.send_signal(sig)
    p.wait(timeout=120)
    t.join(timeout=30)
    os.close(master)
    return p.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def test_the_interrupt_line_starts_a_line_of_its_own_after_a_progress_bar(data, tmp_path):
    # The epochs' bar of `ckn finetune` is on the screen (a terminal) when Ctrl-C comes; it
    # used to end "... 1.23 step/s]ckn finetune: interrupted".
    out = tmp_path / "ft"
    code, text = _run_on_a_terminal(
        ["finetune", "--model", data / "model", "--patches", data / "p.npz", "--out", out,
         "--epochs", "100000", "--patience", "0"],
        lambda: (tmp_path / "ft.ckpt" / "state.npz").is_file(), signal.SIGINT,
    )  # fmt: skip
    assert code == 130, text
    assert "step/s" in text or "s/step" in text, text  # a bar was drawn
    last = text.rstrip("\n").split("\n")[-1]
    assert last.lstrip("\r").startswith("ckn finetune: interrupted"), repr(text[-400:])
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_the_sigterm_line_of_a_training_command_names_its_checkpoint_and_resume(
    data, tmp_path, command
):
    out = tmp_path / "m"
    argv = {
        "train": ["train", "--preset", "ckn-tiny", "--patches", data / "p.npz",
                  "--filters", "8,8", "--subpatch", "3", "--subsampling", "2", "--sigma", "auto",
                  "--pooling", "strided", "--pool-std", "default", "--kmeans-iters", "200000"],
        "finetune": ["finetune", "--model", data / "model", "--patches", data / "p.npz",
                     "--epochs", "100000", "--patience", "0"],
    }[command]  # fmt: skip
    ckpt = tmp_path / "m.ckpt"
    p = subprocess.Popen([sys.executable, "-c", _LAUNCH, *map(str, argv), "--out", str(out),
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())  # fmt: skip
    deadline = time.time() + 300
    while not any((ckpt / f).is_file() for f in ("config.json", "state.npz")):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    last = _last_line(err)
    assert last.startswith(f"ckn {command}: terminated (SIGTERM)"), err
    assert str(ckpt) in last and "--resume" in last, last


def test_a_signal_raised_inside_a_stderr_write_leaves_the_line_marked_open(capsys):
    """Deterministic form of the window the run-at-any-moment test once hit: the handler
    raised inside ``print``'s write of "training ... seed 0" (before its newline), and the
    stream still said "at a line start", so the terminated line was glued to it."""
    from retrieval.cli import main as cli_main

    class Interrupted(Exception):
        pass

    class Stream:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text
            raise Interrupted  # the signal handler, raising as the write returns

    lines = cli_main._LineEnds(Stream())
    assert lines.at_line_start
    with pytest.raises(Interrupted):
        print("training ckn-tiny on 400 patches", file=lines)
    assert lines._stream.text == "training ckn-tiny on 400 patches"
    assert not lines.at_line_start  # the terminated line will start with a newline


# main() as the process's entry, an exit handler and, when asked, a non-daemon thread that
# writes a file once the command is done (when main() is about to end the process).
_FINISH = (
    "import atexit, sys, threading, time; from pathlib import Path; "
    "import retrieval.cli.main as m; out = Path(sys.argv.pop(1)); "
    "atexit.register(lambda: out.joinpath('handler').write_text('ran')); "
    "done = threading.Event(); finish = m._finish; "
    "m._finish = lambda code: (done.set(), finish(code)); "
    "late = lambda: (done.wait(), time.sleep(0.5), out.joinpath('thread').write_text('done')); "
    "threading.Thread(target=late).start() if sys.argv.pop(1) == 'thread' else None; "
    "sys.exit(m.main())"
)


@pytest.mark.parametrize("thread", ["none", "thread"])
def test_a_finished_command_runs_exit_handlers_and_waits_for_threads(data, tmp_path, thread):
    # main() ends the process without the interpreter's teardown (0.2-0.5 s of JAX and Flax):
    # the exit status, the output and the exit handlers as a normal exit, and a non-daemon
    # thread still running is let finish.
    out = tmp_path / "descriptors.npy"
    r = subprocess.run(
        [sys.executable, "-c", _FINISH, str(tmp_path), thread, "describe",
         "--model", str(data / "model"), "--patches", str(data / "p.npz"), "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape[0] == len(np.load(data / "p.npz")["patches"])
    assert (tmp_path / "handler").read_text() == "ran"
    assert (tmp_path / "thread").exists() == (thread == "thread")
    if thread == "thread":
        assert (tmp_path / "thread").read_text() == "done"
    bad = subprocess.run(
        [sys.executable, "-c", _FINISH, str(tmp_path), "none", "describe", "--model",
         str(tmp_path / "missing"), "--patches", str(data / "p.npz"), "--out", str(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
