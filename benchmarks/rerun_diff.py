"""Compare a re-run result with the one it replaces, and keep the comparison for the README.

    python benchmarks/rerun_diff.py STEM OLD.json [--new benchmarks/results/STEM.json] \
        [--under KEY --keys REGEX --raw --what "statistics"]

Every quality figure (a number under a key that names mAP, AP or recall, the same path
in both files) of the previous result is compared with the new one; the comparison goes
into ``benchmarks/results/reruns.json[STEM]``: both runs' commit, dirty flag and start
time, how many figures were compared, how many changed and by how much (mAP points),
and the largest changes. The README says so next to the figures (renderer ``rerun``),
so a re-run that moves a figure is never silent. Run it before replacing the old JSON
(``git show HEAD:benchmarks/results/STEM.json > /tmp/old.json`` gets it afterwards).
For a result without quality figures (a patch set's statistics), ``--under results
--keys . --raw --what statistics`` compares every number under ``results`` as it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
#: Keys of quality figures; fractions (<= 1) are compared as percent points.
QUALITY = re.compile(r"(^|_)(map|mean_ap|recall)(?!_trapezoid)(_|$)")
#: Top-level keys that copy figures of other results or of this one (not compared).
COPIES = {"target", "claims", "lite0", "vlad"}


def _leaves(x, path=()):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, (*path, str(k)))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, (*path, i))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)


def _label(doc: dict, path: tuple) -> str:
    """A readable name for a leaf: the path, with the identifying fields of list rows."""
    parts, node = [], doc
    for p in path:
        node = node[p]
        if isinstance(p, int) and isinstance(node, dict):
            ids = [
                f"{k}={node[k]}"
                for k in (
                    "set",
                    "data",
                    "descriptor",
                    "head",
                    "variant",
                    "row",
                    "k",
                    "pca",
                    "scales",
                    "whiten",
                    "whiten_dim",
                    "qe",
                    "alpha",
                    "codebook_on",
                    "preset",
                    "method",
                    "patches",
                    "n",
                )
                if k in node and not isinstance(node[k], (dict, list))
            ]
            parts.append("[" + ", ".join(ids) + "]" if ids else f"[{p}]")
        else:
            parts.append(str(p))
    return ".".join(parts).replace(".[", "[")


def _meta(doc: dict) -> dict:
    m = doc.get("metadata") or doc.get("machine") or {}
    return {k: m.get(k) for k in ("commit", "dirty", "started_utc", "cpu")}


def compare(
    old: dict,
    new: dict,
    *,
    keys: re.Pattern = QUALITY,
    under: str | None = None,
    raw: bool = False,
    what: str = "quality figures",
) -> dict:
    """The figures of ``old`` and ``new`` at the same paths (last key matching ``keys``,
    below the top-level key ``under`` if given), compared in mAP points (``raw``: as is)."""
    old_doc, new_doc = old, new
    if under is not None:
        old, new = {under: old[under]}, {under: new[under]}
    else:
        old = {k: v for k, v in old.items() if k not in COPIES}
        new = {k: v for k, v in new.items() if k not in COPIES}
    a = {p: v for p, v in _leaves(old) if keys.search(str(p[-1]))}
    b = {p: v for p, v in _leaves(new) if keys.search(str(p[-1]))}
    both = sorted(set(a) & set(b), key=str)

    def points(v):
        return v if raw else 100 * v if abs(v) <= 1.0 else v

    diffs = [(abs(points(b[p]) - points(a[p])), p) for p in both]
    changed = sorted((d for d in diffs if d[0] > 1e-9), reverse=True)
    return {
        "what": what,
        "units": "as recorded" if raw else "mAP points",
        "previous": _meta(old_doc),
        "current": _meta(new_doc),
        "compared": len(both),
        "only_previous": len(set(a) - set(b)),
        "only_current": len(set(b) - set(a)),
        "changed": len(changed),
        "changed_by_0.05_or_more": sum(d >= 0.05 for d, _ in changed),
        "max_abs_diff_points": changed[0][0] if changed else 0.0,
        "largest": [
            {
                "figure": _label(new, p),
                "previous": points(a[p]),
                "current": points(b[p]),
            }
            for _, p in changed[:10]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stem", help="the result's name, e.g. global_retrieval")
    p.add_argument("old", type=Path, help="the result being replaced")
    p.add_argument("--new", type=Path, help="the re-run (default benchmarks/results/STEM.json)")
    p.add_argument("--under", help="compare only below this top-level key")
    p.add_argument("--keys", default=QUALITY.pattern, help="regex on a number's key")
    p.add_argument("--raw", action="store_true", help="differences as recorded, not mAP points")
    p.add_argument("--what", default="quality figures", help="what the numbers are, for the README")
    args = p.parse_args(argv)
    new_path = args.new or RESULTS / f"{args.stem}.json"
    out = compare(
        json.loads(args.old.read_text()),
        json.loads(new_path.read_text()),
        keys=re.compile(args.keys),
        under=args.under,
        raw=args.raw,
        what=args.what,
    )
    path = RESULTS / "reruns.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[args.stem] = out
    path.write_text(json.dumps(dict(sorted(doc.items())), indent=2) + "\n")
    print(
        f"{args.stem}: {out['changed']} of {out['compared']} {args.what} changed"
        f" (largest {out['max_abs_diff_points']:.3g} {out['units']}); written to {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
