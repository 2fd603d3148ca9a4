"""The ``ckn`` command line (also ``python -m retrieval.cli``): the app layer.

This package is the only place that may import both ``ckn`` (public API) and
``retrieval``; neither library imports it.

Each sub-command lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``func(args) -> int``. Errors from bad
input (``InputError``, missing files) and from bad arguments (argparse's usage
errors) print one line and exit with status 2. SIGINT (Ctrl-C) and SIGTERM
(``kill``, a batch system's time limit) stop a command the same way: the
temporary outputs are removed (``ckn.files.atomic_path``), one line says so, and
the exit status is 130 (SIGINT) or 143 (SIGTERM), as a shell reports a
process killed by that signal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

import ckn
from ckn import InputError
from retrieval.cli import (
    describe,
    eval_images,
    eval_patches,
    finetune,
    index,
    patches,
    reproduce,
    train,
    train_global,
)

# Modules that contribute sub-commands, in the order of `ckn --help`.
_COMMAND_MODULES = (
    train,
    finetune,
    describe,
    patches,
    eval_patches,
    reproduce,
    eval_images,
    index,
    train_global,
)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``ckn CMD: error: ...``) and no usage dump."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckn",
        description="Convolutional kernel networks for patch and image retrieval.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.add_argument("--version", action="version", version=f"ckn {ckn.__version__}")
    for module in _COMMAND_MODULES:
        module.register(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt (so cleanup runs)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises ``Terminated`` while the command runs (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError:
        return 2
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (
        InputError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ckn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM (Terminated); cleanup has run
        sigterm = isinstance(e, Terminated)
        print(f"ckn {args.command}: {'terminated (SIGTERM)' if sigterm else 'interrupted'}",
              file=sys.stderr)  # fmt: skip
        code = 128 + (signal.SIGTERM if sigterm else signal.SIGINT)
        if argv is None:  # the process's entry point (console script, python -m)
            _exit_now(code)
        return code


def _exit_now(code: int) -> None:
    """Ends the process without the interpreter's teardown (after flushing stdout, stderr).

    JAX compiles in a background thread while Python waits: an interrupt
    during a compilation leaves it running, and tearing the runtime down under
    it crashes the process (SIGSEGV instead of the exit status; jax 0.10.2).
    Every ``finally`` and ``atomic_path`` cleanup has already run.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
