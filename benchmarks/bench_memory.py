"""Streaming memory: peak RSS of ``ckn describe`` (the CLI, in a subprocess) on .npy patch files.

Command (from the project root; about 5 minutes on the 2-core CPU):

    python benchmarks/bench_memory.py [--preset ckn-grad] [--sizes 10000 100000] \\
        [--out benchmarks/results/bench_memory_cpu.json]

In a temporary directory: a model trained briefly with the CLI (``ckn train
--preset ckn-grad --num-patches 5000 --kmeans-iters 5``: the filters' values
do not change the memory), then seeded random uint8 patch files of the
preset's size (51 x 51 for ckn-grad) with 100 (the baseline: what the
process needs whatever N), 10^4 and 10^5 patches, written in chunks. For
each, ``ckn describe --model M --patches P.npy --out D.npy --quiet`` runs in
a subprocess (``.npy`` input memory-mapped, output a memory-mapped ``.npy``);
its peak resident set size comes from the kernel (``wait4`` rusage
``ru_maxrss``), with psutil sampling (every 10 ms) of RSS and of its
file-backed part for the split.

Target band (issue 6): peak RSS at 10^5 patches not ~10x the one at 10^4:
``describe`` streams. The JSON records both peaks, their ratio, the growth
over the 100-patch baseline, and the sizes of the input and output files
(ckn-grad at 10^5: 260 MB in, 410 MB out).

Prints one line per run; writes JSON ``{"metadata", "results", "target"}``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

import ckn  # noqa: E402

MAX_RATIO = 3.0  # "not ~10x": the 10^5 run may use at most this multiple of the 10^4 run


def write_patches(path: Path, n: int, size: int, seed: int = 0, chunk: int = 8192) -> None:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    rng = np.random.default_rng(seed)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        out[i : i + m] = rng.integers(0, 256, (m, size, size), dtype=np.uint8)
    out.flush()
    del out


def run_measured(cmd: list[str], interval: float = 0.01) -> dict:
    """Runs cmd; returns its wall time, kernel peak RSS (wait4 rusage) and psutil-sampled
    peaks (bytes)."""
    import psutil

    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peaks = {"rss": 0, "rss_file_backed": 0, "rss_anon": 0}
        ps = psutil.Process(proc.pid)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                m = ps.memory_info()
            except psutil.Error:
                continue
            shared = getattr(m, "shared", 0)  # Linux: file-backed + shmem pages
            peaks["rss"] = max(peaks["rss"], m.rss)
            peaks["rss_file_backed"] = max(peaks["rss_file_backed"], shared)
            peaks["rss_anon"] = max(peaks["rss_anon"], m.rss - shared)
            time.sleep(interval)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                f"{err.read().decode(errors='replace')[-2000:]}"
            )
    # Linux reports ru_maxrss in KiB.
    return {"seconds": seconds, "peak_rss": int(usage.ru_maxrss) * 1024, "sampled_peak": peaks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="ckn-grad")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--baseline", type=int, default=100, help="patches of the baseline run")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument(
        "--work", default=None, help="directory for the files (default: a temporary one)"
    )
    ap.add_argument("--out", default=str(bc.RESULTS / "bench_memory_cpu.json"))
    args = ap.parse_args(argv)

    meta = bc.metadata()
    bc.check_load("start")
    cfg = ckn.get_preset(args.preset)
    size = cfg.patch_size
    cli = [sys.executable, "-m", "retrieval.cli"]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        tmp = Path(tmp)
        train_file = tmp / "train.npy"
        write_patches(train_file, 500, size, seed=1)
        model = tmp / "model"
        t = time.perf_counter()
        subprocess.run(
            [
                *cli,
                "train",
                "--preset",
                args.preset,
                "--patches",
                str(train_file),
                "--out",
                str(model),
                "--num-patches",
                "5000",
                "--kmeans-iters",
                "5",
                "--quiet",
            ],
            check=True,
            capture_output=True,
        )
        print(f"trained {args.preset} in {time.perf_counter() - t:.0f} s", flush=True)
        d = int(np.prod(cfg.output_shape(size, size)))
        results = []
        for n in [args.baseline, *args.sizes]:
            src = tmp / f"patches_{n}.npy"
            dst = tmp / f"desc_{n}.npy"
            write_patches(src, n, size, seed=n)
            cmd = [
                *cli,
                "describe",
                "--model",
                str(model),
                "--patches",
                str(src),
                "--out",
                str(dst),
                "--quiet",
                "--batch-size",
                str(args.batch_size),
            ]
            run = run_measured(cmd)
            out = np.load(dst, mmap_mode="r")
            assert out.shape == (n, d) and np.isfinite(out[-10:]).all()
            row = {
                "patches": n,
                "input_mb": src.stat().st_size / 1e6,
                "output_mb": dst.stat().st_size / 1e6,
                "peak_rss_mb": run["peak_rss"] / 1e6,
                "sampled_peak_rss_mb": run["sampled_peak"]["rss"] / 1e6,
                "sampled_peak_file_backed_mb": run["sampled_peak"]["rss_file_backed"] / 1e6,
                "sampled_peak_anon_mb": run["sampled_peak"]["rss_anon"] / 1e6,
                "seconds": run["seconds"],
                "patches_per_s_incl_startup": n / run["seconds"],
            }
            results.append(row)
            print(
                f"{n:7d} patches ({row['input_mb']:.0f} MB in, {row['output_mb']:.0f} MB out): "
                f"peak RSS {row['peak_rss_mb']:.0f} MB "
                f"(sampled: {row['sampled_peak_anon_mb']:.0f} MB anonymous, "
                f"{row['sampled_peak_file_backed_mb']:.0f} MB file-backed), {row['seconds']:.1f} s",
                flush=True,
            )
            src.unlink()
            dst.unlink()
    base = results[0]["peak_rss_mb"]
    small, large = results[1], results[-1]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    growth = {r["patches"]: r["peak_rss_mb"] - base for r in results[1:]}
    print(
        f"peak RSS ratio {large['patches']} / {small['patches']} patches: {ratio:.2f} "
        f"(target <= {MAX_RATIO}); "
        f"growth over the {args.baseline}-patch baseline: "
        + ", ".join(f"{k}: {v:+.0f} MB" for k, v in growth.items()),
        flush=True,
    )
    target = {
        "rule": f"peak RSS({large['patches']}) <= {MAX_RATIO} x peak RSS({small['patches']}) "
        "(issue 6: not ~10x)",
        "ratio": ratio,
        "growth_over_baseline_mb": growth,
        "met": ratio <= MAX_RATIO,
    }
    setup = {
        "preset": args.preset,
        "patch_size": size,
        "descriptor_dim": d,
        "batch_size": args.batch_size,
    }
    bc.write_json(args.out, meta, results, setup=setup, target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
