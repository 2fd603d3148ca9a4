"""Global descriptors (MAC / GeM / R-MAC) on the maps of an unsupervised CKN (ckn-grad).

Command (from the project root):

    nice python benchmarks/global_ckn.py [--oxford ../shared/data/oxford_affine] \\
        [--model DIR | --work DIR] [--max-side 1024] [--views 4] \\
        [--out benchmarks/results/global_ckn.json] [--cache DIR]

Backbone: ``load_backbone("ckn", weights=MODEL_DIR)`` (``--backbone ckn:MODEL_DIR`` on the
command line), the whole-image maps of a ckn-grad model (stride 16, 64 channels) trained
without labels exactly as ``ckn reproduce`` trains it: the ``ckn-grad`` preset, seed 0, on the
train split of the embedded default patch set (``retrieval.patches.load_data`` and
``ckn_config``). Without ``--model`` the model is trained once into ``--work`` (default
``$CKN_CACHE/bench-models/ckn-grad-reproduce``, else ``~/.cache/ckn/...``) and reused from there.

Everything else is ``benchmarks/global_retrieval.py``'s, imported from it: the two image sets
(``oxford``: the 48 Oxford affine images in 8 groups + 17 distractor photos, the set of the VLAD
rows; ``tiles``: 48 quadrant groups of 4 synthetic views + 12 texture distractors), extraction at
the scales (1, 1/sqrt 2, 1/2) with the long side at most ``--max-side`` (single scale = the
scale-1 descriptor of the same run, multi-scale = power mean, p = 3 for GeM), the whitenings
(none, PCA and learned, to n - 1 and 32 dimensions, always fitted on the OTHER set), query
expansion and AP. Heads: mac, gem, rmac (a CKN has no classifier: no codes, no CAM).

Memory and time at 1024 px: a fresh subprocess (so that its peak RSS is this backbone's alone)
loads the model, describes a 1024 x 768 and a 1024 x 1024 photo (scikit-image's astronaut,
enlarged) with ``features`` (first call = compilation, then the median of 3 calls) and with
multi-scale GeM, and records ``resource.getrusage`` peak RSS after loading and at the end, the
backbone's own estimate (``estimate_bytes``, tiling above ``max_bytes``) and XLA's
``memory_analysis`` of the jitted map.

Prints the tables of global_retrieval.py (mAP per head, scale and whitening; no QE / best QE) and
the comparison with the EfficientNet-Lite0 rows of ``benchmarks/results/global_retrieval.json``
and the VLAD rows of ``image_retrieval.json``; writes JSON ``{"metadata", "protocol", "model",
"results", "timing", "memory_1024", "lite0", "vlad", "claims"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import global_retrieval as GR  # noqa: E402

import ckn  # noqa: E402
from retrieval.cli import provenance  # noqa: E402
from retrieval.image import MULTI_SCALE, GlobalConfig, extract_global  # noqa: E402
from retrieval.nets import load_backbone  # noqa: E402
from retrieval.patches import ckn_config, load_data  # noqa: E402

META = provenance.start()

HEADS = ("mac", "gem", "rmac")
PRESET = "ckn-grad"
SEED = 0
LITE0_FILE = GR.VLAD_FILE.parent / "global_retrieval.json"
PROBE_SIZES = ((768, 1024), (1024, 1024))  # (height, width)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _rss_mib() -> float:
    """Peak resident set size of this process's own memory so far, in MiB.

    ``VmHWM`` of ``/proc/self/status``: the high-water mark of this address space only.
    ``ru_maxrss`` is not used where ``/proc`` exists: Linux carries it over fork and exec,
    so the probe subprocess would report this run's peak (a model trained in the run) as
    its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def train_model(work: Path) -> dict:
    """ckn-grad trained as ``ckn reproduce`` trains it (train split of the default set, seed 0).

    Reused when ``work`` already holds a model; returns where it is and how it was made.
    """
    if (work / "config.json").is_file():
        _log(f"model: reusing {work}")
        return {"dir": str(work), "trained_here": False}
    ps, data_desc = load_data(quick=False, sequences=None, patches=None, seed=SEED, progress=False)
    train_x = ps.patches[np.asarray(ps.split) == 0]
    _log(f"training {PRESET} on {len(train_x)} train-split patches of the {data_desc} set "
         "(no labels)")  # fmt: skip
    t0 = time.perf_counter()
    model, _ = ckn.train(ckn_config(PRESET, quick=False), train_x, seed=SEED, progress=False)
    seconds = time.perf_counter() - t0
    ckn.save(model, work, training={"seed": SEED, "data": data_desc, "seconds": seconds})
    _log(f"trained in {seconds:.0f} s -> {work}")
    return {"dir": str(work), "trained_here": True, "train_seconds": seconds,
            "train_patches": int(len(train_x))}  # fmt: skip


def probe(model_dir: str) -> dict:
    """Time and memory of the CKN backbone at 1024 px, in this (fresh) process."""
    import cv2
    import skimage.data

    rss0 = _rss_mib()
    net = load_backbone("ckn", weights=model_dir)
    photo = skimage.data.astronaut()
    out = {"rss_before_load_mib": rss0, "max_bytes": net.max_bytes, "sizes": []}
    out["rss_after_load_mib"] = _rss_mib()
    for h, w in PROBE_SIZES:
        shrink = h <= photo.shape[0] and w <= photo.shape[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR  # as extract_global resizes
        img = cv2.resize(photo, (w, h), interpolation=interp)[None]
        row = {"height": h, "width": w, "estimate_bytes": net.estimate_bytes(h, w)}
        row["tiled"] = row["estimate_bytes"] > net.max_bytes
        t0 = time.perf_counter()
        net.features(img).block_until_ready()
        row["features_first_call_s"] = time.perf_counter() - t0
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            net.features(img).block_until_ready()
            times.append(time.perf_counter() - t0)
        row["features_median_s"] = float(np.median(times))
        row["features_times_s"] = times
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cfg = GlobalConfig(head="gem", max_side=1024)
            t0 = time.perf_counter()
            extract_global(net, [img[0]], cfg)
            row["gem_3_scales_first_s"] = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                extract_global(net, [img[0]], cfg)
                times.append(time.perf_counter() - t0)
        row["gem_3_scales_median_s"] = float(np.median(times))
        try:  # XLA's account of the jitted map (the estimate's basis), after the timings
            ma = net.lower_features(img).compile().memory_analysis()
            row["xla_temp_bytes"] = int(ma.temp_size_in_bytes)
            row["xla_output_bytes"] = int(ma.output_size_in_bytes)
        except Exception as e:  # noqa: BLE001 - optional figure; say why it is missing
            row["xla_memory_analysis"] = f"unavailable: {type(e).__name__}"
        row["peak_rss_mib_after"] = _rss_mib()
        out["sizes"].append(row)
        _log(json.dumps(row))
    out["peak_rss_mib"] = _rss_mib()
    out["load_average"] = provenance.load_average()
    return out


def run_probe(model_dir: str) -> dict:
    """:func:`probe` in a subprocess: its peak RSS is not this run's (two image sets held)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", model_dir]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"failed": res.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def lite0_beside(rows: list[dict]) -> dict:
    """The EfficientNet-Lite0 row of global_retrieval.json for every CKN row without QE."""
    if not LITE0_FILE.is_file():
        return {"skipped": f"{LITE0_FILE} not found"}
    d = json.loads(LITE0_FILE.read_text())
    lite = {(*GR._key(r), r["qe"], r["alpha"]): r for r in d["results"]}
    out = {"source": str(LITE0_FILE.relative_to(LITE0_FILE.parents[2])),
           "source_commit": d["metadata"].get("commit"), "rows": []}  # fmt: skip
    for r in rows:
        if r["qe"] != 0:
            continue
        other = lite.get((*GR._key(r), 0, 0.0))
        if other is not None:
            out["rows"].append({
                "set": r["set"], "head": r["head"], "scales": r["scales"], "whiten": r["whiten"],
                "whiten_dim_setting": r["whiten_dim_setting"], "ckn": r["map"],
                "lite0": other["map"], "ckn_minus_lite0": r["map"] - other["map"],
            })  # fmt: skip
    gaps = [x["ckn_minus_lite0"] for x in out["rows"]]
    if gaps:
        out["summary"] = {
            s: {
                "ckn_at_or_above_lite0": sum(x["ckn_minus_lite0"] >= 0
                                             for x in out["rows"] if x["set"] == s),
                "comparisons": sum(1 for x in out["rows"] if x["set"] == s),
                "median_gap_points": 100 * float(np.median(
                    [x["ckn_minus_lite0"] for x in out["rows"] if x["set"] == s])),
            }
            for s in dict.fromkeys(x["set"] for x in out["rows"])
        }  # fmt: skip
    return out


def readme_table(rows: list[dict], lite: dict, set_name: str) -> str:
    """Markdown: CKN mAP (Lite0 mAP), no QE, per head x scales and whitening."""
    cols = [(w, GR._wkey(w, d)) for w, d in GR.WHITENINGS]
    by = {(*GR._key(r), r["qe"], r["alpha"]): r for r in rows}
    lb = {(x["set"], x["head"], x["scales"], x["whiten"], x["whiten_dim_setting"]): x["lite0"]
          for x in lite.get("rows", [])}  # fmt: skip
    names = {"none": "no whitening", "pca": "PCA", "learned": "learned"}
    head = " | ".join(names[w] + ("" if d is None else f" {d}") for w, d in cols)
    lines = [f"| head | scales | {head} |", "|---|---|" + "---|" * len(cols)]
    for h in HEADS:
        for scales in ("single", "multi"):
            cells = []
            for w, wd in cols:
                r = by.get((set_name, h, scales, w, wd, 0, 0.0))
                if r is None:
                    cells.append("-")
                    continue
                li = lb.get((set_name, h, scales, w, wd))
                cells.append(f"{100 * r['map']:.1f}" + ("" if li is None else f" ({100 * li:.1f})"))
            lines.append(f"| {h} | {scales} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--oxford", default="../shared/data/oxford_affine")
    ap.add_argument("--views", type=int, default=4, help="synthetic views per quadrant (default 4)")
    ap.add_argument("--model", default=None, help="a trained ckn-grad model directory to reuse")
    ap.add_argument(
        "--work",
        default=str(Path(os.environ.get("CKN_CACHE") or Path.home() / ".cache" / "ckn")
                    / "bench-models" / "ckn-grad-reproduce"),
        help="where the model trained here goes (reused when it is there)",
    )  # fmt: skip
    ap.add_argument("--max-side", type=int, default=1024, help="long side cap in px (1024)")
    ap.add_argument("--out", default="benchmarks/results/global_ckn.json")
    ap.add_argument("--cache", default=None, help="development aid: descriptors saved / read here")
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # the 1024-px subprocess
    args = ap.parse_args(argv)
    if args.probe is not None:
        print(json.dumps(probe(args.probe), default=GR._json_default))
        return 0
    if args.max_side < 64:
        print(f"error: --max-side must be >= 64, got {args.max_side}", file=sys.stderr)
        return 2
    if args.model is not None and not (Path(args.model) / "config.json").is_file():
        print(f"error: --model {args.model} is not a CKN model directory", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    cache = None if args.cache is None else Path(args.cache)
    model = (
        {"dir": args.model, "trained_here": False} if args.model else train_model(Path(args.work))
    )
    model["config"] = json.loads((Path(model["dir"]) / "config.json").read_text())
    _log("memory / time probe at 1024 px (subprocess)")
    mem = run_probe(model["dir"])
    net = load_backbone("ckn", weights=model["dir"])
    kw = {"heads": HEADS, "codes": False, "max_side": args.max_side}
    sets: dict[str, dict] = {}
    ox = GR.oxford_set(Path(args.oxford))
    if ox is None:
        _log(f"oxford: {args.oxford} not found: the Oxford set is skipped")
    else:
        images, names, labels = ox
        steady = (
            lambda: {  # noqa: E731
                "steady_state_seconds_per_image": GR.steady_state(
                    net, images[0:48:3], args.max_side
                )
            }
        )
        d = GR.cached_describe(net, images, "ckn_oxford", cache, steady, **kw)
        sets["oxford"] = {**d, "labels": labels, "names": names,
                          "train_rows": np.flatnonzero(labels >= 0)}  # fmt: skip
    images, names, labels = GR.tiles_set(args.views)
    d = GR.cached_describe(net, images, "ckn_tiles", cache, **kw)
    sets["tiles"] = {**d, "labels": labels, "names": names,
                     "train_rows": np.arange(len(images))}  # fmt: skip
    peak_rss = _rss_mib()
    rows = []
    if "oxford" in sets:
        rows += GR.evaluate(sets["oxford"], sets["tiles"], "oxford", "tiles (all its images)")
        rows += GR.evaluate(sets["tiles"], sets["oxford"], "tiles", "oxford (the 48 Oxford images)")
    else:
        rows += GR.evaluate(sets["tiles"], None, "tiles", "")
    lite = lite0_beside(rows)
    for s in sets:
        _log(GR.table(rows, s))
        _log(f"README table, {s}: CKN (Lite0), no QE\n" + readme_table(rows, lite, s))
    cl = GR.claims(rows)
    _log(json.dumps({"verdict": cl["verdict"], "lite0": lite.get("summary")}, indent=1))
    doc = {
        "metadata": {
            **provenance.finish(META),
            "command": "python benchmarks/global_ckn.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "seconds_total": time.perf_counter() - t_start,
            "peak_rss_mib_whole_run": peak_rss,
        },
        "protocol": {
            "backbone": f"ckn:{model['dir']} ({PRESET}, trained without labels as ckn reproduce "
            "trains it: the train split of the embedded default patch set, seed 0)",
            "heads": list(HEADS),
            "extraction": {
                "scales": list(MULTI_SCALE),
                "max_side": args.max_side,
                "bucket": GlobalConfig().bucket,
                "single": "the scale-1 descriptor of the same run",
                "multi": "power mean over scales, p = 3 (GeM) or 1, then L2",
            },
            "sets_whitening_qe_ap": "those of benchmarks/global_retrieval.py (its functions, "
            "imported): see global_retrieval.json's protocol",
            "vlad_ckn_model_note": "the VLAD CKN-grad row (image_retrieval.json) used a ckn-grad "
            "trained on ALL patches of the default set (benchmarks/image_retrieval.py), this one "
            "the train split only (ckn reproduce): same preset, seed and photos' data",
        },
        "model": model,
        "results": rows,
        "timing": {s: v["timing"] for s, v in sets.items()},
        "memory_1024": mem,
        "lite0": lite,
        "vlad": GR.vlad_beside(),
        "claims": cl,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=GR._json_default) + "\n")
    _log(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
