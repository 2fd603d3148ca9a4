"""``ckn reproduce``: the Patch-CKN patch-retrieval table (see ``retrieval.reproduce``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ckn import InputError
from retrieval._src.reproduce import DEFAULT_DESCRIPTORS, format_table, reproduce
from retrieval.cli import provenance
from retrieval.cli.flags import add_precision_flag


def cmd_reproduce(args: argparse.Namespace) -> int:
    descriptors = tuple(d.strip() for d in args.descriptors.split(",") if d.strip())
    if args.sequences is not None and not Path(args.sequences).is_dir():
        raise InputError(f"--sequences {args.sequences}: not a directory")
    meta = provenance.start()
    results = reproduce(
        quick=args.quick,
        sequences=args.sequences,
        patches=args.patches,
        out_dir=args.out,
        descriptors=descriptors,
        seed=args.seed,
        batch_size=args.batch_size,
        precision=args.precision,
        progress=not args.quiet,
        log=lambda s: print(s, file=sys.stderr),
        metadata=lambda: provenance.finish(meta),
    )
    print(format_table(results))
    print(f"total {results['seconds']:.0f} s; results in {args.out}/results.json and results.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="the Patch-CKN patch-retrieval table (train without labels, mAP per split)",
        description=(
            "Builds RomePatches-style data, trains ckn-raw, ckn-white and ckn-grad without labels on the train "
            "split, and prints patch-retrieval mAP for them and the SIFT, RootSIFT and pixel baselines."
        ),
    )
    p.add_argument("--quick", action="store_true", help="small default data and lighter training (minutes)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sequences", help="Oxford/HPatches-layout folder of homography sequences")
    src.add_argument("--patches", help="a RomePatches-style .npz with patches, labels and split")
    p.add_argument("--out", default="reproduce_out", help="output folder (default reproduce_out)")
    p.add_argument(
        "--descriptors", default=",".join(DEFAULT_DESCRIPTORS),
        help=f"comma-separated, in table order (default {','.join(DEFAULT_DESCRIPTORS)})",
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="patches per jitted describe call")
    add_precision_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
