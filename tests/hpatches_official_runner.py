"""Runs the official HPatches Python benchmark (unmodified) and prints its raw figures as JSON.

Used by ``tests/test_hpatches.py`` in a subprocess:

    python hpatches_official_runner.py PEERS_PYTHON_DIR DESCR_DIR TASKS_DIR SPLIT_JSON OUT_JSON

Run-time shims only, for today's NumPy and pandas (the official files are not edited):
``np.trapz`` (removed in NumPy 2.4) -> ``np.trapezoid``; ``DataFrame.as_matrix`` (removed in
pandas 1.0) -> ``to_numpy``; ``utils.tasks.dist_matrix`` returns its (1, 1) result as (1,),
since ``get_query_intra_dists`` stores ``dist_matrix(...)[0]`` into a float slot, which NumPy 2.4
refuses for a (1,) array (the same value; larger matrices unchanged); the module's task folder
``utils.tasks.tskdir`` -> TASKS_DIR.
"""

import json
import sys

import numpy as np
import pandas as pd


def main(peers_python, descr_dir, tasks_dir, split_json, out_json):
    sys.path.insert(0, peers_python)
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    if not hasattr(pd.DataFrame, "as_matrix"):
        pd.DataFrame.as_matrix = lambda self: self.to_numpy()
    import utils.tasks as tasks
    from utils.hpatch import load_descrs

    tasks.tskdir = tasks_dir
    dist_matrix = tasks.dist_matrix

    def dist_matrix_1x1_as_1(d1, d2, distance):
        d = dist_matrix(d1, d2, distance)
        return d[0] if d.shape == (1, 1) else d

    tasks.dist_matrix = dist_matrix_1x1_as_1
    with open(split_json) as f:
        split = json.load(f)
    descr = load_descrs(descr_dir, dist="L2", sep=",")
    levels = ["e", "h", "t"]
    out = {}
    res = tasks.eval_verification(descr, split)
    out["verification"] = {
        "auc": [[res[t][k]["balanced"]["auc"] for k in ("inter", "intra")] for t in levels],
        "ap": [[res[t][k]["imbalanced"]["ap"] for k in ("inter", "intra")] for t in levels],
    }
    res = tasks.eval_matching(descr, split)
    out["matching"] = {
        seq: [[res[seq][t][i]["ap"] for i in range(1, 6)] for t in levels] for seq in split["test"]
    }
    res = tasks.eval_retrieval(descr, split)
    sizes = sorted(res[0]["e"])
    out["retrieval"] = {
        "list_sizes": sizes,
        "ap": [[[res[q][t][k]["ap"] for k in sizes] for t in levels] for q in sorted(res)],
    }
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
