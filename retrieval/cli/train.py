"""``ckn train``: train a CKN without labels on a patch file and save it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import ckn
from ckn import PRESETS, LayerConfig
from retrieval.cli.flags import add_architecture_flags, config_from_args


def _describe_layers(layers: tuple[LayerConfig, ...]) -> str:
    return " | ".join(
        f"{lc.subpatch}x{lc.subpatch} x{lc.filters} pool {lc.subsampling}"
        f"{'' if lc.pooling == 'strided' else ' ' + lc.pooling}{'' if lc.pool_std is None else f' std {lc.pool_std}'}"
        f" sigma {lc.sigma}"
        for lc in layers
    )


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    patches, _ = ckn.load_patch_file(args.patches, split=args.split)
    h, w, c = cfg.output_shape(patches.shape[1], patches.shape[2])
    print(
        f"training {cfg.name} ({cfg.input} input; {_describe_layers(cfg.layers)}) on {patches.shape[0]} patches "
        f"of {patches.shape[1]}x{patches.shape[2]}, method {cfg.train.method}, seed {args.seed}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    model, reports = ckn.train(cfg, patches, seed=args.seed, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    for i, r in enumerate(reports):
        print(
            f"layer {i + 1}: sigma {r.sigma:.4f}, {r.num_samples} sub-patches ({r.num_dropped} flat dropped), "
            f"k-means objective {r.kmeans_objective[0]:.4f} -> {r.kmeans_objective[-1]:.4f}, {r.seconds:.1f} s",
            file=sys.stderr,
        )
    training = {
        "seed": args.seed,
        "num_train_patches": int(patches.shape[0]),
        "seconds": seconds,
        "layers": [dataclasses.asdict(r) for r in reports],
    }
    ckn.save(model, args.out, training=training)
    print(f"saved {args.out}: descriptor dimension {h * w * c} ({h}x{w}x{c}), trained in {seconds:.1f} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a CKN without labels on a patch file",
        description="Trains a CKN layer by layer without labels and saves it to a directory.",
    )
    p.add_argument("--preset", required=True, help=f"architecture preset: {', '.join(PRESETS)}")
    p.add_argument("--patches", required=True, help=".npy (N,H,W[,C]) or .npz with 'patches'")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--split", choices=("train", "test", "all"), default=None,
        help="rows of an .npz with a 'split' array (default: all rows)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_architecture_flags(p)
    p.set_defaults(func=cmd_train)
