"""Encoding speed: steady-state patches/s of ``ckn.describe`` beside the device's matmul rate.

Command (from the project root; about 6 minutes on the 2-core CPU):

    python benchmarks/bench_encode.py [--device cpu|gpu|tpu] [--presets ckn-grad ckn-ref64] \\
        [--precisions highest default] [--repeats 5] \\
        [--out benchmarks/results/bench_encode_cpu.json]

Everything runs on ``--device`` (default: JAX's default backend; all its local
devices). For each precision in ``--precisions`` -- "highest" (true fp32) and
"default" (the backend's fast precision: TF32 / bf16 passes on GPUs and TPUs,
the same fp32 code on the CPU) -- the device's matmul rate at that precision is
measured first, then for each preset (random unit filters: the cost does not
depend on their values), on seeded random uint8 patches of the preset's size:

* ``describe``: ``ckn.describe(model, patches)`` on a few thousand patches
  (host reads, padding, device transfers, the copy back and, on the CPU, the
  ``ckn.sharding.host_streams`` calls in flight from host threads included), one
  warm-up call then ``--repeats`` timed calls; patches/s from the median.
  This is the steady-state figure the targets are judged on.
* ``kernel``: the jitted ``apply_describe`` alone on one device-resident
  group (``block_until_ready`` inside the timed region; one call at a time,
  so on the CPU it can be below describe), for each group size
  in ``--groups`` (rows per device per jitted call): the measurement behind
  ``ckn.sharding.group_size``.
* ``layers``: the time split by part at the default group: the jitted input
  map, then the network up to each kernel layer, then the whole describe;
  each part's time is the difference of two medians (noisy when a part is
  small), beside its share of the FLOPs.
* compile time, apart from steady state: ``lower().compile()`` of the call
  ``describe`` makes, and describe's first call on one patch from a cold cache.
* peak device memory where the backend reports it (``memory_stats()``: GPUs,
  TPUs; None on the CPU, where the process's peak resident set is given).

The device's limit is measured in the same run, per precision: products of
n x n float32 matrices, jitted ``jnp.dot`` on the device (and NumPy's BLAS
when the device is the CPU), the best median over both and over n in 1024,
2048, 3072, again at 2048 at the end. Each rate is also given as GFLOP/s,
with the FLOPs counted analytically (``flops_per_patch``: 2 per multiply-add
of every linear map -- filter products Z^T x, pre-processing, sub-patch
norms, separable pooling taps, Nystrom map -- and nothing for the
exponentials and divisions, so the fraction is a lower bound of the device's
use), and as a fraction of the matmul rate at the same precision. ckn-ref64
(64 x 64, 3x3, 64 then 256 filters, subsampling 2 then 6): 0.325
GFLOP/patch, 93% of it in the 3x3x64 -> 256 products of layer 2.

Targets (issue 23): describe at >= 70% of the fp32 matmul rate for
ckn-ref64 and >= 50% for ckn-grad; the JSON records whether they hold.

Prints one line per measurement; writes JSON ``{"metadata", "device",
"results", "matmul", "matmul_end", "targets"}`` with one result per preset
and precision. The 1-minute load average is recorded at the start and end of
the run and of each preset: figures taken with a load above 1.5 on the
2-core machine are not clean.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

import ckn  # noqa: E402

# Fraction of the fp32 ("highest") matmul rate that describe should reach (issue 23).
TARGETS = {"ckn-ref64": 0.70, "ckn-grad": 0.50}


def _pool_flops(n_h: int, n_w: int, channels: int, s: int, mode: str, std) -> int:
    """Separable pooling: 2 flops per non-zero tap, H pass then W pass."""
    if s == 1:
        return 0
    ph = ckn.ops.pooling_matrix(n_h, s, mode=mode, std=std)
    pw = ckn.ops.pooling_matrix(n_w, s, mode=mode, std=std)
    return (
        2 * channels * (int(np.count_nonzero(ph)) * n_w + ph.shape[0] * int(np.count_nonzero(pw)))
    )


def flops_per_patch(config: ckn.CKNConfig, height: int, width: int) -> dict:
    """Analytic FLOPs of one patch through the network, by part (see module docstring)."""
    parts = {}
    h, w = height, width
    if config.blur:
        taps = 2 * max(1, int(np.ceil(4 * config.blur))) + 1
        parts["blur"] = 2 * 2 * taps * h * w * config.in_channels
    if config.input == "grad":
        k = config.grad_orientations
        parts["grad_map"] = (
            h * w * (4 + 3 * k)
        )  # differences, norm, <g~, (cos, sin)> per orientation
        parts["grad_pool"] = _pool_flops(
            h, w, k, config.grad_subsampling, config.grad_pooling, config.grad_pool_std
        )
    for i, (layer, geo) in enumerate(zip(config.layers, config.layer_geometry(height, width))):
        e, p = layer.subpatch, layer.filters
        (h, w), d = geo.positions, e * e * geo.in_channels
        positions = h * w
        if i == 0 and config.input in ("raw", "white"):
            parts[f"layer{i + 1}_preprocess"] = 2 * positions * d * d
        parts[f"layer{i + 1}_norms"] = 2 * positions * d
        parts[f"layer{i + 1}_filters"] = 2 * positions * d * p
        parts[f"layer{i + 1}_pool"] = _pool_flops(
            h, w, p, layer.subsampling, layer.pooling, layer.pool_std
        )
        parts[f"layer{i + 1}_nystrom"] = 2 * geo.pooled[0] * geo.pooled[1] * p * p
    return {"total": sum(parts.values()), "parts": parts}


def _timed(f, repeats: int) -> dict:
    """Median and spread of ``f`` (which blocks), enough calls per repeat for ~0.5 s."""
    f()  # compile / warm up
    t = time.perf_counter()
    f()
    calls = max(1, int(0.5 / max(time.perf_counter() - t, 1e-4)))

    def run():
        for _ in range(calls):
            f()

    return {"calls_per_repeat": calls, **bc.stats(bc.time_repeats(run, repeats=repeats))}


def _rate(patches_per_s: float, gflop: float, matmul_gflops: float) -> dict:
    return {
        "patches_per_s": patches_per_s,
        "gflops": patches_per_s * gflop,
        "fraction_of_matmul": patches_per_s * gflop / matmul_gflops,
    }


def _layer_parts(config: ckn.CKNConfig, fl: dict) -> list[tuple[str, int, list[str]]]:
    """(label, map_before index, FLOP part names) of each part of the network, in order."""
    names = list(fl["parts"])
    parts = [("input map", 0, [n for n in names if not n.startswith("layer")])]
    for i in range(len(config.layers)):
        parts.append(
            (f"layer {i + 1}", i + 1, [n for n in names if n.startswith(f"layer{i + 1}_")])
        )
    parts.append(("output normalization", None, []))
    return parts


def time_split(model, graphdef, state, x, kw, *, repeats, fl, matmul_gflops) -> list[dict]:
    """Steady-state time of each part at one group: differences of jitted prefixes.

    The prefixes (input map, up to each layer, the whole describe) are timed in
    turn within each repeat, so a change of the machine's load hits them alike.
    """
    rows = x.shape[0]
    mesh = kw.get("mesh")
    parts = _layer_parts(model.config, fl)
    calls = []
    for _label, upto, _ in parts:
        if upto is None:
            f = lambda: ckn.sharding.apply_describe(graphdef, state, x, **kw).block_until_ready()  # noqa: E731
        else:

            def local(state, x, upto=upto):
                return nnx.merge(graphdef, state).map_before(x, upto)

            if mesh is not None:
                spec = jax.sharding.PartitionSpec
                split = spec(*mesh.axis_names)
                local = jax.shard_map(local, mesh=mesh, in_specs=(spec(), split), out_specs=split)
            g = jax.jit(local)
            f = lambda g=g: g(state, x).block_until_ready()  # noqa: E731
        f()  # compile
        t = time.perf_counter()
        f()
        calls.append((f, max(1, int(0.25 / max(time.perf_counter() - t, 1e-4)))))
    times = [[] for _ in parts]
    for _ in range(repeats):
        for (f, n), out in zip(calls, times):
            t = time.perf_counter()
            for _ in range(n):
                f()
            out.append((time.perf_counter() - t) / n)
    prefix_s = [float(np.median(t)) for t in times]
    out, before = [], 0.0
    for (label, _, names), t in zip(parts, prefix_s):
        part_flops = sum(fl["parts"][n] for n in names)
        dt, before = t - before, t
        rate = part_flops * rows / dt / 1e9 if dt > 0 else None
        out.append(
            {
                "part": label,
                "flops_per_patch": part_flops,
                "flop_share": part_flops / fl["total"],
                "us_per_patch": dt / rows * 1e6,
                "time_share": dt / prefix_s[-1],
                "gflops": rate,
                "fraction_of_matmul": None if rate is None else rate / matmul_gflops,
            }
        )
    return out


def peak_memory(devices) -> dict:
    """Peak bytes in use per device where the backend reports it, and the host's peak RSS."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 -- backends without the call
            stats = None
        peaks.append(None if not stats else stats.get("peak_bytes_in_use"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"device_peak_bytes": peaks, "host_peak_rss_bytes": rss}


def bench_preset(
    name: str,
    *,
    devices: list,
    n_patches: int | None,
    repeats: int,
    groups: list[int],
    matmul_gflops: float,
    precision: str = "highest",
) -> dict:
    cfg = ckn.get_preset(name)
    s = cfg.patch_size
    load_start = bc.load_average()
    model = ckn.CKN(cfg, rngs=nnx.Rngs(0), precision=precision)
    fl = flops_per_patch(cfg, s, s)
    gflop = fl["total"] / 1e9
    rng = np.random.default_rng(0)
    mesh = ckn.sharding.batch_mesh(devices)
    ndev = mesh.size
    platform = mesh.devices.flat[0].platform
    auto_group = ckn.sharding.group_size(cfg, s, s, platform)
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, ckn.sharding.replicated(mesh))
    kw = {"precision": precision} | ({} if ndev == 1 else {"mesh": mesh})
    target = mesh.devices.flat[0] if ndev == 1 else ckn.sharding.batch_sharding(mesh)
    print(
        f"{name} ({precision}): {s}x{s} patches, {gflop:.4f} GFLOP/patch, {ndev} {platform} "
        f"device(s), group {auto_group}",
        flush=True,
    )

    # Compile time of the call that describe makes, apart from steady state;
    # then describe's first call on one patch from a cold cache (trace, compile, run).
    call_rows = ndev * (auto_group or 256)
    x0 = jax.device_put(rng.integers(0, 256, (call_rows, s, s), dtype=np.uint8), target)
    t = time.perf_counter()
    ckn.sharding.apply_describe.lower(graphdef, state, x0, **kw).compile()
    compile_s = time.perf_counter() - t
    ckn.sharding.apply_describe.clear_cache()
    t = time.perf_counter()
    ckn.describe(model, np.asarray(x0[:1]), devices=devices, precision=precision)
    first_call_s = time.perf_counter() - t

    kernel = []
    for g in groups:
        x = jax.device_put(rng.integers(0, 256, (ndev * g, s, s), dtype=np.uint8), target)
        st = _timed(
            lambda x=x: ckn.sharding.apply_describe(graphdef, state, x, **kw).block_until_ready(),
            repeats,
        )
        pps = st["calls_per_repeat"] * ndev * g / st["median_s"]
        row = {"group": g, "rows_per_call": ndev * g, **_rate(pps, gflop, matmul_gflops), **st}
        kernel.append(row)
        print(
            f"  kernel group {g:4d}: {pps:8.1f} patches/s  {pps * gflop:6.1f} GFLOP/s  "
            f"{row['fraction_of_matmul']:.0%} of matmul  "
            f"(spread {st['min_s'] / st['median_s']:.2f}-{st['max_s'] / st['median_s']:.2f})",
            flush=True,
        )

    layers = time_split(
        model, graphdef, state, x0, kw, repeats=repeats, fl=fl, matmul_gflops=matmul_gflops
    )
    for r in layers:
        frac = (
            "" if r["fraction_of_matmul"] is None else f", {r['fraction_of_matmul']:.0%} of matmul"
        )
        print(
            f"  {r['part']:22s} {r['us_per_patch']:8.1f} us/patch ({r['time_share']:.0%} of the "
            f"time, {r['flop_share']:.0%} of the FLOPs{frac})",
            flush=True,
        )

    # describe() end to end, default settings (group chosen by group_size).
    if n_patches is None:
        best = max(kernel, key=lambda r: r["patches_per_s"])["patches_per_s"] if kernel else 100.0
        n_patches = int(min(max(256, 3.0 * best), 8192))
    patches = rng.integers(0, 256, (n_patches, s, s), dtype=np.uint8)
    out = np.empty((n_patches, int(np.prod(cfg.output_shape(s, s)))), np.float32)

    def run_describe():
        ckn.describe(model, patches, out=out, devices=devices, precision=precision)

    st = bc.stats(bc.time_repeats(run_describe, repeats=repeats))
    desc = {"patches": n_patches, **_rate(n_patches / st["median_s"], gflop, matmul_gflops), **st}
    print(
        f"  describe ({n_patches} patches): {desc['patches_per_s']:8.1f} patches/s  "
        f"{desc['gflops']:6.1f} GFLOP/s  {desc['fraction_of_matmul']:.0%} of matmul "
        f"(spread {st['min_s'] / st['median_s']:.2f}-{st['max_s'] / st['median_s']:.2f}); "
        f"compile {compile_s:.1f} s, first call {first_call_s:.1f} s",
        flush=True,
    )
    return {
        "preset": name,
        "precision": precision,
        "patch_size": s,
        "descriptor_dim": out.shape[1],
        "devices": ndev,
        "platform": platform,
        "gflop_per_patch": gflop,
        "flops_per_patch": fl,
        "group": auto_group,
        "compile_s": compile_s,
        "first_describe_call_s": first_call_s,
        "describe": desc,
        "kernel": kernel,
        "layers": layers,
        "memory": peak_memory(devices),
        "load_average": {"start": load_start, "end": bc.load_average()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--device",
        choices=("cpu", "gpu", "tpu"),
        default=None,
        help="backend to run on, all its local devices (default: JAX's default backend)",
    )
    ap.add_argument("--presets", nargs="+", default=["ckn-grad", "ckn-ref64"])
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=("highest", "default"),
        default=["highest", "default"],
        help="matrix-product precisions to measure, each against the matmul rate at the same "
        "precision: highest = fp32, default = the backend's fast precision",
    )
    ap.add_argument(
        "--patches",
        type=int,
        default=None,
        help="patches per describe call (default: ~3 s of work)",
    )
    ap.add_argument(
        "--groups",
        type=int,
        nargs="*",
        default=None,
        help="rows per device per jitted call to time "
        "(default 1 2 4 8 16 64, and 128 256 for 51 x 51 patches)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/bench_encode_<device>.json)",
    )
    args = ap.parse_args(argv)
    backend = args.device or jax.default_backend()
    try:
        devices = jax.local_devices(backend=backend)
    except RuntimeError as e:
        ap.error(f"no {backend} device: {e}")
    if args.out is None:
        args.out = str(bc.RESULTS / f"bench_encode_{backend}.json")

    meta = bc.metadata()
    bc.check_load("start")
    print(
        f"devices: {[f'{d.platform}:{d.device_kind}' for d in devices]}; load average "
        f"{meta['load_average_start']}",
        flush=True,
    )
    matmul, matmul_end, results = {}, {}, []
    for precision in args.precisions:
        with jax.default_device(devices[0]):
            mm = bc.matmul_rate(precision=precision)
        matmul[precision] = mm
        for r in mm["sizes"]:
            print(
                f"matmul {precision} {r['impl']} {r['n']}: {r['gflops']:.1f} GFLOP/s "
                f"(best {r['gflops_best']:.1f})",
                flush=True,
            )
        print(f"device limit ({precision} matmul): {mm['gflops']:.1f} GFLOP/s", flush=True)
        for name in args.presets:
            cfg = ckn.get_preset(name)
            groups = args.groups
            if groups is None:
                groups = [1, 2, 4, 8, 16, 64] + ([128, 256] if cfg.patch_size <= 51 else [])
            results.append(
                bench_preset(
                    name,
                    devices=devices,
                    n_patches=args.patches,
                    repeats=args.repeats,
                    groups=groups,
                    matmul_gflops=mm["gflops"],
                    precision=precision,
                )
            )
        with jax.default_device(devices[0]):
            matmul_end[precision] = bc.matmul_rate(sizes=(2048,), repeats=5, precision=precision)
        print(
            f"matmul {precision} 2048 again: {matmul_end[precision]['gflops']:.1f} GFLOP/s",
            flush=True,
        )
    bc.check_load("end")
    # Another job on the CPU slows the multi-thread matmul far more than the CKN
    # (one thread descheduled stalls the others), so a busy run overstates every
    # fraction. Clean: the load before the run at most BUSY_LOAD, and during it at
    # most that plus this run's own threads (one per CPU).
    start = meta["load_average_start"]
    during = [r["load_average"][k] for r in results for k in ("start", "end")]
    clean = (
        start is not None
        and start[0] <= bc.BUSY_LOAD
        and all(x is not None and x[0] <= bc.BUSY_LOAD + (os.cpu_count() or 1) for x in during)
    )
    targets = []
    for name, fraction in TARGETS.items():
        row = next(
            (r for r in results if r["preset"] == name and r["precision"] == "highest"), None
        )
        reached = None if row is None else row["describe"]["fraction_of_matmul"]
        best_kernel = None if row is None else max(k["fraction_of_matmul"] for k in row["kernel"])
        targets.append(
            {
                "preset": name,
                "precision": "highest",
                "fraction_of_matmul": fraction,
                "reached": reached,
                "best_kernel_group": best_kernel,
                "met": None if reached is None else reached >= fraction,
                "clean_load": clean,
            }
        )
        if reached is not None:
            print(
                f"target {name}: describe at {reached:.0%} of the fp32 matmul rate "
                f"(target {fraction:.0%}, {'met' if reached >= fraction else 'not met'}"
                f"{'' if clean else '; load above ' + str(bc.BUSY_LOAD) + ': not a clean figure'})",
                flush=True,
            )
    device = {
        "backend": backend,
        "count": len(devices),
        "kinds": sorted({d.device_kind for d in devices}),
    }
    bc.write_json(
        args.out,
        meta,
        results,
        device=device,
        matmul=matmul,
        matmul_end=matmul_end,
        targets=targets,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
