"""``ckn patches``: build a RomePatches-style patch set and print its group statistics.

Examples::

    ckn patches --default --out default.npz --contact-sheet default.png
    ckn patches --sequences ../shared/data/oxford_affine --out oxford.npz
    ckn patches --photos my_photos/ --views 10 --seed 1 --out photos.npz --tfds ~/tfds
    ckn patches --stereo --out motorcycle.npz      # scikit-image's Middlebury pair
    ckn patches --sequences ../shared/data/oxford_affine --hpatches-style oxford-hp
    ckn patches --hpatches oxford-hp --out oxford-hp.npz --test-scenes v_bark,v_boat
    ckn patches --phototour liberty --out liberty.npz

The HPatches and PhotoTour branches are in ``patch_benchmarks``.

Every output (``.npz``, contact sheet, stats JSON, TFDS folder) is written to a
temporary sibling and renamed, so a failure leaves none of them half-written;
every destination is checked before the (long) build starts
(``outputs.check_outputs``: not a folder where a file goes, not an input,
writable; missing parent folders are created).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

from ckn import InputError
from ckn.files import atomic_path
from retrieval import patches as P
from retrieval.cli import patch_benchmarks, provenance
from retrieval.cli.flags import add_command, given_flags
from retrieval.cli.outputs import Output, Paths, declare_paths
from retrieval.patches import PATCH_SIZE

_EXAMPLE = """\
ckn patches --default --out default.npz --contact-sheet default.png
ckn patches --photos my_photos/ --views 10 --out photos.npz --tfds ~/tensorflow_datasets
ckn patches --sequences oxford_affine --hpatches-style oxford-hp --max-patches 500
ckn patches --hpatches hpatches-release --split a --out hpatches-a.npz
ckn patches --phototour liberty --out liberty.npz"""

#: Sources cut by the standard benchmarks (patch_benchmarks), not by this module's builders.
_STANDARD = ("hpatches", "phototour")


def _source(args: argparse.Namespace) -> str:
    if args.default:
        return "default"
    if args.sequences is not None:
        return "sequences"
    if args.photos is not None:
        return "photos"
    for source in _STANDARD:
        if getattr(args, source) is not None:
            return source
    return "stereo"


def _source_path(args: argparse.Namespace, source: str) -> str | None:
    return {
        "sequences": args.sequences,
        "photos": args.photos,
        "stereo": args.stereo,
        "hpatches": args.hpatches,
        "phototour": args.phototour,
    }.get(source)


def _check_args(args: argparse.Namespace, source: str) -> None:
    if args.out is None:
        raise InputError("--out FILE.npz is needed (or --hpatches-style OUT_DIR with --sequences)")
    given = given_flags(args, patch_benchmarks.STYLE_FIELDS)
    if given:
        raise InputError(f"{given[0]} applies to --hpatches-style only")
    if args.split is not None and source not in _STANDARD:
        raise InputError("--split applies to --hpatches and --phototour only")
    if args.tfds is not None and source in _STANDARD:
        raise InputError(f"--tfds does not apply to --{source} (no TFDS config for it)")
    args.size = PATCH_SIZE if args.size is None else args.size
    if args.size < 8:
        raise InputError(f"--size must be >= 8, got {args.size}")
    if args.quick and source != "default":
        raise InputError("--quick applies to --default only")
    if args.views is not None:
        if source not in ("default", "photos"):
            raise InputError("--views applies to --default and --photos only")
        if args.views < 2:
            raise InputError(f"--views must be >= 2, got {args.views}")
    if args.test_scenes is not None and source == "default":
        raise InputError("--test-scenes does not apply to --default (its split by photo is fixed)")


def _paths(args: argparse.Namespace) -> Paths:
    if args.tfds is not None and Path(args.tfds).exists() and not Path(args.tfds).is_dir():
        raise InputError(f"--tfds must be a folder, got the file {args.tfds}")
    source = _source(args)
    return Paths(
        [
            Output("--out", args.out, suffix=".npz"),
            Output("--contact-sheet", args.contact_sheet, suffix=".png"),
            Output("--stats-json", args.stats_json, suffix=".json"),
            Output("--tfds", args.tfds, kind="dir"),
            Output("--hpatches-style", args.hpatches_style, kind="dir", replaced=True),
        ],
        {f"--{source}": _source_path(args, source) or None},
    )


def build(args: argparse.Namespace, source: str) -> P.PatchSet:
    """The patch set that the command line asks for."""
    progress = not args.quiet
    test = None if args.test_scenes is None else [s for s in args.test_scenes.split(",") if s]
    views = 10 if args.views is None else args.views
    if source == "default":
        return P.build_default(
            quick=args.quick,
            views=views,
            seed=args.seed,
            config=P.default_config(args.quick, size=args.size),
            cache=not args.no_cache,
            progress=progress,
        )
    if source in _STANDARD:
        return patch_benchmarks.standard_patchset(args, source, args.size)
    cfg = P.PatchSetConfig(size=args.size)
    if source == "sequences":
        return P.build_sequences(args.sequences, config=cfg, test_scenes=test, progress=progress)
    if source == "photos":
        return P.build_photos(
            args.photos,
            views=views,
            seed=args.seed,
            config=cfg,
            test_scenes=test,
            progress=progress,
        )
    return P.build_stereo(args.stereo or None, config=cfg, test_scenes=test, progress=progress)


def _command(args: argparse.Namespace, source: str) -> str:
    """The command line, canonical (every option that was given or matters)."""
    parts = ["ckn", "patches"]
    value = _source_path(args, source)
    parts += [f"--{source}"] + ([value] if value else [])
    if args.quick:
        parts.append("--quick")
    parts += ["--out", args.out, "--size", str(args.size), "--seed", str(args.seed)]
    for flag, v in (
        ("--views", args.views),
        ("--test-scenes", args.test_scenes),
        ("--split", args.split),
        ("--contact-sheet", args.contact_sheet),
        ("--tfds", args.tfds),
        ("--stats-json", args.stats_json),
    ):
        if v is not None:
            parts += [flag, str(v)]
    parts += [f for f, on in (("--no-cache", args.no_cache), ("--quiet", args.quiet)) if on]
    return " ".join(shlex.quote(p) for p in parts)


@contextlib.contextmanager
def _one_line_warnings(prog: str):
    """Shows each warning as one ``<prog>: warning: ... (Category)`` line on stderr."""

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).splitlines()[0] if str(message) else category.__name__
        print(f"{prog}: warning: {text} ({category.__name__})", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", P.SkippedItemWarning)
        warnings.simplefilter("always", P.EmptySplitWarning)
        warnings.showwarning = show
        yield


def cmd_patches(args: argparse.Namespace) -> int:
    if args.hpatches_style is not None:
        return patch_benchmarks.hpatches_style(args)
    meta = provenance.start()
    source = _source(args)
    _check_args(args, source)
    with _one_line_warnings("ckn patches"):
        cached = (
            source == "default"
            and not args.no_cache
            and P.default_cache_path(
                quick=args.quick,
                views=10 if args.views is None else args.views,
                seed=args.seed,
                config=P.default_config(args.quick, size=args.size),
            ).is_file()
        )
        t0 = time.perf_counter()
        ps = build(args, source)
        seconds = time.perf_counter() - t0
        stats = P.patchset_stats(ps, seed=args.seed)
        if args.contact_sheet:
            from retrieval.patches import contact_sheet

            contact_sheet(ps, args.contact_sheet, seed=args.seed)
        if args.tfds:
            from retrieval.patches import write_tfds

            params = {"size": args.size}
            if source in ("default", "photos"):
                params.update(views=10 if args.views is None else args.views, seed=args.seed)
            if source == "default":
                params["quick"] = args.quick
            path = _source_path(args, source)
            if path:
                params["path"] = str(Path(path).resolve())
            made = [d for d in (Path(args.tfds), *Path(args.tfds).parents) if not d.exists()]
            Path(args.tfds).mkdir(parents=True, exist_ok=True)
            try:
                tfds_dir = write_tfds(
                    ps,
                    args.tfds,
                    config=source,
                    params=params,
                    overwrite=True,
                    progress=not args.quiet,
                )
            except BaseException:
                # TFDS leaves no partial data set; do not leave the folders made here either.
                if made:
                    shutil.rmtree(made[-1], ignore_errors=True)
                raise
        P.save_patchset(ps, args.out)  # last: the main output appears only when all else worked
    print(
        f"{source}: {len(ps)} patches in {stats['groups']} groups, built in {seconds:.1f} s"
        f"{' (from the cache)' if cached else ''}; wrote {args.out}"
    )
    print(P.format_stats(stats))
    if args.contact_sheet:
        print(f"contact sheet: {args.contact_sheet}")
    if args.tfds:
        print(
            f"TFDS data set: {tfds_dir} "
            f"(tfds.data_source('ckn_patches/{source}', data_dir={str(args.tfds)!r}))"
        )
    if args.stats_json:
        record = {
            "metadata": {
                "command": _command(args, source),
                "source": source,
                "build_seconds": round(seconds, 2),
                "from_cache": bool(cached),
                **({"first_build_seconds": ps.info.get("build_seconds")} if cached else {}),
                "patchset_version": P.VERSION,
                **{k: v for k, v in provenance.finish(meta).items() if k != "command"},
            },
            "results": stats,
        }
        with atomic_path(args.stats_json) as tmp:
            Path(tmp).write_text(json.dumps(record, indent=2) + "\n")
        print(f"statistics: {args.stats_json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "patches",
        help="build RomePatches-style patch groups (.npz, optional TFDS)",
        description=(
            "Detects SIFT regions independently in every image of a scene, groups those that the "
            "known geometry maps onto each other, cuts normalized patches from each region's own "
            "detection, splits train/test by scene, writes one .npz and prints the group "
            "statistics. With --hpatches-style: HPatches-style data from homography sequences "
            "(regions of the reference image projected into the targets with the e/h/t jitter "
            "of HPatches), in the hpatches-release layout. --hpatches, --phototour: the "
            "patches of a standard benchmark as a patch file (a group = one HPatches reference "
            "patch across its 16 images, or one PhotoTour 3D point)."
        ),
        example=_EXAMPLE,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--default",
        action="store_true",
        help="the embedded default: synthetic views of 15 scikit-image photos "
        "(~20,000 patches, cached)",
    )
    src.add_argument(
        "--sequences",
        metavar="DIR",
        help="homography sequences: <seq>/img1..N + H1toNp (Oxford) or <seq>/1..6.ppm + H_1_N "
        "(HPatches)",
    )
    src.add_argument("--photos", metavar="DIR", help="a folder of photos: synthetic views of each")
    src.add_argument(
        "--stereo",
        metavar="DIR",
        nargs="?",
        const="",
        help="stereo pairs <pair>/im0.png, im1.png, disp0.pfm; without DIR: scikit-image's "
        "motorcycle",
    )
    src.add_argument(
        "--hpatches",
        metavar="DIR",
        help="an HPatches folder (<sequence>/ref.png, e1.png ... t5.png): a group per reference "
        "patch, scene and split from its sequence",
    )
    src.add_argument(
        "--phototour",
        metavar="DIR",
        help="a Brown / PhotoTour subset (patchNNNN.bmp, info.txt): a group per 3D point",
    )
    p.add_argument("--out", help="output .npz (patches, labels, split, metadata)")
    p.add_argument(
        "--hpatches-style",
        metavar="OUT_DIR",
        help="with --sequences: write HPatches-style data (hpatches-release layout, 65x65 "
        "patches) to this folder instead of a patch file",
    )
    p.add_argument(
        "--split",
        help="--hpatches: the train / test sequences of an HPatches split: a, b, c, full, illum, "
        "view, or all (default: every sequence as test); --phototour: train (default) or test "
        "for every patch",
    )
    p.add_argument("--quick", action="store_true", help="with --default: 4 photos, ~1,000 patches")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"patch side in pixels (default {PATCH_SIZE}; --hpatches and --phototour patches "
        "are resized with INTER_AREA, their native side keeps them)",
    )
    p.add_argument(
        "--views",
        type=int,
        default=None,
        help="views per photo for --default / --photos (default 10)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--test-scenes",
        metavar="A,B",
        help="scenes for the test split (default: balanced by patches)",
    )
    p.add_argument(
        "--contact-sheet", metavar="PNG", help="also write a PNG of a few groups, one row each"
    )
    p.add_argument(
        "--tfds", metavar="DIR", help="also write the TFDS data set ckn_patches/<source> under DIR"
    )
    p.add_argument(
        "--stats-json", metavar="FILE", help="also write the statistics and build metadata as JSON"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="with --default: rebuild, do not read or write the cache",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    patch_benchmarks.add_style_flags(p)
    p.set_defaults(func=cmd_patches)
    declare_paths(p, _paths)
