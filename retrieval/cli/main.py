"""The ``ckn`` command line (also ``python -m retrieval.cli``): the app layer.

This package is the only place that may import both ``ckn`` (public API) and
``retrieval``; neither library imports it.

Each sub-command lives in its own module with a ``register(subparsers)``
function that adds its parser and sets ``func(args) -> int``. Errors from bad
input (``InputError``, missing files) and from bad arguments (argparse's usage
errors) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

import ckn
from ckn import InputError
from retrieval.cli import describe, eval_images, eval_patches, index, patches, reproduce, train

# Modules that contribute sub-commands, in the order of `ckn --help`.
_COMMAND_MODULES = (train, describe, patches, eval_patches, reproduce, eval_images, index)


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError:
        return 2
    try:
        return int(args.func(args) or 0)
    except (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"ckn {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"ckn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
