"""``ckn train``: train a CKN without labels on a patch file and save it.

A checkpoint (the model so far, ``ckn.train(checkpoint=...)``) is written
after every layer to ``OUT.ckpt/`` beside OUT and removed once OUT is saved;
``--resume`` continues an interrupted run from it, with the same result as an
uninterrupted run. An existing OUT (or checkpoint) is refused unless
``--overwrite`` (or ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import ckn
from ckn import PRESETS, InputError, LayerConfig
from retrieval.cli.flags import add_architecture_flags, add_command, config_from_args
from retrieval.cli.outputs import Output, Paths, checkpoint_dir, declare_paths, resume_note


def _describe_layers(layers: tuple[LayerConfig, ...]) -> str:
    return " | ".join(
        f"{lc.subpatch}x{lc.subpatch} x{lc.filters} pool {lc.subsampling}"
        f"{'' if lc.pooling == 'strided' else ' ' + lc.pooling}"
        f"{'' if lc.pool_std is None else f' std {lc.pool_std}'}"
        f" sigma {lc.sigma}"
        for lc in layers
    )


def _paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [
            Output("--out", args.out, kind="dir", replaced=True, overwrite=args.overwrite),
            Output("--out (checkpoint)", checkpoint_dir(args.out), kind="dir", replaced=True),
        ],
        {"--patches": args.patches},
    )


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out, ckpt = Path(args.out), checkpoint_dir(args.out)
    if ckpt.exists() and not (args.overwrite or args.resume):
        raise InputError(
            f"a checkpoint of an interrupted run is in {ckpt}: use --resume to continue it "
            "or --overwrite to start again"
        )
    if args.resume and not ckpt.is_dir():
        raise InputError(f"--resume: no checkpoint to resume in {ckpt}")
    patches, _ = ckn.files.load_patch_file(args.patches, split=args.split)
    h, w, c = cfg.output_shape(patches.shape[1], patches.shape[2])
    ckn.unsupervised.check_training_set(cfg, patches)
    if args.overwrite and not args.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    print(
        f"training {cfg.name} ({cfg.input} input; {_describe_layers(cfg.layers)}) on "
        f"{patches.shape[0]} patches of {patches.shape[1]}x{patches.shape[2]}, method "
        f"{cfg.train.method}, seed {args.seed}"
        + (f"; resuming from {ckpt}" if args.resume else ""),
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    model, reports = ckn.train(
        cfg,
        patches,
        seed=args.seed,
        progress=not args.quiet,
        checkpoint=ckpt,
        resume=args.resume,
    )
    seconds = time.perf_counter() - t0
    for i, r in enumerate(reports):
        print(
            f"layer {i + 1}: sigma {r.sigma:.4f}, {r.num_samples} sub-patches "
            f"({r.num_dropped} flat dropped), k-means objective {r.kmeans_objective[0]:.4f} -> "
            f"{r.kmeans_objective[-1]:.4f}, {r.seconds:.1f} s",
            file=sys.stderr,
        )
    training = {
        "seed": args.seed,
        "num_train_patches": int(patches.shape[0]),
        "seconds": seconds,
        "resumed": bool(args.resume),
        "layers": [dataclasses.asdict(r) for r in reports],
    }
    ckn.save(model, out, training=training)
    shutil.rmtree(ckpt, ignore_errors=True)
    print(
        f"saved {out}: descriptor dimension {h * w * c} ({h}x{w}x{c}) for "
        f"{patches.shape[1]}x{patches.shape[2]} patches, trained in {seconds:.1f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "train",
        help="train a CKN without labels on a patch file",
        description="Trains a CKN layer by layer without labels and saves it to a directory "
        "(a checkpoint after every layer in OUT.ckpt; --resume continues from it).",
        example="ckn patches --default --out default.npz\n"
        "ckn train --preset ckn-grad --patches default.npz --split train --out models/grad",
    )
    p.add_argument("--preset", required=True, help=f"architecture preset: {', '.join(PRESETS)}")
    p.add_argument("--patches", required=True, help=".npy (N,H,W[,C]) or .npz with 'patches'")
    p.add_argument("--out", required=True, help="model directory to write (parents created)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--split",
        choices=("train", "test", "all"),
        default=None,
        help="rows of an .npz with a 'split' array (default: all rows)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (and checkpoint)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from OUT.ckpt (same arguments; same result as an "
        "uninterrupted run)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_architecture_flags(p)
    p.set_defaults(func=cmd_train, interrupt_note=resume_note)
    declare_paths(p, _paths)
