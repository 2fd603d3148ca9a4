"""README "Global image descriptors", CKN maps instead of Lite0 (global_ckn, beside
global_retrieval's Lite0 rows and image_retrieval's VLAD)."""

from __future__ import annotations

from .core import count, f1, para, pct, renderer, run, speed_note, table, tally
from .global_desc import WHITENINGS, key, one, value

STEM = "global_ckn"
HEADS = ("mac", "gem", "rmac")


def _dim(doc: dict, s: str) -> int:
    return one(doc, set=s, head="mac", scales="single", whiten="pca", dim="n-1", qe=0)["whiten_dim"]


@renderer("global_ckn_intro")
def global_ckn_intro(results) -> str:
    """The run, the model's training time and the whitening dimensions."""
    doc, lite = results[STEM], results["global_retrieval"]
    seconds = doc["model"]["config"]["training"]["seconds"]
    dims = {s: (_dim(doc, s), _dim(lite, s)) for s in ("oxford", "tiles")}

    def both(s):
        c, li = dims[s]
        return f"{c} for both on {s}" if c == li else f"{c} for the CKN and {li} for Lite0 on {s}"

    return para(
        "**CKN maps instead of Lite0**"
        f" (`nice python benchmarks/global_ckn.py`; the run: {run(doc, STEM)}): the same heads on"
        " the 64-channel maps of `--backbone ckn:MODEL_DIR`, a ckn-grad trained without labels"
        " as `ckn reproduce` trains it (embedded default set, train split, seed 0;"
        f" {seconds:.0f} s), with the sets, scales (long side at most 1024 px), whitening (fitted"
        " on the other set) and protocol of the rows above. mAP %, no QE, CKN (Lite0 in"
        f" brackets, `global_retrieval.json`); n-1 is min(D, n - 1): {both('oxford')},"
        f" {both('tiles')}."
    )


@renderer("global_ckn_table")
def global_ckn_table(results, s: str) -> str:
    """CKN heads on one set (oxford or tiles), Lite0 in brackets."""
    doc, lite = results[STEM], results["global_retrieval"]
    dim = _dim(doc, s)
    names = {"none": "no whitening", "pca": "PCA", "learned": "learned"}
    # oxford's n-1 differs between the CKN and Lite0, tiles' does not
    same = dim == _dim(lite, s)
    header = [f"{s}: head", "scales"] + [
        names[w] if w == "none" else f"{names[w]} {dim if d == 'n-1' and same else d}"
        for w, d in WHITENINGS
    ]
    rows = []
    for head in HEADS:
        for sc in ("single", "multi"):
            want = {"set": s, "head": head, "scales": sc}
            rows.append(
                [head, sc]
                + [
                    f"{f1(value(doc, whiten=w, dim=d, **want))}"
                    f" ({f1(value(lite, whiten=w, dim=d, **want))})"
                    for w, d in WHITENINGS
                ]
            )
    return table(header, rows)


def _tallies(doc: dict, lite: dict, s: str) -> dict:
    below, below_keys, rmac, rmac_keys, wh, wh_keys, qe, qe_keys = ([] for _ in range(8))
    for sc in ("single", "multi"):
        for w, d in WHITENINGS:
            r = one(doc, set=s, head="rmac", scales=sc, whiten=w, dim=d, qe=0)
            m = one(doc, set=s, head="mac", scales=sc, whiten=w, dim=d, qe=0)
            rmac.append((100 * r["map"], 100 * m["map"]))
            rmac_keys.append((key(r), key(m)))
            for head in HEADS:
                want = {"set": s, "head": head, "scales": sc, "whiten": w, "dim": d}
                c, li = one(doc, qe=0, **want), one(lite, qe=0, alpha=0.0, **want)
                below.append((100 * c["map"], 100 * li["map"]))
                below_keys.append((key(c), key(li)))
                q = one(doc, qe=1, alpha=0.0, **want)
                qe.append((100 * q["map"], 100 * c["map"]))
                qe_keys.append((key(q), key(c)))
                if w != "none":
                    u = one(doc, qe=0, **{**want, "whiten": "none", "dim": None})
                    wh.append((100 * c["map"], 100 * u["map"]))
                    wh_keys.append((key(c), key(u)))
    return {
        "below": tally(below, below_keys),
        "rmac": tally(rmac, rmac_keys),
        "whiten": tally(wh, wh_keys),
        "qe": tally(qe, qe_keys),
    }


def _vlad(results) -> float:
    return next(
        r["map"]
        for r in results["image_retrieval"]["results"]
        if (r["descriptor"], r["k"], r["pca"], r["codebook_on"])
        == ("ckn-grad", 64, None, "distractors")
    )


@renderer("global_ckn_gap")
def global_ckn_gap(results) -> str:
    """CKN maps against Lite0 and against VLAD of CKN-grad."""
    doc, lite = results[STEM], results["global_retrieval"]
    t = {s: _tallies(doc, lite, s)["below"] for s in ("oxford", "tiles")}
    n_below = sum(x.below for x in t.values())
    n_all = sum(x.n for x in t.values())
    return para(
        f"Pooled CKN maps are far behind: below Lite0 in {count(n_below, n_all)} distinct"
        f" settings, by a median of {-t['oxford'].median:.0f} points on oxford and"
        f" {-t['tiles'].median:.0f} on tiles, and far below VLAD of CKN-grad local descriptors on"
        f" the same oxford set ({pct(_vlad(results))} at k = 64; that ckn-grad was trained on all"
        " the default patches)."
    )


@renderer("global_ckn_reading")
def global_ckn_reading(results) -> str:
    """The papers' claims on CKN maps, memory and time at 1024 px."""
    doc, lite = results[STEM], results["global_retrieval"]
    t = {s: _tallies(doc, lite, s) for s in ("oxford", "tiles")}
    best = {
        s: max(
            (
                one(doc, set=s, head=h, scales=sc, whiten="none", qe=0)
                for h in HEADS
                for sc in ("single", "multi")
            ),
            key=lambda r: r["map"],
        )
        for s in ("oxford", "tiles")
    }
    rmac = [t[s]["rmac"] for s in t]
    rmac_ties = sum(x.ties for x in rmac)
    best_desc = ", ".join(
        f"{r['head']} {r['scales']}-scale {pct(r['map'])} on {s}" for s, r in best.items()
    )
    mem = doc["memory_1024"]
    size = next(z for z in mem["sizes"] if (z["height"], z["width"]) == (1024, 1024))
    steady = doc["timing"]["oxford"]["steady_state_seconds_per_image"]
    wh = {s: t[s]["whiten"] for s in t}
    return para(
        "R-MAC's regions help: above MAC in"
        f" {count(sum(x.above for x in rmac), sum(x.n for x in rmac))}"
        f" distinct settings{f' ({rmac_ties} ties)' if rmac_ties else ''}; the best unwhitened"
        f" CKN rows are {best_desc}. Whitening fitted on the other set raised mAP in"
        f" {count(wh['oxford'].above, wh['oxford'].n)} settings on oxford and"
        f" {count(wh['tiles'].above, wh['tiles'].n)} on tiles; QE with k = 1 raised it in"
        f" {t['oxford']['qe'].of('settings')} on oxford and {t['tiles']['qe'].of()} on tiles."
        f" Memory at 1024 px ({speed_note(doc)}): in a fresh process a 1024 x 1024 image takes"
        f" {size['features_median_s']:.2f} s in `features` (median of"
        f" {len(size['features_times_s'])}; {size['features_first_call_s']:.1f} s with"
        f" compilation) and {size['gem_3_scales_median_s']:.1f} s for 3-scale GeM, XLA"
        f" temporaries of {size['xla_temp_bytes'] / 1e6:.0f} MB (the backbone's estimate"
        f" {size['estimate_bytes'] / 1e6:.0f} MB, under its {mem['max_bytes'] / 2**30:.0f} GiB"
        f" budget: {'tiled' if size['tiled'] else 'no tiling'}) and a peak RSS of"
        f" {mem['peak_rss_mib']:.0f} MiB ({mem['rss_after_load_mib']:.0f} MiB after loading JAX"
        f" and the model). Steady state on {steady['images']} Oxford images:"
        f" {steady['gem_3_scales']:.2f} s per image for 3-scale GeM, {steady['gem_1_scale']:.2f}"
        " for one scale."
    )
