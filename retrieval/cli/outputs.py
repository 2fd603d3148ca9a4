"""Output paths of the commands, checked before any work: parents made, an output equal to or
inside an input refused, unwritable folders named, checkpoints included."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from ckn import InputError


class Output(NamedTuple):
    """One destination of a command, for :func:`check_outputs`.

    flag: how the message names it (``--out``, ``--out (checkpoint)``); path: the
    destination (None: not asked for); kind: "file" or "dir"; replaced: a "dir"
    output that is replaced as a whole (an input inside it would be deleted);
    overwrite: False refuses an existing non-empty destination; suffix: the file
    name's required ending (``.json``), checked case-insensitively.
    """

    flag: str
    path: str | os.PathLike | None
    kind: str = "file"
    replaced: bool = False
    overwrite: bool = True
    suffix: str | None = None


class Paths(NamedTuple):
    """What a command writes and reads: checked by ``ckn``'s main before the command runs.

    outputs: its :class:`Output` s (derived ones too: checkpoints, files inside an
    output folder); inputs: {flag: path or None} of every file and folder it reads.
    """

    outputs: list[Output]
    inputs: dict[str, str | os.PathLike | None]


def declare_paths(p: argparse.ArgumentParser, paths) -> None:
    """Declares a command's :class:`Paths` (``paths(args) -> Paths``); ``ckn`` checks them
    with :func:`check_outputs` before it calls the command (every command declares one)."""
    p.set_defaults(paths=paths)


def checkpoint_dir(out: str | os.PathLike) -> Path:
    """The checkpoint folder of an output folder: ``OUT.ckpt`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def resume_note(args: argparse.Namespace) -> str:
    """What an interrupted training command says of its checkpoint ``OUT.ckpt``."""
    ckpt = checkpoint_dir(args.out)
    if any((ckpt / f).is_file() for f in ("config.json", "state.npz")):
        return f"; the checkpoint {ckpt} is kept: the same command with --resume continues it"
    return f"; no checkpoint in {ckpt} yet: --resume has nothing to continue"


def weights_path(spec: str | None) -> str | None:
    """The file or folder a backbone spec names (``vgg16:FILE``, ``ckn:MODEL_DIR``), or None."""
    if not spec:
        return None
    _, _, path = spec.partition(":")
    return path or None


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return p.absolute()


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def _inside(out: Path, folder: Path) -> bool:
    """Whether ``out`` is in ``folder`` (an existing folder), through symlinks; an existing
    file of several hard links counts when one of its names is in the folder."""
    if not folder.is_dir():
        return False
    if _resolved(out).is_relative_to(_resolved(folder)):
        return True
    try:
        st = out.stat()
    except OSError:
        return False
    if not out.is_file() or st.st_nlink < 2:
        return False
    key = (st.st_dev, st.st_ino)
    for dirpath, _, files in os.walk(folder):
        for f in files:
            try:
                s = os.stat(os.path.join(dirpath, f))
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == key:
                return True
    return False


def _writable_folder(flag: str, path: Path, inside: bool = False) -> Path:
    """The folder a new file of ``path`` goes to (``inside``: ``path`` itself when it
    exists) or its nearest existing ancestor, checked to accept a new file."""
    p = _resolved(path)
    if not (inside and p.is_dir()):
        p = p.parent
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise InputError(f"{flag} {path}: {p} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ckn-write-test.", dir=p)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise InputError(f"{flag} {path}: folder {p} is not writable ({reason})") from None
    os.close(fd)
    os.unlink(probe)
    return p


def check_outputs(
    outputs: list[Output], inputs: dict[str, str | os.PathLike | None] | None = None
) -> None:
    """Checks every destination of a command before its work starts.

    For each output that is asked for: the right suffix; not a folder where a
    file goes (nor a file where a folder goes); not an input of the command,
    nor inside an input folder, nor one of the other outputs (the same file,
    through symlinks and hard links too); a folder that ``ckn`` replaces holds
    no input; an existing destination is refused where ``overwrite`` is False;
    and the nearest existing folder on its path takes a new file (missing
    folders are created later, as ``mkdir -p``). Nothing is created or changed.

    Args:
      outputs: the command's destinations.
      inputs: {flag: path} of the files and folders the command reads.

    Raises:
      InputError: one line naming the flag, the path and the problem.
    """
    ins = {flag: Path(p) for flag, p in (inputs or {}).items() if p is not None and str(p) != ""}
    seen: dict[str, Path] = {}
    for out in outputs:
        if out.path is None:
            continue
        path = Path(out.path)
        if out.suffix is not None and not path.name.lower().endswith(out.suffix):
            raise InputError(f"{out.flag} must be a {out.suffix} file, got {path}")
        if out.kind == "file" and path.is_dir():
            raise InputError(f"{out.flag} {path} is a folder, not a file")
        if out.kind == "dir" and path.exists() and not path.is_dir():
            raise InputError(f"{out.flag} {path} is a file, not a folder")
        for flag, q in ins.items():
            if _same(path, q):
                raise InputError(f"{out.flag} {path} is the input {flag} {q}: it would be replaced")
            if out.kind == "dir" and out.replaced and _resolved(q).is_relative_to(_resolved(path)):
                raise InputError(
                    f"{out.flag} {path} holds the input {flag} {q}: replacing it would delete it"
                )
            if _inside(path, q):
                raise InputError(
                    f"{out.flag} {path} is inside the input folder {flag} {q}: "
                    "write it outside the folders the command reads"
                )
        for flag, q in seen.items():
            if _same(path, q):
                raise InputError(f"{out.flag} {path} is also {flag}: give them different paths")
        seen[out.flag] = path
        if not out.overwrite and path.exists() and not (path.is_dir() and not any(path.iterdir())):
            raise InputError(f"{out.flag} {path} exists: use --overwrite to replace it")
        _writable_folder(out.flag, path, inside=out.kind == "dir" and not out.replaced)
