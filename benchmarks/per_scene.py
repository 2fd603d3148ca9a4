"""Per-scene patch-retrieval mAP of the models a `ckn reproduce` run saved, and of SIFT.

    python benchmarks/per_scene.py --run reproduce_out [--patches FILE.npz | --sequences DIR] \
        [--json benchmarks/results/per_scene_default.json]

Each query's AP is computed exactly as in `ckn reproduce` (all-vs-all within
its split), then averaged over the queries of each scene: it shows where one
descriptor wins or loses against another. The JSON's ``models_run`` is the
provenance record of the `ckn reproduce` run that trained the models (its
``results.json`` metadata: commit, dirty flag, command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import ckn
from retrieval import patches as patchsets
from retrieval.cli import provenance
from retrieval.metrics import patch_retrieval_map
from retrieval.patches import BASELINES, describe_baseline

# Taken when the script starts: the code that ran, not HEAD at the end.
_META = provenance.start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="output folder of `ckn reproduce` (with models/)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--patches", help="RomePatches-style .npz (default: the embedded default set)")
    src.add_argument("--sequences", help="Oxford-layout folder")
    p.add_argument("--baselines", default="sift,rootsift")
    p.add_argument("--json", help="write the table here")
    args = p.parse_args(argv)
    if args.patches:
        ps = patchsets.load_patchset(args.patches, require_split=True)
    elif args.sequences:
        ps = patchsets.build_sequences(args.sequences)
    else:
        ps = patchsets.build_default()
    models = sorted((Path(args.run) / "models").iterdir())
    run_json = Path(args.run) / "results.json"
    models_run = json.loads(run_json.read_text()).get("metadata") if run_json.exists() else None
    descs = {m.name: ckn.describe(ckn.load(m), ps.patches) for m in models}
    for b in args.baselines.split(","):
        if b in BASELINES:
            descs[b] = describe_baseline(b, ps.patches)
    table: dict = {}
    names = [str(n) for n in ps.scene_names]
    for name, d in descs.items():
        table[name] = {}
        for split in (0, 1):
            sel = ps.split == split
            ap = patch_retrieval_map(d[sel], ps.labels[sel], return_per_query=True).per_query
            scene = ps.scene[sel]
            for k in np.unique(scene):
                q = ap[scene == k]
                table[name][names[k]] = {
                    "split": "train" if split == 0 else "test",
                    "map": float(100 * np.nanmean(q)),
                    "queries": int(np.isfinite(q).sum()),
                }
    scenes = list(next(iter(table.values())))
    print(f"{'scene':<22} {'split':<6}" + "".join(f"{n:>15}" for n in table))
    for sc in scenes:
        row = table[next(iter(table))][sc]
        print(
            f"{sc:<22} {row['split']:<6}" + "".join(f"{table[n][sc]['map']:>15.1f}" for n in table)
        )
    if args.json:
        out = {
            "command": "python " + " ".join(sys.argv),
            "per_scene": table,
            "models_run": models_run,
            "machine": provenance.finish(_META),
        }
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
