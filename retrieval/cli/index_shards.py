"""``ckn index fit``, ``ckn index build --fitted --shard`` and ``ckn index merge``: an index
of a collection too large for one process, in shards that any scheduler runs.

    ckn index fit --images DIR --sample K --out FITTED.npz (description flags as build)
    ckn index build --images DIR --fitted FITTED.npz --shard I/N --out PART   (I = 0..N-1)
    ckn index merge PART... --out INDEX

``fit`` fits, once, on a seeded sample of K images, what every shard shares (whitening / VLAD
codebook, the IVF-PQ quantizer for the whole collection); ``build --fitted --shard I/N``
describes the I-th of N slices of the sorted image list with it into a part folder;
``merge`` checks the parts (same fitted file, settings and versions; slices complete and
disjoint; none interrupted or altered) and writes one index whose IVF-PQ lists and vectors
stay on disk and are memory-mapped by ``query``. ``fit`` and ``build --shard`` skip bad
images by the one policy (one warning line each, named in the fitted file or the part and
in the merged index's history; ``--strict`` fails instead), as ``build`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from ckn import InputError
from retrieval.cli import provenance
from retrieval.cli.fields import add_settings
from retrieval.cli.flags import (
    STRICT,
    add_command,
    add_strict_flag,
    fields_as_flags,
    plural,
    warn_skipped,
)
from retrieval.cli.index_common import (
    description_flags,
    index_label,
    index_settings,
    local_input,
    runs,
)
from retrieval.cli.outputs import Output, Paths, weights_path
from retrieval.index import (
    CLAIMS,
    FIT_SAMPLE,
    IndexSettings,
    build_part,
    fit_images,
    load_fitted,
    load_index,
    merge_parts,
    mismatch_text,
    parse_shard,
    save_fitted,
    save_part,
    settings_mismatch,
)

# Settings the fitted file fixes: refused beside --fitted (the description flags are checked).
FIXED_BY_FIT = ("whiten", "whiten_dim", "whiten_images", "search", "nprobe")


def cmd_build_part(args: argparse.Namespace) -> int:
    """``build --fitted FITTED --shard I/N``: shard I of N described into a part folder."""
    if args.fitted is None or args.shard is None:
        raise InputError(
            "--shard I/N and --fitted FITTED go together (fit once with ckn index fit)"
        )
    shard = parse_shard(args.shard)  # out of range: refused before any work
    for field in FIXED_BY_FIT:
        if getattr(args, field, None) is not None:
            raise InputError(f"{args.field_flags[field]} is fixed by --fitted (ckn index fit)")
    meta = provenance.start()
    fitted = load_fitted(args.fitted)
    mismatch = settings_mismatch(fitted, **{k: getattr(args, k) for k in CLAIMS})
    if mismatch is not None:
        raise InputError(mismatch_text(mismatch, args.field_flags))
    with fields_as_flags(STRICT):
        part = build_part(args.images, fitted, shard, progress=not args.quiet, strict=args.strict,
                          record={"provenance": provenance.finish(meta)})  # fmt: skip
    warn_skipped(args, part.record["skipped"])
    save_part(part, args.out, overwrite=args.overwrite)
    i, n = shard
    skipped = f", {len(part.left_out)} skipped" if part.left_out else ""
    print(
        f"part {i}/{n}: {plural(len(part.paths), 'image')} of {args.images} "
        f"({fitted.method} search, {fitted.dim}-D{skipped})"
    )
    print(f"wrote {args.out}")
    return 0


def _fit_paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [Output("--out", args.out, suffix=".npz")],
        {
            "--images": args.images,
            "--local": local_input(args.local),
            "--global-head": args.global_head,
            "--backbone": weights_path(args.backbone),
        },
    )


def cmd_fit(args: argparse.Namespace) -> int:
    meta = provenance.start()
    settings = index_settings(args)
    fitted = fit_images(args.images, settings, sample=args.sample, seed=args.sample_seed,
                        progress=not args.quiet, strict=args.strict)  # fmt: skip
    warn_skipped(args, fitted.info["skipped"])
    fitted = save_fitted(
        dataclasses.replace(fitted, info=dict(fitted.info, provenance=provenance.finish(meta))),
        args.out,
    )
    print(f"whitening: {fitted.whitening_info['reason']}")
    search = fitted.search_info
    how = (
        f"IVF-PQ trained for {search['count']:,} images (nlist {search['ivfpq']['nlist']}, "
        f"nprobe {search['ivfpq']['nprobe']})"
        if fitted.method == "ivfpq"
        else f"exact search ({search['count']:,} images)"
    )
    skipped = f" ({len(fitted.info['skipped'])} skipped)" if fitted.info["skipped"] else ""
    print(f"fitted on {plural(fitted.info['sample'], 'sampled image')}{skipped}: "
          f"{fitted.dim}-D, {how}")  # fmt: skip
    print(f"wrote {args.out} (SHA-256 {fitted.sha256[:16]}...)")
    return 0


def _merge_paths(args: argparse.Namespace) -> Paths:
    return Paths(
        [Output("--out", args.out, kind="dir", replaced=True, overwrite=args.overwrite)],
        {f"part {i + 1}": p for i, p in enumerate(args.parts)},
    )


def cmd_merge(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = merge_parts(args.parts, args.out, overwrite=args.overwrite)
    idx = load_index(out)
    print(
        f"merged {plural(len(args.parts), 'part')}: {plural(idx.ntotal, 'image')} "
        f"({index_label(idx)}) in {time.perf_counter() - t0:.1f} s"
    )
    print(f"wrote {args.out}")
    return 0


def register_shards(isub: argparse._SubParsersAction) -> None:
    """Adds ``fit`` and ``merge`` to the sub-commands of ``ckn index``."""
    f = add_command(
        isub,
        "fit",
        help="fit once what every shard shares (whitening / codebook, IVF-PQ quantizer)",
        description=(
            "Describes a seeded sample of --sample images of --images and fits on it what "
            "every shard of the collection must share: the whitening (--local: the VLAD "
            "codebook and PCAs) and, when the whole collection is searched with IVF-PQ, its "
            "quantizer, sized for the whole collection. Writes one .npz file, named by its "
            "SHA-256 in every part (ckn index build --fitted)."
        ),
        example="ckn index fit --images photos/ --sample 50000 --out photos.fitted.npz "
        "--global gem",
    )
    f.add_argument("--images", required=True, help="folder of images (searched recursively)")
    f.add_argument("--out", required=True, help="fitted file to write (.npz)")
    f.add_argument(
        "--sample",
        type=int,
        default=FIT_SAMPLE,
        help=f"images sampled to fit on (default {FIT_SAMPLE:,}; all if fewer)",
    )
    f.add_argument("--sample-seed", type=int, default=0, help="seed of the sample (default 0)")
    description_flags(f, query=False)
    add_settings(f, IndexSettings, ["whiten", "whiten_dim", "search", "nprobe"])
    add_strict_flag(f, " line, named in the fitted file", quiet=True)
    runs(f, cmd_fit, _fit_paths, options=True)

    m = add_command(
        isub,
        "merge",
        help="merge the parts of ckn index build --shard into one index",
        description=(
            "Checks that the parts share one fitted file, settings and versions, that their "
            "slices are complete and disjoint and that none was interrupted or altered, then "
            "writes one index --out atomically: exact search, or IVF-PQ whose inverted lists "
            "and full vectors stay on disk (memory-mapped by ckn index query)."
        ),
        example="ckn index merge parts/part-* --out photos.index",
    )
    m.add_argument("parts", nargs="+", metavar="PART", help="part folders, in any order")
    m.add_argument("--out", required=True, help="index folder to write")
    m.add_argument("--overwrite", action="store_true", help="replace an existing index --out")
    runs(m, cmd_merge, _merge_paths)
