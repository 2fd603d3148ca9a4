"""The public PyTorch CKN and ``ckn`` back to back: same network, same patches, same threads.

Command (from the project root; about 8 minutes on the 2-core CPU, of which
~3 for the k-means part; needs the ``peer`` extra, ``pip install -e .[peer]``,
i.e. torch (CPU build), scipy and scikit-learn):

    python benchmarks/bench_peer.py [--patches 2048] [--repeats 3] [--threads 2] \\
        [--peer-dir /work/shared/peers/ckn-pytorch-image] [--no-kmeans] \\
        [--out benchmarks/results/bench_peer_cpu.json]

Without torch or without the peer's folder it prints one line saying so and
exits 0, writing nothing.

The peer (github claying/CKN-Pytorch-image, GPL-3) runs only as an external
program: ``peer_runner.py`` imports it in a subprocess, with three import-time
stand-ins for today's stack (no edit to its files), and times it there; none
of its code is in this project.

Configuration, both sides: ckn-ref64 (``ckn.get_preset("ckn-ref64")``, checked
here): 2 layers, 64 then 256 filters, 3x3 sub-patches, subsampling 2 then 6
(2s+1-tap Gaussian pooling of std s/sqrt(2), zero padding s, stride s, as the
peer's), sigma 0.6, on 64 x 64 gray patches: 64x64 -> 32x32 -> 6x6 x 256 =
9216-D descriptors, L2-normalized. Random unit filters on both sides (each
library's own initialization; encoding cost does not depend on the filter
values, so no training). Differences that change the work by about 1% or
less: ckn-ref64 centres each 3x3 sub-patch of layer 1 (input "raw", a 9x9
linear map, 0.2% of the FLOPs; the peer expects pre-whitened images and has
none); the peer pools by a dense 2-D convolution (~3 MFLOP more per patch),
ckn separably.

Data: ``--patches`` 64 x 64 gray uint8 patches cut at seeded random positions
from the 15 scikit-image photos of the embedded default data set.

Threads: the process is pinned to ``--threads`` CPUs (``sched_setaffinity``,
inherited by the subprocess; a no-op on a 2-core machine), torch uses
``torch.set_num_threads(threads)`` (OMP/MKL_NUM_THREADS set too), XLA its
default (all schedulable CPUs, i.e. the same ``threads``).

Measured, in this order, one process for ckn and one subprocess for the peer:

* the machine's fp32 matmul rate (``bench_common.matmul_rate``);
* peer encoding: each batch size of ``--peer-batches`` tried on 512 patches
  (warm-up batch first), then the fastest on all patches: one warm-up pass,
  ``--repeats`` timed passes (uint8 -> float tensor, forward under no_grad,
  flatten, L2 normalization, copy into one output array); patches/s from the
  median;
* ``ckn.describe(model, patches, out=out)`` (default batch size and group,
  fp32 "highest" precision; host reads, transfers and the copy back included):
  one warm-up call, ``--repeats`` timed calls, patches/s from the median;
* the layer-2 spherical k-means (unless ``--no-kmeans``): 100,000 normalized
  3x3x64 sub-patches (d = 576) of ckn-ref64's layer-1 maps on photo patches
  (``bench_kmeans.subpatch_data``) -> 256 centres, 60 iterations: the peer's
  ``ckn.utils.spherical_kmeans`` (in its subprocess, one warm-up fit, stops
  early if its objective's relative change falls below 1e-6: the iterations
  run are recorded) against ``ckn.unsupervised.kmeans(..., iters=60, spherical=True)``
  (first fit = compile + run, then timed fits); times per fit and per
  iteration run; both objectives
  J = mean(1 - max_j <c_j, x_i>) computed the same way afterwards;
* the matmul rate (n = 2048) again at the end.

Each encoding rate is also given in GFLOP/s, with the FLOPs of ckn-ref64
counted analytically (``bench_encode.flops_per_patch``: 0.325 GFLOP/patch, 93%
in layer 2's 3x3x64 -> 256 products; the same count for the peer, which does
the same linear maps), and as a fraction of the matmul rate. The ratio
ckn/peer is the headline: both sides are measured minutes apart in one run,
so it holds even on a busy machine, while the absolute figures do not. The
1-minute load average is recorded at the start, around each side, and at the
end.

Prints one line per measurement and writes JSON ``{"metadata", "results",
"matmul", "matmul_end", "setup", "peer_metadata", "comparison"}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PEER = Path("/work/shared/peers/ckn-pytorch-image")
PRESET = "ckn-ref64"
# The commit of the peer checkout in /work/shared/peers (per its README there).
PEER_COMMIT = "19ae94bd5964ee0734fe413668f8293b2568304d"


def _skip_reason(peer_dir: Path) -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "bench_peer: skipped: torch is not installed (pip install -e .[peer])"
    if not (peer_dir / "ckn" / "models.py").is_file():
        return f"bench_peer: skipped: no peer checkout at {peer_dir} (ckn/models.py missing)"
    return None


def _pin_threads(threads: int) -> list[int] | None:
    """Pins this process (and its children) to ``threads`` CPUs; returns the CPUs used."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def photo_patches(n: int, size: int = 64, seed: int = 0):
    """n gray uint8 patches cut at seeded random positions from the default data's photos."""
    import numpy as np

    try:
        from retrieval.patches import default_photos
    except ImportError:  # before the data package split
        from retrieval.patches import default_photos

    rng = np.random.default_rng(seed)
    images = []
    for _, img in default_photos():
        if img.ndim == 3:
            img = (img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(
                np.uint8
            )
        images.append(img)
    out = np.empty((n, size, size), np.uint8)
    for i in range(n):
        img = images[i % len(images)]
        y, x = rng.integers(0, img.shape[0] - size + 1), rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y : y + size, x : x + size]
    return out


def run_peer(peer_dir: Path, threads: int, args: list[str], tmp: Path, name: str) -> dict:
    out = tmp / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [
        sys.executable,
        str(HERE / "peer_runner.py"),
        "--peer-dir",
        str(peer_dir),
        "--threads",
        str(threads),
        *args,
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, env=env, cwd=tmp)
    return json.loads(out.read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patches", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--peer-dir", type=Path, default=Path(os.environ.get("CKN_PEER_DIR", DEFAULT_PEER))
    )
    ap.add_argument("--peer-batches", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--no-kmeans", action="store_true", help="skip the layer-2 k-means comparison")
    ap.add_argument("--kmeans-n", type=int, default=100_000)
    ap.add_argument("--kmeans-repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out",
        default=None,
        help="JSON path (default benchmarks/results/bench_peer_<backend>.json)",
    )
    args = ap.parse_args(argv)

    reason = _skip_reason(args.peer_dir)
    if reason:
        print(reason, flush=True)
        return 0
    cpus = _pin_threads(args.threads)  # before jax starts its thread pools

    import jax
    import numpy as np
    from flax import nnx

    sys.path.insert(0, str(HERE))
    import bench_common as bc
    from bench_encode import flops_per_patch

    import ckn

    if args.out is None:
        args.out = str(bc.RESULTS / f"bench_peer_{jax.default_backend()}.json")
    cfg = ckn.get_preset(PRESET)
    want = {
        "patch_size": 64,
        "input": "raw",
        "channels": "gray",
        "filters": [64, 256],
        "subpatch": [3, 3],
        "subsampling": [2, 6],
        "sigma": [0.6, 0.6],
        "pooling": ["strided", "strided"],
    }
    have = {
        "patch_size": cfg.patch_size,
        "input": cfg.input,
        "channels": cfg.channels,
        "filters": [lc.filters for lc in cfg.layers],
        "subpatch": [lc.subpatch for lc in cfg.layers],
        "subsampling": [lc.subsampling for lc in cfg.layers],
        "sigma": [lc.sigma for lc in cfg.layers],
        "pooling": [lc.pooling for lc in cfg.layers],
    }
    if have != want:  # build the matching configuration if the preset ever drifts
        layers = tuple(
            dataclasses.replace(
                lc, filters=f, subpatch=e, subsampling=s, sigma=0.6, pooling="strided"
            )
            for lc, f, e, s in zip(
                cfg.layers, want["filters"], want["subpatch"], want["subsampling"]
            )
        )
        cfg = dataclasses.replace(cfg, layers=layers, patch_size=64, input="raw", channels="gray")
        print(
            f"note: preset {PRESET} differs from the peer's configuration ({have}); using {want}",
            flush=True,
        )
    size = cfg.patch_size
    dim = int(np.prod(cfg.output_shape(size, size)))
    fl = flops_per_patch(cfg, size, size)
    gflop = fl["total"] / 1e9

    meta = bc.metadata()
    meta["cpu_affinity"] = cpus
    meta["threads"] = args.threads
    bc.check_load("start")
    print(
        f"devices: {meta['devices']}; CPUs {cpus}; load average {meta['load_average_start']}",
        flush=True,
    )
    mm = bc.matmul_rate()
    print(
        f"machine limit (fp32 matmul): {mm['gflops']:.1f} GFLOP/s "
        f"({mm['best']['impl']}, n = {mm['best']['n']})",
        flush=True,
    )

    t = time.perf_counter()
    patches = photo_patches(args.patches, size, args.seed)
    print(
        f"data: {patches.shape} photo patches ({time.perf_counter() - t:.1f} s); "
        f"{gflop:.4f} GFLOP/patch; descriptor {dim}-D",
        flush=True,
    )

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmpdir:
        tmp = Path(tmpdir)
        np.save(tmp / "patches.npy", patches)

        # --- peer encoding ------------------------------------------------------
        load0 = bc.load_average()
        peer = run_peer(
            args.peer_dir,
            args.threads,
            [
                "encode",
                "--patches",
                str(tmp / "patches.npy"),
                "--repeats",
                str(args.repeats),
                "--batches",
                *map(str, args.peer_batches),
                "--filters",
                *map(str, want["filters"]),
                "--subpatch",
                *map(str, want["subpatch"]),
                "--subsampling",
                *map(str, want["subsampling"]),
                "--sigma",
                str(want["sigma"][0]),
            ],
            tmp,
            "peer_encode",
        )
        pr = peer["result"]
        if pr["descriptor_dim"] != dim:
            raise RuntimeError(
                f"peer descriptors are {pr['descriptor_dim']}-D, ckn's {dim}-D: "
                "not the same network"
            )
        pps = pr["patches_per_s"]
        row = {
            "side": "peer",
            "what": "encode",
            "library": "claying/CKN-Pytorch-image (torch)",
            "patches": pr["patches"],
            "batch": pr["batch"],
            "batch_sweep": pr["batch_sweep"],
            "descriptor_dim": pr["descriptor_dim"],
            "patches_per_s": pps,
            "gflops": pps * gflop,
            "fraction_of_matmul": pps * gflop / mm["gflops"],
            **{k: pr[k] for k in ("median_s", "min_s", "max_s", "repeats", "times_s")},
            "finite": pr["finite"],
            "descriptor_norm_min_max": pr["descriptor_norm_min_max"],
            "load_average_before_after": [load0, bc.load_average()],
            "model": pr["model"],
        }
        results.append(row)
        peer_meta = peer["metadata"]
        meta["versions"].update({k: v for k, v in peer_meta["versions"].items() if k != "python"})
        print(
            f"peer encode (batch {pr['batch']}, {pr['patches']} patches): {pps:7.1f} patches/s  "
            f"{pps * gflop:6.1f} GFLOP/s  {row['fraction_of_matmul']:.0%} of matmul  (spread "
            f"{pr['min_s'] / pr['median_s']:.2f}-{pr['max_s'] / pr['median_s']:.2f}); torch "
            f"{peer_meta['versions']['torch']}, {peer_meta['torch_num_threads']} threads",
            flush=True,
        )

        # --- ckn.describe -------------------------------------------------------
        load0 = bc.load_average()
        model = ckn.CKN(cfg, rngs=nnx.Rngs(args.seed))
        out = np.empty((len(patches), dim), np.float32)
        t = time.perf_counter()
        ckn.describe(model, patches, out=out)  # warm-up: compiles
        first_s = time.perf_counter() - t
        st = bc.stats(
            bc.time_repeats(
                lambda: ckn.describe(model, patches, out=out), repeats=args.repeats, warmup=0
            )
        )
        pps_ckn = len(patches) / st["median_s"]
        norms = np.linalg.norm(out, axis=1)
        row = {
            "side": "ckn",
            "what": "encode",
            "library": "ckn.describe (jax)",
            "preset": cfg.name,
            "precision": "highest",
            "patches": len(patches),
            "batch": 256,
            "group": ckn.sharding.group_size(cfg, size, size, jax.devices()[0].platform),
            "descriptor_dim": dim,
            "patches_per_s": pps_ckn,
            "gflops": pps_ckn * gflop,
            "fraction_of_matmul": pps_ckn * gflop / mm["gflops"],
            "first_call_s": first_s,
            **st,
            "finite": bool(np.isfinite(out).all()),
            "descriptor_norm_min_max": [float(norms.min()), float(norms.max())],
            "load_average_before_after": [load0, bc.load_average()],
        }
        results.append(row)
        ratio = pps_ckn / pps
        print(
            f"ckn.describe ({len(patches)} patches): {pps_ckn:7.1f} patches/s  "
            f"{pps_ckn * gflop:6.1f} GFLOP/s  {row['fraction_of_matmul']:.0%} of matmul  "
            f"(spread {st['min_s'] / st['median_s']:.2f}-{st['max_s'] / st['median_s']:.2f}); "
            f"first call {first_s:.1f} s",
            flush=True,
        )
        print(f"encoding ratio ckn / peer: {ratio:.2f}", flush=True)
        comparison = {"encode_patches_per_s_ratio_ckn_over_peer": ratio}

        # --- layer-2 spherical k-means -------------------------------------------
        setup_km = None
        if not args.no_kmeans:
            import jax.numpy as jnp
            from bench_kmeans import objective, subpatch_data

            n, k, iters = args.kmeans_n, 256, 60
            t = time.perf_counter()
            x = subpatch_data(n, args.seed)
            print(
                f"k-means data: {x.shape} layer-2 sub-patches ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )
            np.save(tmp / "subpatches.npy", x)
            gflop_fit = 2.0 * n * x.shape[1] * k * (iters + 1) / 1e9
            setup_km = {
                "n": n,
                "d": int(x.shape[1]),
                "k": k,
                "iters": iters,
                "gflop_per_fit": gflop_fit,
                "data": "bench_kmeans.subpatch_data",
            }

            load0 = bc.load_average()
            pk = run_peer(
                args.peer_dir,
                args.threads,
                [
                    "kmeans",
                    "--data",
                    str(tmp / "subpatches.npy"),
                    "--k",
                    str(k),
                    "--iters",
                    str(iters),
                    "--repeats",
                    str(args.kmeans_repeats),
                    "--seed",
                    str(args.seed),
                    "--centres",
                    str(tmp / "peer_centres.npy"),
                ],
                tmp,
                "peer_kmeans",
            )["result"]
            j_peer = objective(x, np.load(tmp / "peer_centres.npy"))
            results.append(
                {
                    "side": "peer",
                    "what": "kmeans",
                    "library": "ckn.utils.spherical_kmeans (torch)",
                    "objective": j_peer,
                    "iterations_run": pk["iterations_run"],
                    "seconds_per_iteration": pk["median_s"]
                    / statistics.median(pk["iterations_run"]),
                    **{kk: pk[kk] for kk in ("median_s", "min_s", "max_s", "repeats", "times_s")},
                    "load_average_before_after": [load0, bc.load_average()],
                }
            )
            print(
                f"peer spherical_kmeans: {pk['median_s']:.2f} s "
                f"(min {pk['min_s']:.2f}, max {pk['max_s']:.2f}); "
                f"iterations run {pk['iterations_run']}; J = {j_peer:.5f}",
                flush=True,
            )

            load0 = bc.load_average()
            xj = jnp.asarray(x)
            key = jax.random.key(args.seed)

            last = {}

            def fit():
                c, h = ckn.unsupervised.kmeans(xj, k, key=key, iters=iters, spherical=True)
                last["centres"] = np.asarray(c)  # host copy inside the timed region
                return last["centres"], np.asarray(h)

            t = time.perf_counter()
            fit()
            first_s = time.perf_counter() - t
            st = bc.stats(bc.time_repeats(fit, repeats=args.kmeans_repeats, warmup=0))
            j_ckn = objective(x, last["centres"])
            results.append(
                {
                    "side": "ckn",
                    "what": "kmeans",
                    "library": "ckn.kmeans (jax)",
                    "objective": j_ckn,
                    "iterations_run": iters,
                    "first_fit_s": first_s,
                    "seconds_per_iteration": st["median_s"] / iters,
                    "gflops": gflop_fit / st["median_s"],
                    "fraction_of_matmul": gflop_fit / st["median_s"] / mm["gflops"],
                    **st,
                    "load_average_before_after": [load0, bc.load_average()],
                }
            )
            kratio = pk["median_s"] / st["median_s"]
            print(
                f"ckn.unsupervised.kmeans: {st['median_s']:.2f} s (min {st['min_s']:.2f}, "
                f"max {st['max_s']:.2f}); first fit {first_s:.1f} s; J = {j_ckn:.5f}",
                flush=True,
            )
            print(
                f"k-means speed-up ckn over peer (peer time / ckn time): {kratio:.2f}", flush=True
            )
            comparison["kmeans_time_ratio_peer_over_ckn"] = kratio
            comparison["kmeans_per_iteration_ratio_peer_over_ckn"] = (
                results[-2]["seconds_per_iteration"] / results[-1]["seconds_per_iteration"]
            )
            print(
                "k-means per-iteration speed-up ckn over peer: "
                f"{comparison['kmeans_per_iteration_ratio_peer_over_ckn']:.2f}",
                flush=True,
            )

    mm_end = bc.matmul_rate(sizes=(2048,), repeats=5)
    print(f"matmul 2048 again at the end: {mm_end['gflops']:.1f} GFLOP/s", flush=True)
    bc.check_load("end")
    setup = {
        "preset": cfg.name,
        "configuration": want,
        "preset_matches": have == want,
        "patch_size": size,
        "descriptor_dim": dim,
        "patches": len(patches),
        "patch_source": "scikit-image photos (default data)",
        "seed": args.seed,
        "filters": "random unit filters on both sides (encoding cost does not depend on them)",
        "threads": args.threads,
        "cpu_affinity": cpus,
        "gflop_per_patch": gflop,
        "flops_per_patch": fl,
        "peer_dir": str(args.peer_dir),
        "peer_upstream_commit": PEER_COMMIT,
        "kmeans": setup_km,
    }
    bc.write_json(
        args.out,
        meta,
        results,
        matmul=mm,
        matmul_end=mm_end,
        setup=setup,
        peer_metadata=peer_meta,
        comparison=comparison,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
