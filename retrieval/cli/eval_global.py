"""``ckn eval-images --global``: global descriptors, post-processing, exact search, mAP.

The global branch of :mod:`retrieval.cli.eval_images` (which parses the flags and
checks the output destinations before calling :func:`run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import warnings
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import atomic_path, write_json
from retrieval.cli import provenance
from retrieval.cli.flags import arguments, fields_as_flags, parse_scales, warn, warn_skipped
from retrieval.image import (
    MULTI_SCALE,
    CamConfig,
    GlobalConfig,
    GlobalHead,
    PostConfig,
    evaluate_cam,
    evaluate_global,
    load_backbone_spec,
    load_global_head,
    save_figure,
    thumbnail,
)
from retrieval.patches import read_image

# Settings named in library messages -> the flags that set them.
_FIELDS = {"whiten_dim": "--whiten-dim"}

AP_TEXT = (
    "non-interpolated AP (precision at each relevant rank, averaged), query excluded, "
    "junk removed, ties against relevant"
)


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


def write_figure(path, paths, labels, ranking, *, names, junk, title: str) -> None:
    """A PNG of the first query of a few groups and their top 5 results (atomic)."""
    queries = figure_queries(labels)
    shown = set(queries) | {int(i) for q in queries for i in ranking[q][:5] if i >= 0}
    thumbs = [
        thumbnail(read_image(p)) if i in shown else np.zeros((2, 2), np.uint8)
        for i, p in enumerate(paths)
    ]
    with atomic_path(path) as tmp:
        save_figure(tmp, thumbs, labels, ranking, queries, names=names, junk=junk, title=title)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def learned_head(args: argparse.Namespace):
    """``--global-head HEAD_DIR``: (head, backbone, spec), the backbone checked against the head.

    The backbone is ``--backbone`` if given, else the one HEAD_DIR records (its
    ``ckn train-global --backbone``); either way it must be the network (name and
    weights) the head was trained on. A ``--global`` beside it must name the head's kind.
    """
    folder = args.learned_head
    head = load_global_head(folder)
    if args.global_head is not None and args.global_head != head.kind:
        raise InputError(
            f"--global {args.global_head} does not match {folder}, a {head.kind} head: "
            f"leave --global out or give --global {head.kind}"
        )
    rec = head.backbone
    if args.backbone is not None:
        spec, where, hint = args.backbone, f"--backbone {args.backbone}", ""
    elif rec.get("spec") or rec.get("name"):
        spec = rec.get("spec") or rec["name"]
        where, hint = f"{folder} records the backbone {spec}", " (give --backbone)"
    else:
        raise InputError(f"{folder} does not record its backbone: give --backbone")
    try:
        backbone = load_backbone_spec(spec)
        head.check_backbone(backbone)
    except InputError as e:
        raise InputError(f"{where}: {e}{hint}") from None
    return head, backbone, spec


def head_record(head: GlobalHead, folder) -> dict:
    """What the JSON keeps of a learned head: folder, shape, p, backbone, config, and the
    SHA-256 of each of its files (config.json, arrays.npz)."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file())
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return {
        "folder": str(folder),
        "kind": head.kind,
        "dim": head.dim,
        "whitened": head.whitened,
        "p": None if head.p is None else float(head.p.get_value()),
        "levels": head.levels,
        "channels": head.channels,
        "backbone": head.backbone,
        "config": None if head.config is None else head.config.to_dict(),
        "sha256": digests,
    }


_CAM_ONLY = (
    ("cam_variant", "--cam-variant", None),
    ("top_classes", "--top-classes", None),
    ("rerank", "--rerank", 0),
)


def cam_settings(args: argparse.Namespace) -> CamConfig | None:
    """The :class:`CamConfig` of ``--global cam`` (None for the other heads); flag checks."""
    if args.global_head != "cam":
        for dest, flag, unset in _CAM_ONLY:
            if getattr(args, dest) != unset:
                raise InputError(f"{flag} applies to --global cam only")
        return None
    if args.learned_head is not None:
        raise InputError("--global-head does not combine with --global cam")
    for flag, v in (("--rerank", args.rerank), ("--top-classes", args.top_classes)):
        if v is not None and v < (0 if flag == "--rerank" else 1):
            raise InputError(f"{flag} must be >= {0 if flag == '--rerank' else 1}, got {v}")
    return CamConfig(
        variant=args.cam_variant or "ofa",
        top_classes=64 if args.top_classes is None else args.top_classes,
        rerank=args.rerank,
    )


def run(args: argparse.Namespace, meta: dict) -> int:
    """``--global HEAD`` or ``--global-head HEAD_DIR``: global descriptors, post-processing,
    exact search, mAP."""
    if args.gnd is not None and args.figure is not None:
        raise InputError("--figure works with the groups layout, not with --gnd")
    for flag, v in (("--qe", args.qe), ("--dba", args.dba)):
        if v < 0:
            raise InputError(f"{flag} must be >= 0, got {v}")
    if args.max_side is not None and args.max_side < 1:
        raise InputError(f"--max-side must be >= 1, got {args.max_side}")
    head = describe = None
    cam = cam_settings(args)
    if args.learned_head is not None:
        head, backbone, spec = learned_head(args)
    config = GlobalConfig(
        head="mac" if cam is not None else args.global_head if head is None else head.kind,
        scales=parse_scales(args.scales) or (MULTI_SCALE if cam is None else (1.0,)),
        max_side=1024 if args.max_side is None else args.max_side,
    )
    if head is not None:  # the head's own p and levels (used by describe_images)
        config = dataclasses.replace(config, p=head.combine_p, levels=head.levels)

        def describe(images, progress, info):
            return head.describe_images(backbone, images, config, progress=progress, info=info)

    post = PostConfig(
        whiten=args.whiten or "none",
        whiten_dim=args.whiten_dim,
        qe=args.qe,
        alpha=0.0 if args.alpha is None else args.alpha,
        dba=args.dba,
    )
    if post.whiten == "none" and args.whiten_images is not None:
        raise InputError("--whiten-images needs --whiten pca or --whiten learned")
    if post.whiten != "none" and args.whiten_images is None:
        raise InputError(
            f"--whiten {post.whiten} needs --whiten-images DIR: other images to fit it on "
            "(never the evaluated ones)"
        )
    if head is None:
        spec = args.backbone or "efficientnet-lite0"
        backbone = load_backbone_spec(spec)
    name = config.head if head is None else f"learned {head.kind}"
    if cam is not None:
        name = cam.label
    print(
        f"{args.images}: global {name} descriptors of {backbone.name} "
        f"({backbone.channels} channels, stride {backbone.stride}), scales "
        f"{', '.join(f'{s:g}' for s in config.scales)}, max side {config.max_side}; {post.label}"
    )
    with warnings.catch_warnings(record=True) as caught, fields_as_flags(_FIELDS):
        warnings.simplefilter("always", UserWarning)
        ev = evaluate_cam(
            backbone, args.images, config, cam, post, whiten_images=args.whiten_images,
            gnd=args.gnd, progress=not args.quiet, strict=args.strict,
        ) if cam is not None else evaluate_global(
            backbone, args.images, config, post, whiten_images=args.whiten_images,
            gnd=args.gnd, progress=not args.quiet, strict=args.strict, describe=describe,
        )  # fmt: skip
    warn_skipped(args, ev.info["skipped_images"])
    if (ev.info.get("whitening") or {}).get("capped"):
        warn(args, f"{ev.info['whitening']['capped']} (--whiten-dim sets it)")
    for msg in dict.fromkeys(str(w.message) for w in caught):  # each said once
        print(f"note: {msg}", file=sys.stderr)
    info = ev.info
    extract = dict(
        info["extract"], skipped_scales=[list(x) for x in info["extract"]["skipped_scales"]]
    )
    doc = {
        "protocol": "revisited" if args.gnd is not None else "groups",
        "images": str(args.images),
        "global": {
            "head": "cam" if cam is not None else config.head,
            "cam": None if cam is None else {**dataclasses.asdict(cam), "label": cam.label},
            "backbone": backbone.name,
            "backbone_spec": spec,
            "dim": info["dim"],
            "config": {  # CAM: one scale, its own pooling (no head, p or levels)
                k: v
                for k, v in dataclasses.asdict(config).items()
                if cam is None or k not in ("head", "p", "levels")
            },
            "post": dataclasses.asdict(post),
            "post_label": post.label,
            "learned_head": None if head is None else head_record(head, args.learned_head),
        },  # fmt: skip
        "whitening": info.get("whitening"),
        "extract": extract,
        "seconds": info["seconds"],
    }
    if args.gnd is not None:
        rev = ev.revisited
        for protocol in ("easy", "medium", "hard"):
            r = rev[protocol]
            mp = " / ".join(_pct(v) for v in (r["mp@k"] or []))
            print(
                f"revisited {protocol}: mAP {_pct(r['map'])}, "
                f"mP@{','.join(map(str, r['kappas']))} {mp or 'n/a'} over {r['num_queries']} "
                f"queries ({r['num_skipped']} without positives skipped)"
            )
        doc.update(
            {
                "map": rev["medium"]["map"],
                "map_definition": "revisited medium mAP (revisitop trapezoid AP, junk removed)",
                **{p: rev[p] for p in ("easy", "medium", "hard")},
                "gnd": str(args.gnd),
                "num_images": info["num_database"] + info["num_queries"],
                "num_database": info["num_database"],
                "num_queries": info["num_queries"],
                "query_images": ev.query_names,
            }
        )
    else:
        res = ev.result
        for msg in res.skipped:
            print(f"skipped: {msg}", file=sys.stderr)
        if res.num_queries == 0:
            raise InputError(f"{args.images}: no group has two images: nothing to evaluate")
        print(
            f"{name}, {info['dim']}-D, exact search: mAP {100 * res.mean_ap:.2f} "
            f"(trapezoid {100 * res.mean_ap_trapezoid:.2f}) over {res.num_queries} queries; "
            f"{AP_TEXT}"
        )
        doc.update(
            {
                "map": res.mean_ap,
                "map_trapezoid": res.mean_ap_trapezoid,
                "ap_definition": AP_TEXT,
                "num_images": info["num_database"],
                "num_groups": info["num_groups"],
                "num_distractors": info["num_distractors"],
                "num_queries": res.num_queries,
                "skipped": list(res.skipped),
                "skipped_images": list(info["skipped_images"]),
                "per_query": [
                    {"image": ev.names[q], "ap": float(res.per_query[q])}
                    for q in range(len(ev.names))
                    if not np.isnan(res.per_query[q])
                ],
            }
        )
    doc["arguments"] = arguments(args)
    doc["metadata"] = provenance.finish(meta)
    if args.json is not None:
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    if args.figure is not None:
        write_figure(
            args.figure, ev.paths, ev.labels, ev.ranking, names=ev.names, junk=ev.junk,
            title=f"{backbone.name} {name}, {post.label}, mAP {100 * ev.result.mean_ap:.1f}",
        )  # fmt: skip
        print(f"wrote {args.figure}")
    return 0
