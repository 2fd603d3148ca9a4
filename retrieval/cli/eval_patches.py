"""``ckn eval-patches``: patch retrieval mAP of a descriptor on a patch file.

    ckn eval-patches --patches FILE.npz (--model DIR|sift|rootsift|pixels | --descriptors D.npy) \\
        [--split train|test|all] [--json OUT] [--batch-size N] [--any-size]
    ckn eval-patches --hpatches DIR --split a|b|c|full|illum|view|all \\
        (--model DIR|sift|rootsift|pixels | --descriptors DESCR/NAME) [--tasks-dir DIR] [--json OUT]
    ckn eval-patches --phototour DIR --model DIR|sift|rootsift|pixels [--pairs FILE] [--json OUT]

The HPatches and PhotoTour branches are in ``patch_benchmarks``.

Describes the patches of each split with the model (or baseline), or takes
precomputed descriptors (one row per patch of the file, in its row order, as
``ckn describe`` writes them; or one row per patch of the one split asked
for), and prints, per split, mAP (non-interpolated, query excluded, ties
against the relevant items), the trapezoid mAP, nearest-neighbour matching
accuracy, FPR at 95% recall and ROC AUC of sampled pairs. Without
``--split``, a file with a ``split`` array is evaluated on its train and test
splits separately (each split is its own retrieval set, as in RomePatches); a
file without one as a whole (``all``). ``--json`` writes the results
(fractions, not percent) atomically: nothing is left behind on error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import ckn
from ckn import InputError
from ckn.files import SPLITS, load_patch_file, write_json
from ckn.files import load_array as load_npy
from retrieval.cli import patch_benchmarks, provenance
from retrieval.cli.flags import add_command, given_flags
from retrieval.cli.outputs import Output, Paths, declare_paths
from retrieval.patches import (
    AP_DEFINITION,
    BASELINES,
    HPatchesConfig,
    describe_with,
    descriptor_info,
    evaluate_descriptors,
    resolve_model,
)

# mAP, mAP-trap, NN-acc and FPR95 in percent; AUC a fraction; speed in patches per second.
_HEADER = (
    f"{'split':<6} {'patches':>7} {'groups':>6} {'queries':>7} {'skipped':>7} {'mAP%':>6} "
    f"{'mAP-trap%':>9} {'NN-acc%':>7} {'FPR95%':>6} {'AUC':>6} {'patches/s':>9}"
)


def _splits_present(path: Path) -> list[str]:
    """The splits stored in an .npz (["all"] when it has no ``split`` array)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "split" not in z.files:
                return ["all"]
            split = z["split"]
    except ckn.files.CORRUPT_FILE_ERRORS:
        load_patch_file(path)  # raises the loader's message for a bad file
        raise InputError(f"{path}: cannot read the 'split' array") from None
    if split.dtype.kind in "US":
        present = set(np.unique(split).tolist())
    else:
        codes = set(np.unique(split).tolist())
        present = {name for name, code in SPLITS.items() if code in codes}
    return [s for s in SPLITS if s in present] or ["all"]


def _load_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    patches, labels = load_patch_file(path, split=split)
    if labels is None:
        raise InputError(f"{path}: no 'labels' array: patch retrieval needs group labels")
    return patches, labels


def _row(split: str, r: dict, rate: float | None) -> str:
    speed = "-" if rate is None else f"{rate:.0f}"
    return (
        f"{split:<6} {r['num_patches']:>7} {r['num_groups']:>6} {r['num_queries']:>7} "
        f"{r['num_skipped']:>7} {100 * r['map']:>6.2f} {100 * r['map_trapezoid']:>9.2f} "
        f"{100 * r['nn_accuracy']:>7.2f} {100 * r['fpr95']:>6.2f} {r['roc_auc']:>6.4f} "
        f"{speed:>9}"
    )


def _read_split(path: Path) -> tuple[int, np.ndarray | None]:
    """Rows of the patch file and its 'split' array (None without one)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            n = int(z["patches"].shape[0]) if "patches" in z.files else 0
            return n, (z["split"] if "split" in z.files else None)
    except ckn.files.CORRUPT_FILE_ERRORS as e:
        raise InputError(f"{path}: cannot read patch file ({type(e).__name__})") from None


def _rows_by_split(path: Path, splits: list[str]) -> tuple[int, dict]:
    """Rows of the patch file, and each split's rows in it (a slice when it is all of them)."""
    n, split = _read_split(path)
    rows = {}
    for name in splits:
        if name == "all" or split is None:
            rows[name] = slice(None)
        elif split.dtype.kind in "US":
            rows[name] = np.flatnonzero(split == name)
        else:
            rows[name] = np.flatnonzero(split == SPLITS[name])
    return n, rows


def _descriptor_rows(path: Path, desc: np.ndarray, splits: list[str], explicit: bool) -> dict:
    """{split: rows of ``desc`` for it}: all rows of the file, or the one split asked for."""
    n, rows = _rows_by_split(path, splits)
    if desc.shape[0] == n:
        return rows
    sizes = {k: n if isinstance(r, slice) else len(r) for k, r in rows.items()}
    if explicit and len(splits) == 1 and desc.shape[0] == sizes[splits[0]]:
        return {splits[0]: slice(None)}
    per = ", ".join(f"{k} {v}" for k, v in sizes.items() if k != "all")
    raise InputError(
        f"--descriptors has {desc.shape[0]} rows; {path.name} has {n} patches"
        + (f" ({per})" if per else "")
        + ": one row per patch of the file (or of the one --split), in its row order"
    )


def _paths(args: argparse.Namespace) -> Paths:
    model = args.model if args.model not in BASELINES else None
    return Paths(
        [Output("--json", args.json)],
        {
            "--patches": args.patches,
            "--hpatches": args.hpatches,
            "--phototour": args.phototour,
            "--model": model,
            "--descriptors": args.descriptors,
            "--tasks-dir": args.tasks_dir,
        },
    )


def cmd_eval_patches(args: argparse.Namespace) -> int:
    if args.hpatches is not None:
        return patch_benchmarks.eval_hpatches(args)
    if args.phototour is not None:
        return patch_benchmarks.eval_phototour(args)
    meta = provenance.start()
    path = Path(args.patches)
    other = given_flags(args, ("tasks_dir", "pairs", *patch_benchmarks.HPATCHES_FIELDS))
    if other:
        raise InputError(f"{other[0]} does not apply to --patches")
    if args.split is not None and args.split not in ("train", "test", "all"):
        raise InputError(f"--split of --patches is train, test or all, got {args.split!r}")
    args.seed = 0 if args.seed is None else args.seed
    args.max_pairs = 100_000 if args.max_pairs is None else args.max_pairs
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if path.suffix != ".npz" or not path.is_file():
        load_patch_file(path)  # missing file, a directory: the loader's message
        raise InputError(f"{path}: eval-patches needs an .npz with 'patches' and 'labels'")
    if args.descriptors is not None:
        model = None
        given = load_npy(args.descriptors, what="--descriptors")
        if given.ndim != 2 or not np.issubdtype(given.dtype, np.floating):
            raise InputError(
                f"--descriptors must be a float (N, D) array, got {given.dtype} {given.shape}"
            )
    else:
        model = resolve_model(args.model)  # fails before reading the patches
    splits = [args.split] if args.split is not None else _splits_present(path)
    rows = None
    if model is None:
        rows = _descriptor_rows(path, given, splits, explicit=args.split is not None)
    results: dict[str, dict] = {}
    info = None
    quiet = args.quiet
    for split in splits:
        patches, labels = _load_split(path, split)
        if info is None:
            if model is None:
                info = {
                    "name": Path(args.descriptors).name,
                    "kind": "precomputed",
                    "dim": int(given.shape[1]),
                    "coverage": f"{patches.shape[1]}x{patches.shape[2]}",
                }
            else:
                info = descriptor_info(model, patches.shape[1:])
                if not isinstance(model, str):  # a CKN: its training patch size
                    describe_with(model, patches[:0], any_size=args.any_size)
            print(
                f"{path.name}: {info['name']} ({info['kind']}, {info['dim']}-D, patches "
                f"{info['coverage']}); AP {AP_DEFINITION}, query excluded, ties against "
                "relevant; mAP, NN-acc, FPR95 in %"
            )
            print(_HEADER)
        t0 = time.perf_counter()
        if model is None:
            desc = np.asarray(given[rows[split]], np.float32)
            rate = None
        else:
            desc = describe_with(
                model,
                patches,
                batch_size=args.batch_size,
                progress=not quiet,
                any_size=args.any_size,
            )
        seconds = time.perf_counter() - t0
        if model is not None:
            rate = patches.shape[0] / max(seconds, 1e-9)
        if not np.isfinite(desc).all():
            raise InputError(f"{info['name']} has NaN or inf descriptors on the {split} split")
        r = evaluate_descriptors(desc, labels, max_pairs=args.max_pairs, seed=args.seed)
        r["describe_seconds"] = None if model is None else seconds
        results[split] = r
        print(_row(split, r, rate), flush=True)
        if r["num_skipped"]:
            print(
                f"  {split}: {r['num_skipped']} patches have no other patch of their group "
                f"in this split: not used as queries",
                file=sys.stderr,
            )
    if args.json is not None:
        doc = {
            "patches": str(path),
            "model": None if args.model is None else str(args.model),
            "descriptors": None if args.descriptors is None else str(args.descriptors),
            "descriptor": info,
            "protocol": {
                "ap_definition": AP_DEFINITION,
                "query_excluded": True,
                "ties": "against relevant",
                "similarity": "dot product of L2-normalized descriptors",
                "pairs": {"max_matching": args.max_pairs, "seed": args.seed},
            },
            "splits": results,
            "metadata": provenance.finish(meta),
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "eval-patches",
        help="patch retrieval mAP of a model, a baseline or precomputed descriptors",
        description=(
            "Describes the patches of an .npz (with 'labels', optional 'split') and prints "
            "patch retrieval mAP (non-interpolated AP, query excluded, ties against the "
            "relevant items), trapezoid mAP, nearest-neighbour accuracy, FPR at 95% recall "
            "(all in %), ROC AUC and the describe speed (patches per second), per split."
        ),
        example="ckn eval-patches --patches default.npz --model models/grad --json grad.json\n"
        "ckn eval-patches --patches default.npz --descriptors all.npy   # from ckn describe\n"
        "ckn eval-patches --hpatches hpatches-release --split full --model sift "
        "--tasks-dir hpatches-benchmark/tasks\n"
        "ckn eval-patches --phototour notredame --model models/grad   # FPR95 (%)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--patches", help=".npz with 'patches', 'labels' and optional 'split'")
    src.add_argument(
        "--hpatches",
        metavar="DIR",
        help="an HPatches folder: verification, matching and retrieval as the official "
        "Python benchmark computes them (needs --split)",
    )
    src.add_argument(
        "--phototour",
        metavar="DIR",
        help="a Brown / PhotoTour subset (patchNNNN.bmp, info.txt, m50_*.txt): FPR95 (%%)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--model",
        help=f"model directory written by `ckn train`, or a baseline: {', '.join(BASELINES)}",
    )
    what.add_argument(
        "--descriptors",
        metavar="NPY|DIR",
        help="precomputed (N, D) descriptors: one row per patch of --patches in its row order "
        "(all rows, or the rows of the one --split); with --hpatches, a folder of "
        "<sequence>/<type>.csv (ckn describe --hpatches, or any tool writing for the official "
        "benchmark)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="--patches: evaluate one split, train, test or all (default: train and test "
        "separately if the file has a 'split' array, else all); --hpatches: a, b, c, full, "
        "illum, view (the official lists) or all (every sequence of the folder)",
    )
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument(
        "--batch-size", type=int, default=256, help="patches per jitted batch (default 256)"
    )
    p.add_argument(
        "--max-pairs",
        type=int,
        default=None,
        help="--patches: matching pairs for FPR95 / ROC AUC, as many non-matching (default 100000)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="--patches: seed of the pair sampling (default 0); --hpatches: seed of generated "
        f"task files (default {HPatchesConfig.seed})",
    )
    p.add_argument(
        "--any-size",
        action="store_true",
        help="describe patches of another size or channel count than the model's training "
        "patches (refused by default)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    patch_benchmarks.add_eval_flags(p)
    p.set_defaults(func=cmd_eval_patches)
    declare_paths(p, _paths)
