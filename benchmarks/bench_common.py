"""Shared pieces of the speed benchmarks (bench_encode, bench_kmeans, bench_memory).

The benchmark contract (STYLE.md): warm-up calls first, ``block_until_ready()``
inside every timed region, median and spread over repeats, compile time apart
from steady state, seeds pinned, metadata (commit, versions, device, CPU count,
load average) in a JSON ``{"metadata": ..., "results": [...]}`` file. Each
figure sits beside the machine's own limit measured in the same run:
``matmul_rate`` times a jitted float32 matrix product.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Above this 1-minute load average (2-core machine) other jobs share the CPU and
# the figures are not clean: the scripts say so and record it.
BUSY_LOAD = 1.5


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def metadata(extra_versions: dict | None = None) -> dict:
    """Commit, versions, devices, CPU and load average of this run."""
    import flax
    import jax
    import jaxlib

    versions = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
    }
    versions.update(extra_versions or {})
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "ckn", "benchmarks")
    return {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "ckn_or_benchmarks_modified": bool(dirty),
        "versions": versions,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_start": load_average(),
    }


def check_load(label: str) -> None:
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(f"[{label}] note: 1-min load average {load:.2f} > {BUSY_LOAD}: other jobs share the CPU", flush=True)


def stats(times: list[float]) -> dict:
    """Median and spread of repeated timings (seconds)."""
    q = np.percentile(times, [25, 75])
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "iqr_s": float(q[1] - q[0]),
        "repeats": len(times),
        "times_s": [round(t, 6) for t in times],
    }


def time_repeats(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    ``fn`` must block until its work is done (``block_until_ready`` or a host copy).
    """
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_rate(sizes=(1024, 2048, 3072), repeats: int = 7, precision: str = "highest") -> dict:
    """The machine's float32 matrix-multiply rate, the best of two implementations.

    * XLA: jitted ``jnp.dot`` of n x n matrices, precision HIGHEST (true fp32 on
      every backend, TF32 off on GPUs), or DEFAULT with ``precision="default"``
      (the backend's fastest: TF32 on recent NVIDIA GPUs), to match the model's;
    * on CPU also NumPy's BLAS (``a @ b``, OpenBLAS in the PyPI wheel), so the
      limit is not only what XLA's own dot reaches.

    Returns per-size medians and spreads of each and ``gflops``, the best
    median over sizes and implementations: the denominator of every
    "fraction of matmul" figure.
    """
    import jax
    import jax.numpy as jnp

    rows = []
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        prec = jax.lax.Precision.HIGHEST if precision == "highest" else jax.lax.Precision.DEFAULT
        f = jax.jit(lambda a, b, prec=prec: jnp.dot(a, b, precision=prec))
        impls = [("xla", lambda: f(a, b).block_until_ready())]
        if jax.default_backend() == "cpu":
            an, bn = np.asarray(a), np.asarray(b)
            impls.append(("numpy_blas", lambda: an @ bn))
        for impl, fn in impls:
            s = stats(time_repeats(fn, repeats=repeats, warmup=2))
            rows.append({"impl": impl, "n": n, "gflops": 2 * n**3 / s["median_s"] / 1e9,
                         "gflops_best": 2 * n**3 / s["min_s"] / 1e9, **s})
    best = max(rows, key=lambda r: r["gflops"])
    return {"sizes": rows, "gflops": best["gflops"], "best": {"impl": best["impl"], "n": best["n"]},
            "precision": precision}


def write_json(path: str | os.PathLike, meta: dict, results: list, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, load_average_end=load_average())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metadata": meta, "results": results, **extra}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", flush=True)
    return path
