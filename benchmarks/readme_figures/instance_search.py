"""README "Instance search with spatial verification" (instance_search)."""

from __future__ import annotations

from .core import ReportError, para, pct, renderer, run, signed, speed_note, table

STEM = "instance_search"
SHORT = {"efficientnet-lite0": "Lite0", "efficientnet-lite1": "Lite1",
         "efficientnet-lite2": "Lite2"}  # fmt: skip
VERIFY = (None, "sift", "rootsift", "ckn-grad")


def _find(doc: dict, **key) -> dict:
    rows = [r for r in doc["results"] if all(r[k] == v for k, v in key.items())]
    if len(rows) != 1:
        raise ReportError(f"{STEM}.json: {len(rows)} rows for {key}")
    return rows[0]


def _backbones(doc: dict) -> str:
    ran = list(dict.fromkeys(SHORT.get(r["backbone"], r["backbone"]) for r in doc["results"]))
    return ", ".join(ran)


def _describers(doc: dict) -> list[tuple]:
    return list(dict.fromkeys((r["backbone"], r["head"], tuple(r["scales"]))
                              for r in doc["results"]))  # fmt: skip


@renderer("instance_search_run")
def instance_search_run(results) -> str:
    """Where the table comes from."""
    doc = results[STEM]
    s = doc["protocol"]["set"]
    return para(
        f"`nice python benchmarks/instance_search.py` (the run: {run(doc, STEM)}): "
        f"{s['objects']} objects, {s['database']} database images, {s['queries']} crop "
        f"queries; verification of the top {doc['protocol']['verify']['top']}, QE k = "
        f"{doc['protocol']['qe']}, at least {doc['protocol']['verify']['min_inliers']} inliers; "
        f"backbones run: {_backbones(doc)}. Revisited medium mAP %, without / with QE:"
    )


@renderer("instance_search_table")
def instance_search_table(results) -> str:
    """One line per describer: global, + SIFT / RootSIFT / ckn-grad verification, each
    without / with QE; the global query's time and the verification's."""
    doc = results[STEM]
    rows = []
    for backbone, head, scales in _describers(doc):
        key = {"backbone": backbone, "head": head, "scales": list(scales)}
        cells = [
            SHORT.get(backbone, backbone),
            f"{head}{' multi-scale' if len(scales) > 1 else ''}",
        ]
        for v in VERIFY:
            a, b = (_find(doc, **key, verify=v, qe=q)["map"] for q in (0, doc["protocol"]["qe"]))
            cells.append(f"{pct(a)} / {pct(b)}")
        t = doc["timing"][f"{backbone}/{head}/{len(scales)}"]
        ver = [_find(doc, **key, verify=v, qe=0)["verification"]["seconds_per_query_cached"]
               for v in VERIFY[1:]]  # fmt: skip
        cells.append(f"{t['global_query_seconds']:.2f}")
        cells.append(" / ".join(f"{x:.2f}" for x in ver))
        rows.append(cells)
    header = ["backbone", "head", "global", "+ SIFT", "+ RootSIFT", "+ ckn-grad",
              "global s/query", "verification s/query (SIFT / RootSIFT / ckn-grad)"]  # fmt: skip
    return table(header, rows)


def _worst_ratios(tr: dict) -> str:
    """ "at most 4.4 x with SIFT (0 of 8 rows above 5 x), ..." per local descriptor."""
    parts = []
    for v in VERIFY[1:]:
        rs = [x for k, x in tr["ratios"].items() if k.endswith(f"/{v}")]
        if rs:
            over = sum(x > tr["target"] for x in rs)
            parts.append(f"{v} at most {max(rs):.1f} x, {over} of {len(rs)} rows above")
    return ", ".join(parts)


@renderer("instance_search_targets")
def instance_search_targets(results) -> str:
    """The three targets of issue 25, measured, met or not."""
    doc = results[STEM]
    t = doc["targets"]
    best = t["best_map"]
    r = best["row"]
    what = (f"{SHORT.get(r['backbone'], r['backbone'])} {r['head']}"
            f"{' multi-scale' if len(r['scales']) > 1 else ''}"
            f"{' + ' + r['verify'] + ' verification' if r['verify'] else ''}"
            f"{' + QE' if r['qe'] else ''}")  # fmt: skip
    c = t["ckn_vs_rootsift"]
    tr = t["time_ratio"]
    yes = {True: "met", False: "not met"}
    return para(
        f"Targets: the best pipeline ({what}) reaches {pct(best['medium_map'])} medium mAP "
        f"(target >= 95: {yes[best['met']]}); ckn-grad verification against RootSIFT's: "
        f"{c['wins']} wins, {c['ties']} ties, {c['losses']} losses over "
        f"{len(c['differences_points'])} settings, {signed(c['mean_points'])} points on average "
        f"(target: at least as good: {yes[c['met']]}); time per query with verification of the "
        f"top {doc['protocol']['verify']['top']} at most {tr['max']:.1f} x the global query's "
        f"(target <= 5 x: {yes[tr['met']]}; {_worst_ratios(tr)}; {speed_note(doc)}). Peak memory "
        f"{doc['memory']['peak_rss_mb']:.0f} MB (resident), the local-feature caches at most "
        f"{max(doc['memory']['cache_peak_mb'].values()):.0f} MB."
    )
