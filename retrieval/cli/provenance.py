"""Where a result came from: the one provenance record of every command and benchmark.

``start()`` is called when a run *starts* (before any work), so the commit it
records is the code that ran, not whatever HEAD is when the run ends; the
``dirty`` flag says whether the measured code (``ckn/``, ``retrieval/``,
``benchmarks/``, untracked files included) differed from that commit.
``finish(record)`` adds the end time, wall seconds and load average at the end.

Examples:
  >>> meta = start()
  >>> ...  # the run
  >>> doc = {"metadata": finish(meta), "results": ...}
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The code whose edits make a result "dirty".
MEASURED = ("ckn", "retrieval", "benchmarks")
_VERSIONED = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "cv2",
    "skimage",
    "faiss",
    "tensorflow_datasets",
)
#: Modules slow to import (TFDS about 0.6 s, faiss 0.4 s, scikit-image: a third of a cached
#: ``ckn index query``) whose version is read from their distribution's metadata when no one
#: has imported them (the first distribution installed; none: imported after all).
_READ_NOT_IMPORTED = {
    "tensorflow_datasets": ("tensorflow-datasets",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "skimage": ("scikit-image",),
}


def _distribution_version(names: tuple[str, ...]) -> str | None:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return None


def _git(*args: str, root: Path = ROOT) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_state(root: str | os.PathLike = ROOT) -> dict:
    """``{"commit": full SHA or None, "dirty": bool or None}`` of the checkout at ``root``.

    ``dirty`` is True when a tracked file under ``MEASURED`` is modified or an
    untracked (not ignored) file exists there (``benchmarks/results/`` excluded);
    both are None outside a git checkout (an installed wheel).
    """
    root = Path(root)
    sha = _git("rev-parse", "HEAD", root=root)
    if not sha:
        return {"commit": None, "dirty": None}
    # Result files (benchmarks/results/) are outputs, not measured code.
    status = _git(
        "status", "--porcelain", "--", *MEASURED, ":(exclude)benchmarks/results", root=root
    )
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other jobs slow a timing down)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def versions(extra: tuple[str, ...] = ()) -> dict:
    """Versions of Python and of the imported-or-importable libraries that matter."""
    out = {"python": platform.python_version()}
    for name in (*_VERSIONED, *extra):
        with contextlib.suppress(Exception):
            if name in _READ_NOT_IMPORTED and name not in sys.modules:
                version = _distribution_version(_READ_NOT_IMPORTED[name])
                if version is not None:
                    out[name] = version
                    continue
            mod = sys.modules.get(name) or importlib.import_module(name)
            out["opencv" if name == "cv2" else name] = getattr(mod, "__version__", "?")
    return out


def start(command: list[str] | None = None) -> dict:
    """The provenance record of a run, taken when it starts.

    Args:
      command: the command line (default ``sys.argv``, shown as ``ckn ...``
        when run through the console script).

    Returns:
      A JSON-ready dict: command, start time (UTC), commit, dirty, versions,
      platform, CPU, devices, XLA_FLAGS, load average at start.
    """
    import jax

    argv = list(sys.argv if command is None else command)
    if argv and Path(argv[0]).name in ("ckn", "main.py", "__main__.py"):
        argv = ["ckn", *argv[1:]]
    elif argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return {
        "command": " ".join(shlex.quote(a) for a in argv),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **code_state(),
        "versions": versions(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_start": load_average(),
        "_t0": time.perf_counter(),
    }


def finish(record: dict) -> dict:
    """A copy of ``record`` with the end time, wall seconds and the load average at the end."""
    out = {k: v for k, v in record.items() if k != "_t0"}
    if "_t0" in record:
        out["wall_seconds"] = round(time.perf_counter() - record["_t0"], 3)
    out["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out["load_average_end"] = load_average()
    return out
