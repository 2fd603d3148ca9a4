"""Unsupervised training speed: spherical k-means in JAX against faiss, same data, same run.

Command (from the project root; about 6 minutes on the 2-core CPU):

    python benchmarks/bench_kmeans.py [--n 100000] [--d 576] [--k 256] [--iters 60] \\
        [--repeats 3] [--out benchmarks/results/bench_kmeans_cpu.json]

Data (``--data subpatches``, the default): the real workload, n normalized
3x3x64 sub-patches (d = 576) of the maps feeding layer 2 of ckn-ref64, its
layer 1 trained on 64 x 64 patches of the scikit-image photos (``subpatch_data``;
~20 s to build). ``--data synthetic``: n unit vectors around 1000 random
directions (these separate so well that k-means converges in ~10 iterations).

* ``ckn.unsupervised.kmeans(x, k, iters=60, spherical=True)``: compile time (``lower().compile()``)
  apart, then ``--repeats`` timed fits after one warm-up fit (the result
  copied to the host inside the timed region).
* ``faiss.Kmeans(d, k, niter=60, spherical=True, max_points_per_centroid=n)``
  (so faiss uses every point instead of subsampling 256 per centroid), the
  same number of timed fits, all its threads.

Both objectives are computed the same way afterwards, in NumPy:
J = mean_i (1 - max_j <c_j, x_i>) (lower is better). Each fit's assignment
work (2 n d k FLOPs per iteration) is also given as GFLOP/s beside the
machine's fp32 matmul rate measured in the same run.

Target band (issue 6): ckn.unsupervised.kmeans no slower than faiss (the public PyTorch
CKN: ~24 s against faiss' ~13 s on a 2-core CPU, CKN_NOTES section 7); the
JSON records the ratio.

Prints one line per measurement; writes JSON ``{"metadata", "results",
"matmul", "target"}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

import ckn  # noqa: E402


def synthetic_data(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n unit vectors around 1000 random directions (Gaussian noise, then L2-normalized)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.8 * rng.normal(size=(n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def subpatch_data(n: int, seed: int = 0, photos: int = 4000) -> np.ndarray:
    """The real workload: n normalized 3x3x64 sub-patches (d = 576) feeding layer 2 of ckn-ref64.

    Layer 1 is trained (spherical k-means, as ``ckn train``) on 64 x 64 gray
    patches cut at random from the scikit-image photos of the embedded
    default data; the sub-patches are drawn from its output maps at random
    positions (``sample_subpatches``), flat ones dropped, then L2-normalized.
    """
    import dataclasses

    from flax import nnx

    from retrieval.patches import default_photos

    rng = np.random.default_rng(seed)
    images = []
    for _, img in default_photos():
        if img.ndim == 3:
            img = (img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(
                np.uint8
            )
        images.append(img)
    patches = []
    for i in range(photos):
        img = images[i % len(images)]
        y, x = rng.integers(0, img.shape[0] - 64), rng.integers(0, img.shape[1] - 64)
        patches.append(img[y : y + 64, x : x + 64])
    patches = np.stack(patches)
    cfg = ckn.get_preset("ckn-ref64")
    first, _ = ckn.train(dataclasses.replace(cfg, layers=cfg.layers[:1]), patches, seed=seed)
    model = ckn.CKN(cfg, rngs=nnx.Rngs(seed))
    nnx.update(model.layers[0], nnx.state(first.layers[0]))
    raw = ckn.unsupervised.sample_subpatches(
        model, 1, patches, int(n * 1.1), key=jax.random.key(seed)
    )
    norms = np.linalg.norm(raw, axis=1)
    keep = norms >= ckn.ops.NORM_EPS
    x = (raw[keep] / norms[keep, None]).astype(np.float32)
    if x.shape[0] < n:
        raise RuntimeError(f"only {x.shape[0]} non-flat sub-patches, wanted {n}")
    return x[:n]


def objective(x: np.ndarray, centres: np.ndarray) -> float:
    """J = mean(1 - max_j <c_j, x_i>), in float64 by blocks."""
    c = np.asarray(centres, np.float64)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    best = [
        np.max(x[i : i + 8192].astype(np.float64) @ c.T, axis=1) for i in range(0, len(x), 8192)
    ]
    return float(np.mean(1.0 - np.concatenate(best)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data",
        choices=("subpatches", "synthetic"),
        default="subpatches",
        help="layer-2 sub-patches of ckn-ref64 on photo patches (d = 576 only), "
        "or synthetic clusters",
    )
    ap.add_argument("--no-faiss", action="store_true", help="time ckn.unsupervised.kmeans only")
    ap.add_argument("--out", default=str(bc.RESULTS / f"bench_kmeans_{jax.default_backend()}.json"))
    args = ap.parse_args(argv)
    n, d, k, iters = args.n, args.d, args.k, args.iters

    faiss = None
    if not args.no_faiss:
        import faiss
    meta = bc.metadata({"faiss": faiss.__version__} if faiss else None)
    if faiss:
        meta["faiss_threads"] = faiss.omp_get_max_threads()
    bc.check_load("start")
    print(f"devices: {meta['devices']}; load average {meta['load_average_start']}", flush=True)
    mm = bc.matmul_rate()
    print(f"machine limit (fp32 matmul): {mm['gflops']:.1f} GFLOP/s", flush=True)
    t = time.perf_counter()
    if args.data == "subpatches":
        if d != 576:
            ap.error("--data subpatches has d = 576")
        x = subpatch_data(n, args.seed)
    else:
        x = synthetic_data(n, d, args.seed)
    print(f"data: {args.data}, {x.shape} ({time.perf_counter() - t:.0f} s to build)", flush=True)
    gflop_fit = 2.0 * n * d * k * (iters + 1) / 1e9  # iters steps and the final objective
    results = []

    # --- ckn.unsupervised.kmeans -----------------------------------------------------------
    xj = jnp.asarray(x)
    key = jax.random.key(args.seed)
    t = time.perf_counter()
    compile_s = None  # timed as the first fit minus steady state below

    def fit_jax():
        c, h = ckn.unsupervised.kmeans(xj, k, key=key, iters=iters, spherical=True)
        return np.asarray(c), np.asarray(h)

    t = time.perf_counter()
    centres, hist = fit_jax()
    first_s = time.perf_counter() - t
    st = bc.stats(bc.time_repeats(fit_jax, repeats=args.repeats, warmup=0))
    if compile_s is None:
        compile_s = max(0.0, first_s - st["median_s"])
    j_jax = objective(x, centres)
    row = {
        "method": "ckn.kmeans",
        "objective": j_jax,
        "objective_history_first_last": [float(hist[0]), float(hist[-1])],
        "compile_s": compile_s,
        "first_fit_s": first_s,
        "gflops": gflop_fit / st["median_s"],
        "fraction_of_matmul": gflop_fit / st["median_s"] / mm["gflops"],
        "devices": len(jax.local_devices()),
        **st,
    }
    results.append(row)
    print(
        f"ckn.unsupervised.kmeans: {st['median_s']:.2f} s "
        f"(min {st['min_s']:.2f}, max {st['max_s']:.2f}) "
        f"for {iters} iterations; "
        f"compile {compile_s:.1f} s; J = {j_jax:.5f}; {row['gflops']:.1f} GFLOP/s "
        f"({row['fraction_of_matmul']:.0%} of matmul)",
        flush=True,
    )

    # --- faiss ----------------------------------------------------------------
    if faiss:

        def fit_faiss():
            km = faiss.Kmeans(
                d,
                k,
                niter=iters,
                spherical=True,
                max_points_per_centroid=n,
                seed=args.seed + 1,
                verbose=False,
            )
            km.train(x)
            return km

        km = fit_faiss()  # warm-up (thread pools, pages)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            km = fit_faiss()
            times.append(time.perf_counter() - t)
        fst = bc.stats(times)
        j_faiss = objective(x, km.centroids)
        results.append(
            {
                "method": "faiss.Kmeans",
                "objective": j_faiss,
                "gflops": gflop_fit / fst["median_s"],
                "fraction_of_matmul": gflop_fit / fst["median_s"] / mm["gflops"],
                "max_points_per_centroid": n,
                **fst,
            }
        )
        print(
            f"faiss.Kmeans: {fst['median_s']:.2f} s "
            f"(min {fst['min_s']:.2f}, max {fst['max_s']:.2f}); "
            f"J = {j_faiss:.5f}",
            flush=True,
        )
        ratio = st["median_s"] / fst["median_s"]
        print(f"ckn.unsupervised.kmeans / faiss time: {ratio:.2f} (target <= 1)", flush=True)
    bc.check_load("end")
    target = {
        "rule": "ckn.kmeans median time <= faiss.Kmeans median time, same data and iterations",
        "time_ratio_ckn_over_faiss": None if not faiss else ratio,
        "met": None if not faiss else ratio <= 1.0,
        "peer": "public PyTorch CKN: ~24 s vs faiss ~13 s on a 2-core CPU (CKN_NOTES section 7)",
    }
    setup = {
        "data": args.data,
        "n": n,
        "d": d,
        "k": k,
        "iters": iters,
        "seed": args.seed,
        "gflop_per_fit": gflop_fit,
    }
    bc.write_json(args.out, meta, results, setup=setup, matmul=mm, target=target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
