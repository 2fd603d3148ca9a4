"""``ckn describe``: descriptors of a patch file with a trained model, to a .npy file; of an
HPatches folder, to CSV files in the official layout (``patch_benchmarks``)."""

from __future__ import annotations

import argparse
import time

import jax

import ckn
from ckn import InputError
from retrieval.cli import patch_benchmarks
from retrieval.cli.distributed import add_distributed_flags, start_distributed
from retrieval.cli.flags import add_command, add_precision_flag, fields_as_flags, plural
from retrieval.cli.outputs import Output, Paths, declare_paths
from retrieval.patches import BASELINES

_SPLITS = ("train", "test", "all")


def _paths(args: argparse.Namespace) -> Paths:
    if args.hpatches is not None:
        return patch_benchmarks.describe_paths(args)
    return Paths(
        [Output("--out", args.out, suffix=".npy")],
        {"--patches": args.patches, "--model": args.model},
    )


def cmd_describe(args: argparse.Namespace) -> int:
    if args.hpatches is not None:
        if args.distributed:
            raise InputError("--distributed describes --patches, not --hpatches")
        return patch_benchmarks.describe(args)
    if args.out is None or args.out_dir is not None:
        raise InputError("--patches writes one .npy file: give --out (--out-dir is for --hpatches)")
    if args.split is not None and args.split not in _SPLITS:
        raise InputError(f"--split of --patches is one of {', '.join(_SPLITS)}, got {args.split!r}")
    if args.model in BASELINES:
        raise InputError(f"--patches is described with a model directory, not {args.model!r}")
    # The patch file is read first (NumPy only): jax.distributed must start before JAX does.
    patches, _ = ckn.files.load_patch_file(args.patches, split=args.split)
    index, count = start_distributed(args)
    model = ckn.load(args.model, precision=args.precision)
    t0 = time.perf_counter()
    with fields_as_flags({"any_size": "--any-size"}):
        lo, hi = ckn.sharding.write_descriptors(
            model,
            patches,
            args.out,
            batch_size=args.batch_size,
            any_size=args.any_size,
            progress=not args.quiet,
        )
    seconds = time.perf_counter() - t0
    n = patches.shape[0]
    dim = model.config.descriptor_dim(patches.shape[1], patches.shape[2])  # checked by now
    if count > 1:
        print(
            f"process {index}/{count}: rows {lo}:{hi} on "
            f"{plural(len(jax.local_devices()), 'local device')}"
        )
    if index == 0:
        print(
            f"wrote {args.out}: {n} x {dim} float32 descriptors in {seconds:.1f} s "
            f"({n / seconds:.0f} patches/s)"
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = add_command(
        sub,
        "describe",
        help="describe patches with a trained model",
        description="Writes (N, D) float32 L2-normalized descriptors to a .npy file, one row per "
        "patch in the file's row order (of the split with --split). With --hpatches: the "
        "descriptors of an HPatches folder as <sequence>/<type>.csv in --out-dir, the layout the "
        "official benchmark reads (SIFT, RootSIFT, pixels on the 65x65 patch; a model on the "
        "patch resized to its training side, INTER_AREA).",
        example="ckn describe --model models/grad --patches default.npz --split test --out t.npy\n"
        "ckn describe --hpatches hpatches-release --model sift --out-dir descriptors/sift",
    )
    d.add_argument(
        "--model",
        required=True,
        help="model directory written by `ckn train`; with --hpatches also a baseline: "
        + ", ".join(BASELINES),
    )
    src = d.add_mutually_exclusive_group(required=True)
    src.add_argument("--patches", help=".npy (N,H,W[,C]) or .npz with 'patches'")
    src.add_argument(
        "--hpatches", metavar="DIR", help="an HPatches folder (<sequence>/ref.png, e1.png, ...)"
    )
    d.add_argument("--out", help="output .npy file (with --patches)")
    d.add_argument(
        "--out-dir",
        metavar="DESCR/NAME",
        help="output folder of CSV files (with --hpatches), replaced as a whole when complete",
    )
    d.add_argument(
        "--batch-size", type=int, default=256, help="patches per jitted batch (default 256)"
    )
    d.add_argument(
        "--split",
        default=None,
        help="rows of an .npz with a 'split' array: train, test, all (default: all rows); with "
        "--hpatches, the train and test sequences of an HPatches split: a, b, c, full, illum, "
        "view, all (default all: every sequence)",
    )
    d.add_argument(
        "--any-size",
        action="store_true",
        help="describe patches of another size or channel count than the model's training "
        "patches (refused by default: the descriptor would not mean the same)",
    )
    add_precision_flag(d)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_distributed_flags(d)
    d.set_defaults(func=cmd_describe)
    declare_paths(d, _paths)
