"""Describe a patch file with several processes (hosts), each on its own devices.

Run one copy per process; JAX reads the coordinator, process count and id
from the cluster environment (SLURM, Cloud TPU, Kubernetes) or from the
arguments, as ``jax.distributed.initialize`` documents:

    # on each of N hosts (here: 2 processes on one machine)
    python examples/describe_multihost.py MODEL PATCHES.npy OUT_DIR \\
        --coordinator localhost:12355 --num-processes 2 --process-id {0,1}

Process i describes rows [i*N/P, (i+1)*N/P) of the memory-mapped patch file
on its ``jax.local_devices()`` (``ckn.describe`` splits each batch over
them) and writes ``OUT_DIR/descriptors.{i}-of-{P}.npy``. Descriptors do not
depend on how the rows are split (tests/test_sharding.py), so concatenating
the parts in process order gives the one-process result bit for bit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

import ckn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument(
        "patches", help=".npy (memory-mapped) or .npz patch file, (N, H, W) or (N, H, W, C)"
    )
    ap.add_argument("out_dir")
    ap.add_argument(
        "--coordinator", help="host:port of process 0 (default: from the cluster environment)"
    )
    ap.add_argument("--num-processes", type=int)
    ap.add_argument("--process-id", type=int)
    args = ap.parse_args(argv)

    # Bad input is one line and exit 2, as in the `ckn` command line. The patch
    # file is checked first (NumPy only: jax.distributed wants to come first).
    try:
        patches, _ = ckn.files.load_patch_file(args.patches)  # a .npy is memory-mapped
    except ckn.InputError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    i, p = jax.process_index(), jax.process_count()
    try:
        model = ckn.load(args.model)
        model.config.output_shape(*patches.shape[1:3])  # patches at least the receptive field
    except ckn.InputError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    lo, hi = i * len(patches) // p, (i + 1) * len(patches) // p
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / f"descriptors.{i}-of-{p}.npy"
    d = int(np.prod(model.config.output_shape(*patches.shape[1:3])))
    with ckn.files.atomic_path(part) as tmp:  # the part appears only once complete
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(hi - lo, d))
        ckn.describe(model, patches[lo:hi], out=out)
        out.flush()
        del out
    print(
        f"process {i}/{p}: rows {lo}:{hi} on {len(jax.local_devices())} local device(s) -> {part}"
    )
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
