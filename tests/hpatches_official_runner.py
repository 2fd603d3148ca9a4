"""Runs the official HPatches Python benchmark (unmodified) and writes its figures as JSON.

Used by ``tests/test_hpatches.py``, ``tests/test_cli_hpatches.py`` (the ``official_hpatches``
fixture) and ``benchmarks/hpatches_style.py`` in a subprocess:

    python hpatches_official_runner.py PEERS_PYTHON_DIR DESCR_DIR TASKS_DIR SPLIT_JSON OUT_JSON

OUT_JSON holds the official code's raw results (``verification``, ``matching``, ``retrieval``)
and ``figures``: those aggregated as the official results script does (``official_figures``),
keyed as ``project_figures`` keys the project's summary (``ckn eval-patches --json``), so that
the two compare key by key.

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

LEVELS = ("easy", "hard", "tough")


def official_figures(raw: dict, sequences) -> dict:
    """The official raw figures aggregated as the official results script does (means over
    sequences and images, over queries; by level, sequence kind and list size), in fractions."""
    matching = np.array([raw["matching"][s] for s in sequences])  # (S, 3, 5)
    kinds = np.array([s[:2] for s in sequences])
    table = np.array(raw["retrieval"]["ap"]).mean(axis=0)  # (3 levels, K sizes)
    auc, ap = np.array(raw["verification"]["auc"]), np.array(raw["verification"]["ap"])
    kinds = {k: kinds == p for k, p in (("illum", "i_"), ("view", "v_")) if (kinds == p).any()}
    out = {
        "matching": {
            "map": matching.mean(),
            **dict(zip(LEVELS, matching.mean(axis=(0, 2)))),
            **{k: matching[rows].mean() for k, rows in kinds.items()},
        },
        "retrieval": {
            "map": table.mean(),
            **dict(zip(LEVELS, table.mean(axis=1))),
            **{
                f"{k}/{lv}": table[i, c]
                for c, k in enumerate(raw["retrieval"]["list_sizes"])
                for i, lv in enumerate(LEVELS)
            },
        },
        "verification": {
            f"{protocol}/{kind}/{lv}": values[i, j]
            for protocol, values in (("balanced", auc), ("imbalanced", ap))
            for j, kind in enumerate(("inter", "intra"))
            for i, lv in enumerate(LEVELS)
        },
    }
    return {task: {k: float(v) for k, v in values.items()} for task, values in out.items()}


def project_figures(doc: dict) -> dict:
    """The same figures from the project's summary (``HPatchesResult.as_dict()``, the
    ``ckn eval-patches --json`` document), keyed as :func:`official_figures`."""
    r = doc["retrieval"]
    kinds = [k for k in ("illum", "view") if doc["matching"].get(k) is not None]
    return {
        "matching": {k: doc["matching"][k] for k in ("map", *LEVELS, *kinds)},
        "retrieval": {
            "map": r["map"],
            **{lv: r[lv] for lv in LEVELS},
            **{f"{k}/{lv}": v[lv] for k, v in r["by_list_size"].items() for lv in LEVELS},
        },
        "verification": {
            f"{protocol}/{kind}/{lv}": doc["verification"][protocol][kind][lv]
            for protocol in ("balanced", "imbalanced")
            for kind in ("inter", "intra")
            for lv in LEVELS
        },
    }


def main(peers_python, descr_dir, tasks_dir, split_json, out_json):
    import pandas as pd

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
    out["figures"] = official_figures(out, split["test"])
    with open(out_json, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:6])
