"""Image retrieval benchmark: VLAD over SIFT, RootSIFT and CKN-grad local descriptors.

Command (from the project root; about 15 minutes on the 2-core CPU, most of it
describing ~40,000 patches with each CKN model):

    python benchmarks/image_retrieval.py --oxford ../shared/data/oxford_affine \\
        [--models ckn-grad=DIR,ckn-grad-paper=DIR] [--max-regions 500] \\
        [--out benchmarks/results/image_retrieval.json]

Without ``--models`` the CKN presets are trained here, without labels, on the
embedded default patch set (``retrieval.build_default()``, scikit-image
photos; cached) and saved under ``--work``.

Protocol. Database: the 48 images of the eight Oxford affine sequences (bark,
bikes, boat, graf, leuven, trees, ubc, wall; one group each, 6 images) plus
scikit-image photos as distractors (never queries, relevant to nothing).
Every Oxford image is a query against the 47 + distractors others; AP is the
non-interpolated AP (query excluded, ties against the relevant images); the
Oxford trapezoidal mAP is in the JSON too. Local descriptors: SIFT interest
regions as in the patch data, at most ``--max-regions`` per image (strongest
first), 51 x 51 oriented patches, described by SIFT / RootSIFT at the patch
centre or by a CKN model; images above 1000 px on their long side are
resized. VLAD: local descriptors PCA-reduced to 128-D when larger (CKN:
1024-D), signed square root + intra-normalization + L2. The codebook, local PCA and
VLAD PCA-whitening are fitted on the distractor photos only (no Oxford image
is used to fit anything, and the CKN models never saw an Oxford image); an
ablation fits them on the evaluated images instead (transductive).

Prints the mAP ablation table (descriptor x k x PCA), per-sequence AP,
encoding vs describing time per image, and faiss IVF-PQ recall@10 against
exact search on VLADs of image windows (a larger collection); writes JSON
``{"metadata", "protocol", "results", "per_group", "timing", "faiss", "target"}``.

Target band (the paper's image-retrieval claim, Paulin et al. IJCV 2017
Sec. 6): VLAD over CKN-grad at or above VLAD over SIFT in mAP, same images,
same protocol. The JSON says whether it holds for each (k, PCA) setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import ckn
import retrieval
from ckn import InputError
from retrieval.cli import provenance
from retrieval.patches import default_photos, read_image

# Taken when the script starts: the code that ran, not HEAD at the end.
_META = provenance.start()

SEQUENCES = ("bark", "bikes", "boat", "graf", "leuven", "trees", "ubc", "wall")
DISTRACTORS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "rocket",
    "text",
    "retina",
)
KS = (16, 64, 256)
# (pca_dim, whiten): none, PCA-whitening to 64 and 256, plain PCA to 256.
PCAS = ((None, False), (64, True), (256, True), (256, False))


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_database(oxford: Path):
    images, names, labels = [], [], []
    for g, seq in enumerate(SEQUENCES):
        files = sorted(p for p in (oxford / seq).iterdir() if p.stem.startswith("img"))
        if len(files) != 6:
            raise InputError(f"{oxford / seq}: expected img1..img6, found {len(files)} images")
        for f in files:
            images.append(read_image(f))
            names.append(f"{seq}/{f.name}")
            labels.append(g)
    n_oxford = len(images)
    for name, img in default_photos(DISTRACTORS):
        images.append(img)
        names.append(f"distractor/{name}")
        labels.append(-1)
    return images, names, np.asarray(labels, np.int64), n_oxford


def train_models(work: Path, presets: list[str]) -> dict[str, str]:
    out = {}
    patches = None
    work.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        path = work / preset
        if not (path / "config.json").is_file():
            if patches is None:
                _log(
                    "building the default patch set (scikit-image photos) for unsupervised training"
                )
                ps = retrieval.build_default()
                patches = ps.patches
            _log(f"training {preset} on {patches.shape[0]} patches (no labels)")
            t0 = time.perf_counter()
            model, _ = ckn.train(ckn.get_preset(preset), patches, seed=0)
            ckn.save(
                model,
                path,
                training={"seconds": time.perf_counter() - t0, "patches": "build_default()"},
            )
        out[preset] = str(path)
    return out


def describe_all(images, names, spec, local: retrieval.local.LocalConfig):
    """Local features of every image (describer warmed up first: no compilation in the timings).

    Images without any region are reported and left out of the database.
    """
    d = retrieval.local.make_local_describer(spec)
    warm = np.random.default_rng(0).integers(
        0, 256, (256, d.patch_size, d.patch_size), dtype=np.uint8
    )
    if d.color:
        warm = np.repeat(warm[..., None], 3, axis=3)
    d(warm)
    feats, kept, dropped = [], [], []
    for i, (img, name) in enumerate(zip(images, names)):
        try:
            feats.append(retrieval.local.local_features(img, d, config=local, name=name))
            kept.append(i)
        except InputError as e:
            dropped.append(str(e))
    return d, feats, kept, dropped


def _stats(xs) -> dict:
    xs = [float(x) for x in xs]
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "mean": statistics.fmean(xs),
    }


def encode_timing(feats, train, repeats: int = 5) -> dict:
    """Steady-state encoding seconds per image (median of repeats), compilation apart."""
    out = {}
    for label, cfg in (
        ("vlad_k64", retrieval.local.VladConfig(k=64, pca_dim=None)),
        ("vlad_k64_pca256", retrieval.local.VladConfig(k=64, pca_dim=256)),
    ):
        model = retrieval.local.fit_vlad(train, cfg)
        t0 = time.perf_counter()
        retrieval.local.encode_images(model, feats)
        first = time.perf_counter() - t0
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            retrieval.local.encode_images(model, feats)
            runs.append((time.perf_counter() - t0) / len(feats))
        out[label] = {
            "first_call_seconds_total": first,
            "per_image_seconds": _stats(runs),
            "images": len(feats),
        }
    return out


def faiss_recall(feats, train, seed: int = 0) -> dict:
    """IVF-PQ recall@10 vs exact on VLADs (k=64, PCA-whitened 256) of 50 random windows per
    image."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return {"skipped": "faiss not installed"}
    model = retrieval.local.fit_vlad(train, retrieval.local.VladConfig(k=64, pca_dim=256))
    rng = np.random.default_rng(seed)
    sets = []
    for f in feats:
        xr = f.descriptors
        if model.local_pca is not None:
            xr = retrieval.image.apply_pca_whitening(model.local_pca, xr, l2_norm=False)
        sets += [xr[idx] for idx in retrieval.local.window_subsets(f, 50, rng, min_count=16)]
    vecs = retrieval.local.encode_images(model, sets)
    q = vecs[rng.choice(vecs.shape[0], 300, replace=False)]
    t0 = time.perf_counter()
    exact = retrieval.index.make_index(vecs).search(q, 10)
    t_exact = time.perf_counter() - t0
    out = {
        "database": int(vecs.shape[0]),
        "dim": int(vecs.shape[1]),
        "queries": 300,
        "exact_seconds": t_exact,
        "settings": [],
    }
    for m in (32, 64):
        t0 = time.perf_counter()
        index = retrieval.index.make_index(vecs, "ivfpq", m=m, nprobe=16)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = index.search(q, 10)
        out["settings"].append(
            {
                **index.options,
                "bytes_per_vector": m * index.options["nbits"] // 8,
                "recall_at_10": retrieval.index.recall_at(approx.ids, exact.ids, 10),
                "build_seconds": t_build,
                "search_seconds": time.perf_counter() - t0,
            }
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oxford", required=True, help="folder of the Oxford affine sequences")
    ap.add_argument(
        "--models",
        default=None,
        help="NAME=DIR[,NAME=DIR]: trained CKN models (default: train here)",
    )
    ap.add_argument(
        "--presets", default="ckn-grad,ckn-grad-paper", help="presets to train without --models"
    )
    ap.add_argument(
        "--work",
        default=str(
            Path(os.environ.get("CKN_CACHE") or Path.home() / ".cache" / "ckn") / "bench-models"
        ),
        help="where models trained here go",
    )
    ap.add_argument("--max-regions", type=int, default=500, help="regions per image (default 500)")
    ap.add_argument("--out", default="benchmarks/results/image_retrieval.json")
    args = ap.parse_args(argv)
    oxford = Path(args.oxford)
    if not oxford.is_dir():
        print(f"error: Oxford affine folder not found: {oxford}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    if args.models:
        models = dict(kv.split("=", 1) for kv in args.models.split(","))
    else:
        models = train_models(Path(args.work), args.presets.split(","))
    images, names, labels, n_oxford = load_database(oxford)
    local = retrieval.local.LocalConfig(max_regions=args.max_regions, max_side=1000)
    descriptors = {"sift": "sift", "rootsift": "rootsift", **models}
    results, per_group, timing, dropped_all = [], {}, {}, {}
    faiss_report = None
    for dname, spec in descriptors.items():
        _log(
            f"== {dname}: describing {len(images)} images (at most {args.max_regions} regions each)"
        )
        t0 = time.perf_counter()
        d, feats, kept, dropped = describe_all(images, names, spec, local)
        _log(
            f"   {time.perf_counter() - t0:.1f} s; {len(dropped)} images without regions: {dropped}"
        )
        dropped_all[dname] = dropped
        lab = labels[kept]
        nm = [names[i] for i in kept]
        if (lab >= 0).sum() != n_oxford:
            raise InputError(f"{dname}: an Oxford image has no region: {dropped}")
        train = [f for f, lb in zip(feats, lab) if lb < 0]  # the distractor photos
        counts = [f.descriptors.shape[0] for f in feats]
        timing[dname] = {
            "dim": d.dim,
            "regions_per_image": _stats(counts),
            "regions_seconds_per_image": _stats([f.seconds_regions for f in feats]),
            "describe_seconds_per_image": _stats([f.seconds_describe for f in feats]),
            "describe_seconds_per_patch": sum(f.seconds_describe for f in feats) / sum(counts),
        }
        timing[dname]["encode"] = encode_timing(feats, train)
        enc = timing[dname]["encode"]["vlad_k64_pca256"]["per_image_seconds"]["median"]
        _log(
            "   per image: regions+patches "
            f"{timing[dname]['regions_seconds_per_image']['median'] * 1e3:.0f} ms, "
            f"describe {timing[dname]['describe_seconds_per_image']['median'] * 1e3:.0f} ms, "
            f"VLAD k=64 + PCA 256 encode {enc * 1e3:.2f} ms (medians)"
        )
        settings = [(k, p, w, "distractors") for k in KS for p, w in PCAS]
        settings += [(64, None, False, "evaluated images"), (64, 256, True, "evaluated images")]
        for k, pca, whiten, on in settings:
            cfg = retrieval.local.VladConfig(k=k, pca_dim=pca, pca_whiten=whiten)
            t_fit = time.perf_counter()
            model = retrieval.local.fit_vlad(train if on == "distractors" else feats, cfg)
            t_fit = time.perf_counter() - t_fit
            vectors = retrieval.local.encode_images(model, feats, names=nm)
            res = retrieval.metrics.image_retrieval_map(vectors, lab, names=nm)
            row = {
                "descriptor": dname,
                "k": k,
                "pca": pca,
                "whiten": whiten,
                "codebook_on": on,
                "dim": model.dim,
                "map": res.mean_ap,
                "map_trapezoid": res.mean_ap_trapezoid,
                "num_queries": res.num_queries,
                "fit_seconds": t_fit,
            }
            results.append(row)
            _log(
                f"   k={k:<3} pca={str(pca):<4} whiten={str(whiten):<5} on {on:<16} "
                f"mAP {100 * res.mean_ap:6.2f}"
            )
            if (k, pca, on) == (64, None, "distractors"):
                per = res.per_query
                per_group[dname] = {
                    s: float(np.nanmean(per[lab == g])) for g, s in enumerate(SEQUENCES)
                }
        if faiss_report is None:
            faiss_report = faiss_recall(feats, train)
            faiss_recalls = [
                (s["m"], round(s["recall_at_10"], 3)) for s in faiss_report.get("settings", [])
            ]
            _log(
                f"   faiss IVF-PQ vs exact on {faiss_report.get('database')} window VLADs: "
                f"{faiss_recalls}"
            )
    target = []
    ckn_names = [n for n in descriptors if n not in ("sift", "rootsift")]
    for row in results:
        if row["descriptor"] != "sift":
            continue
        for cn in ckn_names:
            other = next(
                r
                for r in results
                if r["descriptor"] == cn
                and all(r[f] == row[f] for f in ("k", "pca", "whiten", "codebook_on"))
            )
            target.append(
                {
                    "ckn": cn,
                    "k": row["k"],
                    "pca": row["pca"],
                    "whiten": row["whiten"],
                    "codebook_on": row["codebook_on"],
                    "sift_map": row["map"],
                    "ckn_map": other["map"],
                    "ckn_at_or_above_sift": other["map"] >= row["map"],
                }
            )
    doc = {
        "metadata": {
            **provenance.finish(_META),
            "command": "python benchmarks/image_retrieval.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "seconds_total": time.perf_counter() - t_start,
            "models": models,
        },
        "protocol": {
            "database": f"{n_oxford} Oxford affine images (8 groups of 6) + "
            f"{len(DISTRACTORS)} scikit-image distractors",
            "queries": "every Oxford image, against all other database images",
            "ap_definition": "non-interpolated AP, query excluded, ties against relevant (map); "
            "Oxford trapezoid (map_trapezoid)",
            "local": dataclasses.asdict(local),
            "vlad": "local PCA to 128-D when larger, signed sqrt + intra-norm + L2; "
            "codebook/PCA fitted on the distractors unless codebook_on says otherwise",
            "distractors": list(DISTRACTORS),
            "dropped_images": dropped_all,
        },
        "results": results,
        "per_group": per_group,
        "timing": timing,
        "faiss": faiss_report,
        "target": {"claim": "VLAD over CKN-grad at or above VLAD over SIFT", "rows": target},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    _log(f"wrote {out}")
    _log(format_table(results))
    return 0


def format_table(results) -> str:
    """Markdown: one row per (k, PCA, codebook set), one column per descriptor."""
    descs = list(dict.fromkeys(r["descriptor"] for r in results))
    keys = list(dict.fromkeys((r["k"], r["pca"], r["whiten"], r["codebook_on"]) for r in results))
    lines = [
        "| k | PCA | codebook on | " + " | ".join(descs) + " |",
        "|---|---|---|" + "---|" * len(descs),
    ]
    for k, pca, whiten, on in keys:
        cells = []
        for dn in descs:
            r = next(
                r
                for r in results
                if r["descriptor"] == dn
                and (r["k"], r["pca"], r["whiten"], r["codebook_on"]) == (k, pca, whiten, on)
            )
            cells.append(f"{100 * r['map']:.1f}")
        p = "none" if pca is None else f"{pca}{' whitened' if whiten else ' plain'}"
        lines.append(f"| {k} | {p} | {on} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
