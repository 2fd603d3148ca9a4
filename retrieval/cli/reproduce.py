"""``ckn reproduce``: the Patch-CKN patch-retrieval table (see ``retrieval.reproduce``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ckn
from ckn import InputError
from retrieval.cli import provenance
from retrieval.cli.flags import add_command, add_precision_flag
from retrieval.cli.outputs import Output, Paths, declare_paths
from retrieval.patches import (
    BASELINES,
    DEFAULT_DESCRIPTORS,
    FINETUNE_FROM,
    FINETUNED,
    FINETUNED_DIR,
    QUICK_FINETUNE_EPOCHS,
    format_table,
    reproduce,
)


def _descriptors(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(d.strip() for d in args.descriptors.split(",") if d.strip())


def _paths(args: argparse.Namespace) -> Paths:
    """--out, its results.json and .png, and the model folder of each trained row."""
    out = Path(args.out)
    models = [d for d in _descriptors(args) if d not in BASELINES and d in ckn.PRESETS]
    models += [FINETUNED_DIR] if args.finetune else []
    return Paths(
        [
            Output("--out", out, kind="dir"),
            Output("--out (results.json)", out / "results.json"),
            Output("--out (results.png)", out / "results.png"),
            *(
                Output(f"--out (models/{d})", out / "models" / d, kind="dir", replaced=True)
                for d in models
            ),
        ],
        {"--patches": args.patches, "--sequences": args.sequences},
    )


def cmd_reproduce(args: argparse.Namespace) -> int:
    descriptors = _descriptors(args)
    if args.sequences is not None and not Path(args.sequences).is_dir():
        raise InputError(f"--sequences {args.sequences}: not a directory")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    finetune = _finetune_config(args, descriptors)
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
        finetune=finetune,
        progress=not args.quiet,
        log=lambda s: print(s, file=sys.stderr),
        metadata=lambda: provenance.finish(meta),
    )
    print(format_table(results))
    print(f"total {results['seconds']:.0f} s; results in {args.out}/results.json and results.png")
    return 0


def _finetune_config(args: argparse.Namespace, descriptors) -> ckn.FinetuneConfig | None:
    """``--finetune``: ckn.FinetuneConfig's defaults, fewer epochs with --quick; else None."""
    if args.finetune_epochs is not None and not args.finetune:
        raise InputError("--finetune-epochs needs --finetune")
    if not args.finetune:
        return None
    if FINETUNE_FROM not in descriptors:
        raise InputError(f"--finetune starts from {FINETUNE_FROM}: add it to --descriptors")
    epochs = args.finetune_epochs
    if epochs is None:
        epochs = QUICK_FINETUNE_EPOCHS if args.quick else ckn.FinetuneConfig().epochs
    if epochs < 1:
        raise InputError(f"--finetune-epochs must be >= 1, got {epochs}")
    return ckn.FinetuneConfig(epochs=epochs)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "reproduce",
        help="the Patch-CKN patch-retrieval table (train without labels, mAP per split)",
        description=(
            "Builds RomePatches-style data, trains ckn-raw, ckn-white and ckn-grad without labels "
            "on the train split, and prints patch-retrieval mAP for them and the SIFT, RootSIFT "
            "and pixel baselines (results.json, results.png and the models in --out)."
        ),
        example="ckn reproduce --quick --out quick_out",
    )
    p.add_argument(
        "--quick", action="store_true", help="small default data and lighter training (minutes)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sequences", help="Oxford/HPatches-layout folder of homography sequences")
    src.add_argument("--patches", help="a RomePatches-style .npz with patches, labels and split")
    p.add_argument("--out", default="reproduce_out", help="output folder (default reproduce_out)")
    p.add_argument(
        "--descriptors",
        default=",".join(DEFAULT_DESCRIPTORS),
        help=f"comma-separated, in table order (default {','.join(DEFAULT_DESCRIPTORS)})",
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=256, help="patches per jitted describe call (default 256)"
    )
    add_precision_flag(p)
    p.add_argument(
        "--finetune",
        action="store_true",
        help=(
            f"add a row {FINETUNED!r}: the run's {FINETUNE_FROM} fine-tuned with labels "
            "(triplet loss, ckn finetune's defaults) on the train split's groups, 20%% of the "
            "train rows held out by scene for validation and early stopping, scored on both "
            "splits; the test split is never used to train or select. Off by default, and "
            "--quick does not turn it on: on the quick data an epoch is one step (276 "
            "patches), so --quick --finetune "
            f"({QUICK_FINETUNE_EPOCHS} epochs) is a smoke run that leaves test mAP at 97.2 "
            "and cost 42 s, half of it compiling, on a 274 s --quick run at load 7.5 "
            "(15%%). On the full default data it adds about 9 minutes (20 epochs, early "
            "stop at 15: 531 s at load 5.5-7.7 in benchmarks/results/reproduce_default.json)"
        ),
    )
    p.add_argument(
        "--finetune-epochs",
        type=int,
        help=f"epochs of --finetune (default 20; {QUICK_FINETUNE_EPOCHS} with --quick)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
    declare_paths(p, _paths)
