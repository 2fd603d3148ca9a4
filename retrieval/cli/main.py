"""The ``ckn`` command line (also ``python -m retrieval.cli``): the app layer.

This package is the only place that may import both ``ckn`` (public API) and
``retrieval``; neither library imports it.

Each sub-command lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``func(args) -> int`` and ``paths(args)``
(:func:`retrieval.cli.outputs.declare_paths`: what it writes and reads). Before a
command runs, its outputs are checked against its inputs
(:func:`retrieval.cli.outputs.check_outputs`), so no command can forget it.
Errors from bad input (``InputError``, missing files) and from bad arguments
(argparse's usage errors) print one line, ``ckn CMD: error: ...`` (``ckn index
build: error: ...`` for the sub-commands of ``ckn index``), and exit with status 2.

Every command keeps JAX's compiled programs on disk (``ckn.enable_compile_cache``:
``$CKN_CACHE/xla``, default ``~/.cache/ckn/xla``), so a later process reads them back
instead of compiling again; ``CKN_COMPILE_CACHE=0`` turns that off.

SIGINT (Ctrl-C) and SIGTERM (``kill``, a batch system's time limit) stop a
command the same way: the temporary outputs are removed
(``ckn.files.atomic_path``), one line says so (on a line of its own, after any
progress bar), and the exit status is 130 (SIGINT) or 143 (SIGTERM), as a shell
reports a process killed by that signal. The handlers are installed before the
command modules (and JAX) are imported, and once a signal has arrived any
exception is taken for its consequence: on CPU, JAX runs host callbacks (the
progress of k-means) on the main thread, where the signal's exception is
turned into a ``JaxRuntimeError``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
import threading

# The modules that contribute sub-commands, in the order of `ckn --help` (imported by
# build_parser: after main() has installed its signal handlers).
_COMMANDS = (
    "train",
    "finetune",
    "describe",
    "patches",
    "eval_patches",
    "reproduce",
    "eval_images",
    "index",
    "train_global",
)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``ckn CMD: error: ...``) and no usage dump."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise _UsageError(message)


def _leaves(parser: argparse.ArgumentParser):
    """The parsers that run a command (those without sub-commands), depth first."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaves(child)


@contextlib.contextmanager
def _ipython_hidden():
    """IPython hidden from imports while a command runs, when no one has imported it.

    At import, ``flax.nnx`` asks IPython whether it runs in a notebook (to colour its reprs),
    which imports all of IPython where it is installed: 0.4-1.2 s of a command's start (a
    third of a cached ``ckn index query``) for a terminal program that never runs in one.
    ``ckn`` loads its modules on first use, so Flax may come in anywhere in the command.
    """
    if "IPython" in sys.modules:
        yield
        return
    sys.modules["IPython"] = None  # `from IPython import ...` raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("IPython", 0) is None:
            del sys.modules["IPython"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    import ckn

    parser = _Parser(
        prog="ckn",
        description="Convolutional kernel networks for patch and image retrieval.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.add_argument("--version", action="version", version=f"ckn {ckn.__version__}")
    for name in _COMMANDS:
        importlib.import_module(f"retrieval.cli.{name}").register(sub)
    for leaf in _leaves(parser):
        missing = [k for k in ("func", "paths") if leaf.get_default(k) is None]
        if missing:  # a programming error: every command declares what it writes and reads
            raise RuntimeError(f"{leaf.prog} sets no {' and no '.join(missing)}")
        leaf.set_defaults(cli_prog=leaf.prog)
    return parser


# Seconds between the raises of a signal's exception until main has caught it (see _signals).
_RETRY = 0.25
# JAX logs an exception raised inside a host callback (with its traceback) before passing it on.
_CALLBACK_LOGGERS = ("jax._src.debugging", "jax._src.callback")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like SIGINT's KeyboardInterrupt (so cleanup runs)."""


@contextlib.contextmanager
def _signals(received: list[int]):
    """SIGTERM (and SIGINT, where Python raises KeyboardInterrupt for it) record the signal in
    ``received`` and raise ``Terminated`` / ``KeyboardInterrupt`` (main thread only; restored
    after).

    Python runs a handler between any two bytecodes, also where raising goes wrong (see
    :func:`_unsafe`): inside a garbage-collection callback (JAX registers one) the exception
    was printed as "Exception ignored" and the command went on; inside an import it could
    crash the process. There the handler only records the signal; and once a signal has
    arrived, a timer raises it again every ``_RETRY`` seconds where it is safe and no
    exception is in hand (one on its way to main runs the cleanup in ``finally`` blocks and
    ``__exit__`` methods, where it is the exception in hand, and is not interrupted) until
    main has caught it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loggers = [logging.getLogger(name) for name in _CALLBACK_LOGGERS]
    disabled = [lg.disabled for lg in loggers]

    def interrupt(signum: int):
        return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def handler(signum, frame):
        first = not received
        received.append(signum)
        for lg in loggers:  # raised inside a host callback, the exception is logged there
            lg.disabled = True
        if first:
            signal.setitimer(signal.ITIMER_REAL, _RETRY, _RETRY)
        if not _unsafe(frame):
            raise interrupt(signum)

    def again(signum, frame):
        if sys.exc_info()[1] is None and not _unsafe(frame):  # the first one was dropped
            raise interrupt(received[0])

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, handler),
        signal.SIGALRM: signal.signal(signal.SIGALRM, again),
    }
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where ignored
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, h in previous.items():
            signal.signal(signum, h)
        for lg, d in zip(loggers, disabled):
            lg.disabled = d


def _unsafe(frame) -> bool:
    """Whether raising in ``frame`` would go wrong: the exception would be dropped ("Exception
    ignored": a garbage-collection callback, a ``__del__`` method, or code called from one),
    or it would stop an import halfway (a C extension half set up crashed the process with
    SIGSEGV on the way out)."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    depth = 0
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib."):
            return True
        if depth < 8 and (code in codes or code.co_name == "__del__"):
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _prog_of(argv: list[str] | None) -> str:
    """``ckn CMD`` from the arguments, before they are parsed (a signal during the imports)."""
    words = sys.argv[1:] if argv is None else list(argv)
    cmd = next((w for w in words if not w.startswith("-")), None)
    return "ckn" if cmd is None else f"ckn {cmd}"


class _LineEnds:
    """A text stream that remembers whether what was written last ended a line (or went back
    to its start, as a progress bar's carriage return does)."""

    def __init__(self, stream):
        self._stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        # The flag first: a signal whose handler raises inside the write below (or right after
        # it) must find the flag describing this text, not the one before (the window that
        # glued "terminated (SIGTERM)" to an unfinished line).
        if text:
            self.at_line_start = text.endswith(("\n", "\r"))
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    received: list[int] = []
    state: dict = {"prog": _prog_of(argv), "args": None}
    stderr = sys.stderr
    sys.stderr = _LineEnds(stderr)
    try:
        with _signals(received):
            code = _dispatch(argv, state)
    except BaseException as e:  # noqa: BLE001  (sorted below; anything else is re-raised)
        code = _outcome(e, received, state)
        if code is None:
            raise
        if argv is None and code in (130, 143):  # the process's entry point (console script, -m)
            _exit_now(code)
    finally:
        if isinstance(sys.stderr, _LineEnds):
            sys.stderr = stderr
    if argv is None:
        _finish(code)
    return code


def _dispatch(argv: list[str] | None, state: dict) -> int:
    with _ipython_hidden():
        return _run(argv, state)


def _run(argv: list[str] | None, state: dict) -> int:
    from retrieval.cli.outputs import check_outputs

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError:
        return 2
    state.update(prog=args.cli_prog, args=args)
    check_outputs(*args.paths(args))
    _compile_cache()
    return int(args.func(args) or 0)


#: Environment variable: "0" (or "off", "false", "no") keeps the compilation cache off.
COMPILE_CACHE_ENV = "CKN_COMPILE_CACHE"


def _compile_cache() -> None:
    """Keeps compiled programs in ``$CKN_CACHE/xla`` (``ckn.enable_compile_cache``) unless
    ``$CKN_COMPILE_CACHE`` is off: a second ``ckn index query`` compiles nothing the first did."""
    if os.environ.get(COMPILE_CACHE_ENV, "1").strip().lower() in ("0", "off", "false", "no"):
        return
    import ckn

    ckn.enable_compile_cache()


def _outcome(e: BaseException, received: list[int], state: dict) -> int | None:
    """The exit status of a command that raised ``e`` (None: a bug, re-raised), its line said."""
    prog = state["prog"]
    if received or isinstance(e, KeyboardInterrupt):
        # A signal arrived: whatever was raised since (a JaxRuntimeError from a host
        # callback too) is its consequence. Cleanup has run.
        sigterm = (received[0] if received else signal.SIGINT) == signal.SIGTERM
        _close_progress_bars()
        note = _resume_note(state["args"])
        # On a line of its own: a bar or a print cut short by the signal left its line open.
        start = "" if getattr(sys.stderr, "at_line_start", True) else "\n"
        print(f"{start}{prog}: {'terminated (SIGTERM)' if sigterm else 'interrupted'}{note}",
              file=sys.stderr)  # fmt: skip
        return 128 + (signal.SIGTERM if sigterm else signal.SIGINT)
    if isinstance(e, BrokenPipeError):
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    from ckn import InputError

    if isinstance(
        e, (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
    ):
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    return None


def _resume_note(args) -> str:
    """``; the checkpoint OUT.ckpt is kept: ...`` for a command that has one on disk."""
    note = getattr(args, "interrupt_note", None)
    return "" if note is None else note(args) or ""


def _close_progress_bars() -> None:
    """Closes the live tqdm bars, so that the next line starts at the left margin."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def _finish(code: int) -> None:
    """Ends the process now that its command is done, without the interpreter's teardown.

    Tearing down the modules of JAX and Flax took 0.2-0.5 s of every command (a sixth of a
    cached ``ckn index query``) and does nothing a finished command needs. The exit handlers
    run first (logging, temporary folders' finalizers); while a thread other than daemons
    runs, or where Python has no way to run them, the process exits the usual way.
    """
    run_handlers = getattr(atexit, "_run_exitfuncs", None)
    main_thread = threading.main_thread()
    others = [t for t in threading.enumerate() if t is not main_thread and not t.daemon]
    if run_handlers is None or any(t.is_alive() for t in others):
        return
    run_handlers()
    _exit_now(code)


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
