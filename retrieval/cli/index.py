"""``ckn index``: a saved, searchable image index (build, add, query, info).

    ckn index build --images DIR --out INDEX (--global HEAD | --global-head HEAD_DIR
        | --global cam [--top-classes 64] | --local sift|rootsift|MODEL_DIR [--k 64]
        [--max-regions 1000]) [--backbone SPEC] [--scales S] [--max-side N]
        [--whiten auto|none|pca] [--whiten-dim D] [--whiten-images DIR2]
        [--search auto|exact|ivfpq] [--overwrite]
    ckn index add --index INDEX --images DIR2   (images already indexed are left out)
    ckn index query --index INDEX (--image Q.jpg [--image Q2.jpg ...] | --images QDIR)
        [--top 10] [--nprobe N] [--png OUT.png] [--json OUT.json]
    ckn index info --index INDEX [--json]

    in shards (a collection too large for one process; any scheduler runs the shards):
    ckn index fit --images DIR --sample K --out FITTED.npz (description flags as build)
    ckn index build --images DIR --fitted FITTED.npz --shard I/N --out PART   (I = 0..N-1)
    ckn index merge PART... --out INDEX

``build`` describes every image under DIR once, with the describer the mode selects (the
modes and options of ``ckn eval-images``, one table: :mod:`retrieval.cli.image_modes`; CAM
as OfA vectors), and writes INDEX (a folder: descriptors, image paths, fitted whitening /
VLAD codebook, settings with the describer's config; see :mod:`retrieval.index`),
atomically. ``add`` describes more images
with the index's settings and fitted models (never refitted) and commits them
with one rename: an interrupted add leaves the previous index; images already
indexed are left out (counted), so adding a grown folder adds its new images.
``query`` describes its images (every ``--image``, then every image under
``--images``) the same way, together, and prints one block per query: rank,
score (inner product of L2-normalized vectors) and path (relative to the working
folder when inside it, else absolute; absolute in ``--json``) of its nearest
indexed images; description flags given to ``query`` (``--global``,
``--backbone``, ``--local``, ...) must match the index's, or it is refused.
``info`` prints what an index holds. ``fit``, ``build --fitted --shard`` and ``merge`` (an
index in shards) live in :mod:`retrieval.cli.index_shards`. Bad images are skipped by the
one policy (:func:`retrieval.image.usable_images`), one warning line each; ``--strict``
fails instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

from ckn import InputError
from ckn.files import atomic_path, write_json
from retrieval.cli import provenance
from retrieval.cli.fields import add_settings
from retrieval.cli.flags import (
    STRICT,
    add_command,
    add_strict_flag,
    fields_as_flags,
    plural,
    shown_path,
    warn_skipped,
)
from retrieval.cli.index_common import (
    COUNTED,
    description_flags,
    index_flag,
    index_label,
    index_settings,
    local_input,
    runs,
)
from retrieval.cli.index_shards import cmd_build_part, register_shards
from retrieval.cli.outputs import Output, Paths, weights_path
from retrieval.image import (
    list_images,
    read_image_any,
    usable_images,
)
from retrieval.index import (
    CLAIMS,
    IndexSettings,
    add_to_index,
    build_index,
    index_info,
    load_index,
    mismatch_text,
    query_figure,
    query_images,
    save_index,
    settings_mismatch,
)


def _notes(caught) -> None:
    for msg in dict.fromkeys(str(w.message) for w in caught):  # each said once
        print(f"note: {msg}", file=sys.stderr)


def _build_paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [Output("--out", args.out, kind="dir", replaced=True, overwrite=args.overwrite)],
        {
            "--images": args.images,
            "--fitted": args.fitted,
            "--whiten-images": args.whiten_images,
            "--local": local_input(args.local),
            "--global-head": args.global_head,
            "--backbone": weights_path(args.backbone),
        },
    )


def cmd_build(args: argparse.Namespace) -> int:
    if args.fitted is not None or args.shard is not None:
        return cmd_build_part(args)
    meta = provenance.start()
    settings = index_settings(args)
    if settings.whiten == "none" and args.whiten_images is not None:
        raise InputError("--whiten-images needs --whiten auto or --whiten pca")
    info: dict = {}
    with warnings.catch_warnings(record=True) as caught, fields_as_flags(STRICT):
        warnings.simplefilter("always", UserWarning)
        idx = build_index(
            args.images,
            settings,
            whiten_images=args.whiten_images,
            progress=not args.quiet,
            strict=args.strict,
            info=info,
        )
    warn_skipped(args, info["skipped"])
    _notes(caught)
    idx = _with_provenance(idx, meta)
    save_index(idx, args.out, overwrite=args.overwrite)
    print(f"whitening: {idx.whitening_info['reason']}")
    skipped = f" ({len(info['skipped'])} skipped)" if info["skipped"] else ""
    print(f"indexed {plural(idx.ntotal, 'image')} of {args.images}{skipped}: {index_label(idx)}")
    print(f"wrote {args.out}")
    return 0


def _with_provenance(idx, meta: dict):
    """The index with the command's provenance in its last history entry."""
    last = dict(idx.history[-1], provenance=provenance.finish(meta))
    return dataclasses.replace(idx, history=(*idx.history[:-1], last))


def _add_paths(args: argparse.Namespace) -> Paths:
    # --index is read and grown in place (new files beside the old ones): an output folder.
    return Paths([Output("--index", args.index, kind="dir")], {"--images": args.images})


def cmd_add(args: argparse.Namespace) -> int:
    meta = provenance.start()
    idx = load_index(args.index)
    before = idx.ntotal
    info: dict = {}
    with warnings.catch_warnings(record=True) as caught, fields_as_flags(STRICT):
        warnings.simplefilter("always", UserWarning)
        grown = add_to_index(idx, args.images, progress=not args.quiet, strict=args.strict,
                             info=info)  # fmt: skip
    warn_skipped(args, info["skipped"])
    _notes(caught)
    counts = [f"{info['already_indexed']} already indexed"]
    if info["skipped"]:
        counts.append(f"{len(info['skipped'])} skipped")
    if grown is idx:
        print(f"nothing to add from {args.images} ({', '.join(counts)}): {args.index} unchanged, "
              f"{plural(before, 'image')}")  # fmt: skip
        return 0
    grown = _with_provenance(grown, meta)
    save_index(grown, args.index)
    print(
        f"added {plural(grown.ntotal - before, 'image')} of {args.images} ({', '.join(counts)}): "
        f"{grown.ntotal} in the index ({index_label(grown)}); whitening kept: "
        f"{grown.whitening_info['reason']}"
    )
    print(f"wrote {args.index}")
    return 0


def _query_paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [Output("--png", args.png, suffix=".png"), Output("--json", args.json, suffix=".json")],
        {
            "--index": args.index,
            **{f"--image {q}": q for q in args.image or ()},
            "--images": args.images,
        },
    )


def _queries(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The query images (--image, in order, then every image under --images) and the lines of
    the --images ones skipped as bad (one policy: :func:`retrieval.image.usable_images`)."""
    if not args.image and args.images is None:
        raise InputError("give --image FILE (one or more times) or --images FOLDER")
    queries = []
    for q in args.image or ():
        if Path(q).is_dir():
            raise InputError(f"--image {q} is a folder: give an image file, or --images {q}")
        if not Path(q).is_file():
            raise InputError(f"--image {q}: image not found")
        queries.append(str(q))
    skipped: list[str] = []
    if args.images is not None:
        files = [str(f) for f in list_images(args.images)]
        with fields_as_flags(STRICT):
            keep, skipped = usable_images(files, strict=args.strict)
        queries += [files[i] for i in keep]
    return queries, skipped


def cmd_query(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise InputError(f"--top must be >= 1, got {args.top}")
    queries, skipped = _queries(args)
    if args.png is not None and len(queries) != 1:
        raise InputError(f"--png draws one query; there are {len(queries)}: use --json")
    meta = provenance.start()
    idx = load_index(args.index)  # a merged index: its lists and vectors memory-mapped
    if args.nprobe is not None:
        with fields_as_flags(args.field_flags):
            idx = idx.with_nprobe(args.nprobe)
    mismatch = settings_mismatch(idx, **{k: getattr(args, k) for k in CLAIMS})
    if mismatch is not None:  # named by the flags that claim them
        raise InputError(mismatch_text(mismatch, args.field_flags))
    for q in queries:  # an unreadable query fails before any work
        read_image_any(q)
    warn_skipped(args, skipped)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        results = query_images(idx, queries, k=args.top)  # described together: one pass
    seconds = time.perf_counter() - t0
    _notes(caught)
    if args.top > idx.ntotal:
        print(f"note: the index holds {plural(idx.ntotal, 'image')} (--top {args.top})",
              file=sys.stderr)  # fmt: skip
    for n, (q, res) in enumerate(zip(queries, results)):
        if len(queries) > 1:
            print(("\n" if n else "") + f"query {n + 1} of {len(queries)}: {q}")
        print(f"{'rank':>4}  {'score':>7}  path")
        for r, (s, p) in enumerate(zip(res.scores, res.paths)):
            print(f"{r + 1:>4}  {s:7.4f}  {shown_path(p)}")
    if args.json is not None:
        entries = [
            {
                "image": str(Path(q).resolve()),
                "results": [
                    {"rank": r + 1, "score": float(s), "id": int(i), "path": p}
                    for r, (s, i, p) in enumerate(zip(res.scores, res.ids, res.paths))
                ],
            }
            for q, res in zip(queries, results)
        ]
        doc = {
            "index": str(Path(args.index).resolve()),
            **(entries[0] if len(entries) == 1 else {}),
            "queries": entries,
            "skipped_queries": skipped,
            "seconds_describe_and_search": seconds,
            "index_info": {"count": idx.ntotal, "label": index_label(idx)},
            "metadata": provenance.finish(meta),
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.png is not None:
        res = results[0]
        shown = []
        for path in res.paths:  # absolute
            try:
                shown.append(read_image_any(path))
            except InputError:
                shown.append(None)
        with atomic_path(args.png) as tmp:
            query_figure(
                tmp,
                read_image_any(queries[0]),
                shown,
                [float(s) for s in res.scores],
                [shown_path(p) for p in res.paths],
                title=f"{Path(queries[0]).name}: {index_label(idx)}",
            )
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    idx = load_index(args.index)
    doc = index_info(idx)
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{args.index}: {plural(idx.ntotal, 'image')}, {index_label(idx)}")
    print(f"whitening: {idx.whitening_info['reason']}")
    d = idx.description
    if d["kind"] == "global":
        print(f"backbone weights: {d['weights']} (SHA-256 {d['weights_sha256'][:16]}...)")
    elif d.get("model_sha256"):
        print(f"local model: {d['local']} (SHA-256 {d['model_sha256'][:16]}...)")
    for p in idx.parts:
        print(f"part {p.id}: {plural(len(p.paths), 'image')} of {shown_path(p.root_abs)}")
    for h in idx.history:
        extra = [f"{len(h['skipped'])} skipped"] if h.get("skipped") else []
        if h.get("already_indexed"):
            extra.insert(0, f"{h['already_indexed']} already indexed")
        more = f" ({', '.join(extra)})" if extra else ""
        print(f"{h['utc']}  {h['op']:<5}  {plural(h['count'], 'image')}{more}  {h['images']}")
    return 0


# --------------------------------------------------------------------------- parsers


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="a saved, searchable image index: build, add, query, info; fit, merge (shards)",
        description=(
            "A folder holding the descriptors of a collection of images, their paths, the "
            "fitted whitening / VLAD codebook and the settings: built once, grown with add, "
            "queried with one image."
        ),
        epilog=(
            "examples:\n"
            "  ckn index build --images photos/ --out photos.index --global gem\n"
            "  ckn index add --index photos.index --images more_photos/\n"
            "  ckn index query --index photos.index --image q.jpg --top 10 --png q.png\n"
            "  ckn index info --index photos.index\n"
            "  ckn index fit --images photos/ --sample 50000 --out f.npz --global gem\n"
            "  ckn index build --images photos/ --fitted f.npz --shard 0/8 --out parts/0\n"
            "  ckn index merge parts/* --out photos.index\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    isub = p.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    b = add_command(
        isub,
        "build",
        help="describe a folder of images and write an index",
        description=(
            "Describes every image under --images (recursively), fits the whitening (and for "
            "--local the VLAD codebook) on them or on --whiten-images, and writes the index "
            "folder --out atomically."
        ),
        example="ckn index build --images photos/ --out photos.index --global gem --whiten auto",
    )
    b.add_argument("--images", required=True, help="folder of images (searched recursively)")
    b.add_argument("--out", required=True, help="index folder to write")
    description_flags(b, query=False)
    add_settings(b, IndexSettings, ["whiten", "whiten_dim"])
    b.add_argument(
        "--whiten-images",
        default=None,
        help="fit the whitening (--local: and the codebook) on this folder instead of --images",
    )
    add_settings(b, IndexSettings, ["search", "nprobe"])
    b.add_argument("--overwrite", action="store_true", help="replace an existing index --out")
    sh = b.add_argument_group("in shards (see ckn index fit and merge)")
    sh.add_argument("--fitted", default=None, metavar="FITTED",
                   help="the fitted file of ckn index fit: describe shard --shard with it into a "
                   "part folder --out (settings come from it)")  # fmt: skip
    sh.add_argument("--shard", default=None, metavar="I/N",
                   help="the I-th (0..N-1) of N slices of the sorted image list, e.g. "
                   "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT")  # fmt: skip
    add_strict_flag(b, COUNTED, quiet=True)
    runs(b, cmd_build, _build_paths, options=True)

    register_shards(isub)

    a = add_command(
        isub,
        "add",
        help="add images to an index (same settings, whitening kept)",
        description=(
            "Describes the images under --images with the index's settings and fitted models "
            "(never refitted) and adds them; the index is replaced with one rename, so an "
            "interrupted add leaves the previous one. Images already indexed are left out "
            "(and counted): adding a growing folder again adds its new images."
        ),
        example="ckn index add --index photos.index --images more_photos/",
    )
    index_flag(a)
    a.add_argument("--images", required=True, help="folder of images to add (recursively)")
    add_strict_flag(a, COUNTED, quiet=True)
    runs(a, cmd_add, _add_paths)

    q = add_command(
        isub,
        "query",
        help="the nearest indexed images of one or more images",
        description=(
            "Describes each query (--image, repeatable, and every image under --images) with "
            "the index's settings, all in one pass, and prints rank, score (cosine of the index "
            "vectors) and path of its --top nearest indexed images: one block per query, paths "
            "relative to the working folder or absolute (absolute in --json). Description "
            "flags, when given, must match the index's settings."
        ),
        example="ckn index query --index photos.index --image q.jpg --top 10 --png q.png\n"
        "ckn index query --index photos.index --images queries/ --json results.json",
    )
    index_flag(q)
    q.add_argument(
        "--image", action="append", default=None, help="a query image (give it several times "
        "for several queries)"
    )  # fmt: skip
    q.add_argument("--images", default=None, help="a folder of query images (searched recursively)")
    q.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    add_settings(q, IndexSettings, ["nprobe"], help={"nprobe": "IVF-PQ cells visited per query "
                 "(default: the index's, set at build or fit)"}, show_default=False)  # fmt: skip
    q.add_argument("--png", default=None, help="also draw the query and its results (a .png; "
                   "one query)")  # fmt: skip
    q.add_argument("--json", default=None, help="also write the results (a .json)")
    q.add_argument(
        "--strict",
        action="store_true",
        help="fail on a bad image under --images (default: skip it with a warning)",
    )
    description_flags(q, query=True)
    runs(q, cmd_query, _query_paths, options=True)

    i = add_command(
        isub,
        "info",
        help="what an index holds",
        description="Prints the size, settings, whitening, search method and history of an index.",
        example="ckn index info --index photos.index",
    )
    index_flag(i)
    i.add_argument("--json", action="store_true", help="print index.json's summary as JSON")
    runs(i, cmd_info, lambda args: Paths([], {"--index": args.index}))
