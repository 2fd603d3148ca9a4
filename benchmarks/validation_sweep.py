"""One-change variants of ckn-grad scored on two TRAIN splits: the embedded default data and
the Oxford train sequences.

    python benchmarks/validation_sweep.py --sequences ../shared/data/oxford_affine \\
        [--json benchmarks/results/validation_sweep.json] [--only NAME,...]

The Oxford train sequences (bikes, graf, leuven, ubc) are the validation set
that is not saturated (ckn-grad about 96 mAP there, 99 on the default train
split). Each variant is trained without labels on a train split and scored by
all-vs-all mAP on that same split, with the ablation's light training (20,000
sub-patches, 15 k-means iterations per layer). No test split is looked at.
About 8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import ckn
from retrieval import patches as patchsets
from retrieval.cli import provenance
from retrieval.metrics import patch_retrieval_map

# Taken when the script starts: the code that ran, not HEAD at the end.
_META = provenance.start()

BASE = ckn.get_preset("ckn-grad")
L1, L2 = BASE.layers


def _v(**kw):
    return dataclasses.replace(BASE, **kw)


#: name -> config; each changes one thing of ckn-grad.
VARIANTS = {
    "ckn-grad": BASE,
    "grad_sigma 0.3": _v(grad_sigma=0.3),
    "grad_sigma 0.6": _v(grad_sigma=0.6),
    "K = 16 orientations": _v(grad_orientations=16),
    "layer-2 filters 128": _v(layers=(L1, dataclasses.replace(L2, filters=128))),
    "layer-2 filters 256": _v(layers=(L1, dataclasses.replace(L2, filters=256))),
    "blur 1.0": _v(blur=1.0),
    "layer-1 sub-patch 2": _v(layers=(dataclasses.replace(L1, subpatch=2), L2)),
    "layer-2 sub-patch 5": _v(layers=(L1, dataclasses.replace(L2, subpatch=5))),
    "grad subsampling 1, layer-1 subsampling 4": _v(
        grad_subsampling=1, layers=(dataclasses.replace(L1, subsampling=4), L2)
    ),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sequences",
        required=True,
        help="Oxford-layout folder (e.g. ../shared/data/oxford_affine)",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument("--only", help="comma-separated substrings of variant names")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not Path(args.sequences).is_dir():
        p.error(f"--sequences {args.sequences}: not a directory")
    sets = {
        "default": patchsets.build_default(),
        "oxford": patchsets.build_sequences(args.sequences),
    }
    train = {k: (ps.patches[ps.split == 0], ps.labels[ps.split == 0]) for k, ps in sets.items()}
    rows = []
    for name, cfg in VARIANTS.items():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, num_patches=20_000, kmeans_iters=15)
        )
        row = {"variant": name, "config": cfg.to_dict()}
        t0 = time.perf_counter()
        for k, (x, y) in train.items():
            model, _ = ckn.train(cfg, x, seed=args.seed)
            row[f"{k}_train_map"] = 100 * patch_retrieval_map(ckn.describe(model, x), y).mean_ap
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(
            f"oxford-train {row['oxford_train_map']:6.2f}  "
            f"default-train {row['default_train_map']:6.2f}  {name}",
            flush=True,
        )
    if args.json:
        out = {
            "command": "python " + " ".join(sys.argv),
            "protocol": __doc__.strip().splitlines()[3:9],
            "rows": rows,
            "machine": provenance.finish(_META),
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
