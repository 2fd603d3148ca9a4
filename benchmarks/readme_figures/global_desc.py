"""README "Global image descriptors": EfficientNet-Lite0 heads on the oxford and tiles sets
and the papers' claims (global_retrieval)."""

from __future__ import annotations

from .core import ReportError, count, f1, para, pct, renderer, run, signed, table, tally

STEM = "global_retrieval"
POOLED = ("mac", "spoc", "gem", "rmac", "crow")
WHITENINGS = (("none", None), ("pca", "n-1"), ("pca", 32), ("learned", "n-1"), ("learned", 32))


def select(doc: dict, **want) -> list[dict]:
    """The result rows whose fields equal ``want`` (``dim`` matches ``whiten_dim_setting``)."""
    out = []
    for r in doc["results"]:
        if all(r.get("whiten_dim_setting" if k == "dim" else k) == v for k, v in want.items()):
            out.append(r)
    return out


def one(doc: dict, **want) -> dict:
    rows = select(doc, **want)
    if len(rows) != 1:
        raise ReportError(f"{len(rows)} result rows match {want}, expected 1")
    return rows[0]


def value(doc: dict, *, qe: int = 0, alpha: float = 0.0, **want) -> float:
    """mAP in points of the one row matching ``want`` (no QE by default)."""
    return 100 * one(doc, qe=qe, alpha=alpha, **want)["map"]


def key(r: dict) -> tuple:
    """What makes two rows' results bit-identical."""
    return r["map"], r["map_trapezoid"]


def whiten_label(doc: dict, s: str, whiten: str, dim) -> str:
    if whiten == "none":
        return "no whitening"
    if dim == "n-1":
        want = {"set": s, "head": "mac", "scales": "single", "qe": 0, "alpha": 0.0}
        dim = one(doc, whiten=whiten, dim="n-1", **want)["whiten_dim"]
    return f"{'PCA' if whiten == 'pca' else 'learned'} {dim}"


@renderer("global_run")
def global_run(results) -> str:
    """Where the Lite0 tables come from."""
    doc = results[STEM]
    return para(
        f"`nice python benchmarks/global_retrieval.py` (the run: {run(doc, STEM)}): mAP %, no"
        " QE, EfficientNet-Lite0; whitening is always fitted on the *other* set."
    )


@renderer("global_set")
def global_set(results, s: str) -> str:
    """The images of one evaluation set, as the JSON describes them."""
    sets = results[STEM]["protocol"]["sets"]
    if s not in sets:
        raise ReportError(f"global_retrieval.json has no set {s!r}")
    d = sets[s]
    negatives = f"; hard negatives: {d['hard_negatives']}" if "hard_negatives" in d else ""
    return para(f"`{s}`: {d['database']}{negatives}; {d['queries']} queries.")


@renderer("global_oxford_table")
def global_oxford_table(results) -> str:
    """oxford: every head, single / multi-scale, every whitening."""
    doc = results[STEM]
    header = ["head", *(whiten_label(doc, "oxford", w, d) for w, d in WHITENINGS)]
    rows = []
    for head in POOLED:
        rows.append(
            [head]
            + [
                " / ".join(
                    f1(value(doc, set="oxford", head=head, scales=s, whiten=w, dim=d))
                    for s in ("single", "multi")
                )
                for w, d in WHITENINGS
            ]
        )
    rows.append(
        ["codes (224 px, one scale)"]
        + [f1(value(doc, set="oxford", head="codes", whiten=w, dim=d)) for w, d in WHITENINGS]
    )
    return table(header, rows)


def _best_qe(doc: dict, **want) -> float:
    return 100 * max(r["map"] for r in select(doc, **want) if r["qe"] > 0)


@renderer("global_tiles_table")
def global_tiles_table(results) -> str:
    """tiles: single, multi, whitened (multi) and the best QE (multi)."""
    doc = results[STEM]
    pca = [whiten_label(doc, "tiles", "pca", d).split()[1] for d in ("n-1", 32)]
    header = [
        "head",
        "single scale",
        "multi-scale",
        f"PCA {' / '.join(pca)} (multi)",
        f"learned {' / '.join(pca)} (multi)",
        "best QE (multi)",
    ]
    rows = []
    for head in POOLED:
        w = {
            (wh, d): f1(value(doc, set="tiles", head=head, scales="multi", whiten=wh, dim=d))
            for wh, d in WHITENINGS
        }
        rows.append(
            [
                head,
                f1(value(doc, set="tiles", head=head, scales="single", whiten="none")),
                w[("none", None)],
                f"{w[('pca', 'n-1')]} / {w[('pca', 32)]}",
                f"{w[('learned', 'n-1')]} / {w[('learned', 32)]}",
                f1(_best_qe(doc, set="tiles", head=head, scales="multi", whiten="none")),
            ]
        )
    best = max(range(len(rows)), key=lambda i: float(rows[i][-1]))
    rows[best][-1] = f"**{rows[best][-1]}**"
    rows.append(
        [
            "codes (one scale)",
            f1(value(doc, set="tiles", head="codes", whiten="none")),
            "-",
            "-",
            "-",
            f1(_best_qe(doc, set="tiles", head="codes", whiten="none")),
        ]
    )
    return table(header, rows)


@renderer("global_vlad_line")
def global_vlad_line(results) -> str:
    """VLAD (k = 64, no PCA) on the oxford set, from image_retrieval.json."""
    doc = results["image_retrieval"]
    m = {
        r["descriptor"]: r["map"]
        for r in doc["results"]
        if (r["k"], r["pca"], r["codebook_on"]) == (64, None, "distractors")
    }
    return para(
        "VLAD on the same images (`image_retrieval.json`: codebook on the distractors, k = 64, no"
        f" PCA): SIFT {pct(m['sift'])}, RootSIFT {pct(m['rootsift'])}, CKN-grad"
        f" {pct(m['ckn-grad'])}. The set is saturated."
    )


def claims(doc: dict, s: str) -> dict:
    """The tallies of the papers' claims on one set."""
    heads = [*POOLED, "codes"]
    base = {"set": s, "qe": 0, "alpha": 0.0}
    multi = tally(
        [
            (
                value(doc, set=s, head=h, scales="multi", whiten="none"),
                value(doc, set=s, head=h, scales="single", whiten="none"),
            )
            for h in POOLED
        ]
    )
    pairs, keys = [], []
    for sc in ("single", "multi"):
        for w, d in WHITENINGS:
            r = one(doc, head="rmac", scales=sc, whiten=w, dim=d, **base)
            m = one(doc, head="mac", scales=sc, whiten=w, dim=d, **base)
            pairs.append((100 * r["map"], 100 * m["map"]))
            keys.append((key(r), key(m)))
    rmac = tally(pairs, keys)
    qe_pairs, qe_keys, best = [], [], []
    wh_pairs, wh_keys = [], []
    for h in heads:
        for sc in ("single",) if h == "codes" else ("single", "multi"):
            for w, d in WHITENINGS:
                want = {"set": s, "head": h, "scales": sc, "whiten": w, "dim": d}
                r0 = one(doc, qe=0, alpha=0.0, **want)
                r1 = one(doc, qe=1, alpha=0.0, **want)
                qe_pairs.append((100 * r1["map"], 100 * r0["map"]))
                qe_keys.append((key(r1), key(r0)))
                best.append(_best_qe(doc, **want) - 100 * r0["map"])
                if w != "none":
                    u = one(doc, qe=0, alpha=0.0, **{**want, "whiten": "none", "dim": None})
                    wh_pairs.append((100 * r0["map"], 100 * u["map"]))
                    wh_keys.append((key(r0), key(u)))
    learned = [
        value(doc, set=s, head=h, scales="multi", whiten="learned", dim="n-1")
        - value(doc, set=s, head=h, scales="multi", whiten="none")
        for h in POOLED
    ]
    return {
        "multi": multi,
        "rmac": rmac,
        "qe": tally(qe_pairs, qe_keys),
        "best_qe": sorted(best)[len(best) // 2],
        "whiten": tally(wh_pairs, wh_keys),
        "learned_collapses": max(learned) < -20,
    }


@renderer("global_claims")
def global_claims(results) -> str:
    """The seeds' claims on the two sets: multi-scale, R-MAC, QE, whitening."""
    doc = results[STEM]
    c = {s: claims(doc, s) for s in ("oxford", "tiles")}
    fit = {
        "tiles": one(doc, set="oxford", head="mac", scales="single", whiten="none", qe=0)[
            "num_queries"
        ],
        "oxford": doc["timing"]["tiles"]["images"],
    }

    def tr(scales: str, head: str) -> float:
        return value(doc, set="tiles", head=head, scales=scales, whiten="none")

    papers = doc["papers"]["oxford5k"]

    def paper(prefix):
        hits = [v for k, v in papers.items() if k.startswith(prefix)]
        if len(hits) != 1:
            raise ReportError(f"global_retrieval.json papers: no single entry {prefix!r}")
        return f1(hits[0])

    collapse = "; learned whitening collapses" if c["tiles"]["learned_collapses"] else ""
    return para(
        "Where the seeds' claims hold here (distinct comparisons; a difference under 0.1 mAP is a"
        f" tie): multi-scale above single scale for {c['oxford']['multi'].of('heads')} on Oxford"
        f" and {c['tiles']['multi'].of()} on tiles (no whitening); R-MAC above MAC in"
        f" {c['tiles']['rmac'].of('settings')} on tiles ({f1(tr('multi', 'rmac'))} against"
        f" {f1(tr('multi', 'mac'))} multi-scale, {f1(tr('single', 'rmac'))} against"
        f" {f1(tr('single', 'mac'))} at single scale) and {c['oxford']['rmac'].of()} on the"
        " saturated Oxford set; query expansion with k = 1 raised mAP in"
        f" {c['oxford']['qe'].of('settings')} on Oxford and {c['tiles']['qe'].of()} on tiles"
        f" (median gain of the best QE setting {signed(c['oxford']['best_qe'])} on Oxford,"
        f" {signed(c['tiles']['best_qe'])} on tiles). Whitening does **not** hold: fitted on the"
        f" other set ({fit['tiles']} Oxford images for tiles, {fit['oxford']} tile images for"
        " Oxford: small and of another domain) it raised mAP in"
        f" {count(c['oxford']['whiten'].above, c['oxford']['whiten'].n)} settings on Oxford"
        f" (median change {signed(c['oxford']['whiten'].median)}) and in"
        f" {count(c['tiles']['whiten'].above, c['tiles']['whiten'].n)} on tiles (median"
        f" {signed(c['tiles']['whiten'].median)}{collapse}); the papers fit it on thousands of"
        " landmark images. For orientation only (other data, not comparable): R-MAC on VGG16"
        f" reaches {paper('R-MAC, VGG16')} mAP on Oxford5k (Tolias et al.), GeM ResNet-101 with"
        f" learned whitening {paper('ResNet101-GeM')} (Radenovic et al.)."
    )
