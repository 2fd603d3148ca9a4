"""What ``ckn eval-images`` prints and writes: the protocol's figures, each mode's record, the
figure of a few queries."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np

from ckn import InputError
from ckn.files import atomic_path
from retrieval.image import (
    CamDescription,
    Evaluation,
    GlobalHead,
    LearnedHeadDescriber,
    LearnedHeadDescription,
    PoolingDescription,
    PostConfig,
    VladDescription,
    describer_name,
    save_figure,
    thumbnail,
)
from retrieval.patches import read_image

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


def head_record(head: GlobalHead, folder) -> dict:
    """What the JSON keeps of a learned head: folder, shape, p, backbone, config, and the
    SHA-256 of each of its files (config.json, arrays.npz)."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file())
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    return {
        "folder": str(folder),
        "kind": head.head,
        "dim": head.dim,
        "whitened": head.whitened,
        "p": None if head.p is None else float(head.p.get_value()),
        "levels": head.levels,
        "channels": head.channels,
        "backbone": head.backbone,
        "config": None if head.config is None else head.config.to_dict(),
        "sha256": digests,
    }


def protocol_doc(ev: Evaluation, args: argparse.Namespace, label: str) -> dict:
    """The protocol's figures (printed, and as JSON fields): groups mAP or revisited mAP."""
    info = ev.info
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
        return {
            "protocol": "revisited",
            "map": rev["medium"]["map"],
            "map_definition": "revisited medium mAP (revisitop trapezoid AP, junk removed)",
            **{p: rev[p] for p in ("easy", "medium", "hard")},
            "gnd": str(args.gnd),
            "num_images": info["num_database"] + info["num_queries"],
            "num_database": info["num_database"],
            "num_queries": info["num_queries"],
            "query_images": ev.query_names,
        }
    res = ev.result
    for msg in res.skipped:
        print(f"skipped: {msg}", file=sys.stderr)
    if res.num_queries == 0:
        raise InputError(f"{args.images}: no group has two images: nothing to evaluate")
    print(
        f"{label}: mAP {100 * res.mean_ap:.2f} (trapezoid {100 * res.mean_ap_trapezoid:.2f}) "
        f"over {res.num_queries} queries; {AP_TEXT}"
    )
    return {
        "protocol": "groups",
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


def describer_doc(config) -> dict:
    """The describer's registry name and its config (every mode)."""
    return {"name": describer_name(config), "config": dataclasses.asdict(config)}


def local_doc(ev: Evaluation, args: argparse.Namespace, config: VladDescription) -> dict:
    """What the JSON keeps of a VLAD run (``--local``)."""
    d, info = ev.describer, ev.info
    ex = info["extract"]
    regions = ex["regions"][: info["num_database"]]
    sec = info["seconds"]
    n = info["num_database"]
    return {
        "images": str(args.images),
        "local": d.patches.name,
        "local_dim": d.patches.dim,
        "codebook_on": info["train"]["on"],
        "vlad": dataclasses.asdict(config.vlad),
        "local_config": dataclasses.asdict(config.local_config),
        "search": {"method": args.search or "exact"},
        "fit_info": d.model.info,
        "regions_per_image": {
            "mean": float(np.mean(regions)),
            "min": int(min(regions)),
            "max": int(max(regions)),
        },
        "seconds": {
            "describe_total": float(
                sum(ex["seconds_regions"][:n]) + sum(ex["seconds_describe"][:n])
            ),
            "regions_per_image": float(np.mean(ex["seconds_regions"][:n])),
            "describe_per_image": float(np.mean(ex["seconds_describe"][:n])),
            "fit": d.train_info["seconds_fit"],
            "encode": ex["seconds_encode"],
            "search": sec["search"],
        },
        "pipeline_seconds": sec,
    }


def global_doc(ev: Evaluation, args: argparse.Namespace, config, post: PostConfig) -> dict:
    """What the JSON keeps of a run on a backbone (``--global``, ``--global-head``, CAM)."""
    d, info = ev.describer, ev.info
    extract = dict(
        info["extract"], skipped_scales=[list(x) for x in info["extract"]["skipped_scales"]]
    )
    cam = config.cam if isinstance(config, CamDescription) else None
    if isinstance(config, PoolingDescription):
        head, sizes = config.global_config.head, dataclasses.asdict(config.global_config)
    elif isinstance(config, LearnedHeadDescription):
        head, sizes = d.head.head, dataclasses.asdict(d.global_config)
    else:  # CAM: one scale, its own pooling (no head, p or levels)
        head, sizes = "cam", dataclasses.asdict(config.scales)
    return {
        "images": str(args.images),
        "global": {
            "head": head,
            "cam": None if cam is None else {**dataclasses.asdict(cam), "label": cam.label},
            "backbone": d.backbone.name,
            "backbone_spec": getattr(d, "backbone_spec", None) or config.backbone,
            "dim": info["dim"],
            "config": sizes,
            "post": dataclasses.asdict(post),
            "post_label": post.label,
            "learned_head": head_record(d.head, args.global_head)
            if isinstance(d, LearnedHeadDescriber)
            else None,
        },
        "whitening": info.get("whitening"),
        "extract": extract,
        "seconds": info["seconds"],
    }
