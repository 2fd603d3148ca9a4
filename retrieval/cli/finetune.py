"""``ckn finetune``: supervised end-to-end fine-tuning of a trained CKN on labelled patches.

    ckn finetune --model DIR --patches FILE.npz --out DIR [--split train|all]
        [--loss triplet|contrastive] [--margin M] [--epochs E] [--batch-size B]
        [--group-size K] [--lr LR] [--patience P] [--projection K]
        [--trainable filters[+input][+lam][+linear][+projection] | projection]
        [--val-fraction F] [--seed S] [--resume] [--overwrite] [--quiet]

Trains the filters of a model written by ``ckn train`` on the groups of the
train split (``ckn.finetune``), holding out whole train scenes (or groups,
for a file without scene ids) for validation and early stopping; the test
split is never read. The result is a model folder for ``ckn describe`` and
``ckn eval-patches`` (``ckn.save``; the fine-tuning report in its
config.json). A checkpoint is written after every epoch to ``OUT.ckpt/``
(beside OUT, which ``ckn.save`` replaces as a whole) and removed once OUT is
saved; ``--resume`` continues an interrupted run from it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import ckn
from ckn import InputError
from retrieval import load_patchset
from retrieval.cli import provenance
from retrieval.cli.flags import add_training_flags, add_with_default, validation_summary
from retrieval.cli.outputs import Output, Paths, checkpoint_dir, declare_paths

_DEFAULTS = ckn.FinetuneConfig()
_EXAMPLE = """example:
  ckn patches --default --out default.npz
  ckn train --preset ckn-grad --patches default.npz --split train --out grad
  ckn finetune --model grad --patches default.npz --out grad-ft
  ckn eval-patches --model grad-ft --patches default.npz
"""


def _paths(args: argparse.Namespace) -> Paths:
    go_on = args.overwrite or args.resume
    return Paths(
        [
            Output("--out", args.out, kind="dir", replaced=True, overwrite=go_on),
            Output("--out (checkpoint)", checkpoint_dir(args.out), kind="dir", replaced=True),
        ],
        {"--model": args.model, "--patches": args.patches},
    )


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The inputs' kinds and the checkpoint's state (the destinations were checked by main)."""
    out, model, patches = Path(args.out), Path(args.model), Path(args.patches)
    ckpt = checkpoint_dir(out)
    if not model.is_dir():
        raise InputError(f"model directory not found: {model}")
    if not patches.is_file() or patches.suffix != ".npz":
        raise InputError(
            f"--patches must be an existing .npz with patches and labels, got {patches}"
        )
    if ckpt.exists() and not (args.overwrite or args.resume):
        raise InputError(f"a checkpoint exists in {ckpt}: use --resume to continue or --overwrite")
    if args.resume and not (ckpt / "state.npz").is_file():
        raise InputError(f"--resume: no checkpoint in {ckpt}")
    return out, ckpt


def _has_split(path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return "split" in z.files
    except ckn.files.CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{path}: cannot read patch file ({type(e).__name__})") from None


def _config(args: argparse.Namespace) -> ckn.FinetuneConfig:
    if args.batch_size % args.group_size:
        raise InputError(
            f"--batch-size {args.batch_size} must be a multiple of --group-size {args.group_size}"
        )
    return ckn.FinetuneConfig(
        loss=args.loss,
        margin=args.margin,
        epochs=args.epochs,
        groups_per_batch=args.batch_size // args.group_size,
        patches_per_group=args.group_size,
        lr=args.lr,
        trainable=args.trainable,
        projection=args.projection,
        patience=args.patience if args.patience > 0 else None,
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    meta = provenance.start()
    cfg = _config(args)
    out, ckpt = _check_paths(args)
    model = ckn.load(args.model)
    if args.overwrite and not args.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    ps = load_patchset(args.patches)
    split = args.split
    if split == "train" and not _has_split(args.patches):
        split = "all"
        print(
            f"{args.patches} has no 'split' array: fine-tuning on all {len(ps)} rows "
            "(as --split all)",
            file=sys.stderr,
        )
    rows = np.flatnonzero(ps.split == 0) if split == "train" else np.arange(len(ps))
    if rows.size == 0:
        raise InputError(f"{args.patches}: the train split is empty")
    patches, labels, scenes = ps.patches[rows], ps.labels[rows], ps.scene[rows]
    train_rows, val_rows, by = ckn.supervised.validation_split(
        labels, scenes, fraction=args.val_fraction, seed=args.seed
    )
    held = sorted(set(ps.scene_names[scenes[val_rows]])) if by == "scene" else []
    print(
        f"fine-tuning {args.model} ({model.config.name}) on {train_rows.size} patches, "
        f"validation {val_rows.size} patches held out by {by}"
        + (f" ({', '.join(held)})" if held else " (no scene ids: random groups)")
        + f"; {cfg.loss} loss, margin {cfg.margin_value}, {cfg.epochs} epochs of "
        f"{cfg.groups_per_batch} groups x {cfg.patches_per_group}, lr {cfg.lr}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    tuned, report = ckn.finetune(
        model,
        patches[train_rows],
        labels[train_rows],
        config=cfg,
        seed=args.seed,
        validation=(patches[val_rows], labels[val_rows]),
        progress=not args.quiet,
        checkpoint=ckpt,
        resume=args.resume,
    )
    training = {
        "finetune": report.to_dict(),
        "start_model": str(args.model),
        "start_training": ckn.read_training_report(args.model),
        "data": {
            "patches": str(args.patches),
            "split": split,
            "validation_by": by,
            "validation_scenes": held,
            "train_patches": int(train_rows.size),
            "validation_patches": int(val_rows.size),
        },
        "provenance": provenance.finish(meta),
    }
    ckn.save(tuned, out, training=training)
    shutil.rmtree(ckpt, ignore_errors=True)
    print(
        f"saved {out}: {validation_summary(report, 'the input model')}; {report.steps} steps, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``finetune`` sub-command to an argparse subparsers object."""
    d = _DEFAULTS
    p = sub.add_parser(
        "finetune",
        help="fine-tune a trained CKN end to end on labelled patch groups",
        description=(
            "Fine-tunes the filters of a model written by `ckn train` with a triplet or "
            "contrastive loss (batch-hard mining) on the groups of the train split, with "
            "gradients through the Nystrom map; validation on held-out train scenes, early "
            "stopping, the best epoch kept. A checkpoint goes to OUT.ckpt/ after every epoch."
        ),
        epilog=_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model directory written by `ckn train`")
    p.add_argument(
        "--patches",
        required=True,
        help=".npz with patches, labels (group ids), split and optional scene ids",
    )
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument(
        "--split",
        choices=("train", "all"),
        default="train",
        help="rows to train and validate on (default train; a file without a 'split' array: "
        "all rows, as 'all')",
    )
    add_with_default(p, "--batch-size", d.batch_size,
                     "patches per batch, a multiple of --group-size", type=int)  # fmt: skip
    add_with_default(p, "--group-size", d.patches_per_group, "patches drawn per group", type=int)
    add_with_default(p, "--trainable", d.trainable,
                     "what trains: filters plus any of +input (the first layer's pre-processing; "
                     "nothing for the grad input map), +lam, +linear (a learned p x p map after "
                     "each Nystrom map), +projection (the descriptor's projection, see "
                     "--projection), or projection alone")  # fmt: skip
    p.add_argument(
        "--projection",
        type=int,
        default=d.projection,
        metavar="K",
        help="append a learned K-dim linear projection of the descriptor (then L2), started "
        "from the PCA of the training descriptors; needs 'projection' in --trainable "
        "(alone: the network stays fixed and is described once) (default: none)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the rows held out for validation (default 0.2)",
    )
    add_training_flags(
        p,
        d,
        margins=ckn.supervised.DEFAULT_MARGINS,
        out="OUT",
        help={
            "patience": "stop after this many epochs without progress, 0 = never "
            f"(default {d.patience})"
        },
    )
    p.set_defaults(func=cmd_finetune)
    declare_paths(p, _paths)
