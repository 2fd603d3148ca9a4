"""``ckn eval-patches``: patch retrieval mAP of a descriptor on a patch file.

    ckn eval-patches --patches FILE.npz --model DIR|sift|rootsift|pixels \\
        [--split train|test|all] [--json OUT] [--batch-size N]

Describes the patches of each split with the model (or baseline) and prints,
per split, mAP (non-interpolated, query excluded, ties against the relevant
items), the trapezoid mAP, nearest-neighbour matching accuracy, FPR at 95%
recall and ROC AUC of sampled pairs. Without ``--split``, a file with a
``split`` array is evaluated on its train and test splits separately (each
split is its own retrieval set, as in RomePatches); a file without one as a
whole (``all``). ``--json`` writes the results (fractions, not percent)
atomically: nothing is left behind on error.
"""
from __future__ import annotations

import argparse
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from ckn import SPLITS, InputError, load_patch_file, write_json
from retrieval._src.baselines import BASELINES
from retrieval._src.evaluation import (
    AP_DEFINITION,
    describe_with,
    descriptor_info,
    evaluate_descriptors,
    resolve_model,
)
from retrieval.cli import provenance

_HEADER = (f"{'split':<6} {'patches':>7} {'groups':>6} {'queries':>7} {'skipped':>7} {'mAP':>6} "
           f"{'mAP-trap':>8} {'NN-acc':>6} {'FPR95':>6} {'AUC':>6} {'patch/s':>8}")


def _splits_present(path: Path) -> list[str]:
    """The splits stored in an .npz (["all"] when it has no ``split`` array)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "split" not in z.files:
                return ["all"]
            split = z["split"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError):
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


def _row(split: str, r: dict, rate: float) -> str:
    return (f"{split:<6} {r['num_patches']:>7} {r['num_groups']:>6} {r['num_queries']:>7} "
            f"{r['num_skipped']:>7} {100 * r['map']:>6.2f} {100 * r['map_trapezoid']:>8.2f} "
            f"{100 * r['nn_accuracy']:>6.2f} {100 * r['fpr95']:>6.2f} {r['roc_auc']:>6.4f} {rate:>8.0f}")


def cmd_eval_patches(args: argparse.Namespace) -> int:
    meta = provenance.start()
    path = Path(args.patches)
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise InputError(f"output folder does not exist: {Path(args.json).parent}")
    if path.suffix != ".npz" or not path.is_file():
        load_patch_file(path)  # missing file, a directory: the loader's message
        raise InputError(f"{path}: eval-patches needs an .npz with 'patches' and 'labels'")
    model = resolve_model(args.model)  # fails before reading the patches
    splits = [args.split] if args.split is not None else _splits_present(path)
    results: dict[str, dict] = {}
    info = None
    quiet = args.quiet
    for split in splits:
        patches, labels = _load_split(path, split)
        if info is None:
            info = descriptor_info(model, patches.shape[1:])
            print(f"{path.name}: {info['name']} ({info['kind']}, {info['dim']}-D, patches "
                  f"{info['coverage']}); AP {AP_DEFINITION}, query excluded, ties against relevant")
            print(_HEADER)
        t0 = time.perf_counter()
        desc = describe_with(model, patches, batch_size=args.batch_size, progress=not quiet)
        seconds = time.perf_counter() - t0
        if not np.isfinite(desc).all():
            raise InputError(f"{info['name']} produced NaN or inf descriptors on the {split} split")
        r = evaluate_descriptors(desc, labels, max_pairs=args.max_pairs, seed=args.seed)
        r["describe_seconds"] = seconds
        results[split] = r
        print(_row(split, r, patches.shape[0] / max(seconds, 1e-9)), flush=True)
        if r["num_skipped"]:
            print(f"  {split}: {r['num_skipped']} patches have no other patch of their group "
                  f"in this split: not used as queries", file=sys.stderr)
    if args.json is not None:
        doc = {
            "patches": str(path),
            "model": str(args.model),
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
    p = sub.add_parser(
        "eval-patches",
        help="patch retrieval mAP of a model or baseline on a patch file",
        description=(
            "Describes the patches of an .npz (with 'labels', optional 'split') and prints "
            "patch retrieval mAP (non-interpolated AP, query excluded, ties against the "
            "relevant items), trapezoid mAP, nearest-neighbour accuracy, FPR at 95%% recall "
            "and ROC AUC, per split."
        ),
    )
    p.add_argument("--patches", required=True, help=".npz with 'patches', 'labels' and optional 'split'")
    p.add_argument("--model", required=True,
                   help=f"model directory written by `ckn train`, or a baseline: {', '.join(BASELINES)}")
    p.add_argument("--split", choices=("train", "test", "all"), default=None,
                   help="evaluate one split (default: train and test separately if the file has "
                        "a 'split' array, else all)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--batch-size", type=int, default=256, help="patches per jitted batch (default 256)")
    p.add_argument("--max-pairs", type=int, default=100_000,
                   help="matching pairs for FPR95 / ROC AUC, as many non-matching (default 100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval_patches)
