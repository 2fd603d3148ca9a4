"""Compiled backbone programs kept on disk, so that a new process neither traces nor compiles.

JAX's persistent compilation cache (``ckn.enable_compile_cache``) saves the XLA compilation,
but a new process still traces the Python network and lowers it before it can look the
program up: for EfficientNet-Lite0 (its depthwise convolutions are sums of shifted slices,
thousands of operations) about 0.5-1 s of CPU per input shape, three shapes for a
multi-scale query, most of what a second ``ckn index query`` spends. When the persistent
cache is on, :func:`call_compiled` keeps the compiled program of each (network, input
shapes) as a serialized executable (``jax.experimental.serialize_executable``) in
``<compilation cache folder>/programs/``, and reads it back in the next process (tens of
milliseconds).

A program is found again only under the same key: the network's name and options, the
shapes and dtypes of the parameters and the input, the source of ``retrieval/_src/nets/``
(a changed network is compiled again), the jax / jaxlib versions, the device kind, the
``XLA_FLAGS`` and the jax options that change a program (x64, matmul precision). Files
are written atomically (``ckn.files.atomic_path``), so concurrent processes never read a
half-written one; one that does not load is compiled again and replaced. At most
``MAX_PROGRAMS`` files are kept (the least recently used go). Like JAX's cache, the
folder is trusted: a program read from it runs as code.

Without the persistent cache (the default in Python until ``ckn.enable_compile_cache``),
:func:`call_compiled` is the plain jitted call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from pathlib import Path

import jax

from ckn.files import atomic_path

#: Files kept in the programs folder (each a few MB at most).
MAX_PROGRAMS = 256
_SUFFIX = ".xprog"
_MEMO: dict[str, object] = {}
_SOURCE: list[str] = []


def _source_hash() -> str:
    """SHA-256 of the network code (the files of this package), once per process."""
    if not _SOURCE:
        h = hashlib.sha256()
        for p in sorted(Path(__file__).parent.glob("*.py")):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
        _SOURCE.append(h.hexdigest())
    return _SOURCE[0]


def _folder() -> Path | None:
    where = jax.config.jax_compilation_cache_dir
    return None if not where or not jax.config.jax_enable_compilation_cache else Path(where)


def _key(name: tuple, args) -> str:
    leaves, tree = jax.tree.flatten(args)
    dev = jax.devices()[0]
    parts = (
        repr(name),
        str(tree),
        repr([(tuple(x.shape), str(x.dtype)) for x in leaves]),
        _source_hash(),
        jax.__version__,
        __import__("jaxlib").__version__,
        dev.platform,
        dev.device_kind,
        os.environ.get("XLA_FLAGS", ""),
        str(jax.config.jax_enable_x64),
        str(jax.config.jax_default_matmul_precision),
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _load(path: Path):
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as f:
            payload, in_tree, out_tree = pickle.load(f)
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # noqa: BLE001 (any unreadable program is compiled again)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # least recently used goes first
    return compiled


def _save(path: Path, compiled) -> None:
    from jax.experimental import serialize_executable

    try:
        data = pickle.dumps(serialize_executable.serialize(compiled))
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        kept = [p for p in path.parent.glob(f"*{_SUFFIX}") if not p.name.startswith(".")]
        files = sorted(kept, key=lambda p: p.stat().st_mtime)  # (not others' temporaries)
        for old in files[: max(0, len(files) - MAX_PROGRAMS)]:
            old.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 (a cache that cannot be written is only slower)
        return


def call_compiled(jitted, name: tuple, args: tuple, static: dict):
    """``jitted(*args, **static)``, from a program kept on disk when the persistent cache is on.

    Args:
      jitted: a ``jax.jit`` function whose static arguments are ``static``.
      name: hashable, repr-stable description of ``static`` (e.g. the network name and its
        options; not function objects, whose repr holds an address).
      args: the traced arguments (pytrees of arrays).
      static: the static keyword arguments.

    Returns:
      What ``jitted`` returns.
    """
    folder = _folder()
    if folder is None:
        return jitted(*args, **static)
    key = _key(name, args)
    compiled = _MEMO.get(key)
    if compiled is None:
        path = folder / "programs" / f"{key}{_SUFFIX}"
        compiled = _load(path) if path.is_file() else None
        if compiled is None:
            compiled = jitted.lower(*args, **static).compile()
            _save(path, compiled)
        _MEMO[key] = compiled
    return compiled(*args)
