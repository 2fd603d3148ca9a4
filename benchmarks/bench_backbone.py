"""Backbone speed: EfficientNet-Lite0 ``features`` images/s beside the machine's matmul rate.

Command (from the project root; about 2 minutes on the 2-core CPU):

    nice python benchmarks/bench_backbone.py [--sizes 512 1024] [--batches 1 4] \\
        [--repeats 5] [--out benchmarks/results/bench_backbone_cpu.json]

For each square input size and batch size, on seeded random uint8 images
(the cost does not depend on the pixel values):

* compile time: ``lower().compile()`` of the jitted call that
  ``Backbone.features`` makes (preprocessing + the network), apart;
* FLOPs per image: XLA's cost analysis of that compiled call (``flops``
  divided by the batch; XLA counts 2 per multiply-add of the convolutions);
* steady state: ``Backbone.features(images).block_until_ready()``, one
  warm-up call then ``--repeats`` timed calls; images/s from the median, as
  GFLOP/s and as a fraction of the matmul rate.

``extract_global`` batches images of one bucket in batches of
``GlobalConfig.batch_size`` (default: 1 on the CPU, 8 on accelerators); the
run includes that batch and a larger one to show what batching buys here.

The machine's limit is measured in the same run (``bench_common.matmul_rate``:
float32 n x n products, jitted ``jnp.dot`` at precision HIGHEST and NumPy's
BLAS, the best median). EfficientNet-Lite0 is mostly depthwise and 1x1
convolutions (the depthwise ones of low arithmetic intensity).

Prints one line per measurement; writes JSON ``{"metadata", "results",
"matmul", "matmul_end"}``. The 1-minute load average is recorded at the start
and end: figures taken with a load above 1.5 on the 2-core machine are not
clean.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

from retrieval.image import DEFAULT_BATCH, DEFAULT_BATCH_ACCELERATOR  # noqa: E402
from retrieval.nets import load_backbone  # noqa: E402


def _flops(cost) -> float | None:
    """The ``flops`` entry of XLA's cost analysis (a dict, or a list of one dict)."""
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def measure(net, size: int, batch: int, repeats: int, gflops_limit: float) -> dict:
    x = np.random.default_rng(size + batch).integers(0, 256, (batch, size, size, 3), np.uint8)
    t0 = time.perf_counter()
    compiled = net.lower_features(x).compile()
    compile_s = time.perf_counter() - t0
    flops = _flops(compiled.cost_analysis())
    times = bc.time_repeats(lambda: net.features(x).block_until_ready(), repeats=repeats, warmup=1)
    s = bc.stats(times)
    ips = batch / s["median_s"]
    row = {
        "size": size,
        "batch": batch,
        "map": list(net.features(x[:1]).shape[1:]),
        "compile_s": compile_s,
        "flops_per_image": None if flops is None else flops / batch,
        "images_per_s": ips,
        "images_per_s_best": batch / s["min_s"],
        "seconds_per_image": 1.0 / ips,
        **s,
    }
    if flops is not None:
        row["gflops"] = flops / batch * ips / 1e9
        row["fraction_of_matmul"] = row["gflops"] / gflops_limit
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument(
        "--batches", type=int, nargs="+", default=None,
        help="default: 1 and 4 on the CPU (1 is extract_global's), 1 and 8 elsewhere",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(bc.RESULTS / "bench_backbone_cpu.json"))
    args = ap.parse_args(argv)
    meta = bc.metadata()
    bc.check_load("bench_backbone")
    backend = jax.default_backend()
    default_batch = DEFAULT_BATCH.get(backend, DEFAULT_BATCH_ACCELERATOR)
    batches = args.batches or sorted({1, default_batch, 4 if backend == "cpu" else 8})
    net = load_backbone("efficientnet-lite0")
    mm = bc.matmul_rate()
    print(f"matmul: {mm['gflops']:.1f} GFLOP/s ({mm['best']['impl']}, n={mm['best']['n']})",
          flush=True)  # fmt: skip
    results = []
    for size in args.sizes:
        for batch in batches:
            r = measure(net, size, batch, args.repeats, mm["gflops"])
            r["extract_global_batch"] = batch == default_batch
            results.append(r)
            fl = r["flops_per_image"]
            print(
                f"{size} px, batch {batch}: {r['images_per_s']:.2f} images/s "
                f"(median {r['median_s']:.3f} s, IQR {r['iqr_s']:.3f} s), compile "
                f"{r['compile_s']:.1f} s, "
                + (f"{fl / 1e9:.2f} GFLOP/image, {r['gflops']:.1f} GFLOP/s = "
                   f"{100 * r['fraction_of_matmul']:.1f}% of matmul" if fl else "no FLOP count"),
                flush=True,
            )  # fmt: skip
    mm_end = bc.matmul_rate(sizes=(2048,), repeats=5)
    bc.write_json(
        args.out, meta, results, matmul=mm, matmul_end=mm_end,
        backbone="efficientnet-lite0", extract_global_batch=default_batch,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
