"""A persistent XLA compilation cache in the ckn cache folder, shared by processes.

JAX compiles every jitted function once per (function, input shapes) and keeps the result
in the process. :func:`enable_compile_cache` also keeps it on disk (JAX's persistent
compilation cache), so a later process that traces the same computation reads the
executable back instead of compiling it: a second ``ckn index query`` compiles nothing
that an earlier one compiled (``benchmarks/bench_query.py`` measures it).

Where. ``cache_dir() / "xla" / TAG``: ``cache_dir()`` is ``$CKN_CACHE`` or
``~/.cache/ckn`` (the folder of every ckn cache); TAG names the machine (architecture,
CPU model and flags) and the jax version, so that a home folder shared by machines of
other CPUs never hands one of them executables built for another (XLA compiles for the
host's instruction set).

What is cached. Every compilation, however short (``jax_persistent_cache_min_compile_time_secs``
0 and ``jax_persistent_cache_min_entry_size_bytes`` -1: JAX's defaults keep only
compilations over 1 s, and a query's small ones add up), up to ``max_bytes`` on disk; the
least recently used entries are removed past it.

Concurrent processes. A positive ``max_bytes`` turns on JAX's eviction, which takes a file
lock (the ``filelock`` package) around every read and write of the cache folder: two
processes never see each other's entries half written. An entry left half written by a
killed process is read as an error; JAX then warns and compiles again.

The ``ckn`` command line enables the cache for every command (``CKN_COMPILE_CACHE=0`` turns
it off; the test suite does, so that tests write nothing to the user's cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from pathlib import Path

from ckn._src.errors import InputError

#: The JAX monitoring event of one XLA compilation (a cache hit records it too, at the cost of
#: reading the program back).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

#: Default bound on the cache folder's size, in bytes (the least recently used entries go).
MAX_BYTES = 1 << 30


def cache_dir() -> Path:
    """The ckn cache folder: ``$CKN_CACHE`` or ``~/.cache/ckn`` (not created)."""
    return Path(os.environ.get("CKN_CACHE") or Path.home() / ".cache" / "ckn")


def machine_tag() -> str:
    """A short name of this machine's instruction set and the jax version: the cache's subfolder.

    Returns:
      ``"<arch>-<12 hex digits>"``: the digits hash the CPU model, the CPU flags
      (``/proc/cpuinfo``; the processor string elsewhere) and the jax / jaxlib versions.
    """
    import jax
    import jaxlib

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")
        seen = [ln for ln in lines if ln.split(":")[0].strip() in keys]
        cpu = "\n".join(dict.fromkeys(seen))  # the first CPU's lines (all CPUs alike)
    except OSError:
        pass
    text = "\n".join((platform.machine(), cpu, jax.__version__, jaxlib.__version__))
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def enable_compile_cache(folder: str | os.PathLike | None = None, *, max_bytes: int = MAX_BYTES):
    """Keeps JAX's compiled programs on disk for later processes (see the module docstring).

    Call it before the computations whose compilations should be kept: a computation already
    compiled in this process is not written. Calling it again (another folder) switches.

    Args:
      folder: the cache folder; default ``cache_dir() / "xla" / machine_tag()``.
      max_bytes: bound on the folder's size (> 0: least recently used entries are removed,
        and a file lock keeps concurrent processes safe).

    Returns:
      The folder (created).

    Raises:
      InputError: ``max_bytes`` not a positive int, a folder that cannot be created.

    Examples:
      >>> import ckn
      >>> ckn.enable_compile_cache()  # ~/.cache/ckn/xla/x86_64-3f2a9c01d4e7
    """
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise InputError(f"max_bytes must be an int >= 1, got {max_bytes!r}")
    path = Path(folder) if folder is not None else cache_dir() / "xla" / machine_tag()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the compilation cache folder {path}: {e}") from None
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()  # a cache set up earlier in the process (another folder)
    compilation_cache.set_cache_dir(str(path))
    return path


@contextlib.contextmanager
def count_compilations():
    """Counts the XLA compilations (and persistent-cache reads) of the ``with`` block.

    Yields:
      A list that receives the seconds of each compilation as it happens (``len`` of it:
      their number). JAX records one per jitted program it builds, whether it compiles it or
      reads it from the persistent cache; nothing for a program it already holds.

    Examples:
      >>> with ckn.count_compilations() as seen:
      ...     retrieval.index.query_index(idx, image)
      >>> len(seen)  # 0: the image's size buckets were compiled before
    """
    import jax

    seen: list[float] = []

    def listener(event, duration, **_):
        if event == COMPILE_EVENT:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
