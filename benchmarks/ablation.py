"""Ablation of the Patch-CKN presets on the TRAIN split of the embedded default data.

    python benchmarks/ablation.py [--json benchmarks/results/ablation_train.json] [--only NAME,...]

Every variant is trained without labels on the train split (20,000
sub-patches per layer and 15 k-means iterations, lighter than the presets'
100,000 / 30, so that the whole table runs in about 20 minutes on 2 cores) and
scored by all-vs-all mAP on the same train split. The test split is never
looked at: this is how the presets' choices were made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import ckn
from ckn import LayerConfig as L
from retrieval import patches as patchsets
from retrieval.cli import provenance
from retrieval.metrics import patch_retrieval_map

# Taken when the script starts: the code that ran, not HEAD at the end.
_META = provenance.start()

C = "centered"


def _grad(**kw):
    return dataclasses.replace(ckn.get_preset("ckn-grad-paper"), **kw)


def _raw(name, **kw):
    base = dataclasses.replace(
        ckn.get_preset(name),
        blur=0.0,
        normalize="global",
        layers=(L(3, 64, 2), L(3, 64, 7)),
        train=ckn.TrainConfig(),
    )
    return dataclasses.replace(base, **kw)


GRAD_LAST = (L(3, 64, 2), L(3, 64, 4, pooling=C, pool_std=0.75))
RAW_LAST = (L(3, 64, 2), L(3, 64, 7, pooling=C, pool_std=1.3))

#: name -> config; each line changes one thing from the line it names.
VARIANTS = {
    "grad: papers' choices (ckn-grad-paper)": _grad(),
    "grad: + cell-centred last pooling, std 1.0": _grad(
        layers=(L(3, 64, 2), L(3, 64, 4, pooling=C, pool_std=1.0))
    ),
    "grad: + cell-centred last pooling, std 0.75": _grad(layers=GRAD_LAST),
    "grad: + cell-centred last pooling, std 0.5": _grad(
        layers=(L(3, 64, 2), L(3, 64, 4, pooling=C, pool_std=0.5))
    ),
    "grad: std 0.75 + per-position L2": _grad(layers=GRAD_LAST, normalize="position"),
    "grad: ... + blur 1.0": _grad(layers=GRAD_LAST, normalize="position", blur=1.0),
    "grad: ... + blur 1.5 (= ckn-grad)": _grad(layers=GRAD_LAST, normalize="position", blur=1.5),
    "grad: ... + blur 2.0": _grad(layers=GRAD_LAST, normalize="position", blur=2.0),
    "grad: ... + blur 3.0": _grad(layers=GRAD_LAST, normalize="position", blur=3.0),
    "grad: ckn-grad with K = 8 orientations": _grad(
        layers=GRAD_LAST, normalize="position", blur=1.5, grad_orientations=8
    ),
    "grad: ckn-grad with sigma 0.5 (no quantile rule)": _grad(
        layers=(L(3, 64, 2, sigma=0.5), L(3, 64, 4, sigma=0.5, pooling=C, pool_std=0.75)),
        normalize="position",
        blur=1.5,
    ),
    "grad: ckn-grad with 128 first-layer filters": _grad(
        layers=(L(3, 128, 2), GRAD_LAST[1]), normalize="position", blur=1.5
    ),
    "raw: papers' choices": _raw("ckn-raw"),
    "raw: + cell-centred last pooling std 1.3 + per-position L2": _raw(
        "ckn-raw", layers=RAW_LAST, normalize="position"
    ),
    "raw: ... + blur 1.5 (= ckn-raw)": _raw(
        "ckn-raw", layers=RAW_LAST, normalize="position", blur=1.5
    ),
    "white: papers' choices": _raw("ckn-white"),
    "white: + cell-centred last pooling + per-position L2 + blur 1.5": _raw(
        "ckn-white", layers=RAW_LAST, normalize="position", blur=1.5
    ),
    "white: ... + whitening reg 0.01": _raw(
        "ckn-white",
        layers=RAW_LAST,
        normalize="position",
        blur=1.5,
        train=ckn.TrainConfig(whiten_reg=0.01),
    ),
    "white: ... + whitening reg 0.1 (= ckn-white)": _raw(
        "ckn-white",
        layers=RAW_LAST,
        normalize="position",
        blur=1.5,
        train=ckn.TrainConfig(whiten_reg=0.1),
    ),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--only", help="comma-separated substrings of variant names")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ps = patchsets.build_default()
    train = ps.split == 0
    patches, labels = ps.patches[train], ps.labels[train]
    rows = []
    for name, cfg in VARIANTS.items():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, num_patches=20_000, kmeans_iters=15)
        )
        t0 = time.perf_counter()
        model, reports = ckn.train(cfg, patches, seed=args.seed)
        d = ckn.describe(model, patches)
        m = 100 * patch_retrieval_map(d, labels).mean_ap
        rows.append(
            {
                "variant": name,
                "train_map": m,
                "sigma": [r.sigma for r in reports],
                "seconds": time.perf_counter() - t0,
                "config": cfg.to_dict(),
            }
        )
        print(f"{m:6.2f}  {name}", flush=True)
    if args.json:
        out = {
            "command": "python " + " ".join(sys.argv),
            "protocol": __doc__.strip().splitlines()[2:8],
            "rows": rows,
            "machine": provenance.finish(_META),
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
