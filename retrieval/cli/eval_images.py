"""``ckn eval-images``: VLAD image retrieval mAP on a folder of folders.

    ckn eval-images --images DIR --local sift|rootsift|pixels|MODEL_DIR \\
        [--codebook-images DIR2] [--k 64] [--pca 256] [--local-dim 128] \\
        [--max-regions 1000] [--search exact|ivfpq] [--json OUT] [--figure PNG]

DIR holds one subfolder per group (scene or object); images directly in DIR
are distractors; an optional ``junk.txt`` per group lists images left out of
that group's rankings (see :mod:`retrieval._src.image_folder`). Every image
is described by local descriptors at interest regions, the codebook (and the
local PCA and VLAD PCA-whitening) are fitted on DIR2 if given, else on DIR
itself (and it says so), every image is encoded, searched against all others
and scored: mAP with the non-interpolated AP (query excluded, junk removed,
ties against the relevant images), and the Oxford trapezoidal mAP beside it.
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

from ckn import InputError, atomic_path, write_json
from retrieval._src.figures import save_figure, thumbnail
from retrieval._src.image_eval import evaluate_vlad
from retrieval._src.image_folder import list_images, load_image_folder
from retrieval._src.local import LocalConfig, describe_images, make_describer
from retrieval._src.vlad_fit import VladConfig
from retrieval._src.data import read_image
from retrieval.cli import provenance

AP_TEXT = "non-interpolated AP (precision at each relevant rank, averaged), query excluded, junk removed, ties against relevant"


def _check_out(path: str | None, suffix: str, flag: str) -> None:
    if path is None:
        return
    if not str(path).lower().endswith(suffix):
        raise InputError(f"{flag} must be a {suffix} file, got {path}")
    if not Path(path).resolve().parent.is_dir():
        raise InputError(f"output folder does not exist: {Path(path).parent}")


def figure_queries(labels: np.ndarray, count: int = 4) -> list[int]:
    """The first image of each of the first ``count`` groups that have a query."""
    out = []
    for g in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == g)
        if members.size >= 2:
            out.append(int(members[0]))
        if len(out) == count:
            break
    return out


def cmd_eval_images(args: argparse.Namespace) -> int:
    meta = provenance.start()
    _check_out(args.json, ".json", "--json")
    _check_out(args.figure, ".png", "--figure")
    for flag in ("k", "max_regions"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    config = VladConfig(
        k=args.k, pca_dim=args.pca or None, local_dim=args.local_dim or None, seed=args.seed,
        pca_whiten=not args.no_whiten,
    )
    local = LocalConfig(max_regions=args.max_regions, max_side=args.max_side)
    coll = load_image_folder(args.images)
    names = coll.names
    n_dis = int((coll.labels < 0).sum())
    describer = make_describer(args.local)
    print(f"{args.images}: {len(coll.paths)} images in {len(coll.groups)} groups"
          f"{f' + {n_dis} distractors' if n_dis else ''}; local descriptor {describer.name} "
          f"({describer.dim}-D, {describer.patch_size}x{describer.patch_size} patches, "
          f"at most {args.max_regions} regions per image)")
    quiet = args.quiet
    t0 = time.perf_counter()
    feats = describe_images(coll.paths, describer, config=local, names=names, progress=not quiet)
    t_desc = time.perf_counter() - t0
    if args.codebook_images is not None:
        train_paths = list_images(args.codebook_images)
        print(f"codebook{' and PCA' if config.pca_dim else ''} fitted on the {len(train_paths)} images "
              f"of {args.codebook_images}")
        train = describe_images(train_paths, describer, config=local, progress=not quiet,
                            desc="describing codebook images")
        where = str(args.codebook_images)
    else:
        print(f"codebook{' and PCA' if config.pca_dim else ''} fitted on the evaluated images themselves "
              f"(no --codebook-images given)")
        train, where = None, "evaluated images"
    ev = evaluate_vlad(feats, coll.labels, train=train, config=config, junk=coll.junk, names=names,
                       search=args.search)
    res = ev.result
    n_fit = len(train) if train is not None else len(feats)
    if config.pca_dim and n_fit <= config.pca_dim:
        # Window VLADs of one image are strongly correlated: beyond about n_fit
        # directions the whitening mostly amplifies window noise (see the benchmark).
        print(f"note: PCA-whitening to {config.pca_dim}-D fitted on only {n_fit} distinct images; "
              f"on collections this small it usually lowers mAP (--pca 0 disables it)", file=sys.stderr)
    for msg in res.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    if res.num_queries == 0:
        raise InputError(f"{args.images}: no group has two images: nothing to evaluate")
    regions = [f.descriptors.shape[0] for f in feats]
    print(f"VLAD k={config.k}, {ev.model.dim}-D ({'PCA-whitened' if config.pca_dim and config.pca_whiten else 'PCA' if config.pca_dim else 'no PCA'}), "
          f"{args.search} search: mAP {100 * res.mean_ap:.2f} (trapezoid {100 * res.mean_ap_trapezoid:.2f}) "
          f"over {res.num_queries} queries; {AP_TEXT}")
    doc = {
        "map": res.mean_ap,
        "map_trapezoid": res.mean_ap_trapezoid,
        "ap_definition": AP_TEXT,
        "num_images": len(coll.paths),
        "num_groups": len(coll.groups),
        "num_distractors": n_dis,
        "num_queries": res.num_queries,
        "skipped": list(res.skipped),
        "images": str(args.images),
        "local": describer.name,
        "local_dim": describer.dim,
        "codebook_on": where,
        "vlad": dataclasses.asdict(config),
        "local_config": dataclasses.asdict(local),
        "search": {"method": args.search},
        "fit_info": ev.model.info,
        "regions_per_image": {"mean": float(np.mean(regions)), "min": int(min(regions)), "max": int(max(regions))},
        "seconds": {
            "describe_total": t_desc,
            "regions_per_image": float(np.mean([f.seconds_regions for f in feats])),
            "describe_per_image": float(np.mean([f.seconds_describe for f in feats])),
            **ev.seconds,
        },
        "per_query": [
            {"image": names[q], "ap": float(res.per_query[q])}
            for q in range(len(names)) if not np.isnan(res.per_query[q])
        ],
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "metadata": provenance.finish(meta),
    }
    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.figure is not None:
        queries = figure_queries(coll.labels)
        shown = set(queries) | {int(i) for q in queries for i in ev.ranking[q][:5] if i >= 0}
        thumbs = [thumbnail(read_image(p)) if i in shown else np.zeros((2, 2), np.uint8)
                  for i, p in enumerate(coll.paths)]
        with atomic_path(args.figure) as tmp:
            save_figure(tmp, thumbs, coll.labels, ev.ranking, queries, names=names, junk=coll.junk,
                        title=f"{describer.name}, VLAD k={config.k}, mAP {100 * res.mean_ap:.1f}")
        print(f"wrote {args.figure}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-images",
        help="VLAD image retrieval mAP on a folder of folders",
        description=(
            "Local descriptors at interest regions, a VLAD codebook (k-means) and PCA-whitening, "
            "exact or IVF-PQ search, and image retrieval mAP: every image of a group is a query "
            "against all other images (non-interpolated AP, query excluded, ties against relevant)."
        ),
    )
    p.add_argument("--images", required=True,
                   help="folder of group subfolders (images directly in it are distractors)")
    p.add_argument("--local", required=True,
                   help="local descriptor: sift, rootsift, pixels or a model directory (ckn train)")
    p.add_argument("--codebook-images", default=None,
                   help="fit the codebook and PCA on the images under this folder (default: on --images)")
    p.add_argument("--k", type=int, default=64, help="codebook size (default 64)")
    p.add_argument(
        "--pca", type=int, default=0,
        help="PCA-whitening dimension, e.g. 256 (default 0: none; on small collections it lowered mAP in every measured setting)",
    )
    p.add_argument("--no-whiten", action="store_true", help="plain PCA projection, no whitening")
    p.add_argument("--local-dim", type=int, default=128,
                   help="PCA of larger local descriptors to this dimension before VLAD, 0 to keep (default 128)")
    p.add_argument("--max-regions", type=int, default=1000, help="regions per image, strongest first (default 1000)")
    p.add_argument("--max-side", type=int, default=None, help="resize images whose long side exceeds this")
    p.add_argument("--search", choices=("exact", "ivfpq"), default="exact", help="search method (default exact)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--figure", default=None, help="write a PNG of a few queries and their top results")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means, subsamples and PCA windows (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval_images)
