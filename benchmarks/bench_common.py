"""Shared pieces of the speed benchmarks (bench_encode, bench_kmeans, bench_memory).

The benchmark contract (STYLE.md): warm-up calls first, ``block_until_ready()``
inside every timed region, median and spread over repeats, compile time apart
from steady state, seeds pinned, metadata (commit, versions, device, CPU count,
load average) in a JSON ``{"metadata": ..., "results": [...]}`` file. Each
figure sits beside the machine's own limit measured in the same run:
``matmul_rate`` times a jitted float32 matrix product.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval.cli import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Above this 1-minute load average (2-core machine) other jobs share the CPU and
# the figures are not clean: the scripts say so and record it.
BUSY_LOAD = 1.5


load_average = provenance.load_average


def metadata(extra_versions: dict | None = None) -> dict:
    """The run's provenance (``retrieval.cli.provenance``: commit, dirty flag, versions,
    devices, CPU, load average), taken at the start of the run; ``write_json`` finishes it
    (end time, wall seconds, load average at the end)."""
    meta = provenance.start()
    meta["versions"].update(extra_versions or {})
    return meta


def check_load(label: str) -> None:
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        print(
            f"[{label}] note: 1-min load average {load:.2f} > {BUSY_LOAD}: "
            "other jobs share the CPU",
            flush=True,
        )


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
        impls = [("xla", lambda f=f, a=a, b=b: f(a, b).block_until_ready())]
        if jax.default_backend() == "cpu":
            an, bn = np.asarray(a), np.asarray(b)
            impls.append(("numpy_blas", lambda an=an, bn=bn: an @ bn))
        for impl, fn in impls:
            s = stats(time_repeats(fn, repeats=repeats, warmup=2))
            rows.append(
                {
                    "impl": impl,
                    "n": n,
                    "gflops": 2 * n**3 / s["median_s"] / 1e9,
                    "gflops_best": 2 * n**3 / s["min_s"] / 1e9,
                    **s,
                }
            )
    best = max(rows, key=lambda r: r["gflops"])
    return {
        "sizes": rows,
        "gflops": best["gflops"],
        "best": {"impl": best["impl"], "n": best["n"]},
        "precision": precision,
    }


def write_json(path: str | os.PathLike, meta: dict, results: list, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = provenance.finish(meta)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"metadata": meta, "results": results, **extra}, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}", flush=True)
    return path


def photo_folder(folder: Path) -> Path:
    """16 real images in ``folder`` (created): 8 scikit-image photos, full and centre crop
    (``NAME_full.jpg``, ``NAME_crop.jpg``; 300-600 px)."""
    import cv2
    import skimage.data

    folder.mkdir(parents=True)
    photos = {
        "astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee(),
        "chelsea": skimage.data.chelsea(), "rocket": skimage.data.rocket(),
        "camera": np.dstack([skimage.data.camera()] * 3),
        "coins": np.dstack([skimage.data.coins()] * 3),
        "hubble": skimage.data.hubble_deep_field(), "retina": skimage.data.retina(),
    }  # fmt: skip
    for name, im in photos.items():
        im = np.ascontiguousarray(im[..., :3])
        h, w = im.shape[:2]
        crop = im[h // 8 : h - h // 8, w // 8 : w - w // 8]
        for tag, a in (("full", im), ("crop", crop)):
            cv2.imwrite(str(folder / f"{name}_{tag}.jpg"), np.ascontiguousarray(a[..., ::-1]))
    return folder
