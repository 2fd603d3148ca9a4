"""Patch files, atomic outputs and progress on stderr.

A patch file is ``.npy`` holding an array (N, H, W) or (N, H, W, C), or ``.npz``
with key ``patches`` (same shapes) and optional ``labels`` (N,) plus any
metadata arrays. Outputs are written to a temporary sibling and renamed, so a
failure never leaves a half-written file or directory behind:

* missing parent folders are created (as ``mkdir -p``) and removed again if
  the write fails;
* the result gets the mode a plain ``open()`` / ``mkdir`` would give under the
  process's umask (not the ``0600`` / ``0700`` of ``mkstemp`` / ``mkdtemp``);
* the temporary name ``.NAME.PID@HOST.XXXXXXXX[SUFFIX]`` carries the writer's
  process id: a process killed without cleanup (SIGKILL, power loss) leaves
  one behind, and the next write of NAME on the same host removes the
  siblings of dead processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ckn._src.errors import CORRUPT_FILE_ERRORS, InputError


def check_patches(
    patches: np.ndarray, *, name: str = "patches", allow_empty: bool = False
) -> np.ndarray:
    """Validates a patch batch (N, H, W) or (N, H, W, C); returns it unchanged.

    A NumPy array is returned as is (a memory-mapped file stays mapped); a
    list or other array-like is converted with ``np.asarray``.

    Args:
      patches: the batch.
      name: how messages call it.
      allow_empty: accept N = 0 (``describe`` returns an empty (0, D) array).

    Raises:
      InputError: not an array (a ragged list), wrong rank, empty batch,
        non-numeric dtype, NaN or inf values.
    """
    if not isinstance(patches, np.ndarray):
        try:
            patches = np.asarray(patches)
        except (ValueError, TypeError) as e:
            raise InputError(
                f"{name} is not an array ({type(e).__name__}: {_first_line(e)})"
            ) from None
    if patches.ndim not in (3, 4):
        raise InputError(f"{name} must be (N, H, W) or (N, H, W, C), got shape {patches.shape}")
    if patches.shape[0] == 0 and not allow_empty:
        raise InputError(f"{name} is empty (N = 0), shape {patches.shape}")
    if min(patches.shape[1:3]) == 0:
        raise InputError(f"{name} has an empty spatial size, shape {patches.shape}")
    if patches.ndim == 4 and patches.shape[3] not in (1, 3):
        raise InputError(f"{name} must have 1 or 3 channels, got shape {patches.shape}")
    if not (np.issubdtype(patches.dtype, np.integer) or np.issubdtype(patches.dtype, np.floating)):
        raise InputError(f"{name} must be an integer or float array, got dtype {patches.dtype}")
    if np.issubdtype(patches.dtype, np.floating) and not _all_finite(patches):
        raise InputError(f"{name} contains NaN or inf values")
    return patches


def _all_finite(a: np.ndarray, chunk: int = 4096) -> bool:
    # Chunked so that memory-mapped arrays are checked without loading them whole.
    return all(np.isfinite(a[i : i + chunk]).all() for i in range(0, a.shape[0], chunk))


SPLITS = {"train": 0, "test": 1}


def load_patch_file(
    path: str | os.PathLike, *, mmap: bool = True, split: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a patch file; returns (patches, labels or None).

    ``.npy`` files are memory-mapped (``mmap=True``) so large files stream.
    ``split`` ("train", "test" or "all") keeps the rows of that split of an
    .npz with a ``split`` array (0 or "train" = train, 1 or "test" = test);
    "train"/"test" on a file without one is an error, None or "all" keeps all.

    Raises:
      InputError: missing, unreadable or corrupt file; wrong content.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"patch file not found: {path}")
    if path.is_dir():
        raise InputError(f"patch file is a directory: {path}")
    labels = None
    if path.suffix in (".npy", ".npz"):
        check_file_format(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "patches" not in z.files:
                    raise InputError(
                        f"{path}: .npz has no 'patches' array "
                        f"(keys: {', '.join(z.files) or 'none'})"
                    )
                patches = z["patches"]
                labels = z["labels"] if "labels" in z.files else None
                rows = _split_rows(path, z["split"] if "split" in z.files else None, split)
                if rows is not None:
                    patches = patches[rows]
                    labels = None if labels is None else labels[rows]
        elif path.suffix == ".npy":
            _split_rows(path, None, split)
            patches = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        else:
            raise InputError(f"{path}: patch file must be .npy or .npz")
    except InputError:
        raise
    except CORRUPT_FILE_ERRORS as e:
        raise InputError(
            f"{path}: cannot read patch file ({type(e).__name__}: {_first_line(e)})"
        ) from None
    check_patches(patches, name=f"{path.name}: patches")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != patches.shape[0]:
            raise InputError(
                f"{path.name}: labels must be (N,) with N = {patches.shape[0]}, "
                f"got shape {labels.shape}"
            )
    return patches, labels


_MAGIC = {".npy": (b"\x93NUMPY",), ".npz": (b"PK\x03\x04", b"PK\x05\x06")}


def check_file_format(path: str | os.PathLike) -> None:
    """Checks that a ``.npy`` / ``.npz`` file starts as one (NumPy header / zip archive).

    Without this, ``np.load`` reads any other file (a text file named
    ``.npy``) as a pickle and its error talks about ``allow_pickle``.

    Raises:
      InputError: missing or unreadable file, or not the format its suffix says.
    """
    path = Path(path)
    magic = _MAGIC.get(path.suffix)
    if magic is None:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({type(e).__name__}: {_first_line(e)})") from None
    if not head.startswith(magic):
        kind = (
            "a .npy file (no NumPy header)"
            if path.suffix == ".npy"
            else "a .npz file (not a zip archive)"
        )
        what = "empty" if not head else "not " + kind
        raise InputError(f"{path}: {what}")


def load_array(path: str | os.PathLike, *, what: str = "array", mmap: bool = True) -> np.ndarray:
    """Reads one ``.npy`` array (memory-mapped by default), with one-line errors.

    Raises:
      InputError: missing file, a folder, not a ``.npy`` file, a pickled or corrupt array.
    """
    path = Path(path)
    if path.suffix != ".npy":
        raise InputError(f"{what} file must be .npy, got {path}")
    if path.is_dir():
        raise InputError(f"{what} file is a directory: {path}")
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    check_file_format(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CORRUPT_FILE_ERRORS as e:
        raise InputError(
            f"{path}: cannot read {what} ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _split_rows(path: Path, split_array: np.ndarray | None, split: str | None) -> np.ndarray | None:
    if split in (None, "all"):
        return None
    if split not in SPLITS:
        raise InputError(f"split must be train, test or all, got {split!r}")
    if split_array is None:
        raise InputError(
            f"{path}: has no 'split' array, cannot select the {split} split (split 'all' takes "
            "every patch)"
        )
    if split_array.dtype.kind in "US":
        rows = split_array == split
    else:
        rows = split_array == SPLITS[split]
    if not rows.any():
        raise InputError(f"{path}: the {split} split is empty")
    return rows


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else ""


def umask() -> int:
    """The process's umask, read without changing it where possible.

    Linux: the ``Umask:`` line of ``/proc/self/status``. Elsewhere the classic
    ``os.umask(0); os.umask(old)`` pair, under a lock (another thread creating
    a file in between would still see umask 0: acceptable in the CLI).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


_UMASK_LOCK = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _tmp_prefix(name: str) -> str:
    """``.NAME.PID@HOST.``: the temporary siblings of NAME written by this process."""
    return f".{name}.{os.getpid()}@{_host()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its files
    return True


def remove_stale_temporaries(final: str | os.PathLike) -> list[Path]:
    """Removes ``.NAME.PID@HOST.*`` siblings of ``final`` left by dead processes of this host.

    A process killed without cleanup (SIGKILL) leaves its temporary behind;
    the PID in the name tells whether its writer is still running. Siblings of
    live processes, of other hosts (a shared file system) and names of another
    form are left alone. Returns the paths removed.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    pattern = re.compile(re.escape(f".{final.name}.") + r"(\d+)@([A-Za-z0-9-]*)\.")
    removed = []
    host = _host()
    try:
        siblings = list(parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        m = pattern.match(p.name)
        if m is None or m.group(2) != host or _pid_alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _make_parents(parent: Path) -> list[Path]:
    """``mkdir -p parent``; returns the folders created, deepest first."""
    created = []
    p = parent
    while not p.exists():
        created.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise InputError(f"output folder {parent}: {p} is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_empty(created)
        raise InputError(
            f"cannot create output folder {parent} ({type(e).__name__}: {_first_line(e)})"
        ) from None
    return created


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False):
    """Yields a temporary path beside ``final``; renames it to ``final`` on success.

    Missing parent folders are created first (as ``mkdir -p``). On any
    exception (KeyboardInterrupt and SystemExit included) the temporary path
    and the folders created are removed and ``final`` is untouched. The result
    has the mode that ``open()`` (files: 0666) or ``mkdir`` (folders: 0777)
    would give under the umask. An existing folder ``final`` is replaced as a
    whole (``is_dir=True``). Example::

        with atomic_path("out/x.npy") as tmp:
            np.save(tmp, x)

    Raises:
      InputError: a parent folder cannot be created, or the folder is not writable.
    """
    final = Path(final)
    parent = final.parent if str(final.parent) else Path(".")
    created = _make_parents(parent)
    remove_stale_temporaries(final)
    mode = (0o777 if is_dir else 0o666) & ~umask()
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final.name), dir=parent))
        else:
            fd, name = tempfile.mkstemp(
                prefix=_tmp_prefix(final.name), suffix=final.suffix, dir=parent
            )
            os.close(fd)
            tmp = Path(name)
        os.chmod(tmp, mode)
    except OSError as e:
        _remove_empty(created)
        raise InputError(
            f"cannot write to folder {parent} ({type(e).__name__}: {_first_line(e)})"
        ) from None
    try:
        yield tmp
        if is_dir and final.is_dir() and not final.is_symlink():
            # The old folder is moved aside first: at no moment is a half-deleted one in place.
            old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final.name), dir=parent))
            os.replace(final, old / final.name)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old / final.name, final)
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        _remove_empty(created)
        raise


def write_json(path: str | os.PathLike, doc) -> None:
    """Writes ``doc`` as indented JSON, atomically (``atomic_path``).

    Raises:
      InputError: ``doc`` does not serialize as strict JSON (e.g. a NaN); nothing is written.
    """
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except ValueError as e:
        raise InputError(f"results are not valid JSON ({e})") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# --- Progress on stderr ----------------------------------------------------------------------

#: Seconds between two lines of a progress report when stderr is not a terminal.
PROGRESS_INTERVAL = 30.0


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _LineProgress:
    """tqdm's interface (iterate, update, set_postfix_str, close) as plain lines.

    For log files: no carriage returns, no cursor movement. A line every
    ``PROGRESS_INTERVAL`` seconds while it runs and, when ``leave``, one when done.
    """

    def __init__(
        self, iterable=None, *, desc: str, total=None, unit: str = "it", leave: bool = True
    ):
        self.iterable, self.desc, self.unit, self.leave = iterable, desc, unit, leave
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.t0 = self.last = time.perf_counter()
        self.closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self, word: str = "") -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {word}{done} {self.unit}{extra}, {time.perf_counter() - self.t0:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        unfinished = self.total is None or self.n < self.total  # else close() says "done"
        if unfinished and now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self._line()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            finished = self.total is None or self.n >= self.total
            if self.leave or not finished:
                self._line("done " if finished else "stopped at ")


def progress_bar(
    iterable=None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
):
    """A tqdm bar on a terminal; plain progress lines when stderr is a file or a pipe.

    Nested tqdm bars move the cursor with escape codes (``ESC[A``) and redraw
    with carriage returns, which a log file keeps as garbage; here a
    non-terminal stderr gets a line every ``PROGRESS_INTERVAL`` seconds and one
    at the end (``leave=True``). ``disable=True`` shows nothing.
    """
    if disable:
        return tqdm(iterable, total=total, disable=True)
    if _stderr_is_terminal():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)
    return _LineProgress(iterable, desc=desc, total=total, unit=unit, leave=leave)
