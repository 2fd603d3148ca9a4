"""The standard patch benchmarks in the ``ckn`` commands: HPatches and Brown / PhotoTour.

The branches that ``describe``, ``patches`` and ``eval-patches`` take for them:

* ``ckn describe --hpatches DIR --out-dir DESCR/NAME --model M [--split S]``: descriptors in
  the official CSV layout (``<sequence>/<type>.csv``, the folder written atomically), of the
  split's train and test sequences (default ``all``: every sequence);
* ``ckn patches --sequences DIR --hpatches-style OUT_DIR``: HPatches-style data;
  ``ckn patches --hpatches DIR`` / ``--phototour DIR`` with ``--out FILE.npz``: a patch file;
* ``ckn eval-patches --hpatches DIR --split S --model M`` (or ``--descriptors DESCR/NAME``):
  verification, matching, retrieval; ``ckn eval-patches --phototour DIR``: FPR95.

Patch sides (``retrieval.patches.patch_describer``): SIFT, RootSIFT and pixels describe the
native patch (HPatches 65 x 65, PhotoTour 64 x 64), as the literature evaluates SIFT on
HPatches; a CKN describes the patch resized to its training side (51 for the project's models)
with ``cv2.INTER_AREA``. The JSON and the first printed line record which.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import ckn
from ckn import InputError
from ckn.files import progress_bar, write_json
from retrieval.cli import provenance
from retrieval.cli.fields import add_settings
from retrieval.cli.flags import config_from_flags, given_flags
from retrieval.cli.outputs import Output, Paths
from retrieval.patches import (
    BASELINES,
    HPATCHES_PUBLISHED,
    HPATCHES_SIZE,
    HPATCHES_SPLITS,
    PHOTOTOUR_SIZE,
    HPatchesConfig,
    HPatchesStyleConfig,
    PatchSet,
    build_hpatches_style,
    evaluate_hpatches,
    evaluate_phototour,
    format_hpatches,
    hpatches_to_patchset,
    iter_hpatches_descriptors,
    load_hpatches,
    patch_describer,
    phototour_patchset,
    read_hpatches_descriptors,
    write_hpatches_descriptors,
)

#: HPatchesConfig fields with an ``eval-patches`` flag (its seed is ``--seed``).
HPATCHES_FIELDS = ("tasks", "n_pairs", "n_queries", "n_distractors", "min_patch_std", "list_sizes")
#: HPatchesStyleConfig fields with a ``patches`` flag (its seed is ``--seed``).
STYLE_FIELDS = ("max_patches", "magnification", "max_overlap", "illumination")


def _refuse(args: argparse.Namespace, names: tuple[str, ...], where: str) -> None:
    given = given_flags(args, names)
    if given:
        raise InputError(f"{given[0]} does not apply to {where}")


def _check_split(split: str, flag: str = "--split") -> str:
    if split not in HPATCHES_SPLITS:
        raise InputError(
            f"{flag} {split!r} is not an HPatches split; choose one of {', '.join(HPATCHES_SPLITS)}"
        )
    return split


def _describer(args: argparse.Namespace, native: int, precision: str | None = None):
    """The ``patch_describer`` of ``--model`` (a model folder loaded at ``precision``)."""
    model = args.model
    if precision is not None and model not in BASELINES:
        if not Path(model).is_dir():
            raise InputError(
                f"model not found: {model} is neither a model directory nor a baseline "
                f"({', '.join(BASELINES)})"
            )
        model = ckn.load(model, precision=precision)
    return patch_describer(model, native, batch_size=args.batch_size)


def _sides(info: dict) -> str:
    s, n = info["described_size"], info["native_size"]
    return f"{s}x{s}" + (f" resized from {n}x{n}, {info['interpolation']}" if s != n else "")


# --- ckn describe --hpatches ---------------------------------------------------------------------


def describe_paths(args: argparse.Namespace) -> Paths:
    """What ``ckn describe --hpatches`` writes and reads (checked by ``ckn``'s main first)."""
    return Paths(
        [Output("--out-dir", args.out_dir, kind="dir", replaced=True)],
        {"--hpatches": args.hpatches, "--model": None if args.model in BASELINES else args.model},
    )


def describe(args: argparse.Namespace) -> int:
    """``ckn describe --hpatches DIR --out-dir DESCR/NAME --model M [--split S]``."""
    if args.out_dir is None or args.out is not None:
        raise InputError("--hpatches writes CSV files to --out-dir DESCR/NAME (not --out)")
    if args.any_size:
        raise InputError("--any-size does not apply to --hpatches (a CKN sees its training side)")
    split = _check_split(args.split or "all")
    data = load_hpatches(args.hpatches, split)
    describer = _describer(args, HPATCHES_SIZE, precision=args.precision)
    info = describer.info()
    names = tuple(sorted(data.split.train + data.split.test))
    t0 = time.perf_counter()
    bar = progress_bar(names, desc="sequences", unit="seq", disable=args.quiet)
    write_hpatches_descriptors(args.out_dir, iter_hpatches_descriptors(data, describer, bar))
    seconds = time.perf_counter() - t0
    patches = 16 * sum(data.counts[n] for n in names)
    print(
        f"wrote {args.out_dir}: {len(names)} sequences, {patches} patches, {info['dim']}-D "
        f"{info['name']} descriptors (patches {_sides(info)}) in {seconds:.1f} s"
    )
    return 0


# --- ckn patches --hpatches-style, --hpatches, --phototour ---------------------------------------


def add_style_flags(p: argparse.ArgumentParser) -> None:
    """The HPatches-style settings of ``ckn patches`` (with ``--sequences --hpatches-style``)."""
    g = p.add_argument_group("HPatches-style data (with --sequences and --hpatches-style)")
    add_settings(g, HPatchesStyleConfig, STYLE_FIELDS)


def hpatches_style(args: argparse.Namespace) -> int:
    """``ckn patches --sequences DIR --hpatches-style OUT_DIR [--max-patches N] [--seed S]``."""
    if args.sequences is None:
        raise InputError("--hpatches-style is built from --sequences DIR")
    other = ("out", "contact_sheet", "tfds", "stats_json", "size", "views", "split")
    _refuse(args, other + ("test_scenes", "no_cache", "quick"), "--hpatches-style")
    config = config_from_flags(args, HPatchesStyleConfig, STYLE_FIELDS, seed=args.seed)
    report = build_hpatches_style(
        args.sequences, args.hpatches_style, config=config, progress=not args.quiet
    )
    total = sum(report.sequences.values())
    med = report.overlap_median
    print(
        f"hpatches-style: {len(report.sequences)} sequences, {total} reference patches x 16 "
        f"(65x65) in {report.seconds:.1f} s; median overlap easy {med['easy']:.3f}, hard "
        f"{med['hard']:.3f}, tough {med['tough']:.3f}; wrote {args.hpatches_style}"
    )
    for name, n in report.sequences.items():
        print(f"  {name}: {n}")
    return 0


def standard_patchset(args: argparse.Namespace, source: str, size: int) -> PatchSet:
    """The patch set of ``ckn patches --hpatches DIR`` or ``--phototour DIR`` (``--out``)."""
    if source == "hpatches":
        if args.split is not None and args.test_scenes is not None:
            raise InputError("give --split or --test-scenes, not both")
        if args.test_scenes is not None:
            split = [s for s in args.test_scenes.split(",") if s]
        else:
            split = _check_split(args.split or "all")
        return hpatches_to_patchset(args.hpatches, split=split, size=size)
    if args.test_scenes is not None:
        raise InputError("--test-scenes does not apply to --phototour (one scene; use --split)")
    return phototour_patchset(args.phototour, size=size, split=args.split or "train")


# --- ckn eval-patches --hpatches, --phototour ----------------------------------------------------


def add_eval_flags(p: argparse.ArgumentParser) -> None:
    """The HPatches and PhotoTour flags of ``ckn eval-patches``."""
    g = p.add_argument_group("HPatches (with --hpatches)")
    g.add_argument(
        "--tasks-dir",
        metavar="DIR",
        help="task files of the split in the official layout (the benchmark's tasks/ folder); "
        "default: generated, seeded by --seed (default 42), as the official generator samples",
    )
    add_settings(g, HPatchesConfig, HPATCHES_FIELDS)
    t = p.add_argument_group("PhotoTour (with --phototour)")
    t.add_argument(
        "--pairs",
        metavar="FILE",
        help="pair file, a path or a name in the folder (default m50_100000_100000_0.txt, "
        "else the folder's only m50_*.txt)",
    )


_PATCH_ONLY = ("any_size", "max_pairs")


def eval_hpatches(args: argparse.Namespace) -> int:
    """``ckn eval-patches --hpatches DIR --split S (--model M | --descriptors DESCR/NAME)``."""
    meta = provenance.start()
    _refuse(args, _PATCH_ONLY + ("pairs",), "--hpatches")
    if args.split is None:
        raise InputError(f"--hpatches needs --split ({', '.join(HPATCHES_SPLITS)})")
    split = _check_split(args.split)
    seed = {} if args.seed is None else {"seed": args.seed}
    config = config_from_flags(args, HPatchesConfig, HPATCHES_FIELDS, **seed)
    data = load_hpatches(args.hpatches, split)
    if args.descriptors is not None:
        descriptors = read_hpatches_descriptors(args.descriptors, data.sequences)
        dim = next(iter(descriptors.values())).shape[2]
        info = {"name": Path(args.descriptors).name, "kind": "precomputed", "dim": int(dim)}
        sides = "CSV files"
    else:
        descriptors = _describer(args, HPATCHES_SIZE)
        info = descriptors.info()
        sides = f"patches {_sides(info)}"
    print(f"{args.hpatches}: {info['name']} ({info['kind']}, {info['dim']}-D, {sides})")
    if args.tasks_dir is None and split != "all":
        print(
            f"note: task files generated (seed {config.seed}); the published figures use the "
            "official ones (--tasks-dir hpatches-benchmark/tasks)"
        )
    result = evaluate_hpatches(descriptors, data, args.tasks_dir, config)
    summary = result.as_dict()
    print(format_hpatches(summary, name=info["name"]))
    if args.json is not None:
        published = HPATCHES_PUBLISHED if split == HPATCHES_PUBLISHED["split"] else None
        doc = {
            "benchmark": "hpatches",
            "hpatches": str(args.hpatches),
            "model": args.model,
            "descriptors": args.descriptors,
            "descriptor": info,
            **summary,
            "config": dataclasses.asdict(config),
            "published": published,
            "metadata": provenance.finish(meta),
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def eval_phototour(args: argparse.Namespace) -> int:
    """``ckn eval-patches --phototour DIR --model M [--pairs FILE]``: FPR95 in percent."""
    meta = provenance.start()
    _refuse(args, _PATCH_ONLY + ("split", "tasks_dir", "seed", *HPATCHES_FIELDS), "--phototour")
    if args.descriptors is not None:
        raise InputError("--phototour describes the patches: give --model, not --descriptors")
    describer = _describer(args, PHOTOTOUR_SIZE)
    info = describer.info()
    r = evaluate_phototour(args.phototour, describer, pairs=args.pairs)
    print(
        f"{args.phototour}: {info['name']} ({info['kind']}, {info['dim']}-D, patches "
        f"{_sides(info)}); {r['pairs']}: {r['num_pairs']} pairs, {r['num_matching']} matching"
    )
    print(f"FPR95 {r['fpr95']:.2f}%")
    if args.json is not None:
        doc = {
            "benchmark": "phototour",
            "phototour": str(args.phototour),
            "model": args.model,
            "descriptor": info,
            **r,
            "fpr95": r["fpr95"] / 100.0,  # a fraction, as every figure of eval-patches JSON
            "metadata": provenance.finish(meta),
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0
