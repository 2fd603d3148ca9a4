"""Encoding speed: steady-state patches/s of ``ckn.describe`` beside the machine's matmul rate.

Command (from the project root; about 3 minutes on the 2-core CPU):

    python benchmarks/bench_encode.py [--presets ckn-grad ckn-ref64] [--repeats 5] \\
        [--out benchmarks/results/bench_encode_cpu.json]

For each preset (random unit filters: the cost does not depend on their
values), on seeded random uint8 patches of the preset's size:

* ``describe``: ``ckn.describe(model, patches)`` on a few thousand patches
  (host reads, padding, device transfers and the copy back included), one
  warm-up call then ``--repeats`` timed calls; patches/s from the median.
* ``kernel``: the jitted ``apply_describe`` alone on one device-resident
  group (``block_until_ready`` inside the timed region), for each group size
  in ``--groups`` (rows per jitted call): the measurement behind
  ``ckn.sharding.group_size``.
* compile time: ``lower().compile()`` of the call ``describe`` makes, apart;
  and describe's first call on one patch from a cold cache.

The machine's limit is measured in the same run: float32 products of n x n
matrices, jitted ``jnp.dot`` (precision HIGHEST) and NumPy's BLAS, the best
median over both and over n in 1024, 2048, 3072. Each rate is also given as
GFLOP/s, with the FLOPs counted analytically
(``flops_per_patch``: 2 per multiply-add of every linear map -- filter
products Z^T x, pre-processing, sub-patch norms, separable pooling taps,
Nystrom map -- and nothing for the exponentials and divisions, so the
fraction is a lower bound of the machine's use), and as a fraction of the
matmul rate. ckn-ref64 (64 x 64, 3x3, 64 then 256 filters, subsampling 2
then 6): 0.325 GFLOP/patch, 93% of it in the 3x3x64 -> 256 products of
layer 2.

Target band (issue 6): ckn-ref64 at >= 50% of the matmul rate on the CPU (the
public PyTorch CKN: about 18%, ~80 patches/s on a 2-core CPU). The JSON
records whether it holds.

Prints one line per measurement; writes JSON ``{"metadata", "results",
"matmul", "target"}``. The 1-minute load average is recorded at the start and
end: figures taken with a load above 1.5 on the 2-core machine are not clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

import ckn  # noqa: E402

TARGET_FRACTION = 0.5


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


def bench_preset(
    name: str,
    *,
    n_patches: int | None,
    repeats: int,
    groups: list[int],
    matmul_gflops: float,
    precision: str = "highest",
) -> dict:
    cfg = ckn.get_preset(name)
    s = cfg.patch_size
    model = ckn.CKN(cfg, rngs=nnx.Rngs(0), precision=precision)
    fl = flops_per_patch(cfg, s, s)
    gflop = fl["total"] / 1e9
    rng = np.random.default_rng(0)
    mesh = ckn.sharding.batch_mesh()
    ndev = mesh.size
    auto_group = ckn.sharding.group_size(cfg, s, s, mesh.devices.flat[0].platform)
    graphdef, state = nnx.split(model)
    kw = {} if ndev == 1 else {"mesh": mesh}
    target = mesh.devices.flat[0] if ndev == 1 else ckn.sharding.batch_sharding(mesh)
    print(
        f"{name}: {s}x{s} patches, {gflop:.4f} GFLOP/patch, {ndev} device(s), group {auto_group}",
        flush=True,
    )

    def call_rows(g):
        return ndev * g

    # Compile time of the call that describe makes, apart from steady state;
    # then describe's first call on one patch from a cold cache (trace, compile, run).
    x0 = jax.device_put(
        rng.integers(0, 256, (call_rows(auto_group or 256), s, s), dtype=np.uint8), target
    )
    t = time.perf_counter()
    ckn.sharding.apply_describe.lower(graphdef, state, x0, **kw).compile()
    compile_s = time.perf_counter() - t
    ckn.sharding.apply_describe.clear_cache()
    t = time.perf_counter()
    ckn.describe(model, np.asarray(x0[:1]))
    first_call_s = time.perf_counter() - t

    kernel = []
    for g in groups:
        x = jax.device_put(rng.integers(0, 256, (call_rows(g), s, s), dtype=np.uint8), target)
        f = lambda x=x: ckn.sharding.apply_describe(graphdef, state, x, **kw).block_until_ready()  # noqa: E731
        f()  # compile
        # Enough calls per timed region for ~0.5 s, so small groups are timed over many calls.
        t = time.perf_counter()
        f()
        per = max(time.perf_counter() - t, 1e-4)
        calls = max(1, int(0.5 / per))

        def run(f=f, calls=calls):
            for _ in range(calls):
                f()

        st = bc.stats(bc.time_repeats(run, repeats=repeats))
        pps = calls * call_rows(g) / st["median_s"]
        row = {
            "group": g,
            "rows_per_call": call_rows(g),
            "calls_per_repeat": calls,
            "patches_per_s": pps,
            "gflops": pps * gflop,
            "fraction_of_matmul": pps * gflop / matmul_gflops,
            **st,
        }
        kernel.append(row)
        print(
            f"  kernel group {g:4d}: {pps:8.1f} patches/s  {pps * gflop:6.1f} GFLOP/s  "
            f"{row['fraction_of_matmul']:.0%} of matmul  "
            f"(spread {st['min_s'] / st['median_s']:.2f}-"
            f"{st['max_s'] / st['median_s']:.2f})",
            flush=True,
        )

    # describe() end to end, default settings (group chosen by group_size).
    if n_patches is None:
        best = max(kernel, key=lambda r: r["patches_per_s"])["patches_per_s"] if kernel else 100.0
        n_patches = int(min(max(256, 3.0 * best), 8192))
    patches = rng.integers(0, 256, (n_patches, s, s), dtype=np.uint8)
    out = np.empty((n_patches, int(np.prod(cfg.output_shape(s, s)))), np.float32)
    st = bc.stats(bc.time_repeats(lambda: ckn.describe(model, patches, out=out), repeats=repeats))
    pps = n_patches / st["median_s"]
    frac = pps * gflop / matmul_gflops
    print(
        f"  describe ({n_patches} patches): {pps:8.1f} patches/s  "
        f"{pps * gflop:6.1f} GFLOP/s  {frac:.0%} of matmul "
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
        "gflop_per_patch": gflop,
        "flops_per_patch": fl,
        "group": auto_group,
        "compile_s": compile_s,
        "first_describe_call_s": first_call_s,
        "describe": {
            "patches": n_patches,
            "patches_per_s": pps,
            "gflops": pps * gflop,
            "fraction_of_matmul": frac,
            **st,
        },
        "kernel": kernel,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["ckn-grad", "ckn-ref64"])
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
        "--precision",
        choices=("highest", "default"),
        default="highest",
        help="matrix-product precision of the model (default: the library's default, fp32)",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/bench_encode_<backend>[_<precision>].json)",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        suffix = "" if args.precision == "highest" else f"_{args.precision}"
        args.out = str(bc.RESULTS / f"bench_encode_{jax.default_backend()}{suffix}.json")

    meta = bc.metadata()
    bc.check_load("start")
    print(f"devices: {meta['devices']}; load average {meta['load_average_start']}", flush=True)
    mm = bc.matmul_rate(precision=args.precision)
    for r in mm["sizes"]:
        print(
            f"matmul {r['impl']} {r['n']}: {r['gflops']:.1f} GFLOP/s (best {r['gflops_best']:.1f})",
            flush=True,
        )
    print(f"machine limit ({args.precision} fp32 matmul): {mm['gflops']:.1f} GFLOP/s", flush=True)

    results = []
    for name in args.presets:
        cfg = ckn.get_preset(name)
        groups = args.groups
        if groups is None:
            groups = [1, 2, 4, 8, 16, 64] + ([128, 256] if cfg.patch_size <= 51 else [])
        results.append(
            bench_preset(
                name,
                n_patches=args.patches,
                repeats=args.repeats,
                groups=groups,
                matmul_gflops=mm["gflops"],
                precision=args.precision,
            )
        )
    mm_after = bc.matmul_rate(sizes=(2048,), repeats=5, precision=args.precision)
    print(f"matmul 2048 again at the end: {mm_after['gflops']:.1f} GFLOP/s", flush=True)
    bc.check_load("end")
    ref = next((r for r in results if r["preset"] == "ckn-ref64"), None)
    target = {
        "fraction_of_matmul": TARGET_FRACTION,
        "preset": "ckn-ref64",
        "reached": None if ref is None else ref["describe"]["fraction_of_matmul"],
        "met": None if ref is None else ref["describe"]["fraction_of_matmul"] >= TARGET_FRACTION,
        "peer": "public PyTorch CKN: ~18% of the matmul rate, ~80 patches/s on a 2-core CPU "
        "(CKN_NOTES section 7)",
    }
    bc.write_json(args.out, meta, results, matmul=mm, matmul_end=mm_after, target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
