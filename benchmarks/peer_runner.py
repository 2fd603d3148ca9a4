"""Driver that times the public PyTorch CKN in its own process (run by ``bench_peer.py``).

Not part of the project and never imported by it: the peer
(github claying/CKN-Pytorch-image, GPL-3) is used only as an external program.
This script imports the peer's unmodified ``ckn`` package from ``--peer-dir``
(its own package name; the project's ``ckn`` must not be importable here, and
the script checks which one it got) after three import-time stand-ins for
today's stack, none of which edits the peer's files:

* ``torch.symeig`` (removed in torch 2: a stub that raises) -> ``torch.linalg.eigh`` (same
  eigenvalues and eigenvectors of a symmetric matrix; ``eigenvectors=True``
  is all the peer asks for);
* ``sklearn.linear_model.base`` -> the private ``sklearn.linear_model._base``
  (``LinearModel``, ``LinearClassifierMixin`` for its classifier class);
* ``miso_svm`` (a compiled extension used by its classifier only) -> an empty
  module whose ``MisoClassifier`` raises if called.

Commands (each writes one JSON file, ``--out``):

    python benchmarks/peer_runner.py --peer-dir DIR --threads 2 encode \\
        --patches P.npy --batches 64 128 256 --repeats 3 --out R.json
    python benchmarks/peer_runner.py --peer-dir DIR --threads 2 kmeans \\
        --data X.npy --k 256 --iters 60 --repeats 2 --centres C.npy --out R.json

``encode``: ``ckn.models.CKNSequential(1, [64, 256], [3, 3], [2, 6],
kernel_args_list=[0.6, 0.6])`` (its own random unit filters: the cost does not
depend on them) in eval mode under ``torch.no_grad()``, as the peer's
``predict``; per batch: uint8 -> float32 / 255 tensor, forward, flatten, L2
normalization, copy into one float32 output array. Each batch size in
``--batches`` is timed on the first ``--sweep`` patches (one warm-up batch
first); the fastest is then timed on all patches: one warm-up pass, then
``--repeats`` passes, wall time per pass.

``kmeans``: the peer's ``ckn.utils.spherical_kmeans(x, k, max_iters=iters)``
on float32 tensor data, one warm-up fit then ``--repeats`` timed fits (its
iteration prints silenced). It stops early when the objective's relative
change drops below 1e-6: the iterations run are counted (``Tensor.mm`` is
called once per iteration with its default block size; a thin counting
wrapper around it is installed during the fits).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path


def _stats(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "times_s": [round(t, 6) for t in times],
    }


def import_peer(peer_dir: Path):
    """The peer's ``ckn`` package with the three stand-ins (see the module docstring)."""
    import sklearn.linear_model._base as sk_base
    import torch

    # torch 2 keeps a torch.symeig that only raises "removed": replace it.
    def symeig(input, eigenvectors=False, upper=True):
        e, v = torch.linalg.eigh(input, UPLO="U" if upper else "L")
        return e, v

    torch.symeig = symeig
    sys.modules.setdefault("sklearn.linear_model.base", sk_base)
    if "miso_svm" not in sys.modules:
        miso = types.ModuleType("miso_svm")

        class MisoClassifier:  # classifier only; never used by the benchmark
            def __init__(self, *args, **kwargs):
                raise RuntimeError("miso_svm is a stand-in in this benchmark")

        miso.MisoClassifier = MisoClassifier
        sys.modules["miso_svm"] = miso
    sys.path.insert(0, str(peer_dir))
    import ckn
    import ckn.models
    import ckn.utils

    got = Path(ckn.__file__).resolve()
    if peer_dir.resolve() not in got.parents:
        raise RuntimeError(f"imported {got}, not the peer's ckn under {peer_dir}")
    return ckn


def encode(args, peer, torch, meta: dict) -> dict:
    import numpy as np

    patches = np.load(args.patches)
    n, h, w = patches.shape
    model = peer.models.CKNSequential(
        1,
        args.filters,
        args.subpatch,
        args.subsampling,
        kernel_args_list=[args.sigma] * len(args.filters),
    )
    model.eval()
    with torch.no_grad():
        dim = model(torch.zeros(1, 1, h, w)).numel()  # also computes and caches the Nystrom maps
    out = np.empty((n, dim), np.float32)

    def run(x: np.ndarray, batch: int) -> None:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                t = torch.from_numpy(x[i : i + batch]).float().div_(255.0).unsqueeze_(1)
                y = model(t).reshape(t.shape[0], -1)
                y = y / y.norm(dim=1, keepdim=True).clamp(min=1e-12)
                out[i : i + len(t)] = y.numpy()

    sweep = []
    sub = patches[: min(args.sweep, n)]
    for b in args.batches:
        run(sub[:b], b)  # warm-up (allocator, thread pool)
        t0 = time.perf_counter()
        run(sub, b)
        dt = time.perf_counter() - t0
        sweep.append(
            {"batch": b, "patches": len(sub), "seconds": dt, "patches_per_s": len(sub) / dt}
        )
        print(
            f"  peer batch {b:4d}: {len(sub) / dt:7.1f} patches/s ({len(sub)} patches)",
            file=sys.stderr,
            flush=True,
        )
    best = max(sweep, key=lambda r: r["patches_per_s"])["batch"]
    run(patches, best)  # warm-up pass
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run(patches, best)
        times.append(time.perf_counter() - t0)
    st = _stats(times)
    norms = np.linalg.norm(out, axis=1)
    return {
        "patches": n,
        "patch_shape": [h, w],
        "descriptor_dim": dim,
        "batch": best,
        "batch_sweep": sweep,
        "patches_per_s": n / st["median_s"],
        **st,
        "finite": bool(np.isfinite(out).all()),
        "descriptor_norm_min_max": [float(norms.min()), float(norms.max())],
        "model": repr(model),
    }


def kmeans(args, peer, torch, meta: dict) -> dict:
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(np.load(args.data), dtype=np.float32))
    calls = {"mm": 0}
    mm = torch.Tensor.mm

    def counting_mm(self, other):
        calls["mm"] += 1
        return mm(self, other)

    def fit(seed: int):
        torch.manual_seed(seed)
        calls["mm"] = 0
        torch.Tensor.mm = counting_mm
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                t0 = time.perf_counter()
                c = peer.utils.spherical_kmeans(x.clone(), args.k, max_iters=args.iters)
                dt = time.perf_counter() - t0
        finally:
            torch.Tensor.mm = mm
        return c, dt, calls["mm"]

    fit(args.seed)  # warm-up
    times, iters = [], []
    for _ in range(args.repeats):
        c, dt, it = fit(args.seed)
        times.append(dt)
        iters.append(it)
        print(f"  peer spherical_kmeans: {dt:.2f} s, {it} iterations", file=sys.stderr, flush=True)
    np.save(args.centres, c.numpy())
    return {
        "n": int(x.shape[0]),
        "d": int(x.shape[1]),
        "k": args.k,
        "max_iters": args.iters,
        "iterations_run": iters,
        "seed": args.seed,
        **_stats(times),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-dir", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    sp = ap.add_subparsers(dest="cmd", required=True)
    e = sp.add_parser("encode")
    e.add_argument("--patches", required=True, help="(N, H, W) uint8 .npy")
    e.add_argument("--filters", type=int, nargs="+", default=[64, 256])
    e.add_argument("--subpatch", type=int, nargs="+", default=[3, 3])
    e.add_argument("--subsampling", type=int, nargs="+", default=[2, 6])
    e.add_argument("--sigma", type=float, default=0.6)
    e.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    e.add_argument("--sweep", type=int, default=512, help="patches per batch-size trial")
    e.add_argument("--repeats", type=int, default=3)
    e.add_argument("--out", required=True)
    k = sp.add_parser("kmeans")
    k.add_argument("--data", required=True, help="(n, d) float32 unit rows, .npy")
    k.add_argument("--k", type=int, default=256)
    k.add_argument("--iters", type=int, default=60)
    k.add_argument("--repeats", type=int, default=2)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--centres", required=True, help=".npy for the last fit's centres")
    k.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    peer = import_peer(args.peer_dir)
    import numpy
    import scipy
    import sklearn

    meta = {
        "versions": {
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__,
            "python": sys.version.split()[0],
        },
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "env_threads": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_parallel_info": torch.__config__.parallel_info(),
        "peer_module": str(Path(peer.__file__).resolve().parent),
        "stand_ins": [
            "torch.symeig -> torch.linalg.eigh",
            "sklearn.linear_model.base -> sklearn.linear_model._base",
            "miso_svm -> empty module (classifier only)",
        ],
    }
    result = (encode if args.cmd == "encode" else kmeans)(args, peer, torch, meta)
    Path(args.out).write_text(json.dumps({"metadata": meta, "result": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
