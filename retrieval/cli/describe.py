"""``ckn describe``: descriptors of a patch file with a trained model, to a .npy file."""

from __future__ import annotations

import argparse
import time

import numpy as np

import ckn
from retrieval.cli.flags import (
    Output,
    Paths,
    add_command,
    add_precision_flag,
    declare_paths,
    fields_as_flags,
)


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [Output("--out", args.out, suffix=".npy")],
        {"--patches": args.patches, "--model": args.model},
    )


def cmd_describe(args: argparse.Namespace) -> int:
    model = ckn.load(args.model, precision=args.precision)
    patches, _ = ckn.files.load_patch_file(args.patches, split=args.split)
    n = patches.shape[0]
    h, w, c = model.config.output_shape(patches.shape[1], patches.shape[2])
    # Every check of describe() before the output file is created.
    with fields_as_flags({"any_size": "--any-size"}):
        ckn.describe(model, patches[:0], batch_size=args.batch_size, any_size=args.any_size)
    t0 = time.perf_counter()
    with ckn.files.atomic_path(args.out) as tmp:
        # Written straight into a memory-mapped .npy: bounded memory for large files.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, h * w * c))
        ckn.describe(
            model,
            patches,
            batch_size=args.batch_size,
            progress=not args.quiet,
            out=out,
            any_size=args.any_size,
        )
        out.flush()
        del out
    seconds = time.perf_counter() - t0
    print(
        f"wrote {args.out}: {n} x {h * w * c} float32 descriptors in {seconds:.1f} s "
        f"({n / seconds:.0f} patches/s)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = add_command(
        sub,
        "describe",
        help="describe patches with a trained model",
        description="Writes (N, D) float32 L2-normalized descriptors to a .npy file, one row per "
        "patch in the file's row order (of the split with --split).",
        example="ckn describe --model models/grad --patches default.npz --split test --out t.npy",
    )
    d.add_argument("--model", required=True, help="model directory written by `ckn train`")
    d.add_argument("--patches", required=True, help=".npy (N,H,W[,C]) or .npz with 'patches'")
    d.add_argument("--out", required=True, help="output .npy file")
    d.add_argument(
        "--batch-size", type=int, default=256, help="patches per jitted batch (default 256)"
    )
    d.add_argument(
        "--split",
        choices=("train", "test", "all"),
        default=None,
        help="rows of an .npz with a 'split' array (default: all rows)",
    )
    d.add_argument(
        "--any-size",
        action="store_true",
        help="describe patches of another size or channel count than the model's training "
        "patches (refused by default: the descriptor would not mean the same)",
    )
    add_precision_flag(d)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_describe)
    declare_paths(d, _paths)
