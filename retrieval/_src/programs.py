"""Compiled programs kept on disk, so that a new process neither traces nor compiles.

JAX's persistent compilation cache (``ckn.enable_compile_cache``) saves the XLA compilation,
but a new process still traces the Python network and lowers it before it can look the
program up: for EfficientNet-Lite0 (its depthwise convolutions are sums of shifted slices,
thousands of operations) about 0.5-1 s of CPU per input shape, three shapes for a
multi-scale query, most of what a second ``ckn index query`` spends. When the persistent
cache is on, :func:`call_compiled` keeps the compiled program of each (network, input
shapes) as a serialized executable (``jax.experimental.serialize_executable``) in
``<compilation cache folder>/programs/``, and reads it back in the next process (tens of
milliseconds). The pooling heads of a query (:func:`retrieval._src.heads.pool_maps`) are
kept the same way: traced and looked up, each of a query's three shapes cost 0.1-0.2 s.

A program is found again only under the same key: the network's name and options, the
shapes and dtypes of the parameters and the input, the source it is made from (by default
``retrieval/_src/nets/``; a changed network is compiled again), the jax / jaxlib versions,
the device kind, the ``XLA_FLAGS`` and the jax options that change a program (x64, matmul
precision). Files are written atomically (``ckn.files.atomic_path``), so concurrent
processes never read a half-written one; one that does not load is compiled again and
replaced. At most ``MAX_PROGRAMS`` files are kept (the least recently used go). Like JAX's
cache, the folder is trusted: a program read from it runs as code.

Without the persistent cache (the default in Python until ``ckn.enable_compile_cache``),
:func:`call_compiled` is the plain jitted call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import threading
from pathlib import Path

import jax

from ckn.files import atomic_path

#: Files kept in the programs folder (each a few MB at most).
MAX_PROGRAMS = 256
_SUFFIX = ".xprog"
_MEMO: dict[str, object] = {}
_LOCK = threading.Lock()  # one thread loads or compiles a program; the others wait for it
_SOURCE: dict[tuple[str, ...], str] = {}
#: The network code: the files of ``retrieval/_src/nets/``, and this file's.
NETS_SOURCES = tuple(
    sorted([__file__, *(str(p) for p in (Path(__file__).parent / "nets").glob("*.py"))])
)


def _source_hash(sources: tuple[str, ...]) -> str:
    """SHA-256 of the files ``sources`` (names and contents), once per process."""
    if sources not in _SOURCE:
        h = hashlib.sha256()
        for p in sources:
            h.update(Path(p).name.encode() + b"\0" + Path(p).read_bytes())
        _SOURCE[sources] = h.hexdigest()
    return _SOURCE[sources]


def _folder() -> Path | None:
    where = jax.config.jax_compilation_cache_dir
    return None if not where or not jax.config.jax_enable_compilation_cache else Path(where)


def _key(name: tuple, args, sources: tuple[str, ...]) -> str:
    leaves, tree = jax.tree.flatten(args)
    dev = jax.devices()[0]
    parts = (
        repr(name),
        str(tree),
        repr([(tuple(x.shape), str(x.dtype)) for x in leaves]),
        _source_hash(sources),
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
    except Exception:  # noqa: BLE001 (an unreadable program is compiled again)
        path.unlink(missing_ok=True)
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


_HITS: list[int] = []  # JAX's persistent-cache hits in this process (once listened to)


def _count_hits(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _HITS[0] += 1


def _compile(jitted, args: tuple, static: dict):
    """(``jitted`` compiled for ``args``, whether it may be saved).

    Not one that JAX read back from its persistent cache: such an executable serializes
    without some of its functions (jax 0.10 on CPU), and the next process that loads the
    program fails running it ("Function ... not found"). That happens where the cache holds
    a compilation whose program file here is gone (least recently used, or removed by hand);
    each process then traces it again, and no broken file is written.
    """
    if not _HITS:
        _HITS.append(0)
        jax.monitoring.register_event_listener(_count_hits)
    before = _HITS[0]
    compiled = jitted.lower(*args, **static).compile()
    return compiled, _HITS[0] == before


def call_compiled(
    jitted, name: tuple, args: tuple, static: dict, *, sources: tuple[str, ...] = NETS_SOURCES
):
    """``jitted(*args, **static)``, from a program kept on disk when the persistent cache is on.

    Args:
      jitted: a ``jax.jit`` function whose static arguments are ``static``.
      name: hashable, repr-stable description of ``static`` (e.g. the network name and its
        options; not function objects, whose repr holds an address).
      args: the traced arguments (pytrees of arrays).
      static: the static keyword arguments.
      sources: the files of the code ``jitted`` runs (a change of one compiles again).

    Returns:
      What ``jitted`` returns.
    """
    folder = _folder()
    if folder is None:
        return jitted(*args, **static)
    key = _key(name, args, sources)
    compiled = _MEMO.get(key)
    if compiled is None:
        with _LOCK:
            compiled = _MEMO.get(key)
            if compiled is None:
                path = folder / "programs" / f"{key}{_SUFFIX}"
                compiled = _load(path) if path.is_file() else None
                if compiled is None:
                    compiled, fresh = _compile(jitted, args, static)
                    if fresh:
                        _save(path, compiled)
                _MEMO[key] = compiled
    return compiled(*args)
