"""Backbone speed: EfficientNet-Lite ``features`` beside PyTorch and the machine's matmul rate.

Command (from the project root; 15-40 minutes on the loaded 2-core CPU, mostly PyTorch's rows;
the PyTorch rows need the ``peer`` extra, Lite1 / Lite2 the ``cnn1`` / ``cnn2`` extras):

    nice python benchmarks/bench_backbone.py [--device cpu|gpu|tpu] \\
        [--backbones efficientnet-lite0 efficientnet-lite1 efficientnet-lite2] \\
        [--sizes 512 1024] [--batches 1 4] [--repeats 5] [--torch-repeats 3] \\
        [--torch-modes plain tuned passive] [--no-torch] \\
        [--out benchmarks/results/bench_backbone_cpu.json]

The machine's limit first, in the same run (``bench_common.matmul_rate``: float32 n x n
products, jitted ``jnp.dot`` and on the CPU NumPy's BLAS, the best median), at precision
HIGHEST (true float32) and DEFAULT (the backend's fast precision: TF32 / bf16 passes on
accelerators, the same float32 on the CPU).

Then for each backbone whose weights package is installed, each square input size and batch
size, on seeded random uint8 images (the cost does not depend on the pixel values):

* JAX (``Backbone.features``, precision "highest"; on accelerators also "default"; on the
  CPU a batch runs as calls of ``rows_per_call`` rows, ``ckn.sharding.host_streams`` in flight
  from host threads): compile time of ``lower().compile()`` (the program of one call) apart;
  one warm-up call then ``--repeats`` timed calls
  (``block_until_ready``); images/s from the median; FLOPs per image analytic
  (``Backbone.flops``: 2 per multiply-add, as papers count; XLA's own count is recorded too,
  but it counts each banded loop once), hence GFLOP/s and the fraction of both matmul rates;
  memory: XLA's buffer assignment of the compiled call (arguments + outputs + temporaries),
  and the device's peak bytes where the runtime reports it (accelerators).
* PyTorch (CPU torch, or CUDA where ``--device gpu`` and torch sees one): the
  ``efficientnet_lite_pytorch`` package's network on the same weights file
  (``backbone_torch_runner.py``, one process per mode since allocator settings must be in the
  environment at start): the first call's features are compared with JAX's (max abs
  difference, must be <= 1e-4), then ``--torch-repeats`` timed calls. Modes:
  ``plain`` (NCHW, default environment), ``tuned`` (model and input channels_last;
  ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
  MALLOC_TOP_PAD_=1073741824``, without which torch spends its time returning memory to the
  system and faulting it back), ``passive`` (tuned + ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's
  threads sleep at barriers instead of spinning, which decides torch's speed when other jobs
  share the cores). Peak resident memory of the torch process (running maximum).

Threads: XLA uses every schedulable CPU; torch ``os.cpu_count()`` threads (2 here).

Goals of issue 23 item 3, evaluated per row in ``summary``: JAX at >= 50% of the float32
matmul rate, and JAX images/s >= every PyTorch mode's. The 1-minute load average is recorded
at the start, around each part and at the end: on a loaded machine absolute rates fall, and
only the ratios within the run (to the same run's matmul, JAX / torch) are meaningful.

Prints one line per measurement; writes JSON ``{"metadata", "results", "summary", "matmul",
"matmul_fast", "matmul_end", "loads", "setup"}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from ckn import InputError  # noqa: E402
from retrieval.nets import load_backbone  # noqa: E402

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
RUNNER = Path(__file__).resolve().parent / "backbone_torch_runner.py"
TUNED_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "33554432",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
    "MALLOC_TOP_PAD_": "1073741824",
}
TORCH_MODES = {
    "plain": ({}, False),
    "tuned": (TUNED_ENV, True),
    "passive": ({**TUNED_ENV, "OMP_WAIT_POLICY": "PASSIVE"}, True),
}
TOLERANCE = 1e-4
GOAL_FRACTION = 0.5
JAX_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu"}


def _xla_flops(cost) -> float | None:
    """The ``flops`` entry of XLA's cost analysis (a dict, or a list of one dict)."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _memory(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return {}
    if m is None:
        return {}
    out = {
        k: int(getattr(m, f"{k}_size_in_bytes"))
        for k in ("argument", "output", "temp", "generated_code")
        if hasattr(m, f"{k}_size_in_bytes")
    }
    out["total"] = sum(v for k, v in out.items() if k != "generated_code")
    return out


def _images(size: int, batch: int) -> np.ndarray:
    return np.random.default_rng(size + batch).integers(0, 256, (batch, size, size, 3), np.uint8)


def measure_jax(net, images, repeats: int, device) -> tuple[dict, np.ndarray]:
    batch, size = images.shape[0], images.shape[1]
    t0 = time.perf_counter()
    compiled = net.lower_features(images).compile()
    compile_s = time.perf_counter() - t0
    feats = np.asarray(net.features(images))
    times = bc.time_repeats(
        lambda: net.features(images).block_until_ready(), repeats=repeats, warmup=1
    )
    s = bc.stats(times)
    flops = net.flops(size, size)
    xla = _xla_flops(compiled.cost_analysis())
    rows = net.rows_per_call(images)  # the compiled program's rows (a CPU batch runs in calls)
    stats = device.memory_stats() or {}
    row = {
        "impl": "jax",
        "precision": net.precision,
        "compile_s": compile_s,
        "flops_per_image": flops,
        "xla_flops_per_image": None if xla is None else xla / rows,
        "rows_per_call": rows,
        "images_per_s": batch / s["median_s"],
        "images_per_s_best": batch / s["min_s"],
        "gflops": flops * batch / s["median_s"] / 1e9,
        "xla_memory_bytes": _memory(compiled),
        "device_peak_bytes": stats.get("peak_bytes_in_use"),
        **s,
    }
    return row, feats


def run_torch(name, mode, configs, images_path, repeats, device, tmp) -> dict:
    env_extra, channels_last = TORCH_MODES[mode]
    env = {k: v for k, v in os.environ.items() if k not in TUNED_ENV and k != "OMP_WAIT_POLICY"}
    env.update(env_extra)
    out = Path(tmp) / f"torch_{name}_{mode}.npz"
    cmd = [
        sys.executable, str(RUNNER), "--backbone", name, "--configs", *configs,
        "--images", str(images_path), "--repeats", str(repeats), "--out", str(out),
        "--threads", str(os.cpu_count()), "--device", device,
    ]  # fmt: skip
    if channels_last:
        cmd.append("--channels-last")
    subprocess.run(cmd, check=True, env=env)
    data = np.load(out)
    report = json.loads(str(data["report"]))
    feats = {c: data[f"features_{c}"] for c in configs}
    return {"report": report, "features": feats}


def torch_device(device: str) -> str | None:
    """The torch device for ``--device``, or None when the PyTorch rows cannot run here."""
    for module in ("torch", "efficientnet_lite_pytorch"):
        if importlib.util.find_spec(module) is None:
            return None
    if device == "cpu":
        return "cpu"
    if device == "gpu":
        import torch

        return "cuda" if torch.cuda.is_available() else None
    return None


def summarize(results: list[dict], mm: float) -> list[dict]:
    rows = []
    keys = sorted({(r["backbone"], r["size"], r["batch"]) for r in results}, key=str)
    for key in keys:
        group = [r for r in results if (r["backbone"], r["size"], r["batch"]) == key]
        jax_row = next(r for r in group if r["impl"] == "jax" and r["precision"] == "highest")
        torch_rows = {r["impl"]: r for r in group if r["impl"].startswith("torch_")}
        best = max((r["images_per_s"] for r in torch_rows.values()), default=None)
        diffs = [r["max_abs_diff"] for r in torch_rows.values() if "max_abs_diff" in r]
        rows.append(
            {
                "backbone": key[0],
                "size": key[1],
                "batch": key[2],
                "jax_images_per_s": jax_row["images_per_s"],
                **{f"{k}_images_per_s": r["images_per_s"] for k, r in torch_rows.items()},
                "jax_over_best_torch": None if best is None else jax_row["images_per_s"] / best,
                "fraction_of_matmul": jax_row["fraction_of_matmul"],
                "goal_fraction_met": jax_row["fraction_of_matmul"] >= GOAL_FRACTION,
                "goal_torch_met": None if best is None else jax_row["images_per_s"] >= best,
                "max_abs_diff_vs_torch": max(diffs, default=None),
            }
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=sorted(JAX_PLATFORMS), default="cpu")
    ap.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES))
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-repeats", type=int, default=3)
    ap.add_argument("--torch-modes", nargs="+", choices=list(TORCH_MODES), default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=None, help="default: results/bench_backbone_DEVICE.json")
    args = ap.parse_args(argv)
    out_path = args.out or str(bc.RESULTS / f"bench_backbone_{args.device}.json")
    meta = bc.metadata()
    bc.check_load("bench_backbone")
    device = jax.devices(JAX_PLATFORMS[args.device])[0]
    tdev = None if args.no_torch else torch_device(args.device)
    modes = args.torch_modes or (list(TORCH_MODES) if tdev == "cpu" else ["plain"])
    precisions = ["highest"] if args.device == "cpu" else ["highest", "default"]
    loads = {"start": bc.load_average()}
    with jax.default_device(device):
        mm = bc.matmul_rate(precision="highest")
        mm_fast = bc.matmul_rate(precision="default")
        print(f"matmul fp32: {mm['gflops']:.1f} GFLOP/s, fast precision: "
              f"{mm_fast['gflops']:.1f} GFLOP/s", flush=True)  # fmt: skip
        results, skipped = [], {}
        configs = [(s, b) for s in args.sizes for b in args.batches]
        with tempfile.TemporaryDirectory() as tmp:
            images_path = Path(tmp) / "images.npz"
            np.savez(images_path, **{f"{s}x{b}": _images(s, b) for s, b in configs})
            for name in args.backbones:
                try:
                    nets = {p: load_backbone(name, precision=p) for p in precisions}
                except InputError as e:
                    skipped[name] = str(e)
                    print(f"{name}: skipped ({e})", flush=True)
                    continue
                loads[f"{name}_jax"] = bc.load_average()
                feats = {}
                for size, batch in configs:
                    images = _images(size, batch)
                    for prec, net in nets.items():
                        row, f = measure_jax(net, images, args.repeats, device)
                        row.update(backbone=name, size=size, batch=batch)
                        row["fraction_of_matmul"] = row["gflops"] / mm["gflops"]
                        row["fraction_of_matmul_fast"] = row["gflops"] / mm_fast["gflops"]
                        results.append(row)
                        if prec == "highest":
                            feats[f"{size}x{batch}"] = f
                        print(
                            f"{name} {size} px b{batch} jax/{prec}: {row['images_per_s']:.2f} "
                            f"images/s ({row['gflops']:.1f} GFLOP/s = "
                            f"{100 * row['fraction_of_matmul']:.1f}% of matmul), compile "
                            f"{row['compile_s']:.1f} s",
                            flush=True,
                        )
                if tdev is None:
                    continue
                for mode in modes:
                    loads[f"{name}_torch_{mode}"] = bc.load_average()
                    names = [f"{s}x{b}" for s, b in configs]
                    got = run_torch(name, mode, names, images_path, args.torch_repeats, tdev, tmp)
                    for (size, batch), c, rep in zip(configs, names, got["report"]["rows"]):
                        s = bc.stats(rep["times_s"])
                        diff = float(np.max(np.abs(got["features"][c] - feats[c])))
                        flops = nets["highest"].flops(size, size)
                        row = {
                            "impl": f"torch_{mode}", "backbone": name, "size": size,
                            "batch": batch, "images_per_s": batch / s["median_s"],
                            "images_per_s_best": batch / s["min_s"],
                            "gflops": flops * batch / s["median_s"] / 1e9,
                            "max_abs_diff": diff, "within_tolerance": diff <= TOLERANCE,
                            "peak_rss_bytes": rep["peak_bytes"], **s,
                        }  # fmt: skip
                        row["fraction_of_matmul"] = row["gflops"] / mm["gflops"]
                        results.append(row)
                        print(
                            f"{name} {size} px b{batch} torch/{mode}: "
                            f"{row['images_per_s']:.2f} images/s, max |jax - torch| "
                            f"{diff:.2e}" + ("" if diff <= TOLERANCE else " > 1e-4 !"),
                            flush=True,
                        )
                    torch_meta = {k: v for k, v in got["report"].items() if k != "rows"}
        mm_end = bc.matmul_rate(sizes=(2048,), repeats=5)
    loads["end"] = bc.load_average()
    summary = summarize(results, mm["gflops"])
    for r in summary:
        print(
            f"{r['backbone']} {r['size']} b{r['batch']}: jax {r['jax_images_per_s']:.2f} "
            f"images/s, {100 * r['fraction_of_matmul']:.1f}% of matmul (goal 50%: "
            f"{'met' if r['goal_fraction_met'] else 'not met'}); jax / best torch "
            + ("n/a" if r["jax_over_best_torch"] is None else f"{r['jax_over_best_torch']:.2f}"),
            flush=True,
        )
    bad = [r for r in results if r.get("within_tolerance") is False]
    setup = {
        "device": args.device,
        "jax_device": str(device),
        "torch_device": tdev,
        "torch_modes": modes if tdev else [],
        "torch": torch_meta if tdev and results else None,
        "threads": os.cpu_count(),
        "tolerance": TOLERANCE,
        "skipped_backbones": skipped,
        "images": "seeded random uint8, square",
    }
    bc.write_json(
        out_path, meta, results, summary=summary, matmul=mm, matmul_fast=mm_fast,
        matmul_end=mm_end, loads=loads, setup=setup,
    )  # fmt: skip
    if bad:
        print(f"{len(bad)} PyTorch rows differ from JAX by more than {TOLERANCE}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
