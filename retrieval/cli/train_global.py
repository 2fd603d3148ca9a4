"""``ckn train-global``: train a global head (GeM-p or R-MAC + projection) on a frozen backbone.

    ckn train-global --images DIR --head gem|rmac --out HEAD_DIR [--backbone SPEC]
        [--whiten] [--dim D] [--val-images DIR | --val-fraction F]
        [--loss triplet|contrastive] [--margin M] [--epochs E] [--lr LR]
        [--groups G] [--group-size K] [--mining batch|pool] [--negatives M]
        [--pool-size P] [--side PX] [--max-cache-mib MIB] [--patience P]
        [--seed S] [--resume] [--overwrite] [--quiet]

DIR is a folder of group folders (``ROOT/<group>/<image>``, the layout of
``ckn eval-images``); images directly in DIR are distractors (negatives only).
The backbone's maps of every training and validation image are computed once
(float16, in memory, at most ``--max-cache-mib``) and the head is trained on
them (:func:`retrieval.image.train_global_head`). Validation (the best epoch and early
stopping): the groups of ``--val-images`` (other images: refused if they share a
file with DIR), else ``--val-fraction`` of the groups of DIR held out (0: none,
the last epoch is kept). A checkpoint goes to ``HEAD_DIR.ckpt/`` after every
epoch and is removed once HEAD_DIR is written (atomically: ``config.json`` +
``arrays.npz``; the training report with provenance in config.json);
``--resume`` continues an interrupted run from it, ending with the same bits.
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
from retrieval.cli import provenance
from retrieval.cli.flags import (
    STRICT,
    add_command,
    add_strict_flag,
    add_training_flags,
    add_with_default,
    fields_as_flags,
    plural,
    validation_summary,
    warn,
    warn_skipped,
)
from retrieval.cli.outputs import Output, Paths, checkpoint_dir, declare_paths, weights_path
from retrieval.image import (
    HEAD_KINDS,
    HEAD_MARGINS,
    MINING,
    GlobalHeadConfig,
    backbone_info,
    check_images,
    load_backbone_spec,
    load_image_folder,
    maps_bytes,
    prepare_maps,
    save_global_head,
    train_global_head,
)

_D = GlobalHeadConfig()
# GlobalHeadConfig fields named in library messages -> the flags that set them.
_FIELDS = {
    "dim": "--dim",
    "epochs": "--epochs",
    "groups_per_batch": "--groups",
    "images_per_group": "--group-size",
    "negatives": "--negatives",
    "pool_size": "--pool-size",
    "side": "--side",
    "max_cache_mib": "--max-cache-mib",
    "lr": "--lr",
    "margin": "--margin",
}
_EXAMPLE = """\
ckn train-global --images train_scenes --val-images val_scenes --head gem --out heads/gem
ckn train-global --images train_scenes --head rmac --dim 512 --whiten --mining pool --out heads/rmac
ckn eval-images --images test_scenes --global gem --global-head heads/gem
"""


def _config(args: argparse.Namespace) -> GlobalHeadConfig:
    return GlobalHeadConfig(
        head=args.head,
        whiten=args.whiten,
        dim=args.dim,
        loss=args.loss,
        margin=args.margin,
        epochs=args.epochs,
        groups_per_batch=args.groups,
        images_per_group=args.group_size,
        mining=args.mining,
        negatives=args.negatives,
        pool_size=args.pool_size,
        lr=args.lr,
        patience=args.patience if args.patience > 0 else None,
        side=args.side,
        max_cache_mib=args.max_cache_mib,
    )


def _paths(args: argparse.Namespace) -> Paths:
    go_on = args.overwrite or args.resume
    return Paths(
        [
            Output("--out", args.out, kind="dir", replaced=True, overwrite=go_on),
            Output("--out (checkpoint)", checkpoint_dir(args.out), kind="dir", replaced=True),
        ],
        {
            "--images": args.images,
            "--val-images": args.val_images,
            "--backbone": weights_path(args.backbone),
        },
    )


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The checkpoint's state (the destinations were checked by main)."""
    out, ckpt = Path(args.out), checkpoint_dir(args.out)
    if ckpt.exists() and not (args.overwrite or args.resume):
        raise InputError(
            f"a checkpoint of an interrupted run is in {ckpt}: use --resume to continue it "
            "or --overwrite to start again"
        )
    if args.resume and not (ckpt / "state.npz").is_file():
        raise InputError(f"--resume: no checkpoint in {ckpt}")
    return out, ckpt


def _folder(args: argparse.Namespace, path, skipped: list[str]):
    """A folder of groups with its bad images skipped (the policy of every command)."""
    with fields_as_flags(STRICT):
        coll, lines = check_images(load_image_folder(path), strict=args.strict)
    skipped += lines
    return coll


def _data(args: argparse.Namespace):
    """Training paths and labels, validation paths and labels (or None), and a description
    (with ``skipped_images``: a "PATH: reason" line per bad image skipped)."""
    skipped: list[str] = []
    coll = _folder(args, args.images, skipped)
    paths, labels = list(coll.paths), coll.labels
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    if int((counts >= 2).sum()) < 2:
        raise InputError(
            f"{args.images}: training needs two groups of two or more images, "
            f"found {int((counts >= 2).sum())}"
        )
    desc = {"images": str(args.images), "groups": len(coll.groups), "skipped_images": skipped}
    if args.val_images is not None:
        if args.val_fraction is not None:
            raise InputError("give --val-images or --val-fraction, not both")
        vcoll = _folder(args, args.val_images, skipped)
        shared = {p.resolve() for p in paths} & {p.resolve() for p in vcoll.paths}
        if shared:
            raise InputError(
                f"--val-images shares {len(shared)} image(s) with --images, e.g. "
                f"{sorted(shared)[0]}: validation needs other images"
            )
        desc.update(validation=str(args.val_images), validation_by="folder")
        return paths, labels, list(vcoll.paths), vcoll.labels, desc
    fraction = 0.2 if args.val_fraction is None else args.val_fraction
    if fraction == 0:
        desc.update(validation=None)
        return paths, labels, None, None, desc
    if not 0 < fraction < 1:
        raise InputError(f"--val-fraction must be in [0, 1), got {fraction}")
    grouped = np.flatnonzero(labels >= 0)
    tr, va, _ = ckn.supervised.validation_split(labels[grouped], fraction=fraction, seed=args.seed)
    val_rows = grouped[va]
    held = np.unique(labels[val_rows])
    left = np.bincount(labels[grouped[tr]])
    if held.size < 2 or int((left >= 2).sum()) < 2:
        raise InputError(
            f"--val-fraction {fraction}: {len(coll.groups)} groups are too few to hold some out "
            "(two for validation, two for training): use --val-images or --val-fraction 0"
        )
    keep = np.setdiff1d(np.arange(len(paths)), val_rows)
    desc.update(
        validation=f"{held.size} groups of {args.images} held out ({fraction:g})",
        validation_by="groups",
        validation_groups=[coll.groups[g] for g in held],
    )
    return (
        [paths[i] for i in keep],
        labels[keep],
        [paths[i] for i in val_rows],
        labels[val_rows],
        desc,
    )


def cmd_train_global(args: argparse.Namespace) -> int:
    meta = provenance.start()
    with fields_as_flags(_FIELDS):
        cfg = _config(args)
    out, ckpt = _check_paths(args)
    paths, labels, vpaths, vlabels, data = _data(args)
    warn_skipped(args, data["skipped_images"])
    backbone = load_backbone_spec(args.backbone)
    if cfg.side % backbone.stride:
        raise InputError(
            f"--side {cfg.side} must be a multiple of {backbone.name}'s stride ({backbone.stride})"
        )
    n_all = len(paths) + (len(vpaths) if vpaths else 0)
    need, limit = maps_bytes(n_all, backbone, cfg.side), cfg.max_cache_mib * 2**20
    if need > limit:
        raise InputError(
            f"the float16 maps of {n_all} images at {cfg.side} px need {need / 2**20:.0f} MiB, "
            f"above --max-cache-mib {cfg.max_cache_mib}: lower --side or use fewer images"
        )
    if args.overwrite and not args.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    print(
        f"training a {cfg.head}{' + whitening' if cfg.whiten else ''} head on {backbone.name} "
        f"maps ({backbone.channels} channels) of {plural(len(paths), 'image')} "
        f"({plural(data['groups'], 'group')}) at {cfg.side} px; validation: {data['validation']}; "
        f"{cfg.loss} loss, margin {cfg.margin_value}, {cfg.mining} mining, {cfg.epochs} epochs, "
        f"lr {cfg.lr}, seed {args.seed}" + (f"; resuming from {ckpt}" if args.resume else ""),
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    info_t, info_v = {}, {}
    maps = prepare_maps(backbone, paths, side=cfg.side, progress=not args.quiet, info=info_t)
    validation = None
    if vpaths:
        vmaps = prepare_maps(backbone, vpaths, side=cfg.side, progress=not args.quiet, info=info_v)
        validation = (vmaps, vlabels)
    maps_seconds = time.perf_counter() - t0
    with fields_as_flags(_FIELDS):
        head, report = train_global_head(
            maps,
            labels,
            cfg,
            seed=args.seed,
            validation=validation,
            backbone=backbone_info(backbone, args.backbone),
            progress=not args.quiet,
            checkpoint=ckpt,
            resume=args.resume,
        )
    if report.init.get("dim_capped"):
        warn(args, f"{report.init['dim_capped']} (--dim sets it)")
    data.update(
        train_images=len(paths),
        validation_images=len(vpaths) if vpaths else 0,
        gray_images=info_t.get("gray", 0) + info_v.get("gray", 0),
        maps_mib=round((maps.nbytes + (validation[0].nbytes if validation else 0)) / 2**20, 1),
        maps_seconds=maps_seconds,
    )
    training = {
        "report": report.to_dict(),
        "seed": args.seed,
        "data": data,
        "provenance": provenance.finish(meta),
    }
    save_global_head(head, out, training=training)
    shutil.rmtree(ckpt, ignore_errors=True)
    p = "" if head.p is None else f"p {cfg.p:g} -> {float(head.p.get_value()):.3f}; "
    print(
        f"saved {out}: {head.head}{' + whitening' if head.whitened else ''} head, "
        f"{head.dim}-D; {p}{validation_summary(report, 'the initial head')}; "
        f"{report.steps} steps ({report.steps_per_second:.1f} steps/s), "
        f"{time.perf_counter() - t0:.0f} s"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the ``train-global`` sub-command."""
    p = add_command(
        sub,
        "train-global",
        help="train a global head (GeM-p / R-MAC + projection) on a frozen backbone",
        description="Trains a learned global descriptor head on the frozen maps of a backbone: "
        "GeM with a learned p, or R-MAC regions with a learned shift and projection "
        "(PCA-initialized), optionally followed by a learned whitening (Lw-initialized); "
        "triplet or contrastive loss on groups of images (hardest in batch, or hard negatives "
        "re-mined from a pool every epoch), Adam with a cosine schedule, validation mAP for "
        "the best epoch and early stopping. Writes HEAD_DIR (config.json + arrays.npz) for "
        "`ckn eval-images --global-head`; a checkpoint after every epoch in HEAD_DIR.ckpt/.",
        example=_EXAMPLE,
    )
    p.add_argument(
        "--images", required=True, help="training folder: ROOT/<group>/<image> (+ distractors)"
    )
    p.add_argument("--head", required=True, choices=HEAD_KINDS, help="gem (learned p) or rmac")
    p.add_argument("--out", required=True, help="head folder to write (HEAD_DIR)")
    p.add_argument(
        "--backbone",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (default), vgg16:FILE, resnet50:FILE, resnet101:FILE or "
        "ckn:MODEL_DIR (as ckn eval-images)",
    )
    p.add_argument(
        "--whiten", action="store_true", help="add a learned whitening (Lw-initialized, trained)"
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        help="output dimension: R-MAC projection (default C) or whitening (default "
        "min(input, images - 1)); a gem head without --whiten keeps C",
    )
    p.add_argument("--val-images", default=None, help="folder of OTHER image groups for validation")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="without --val-images: share of the groups of --images held out for validation "
        "(default 0.2; 0 = no validation, the last epoch is kept)",
    )
    add_with_default(p, "--groups", _D.groups_per_batch, "groups per batch", type=int)
    add_with_default(p, "--group-size", _D.images_per_group, "images drawn per group", type=int)
    p.add_argument(
        "--mining",
        choices=MINING,
        default=_D.mining,
        help=f"hard negatives: batch (hardest in batch) or pool (re-mined every "
        f"epoch from a pool; default {_D.mining})",
    )
    add_with_default(p, "--negatives", _D.negatives,
                     "mined negatives per group with --mining pool", type=int)  # fmt: skip
    add_with_default(p, "--pool-size", _D.pool_size, "images in the mining pool of an epoch",
                     type=int)  # fmt: skip
    p.add_argument(
        "--side",
        type=int,
        default=_D.side,
        help=f"training images shrunk to at most this long side, padded square (default "
        f"{_D.side}; a multiple of the backbone's stride)",
    )
    add_with_default(p, "--max-cache-mib", _D.max_cache_mib,
                     "limit of the float16 maps kept in memory", type=int)  # fmt: skip
    add_training_flags(
        p,
        _D,
        margins=HEAD_MARGINS,
        out="HEAD_DIR",
        help={"overwrite": "replace HEAD_DIR and its checkpoint", "quiet": "no progress bars"},
    )
    add_strict_flag(p, " line, counted in the head's training record")
    p.set_defaults(func=cmd_train_global)
    declare_paths(p, _paths)
