"""README "Standard patch benchmarks": hpatches_style.py's table, beside the official code."""

from __future__ import annotations

import dataclasses

import ckn

from .core import ReportError, f2, para, pct, renderer, run, signed, table, thousands

STEM = "hpatches_style"


def _rows(doc: dict) -> dict[str, dict]:
    if doc["metadata"].get("quick"):
        raise ReportError(f"{STEM}.json is a --quick smoke run, not for the README")
    return {r["descriptor"]: r for r in doc["results"]}


def _recipe(config: dict) -> str:
    """The fine-tuning settings that differ from ``ckn finetune``'s defaults, as its flags."""
    defaults = dataclasses.asdict(ckn.FinetuneConfig())
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in config.items() if defaults.get(k, v) != v]
    return "`ckn finetune " + " ".join(flags) + "`" if flags else "`ckn finetune`'s defaults"


@renderer("hpatches_style_run")
def hpatches_style_run(results) -> str:
    """Where the HPatches-style table comes from: command, data, models, the run."""
    doc = results[STEM]
    _rows(doc)
    data = doc["data"]
    n = {s: thousands(data["reference_patches"][s]) for s in data["train"] + data["test"]}
    tuned = next(r for r in doc["results"] if "recipe" in r)
    rep = tuned["finetune"]
    stop = "early stop" if rep.get("stopped_early") else "no early stop"
    pairs = thousands(doc["tasks"]["config"]["n_pairs"])
    return para(
        "`nice python benchmarks/hpatches_style.py` (the run:"
        f" {run(doc, STEM)}): HPatches-style data built from `oxford_affine` with the defaults of"
        " `ckn patches --hpatches-style`; train sequences"
        f" {', '.join(f'{s} ({n[s]})' for s in data['train'])}, test"
        f" {', '.join(f'{s} ({n[s]})' for s in data['test'])} (reference patches, each in 16"
        " images). ckn-raw, ckn-white and ckn-grad trained without labels on the train"
        f" sequences' patches; {tuned['descriptor']}: {tuned['recipe']['start']} trained on"
        f" their labels ({_recipe(tuned['recipe']['config'])}; validation on"
        f" {', '.join(tuned['validation_scenes'])} held out; best epoch {rep['best_epoch']} of"
        f" {rep['epochs_done']}, {stop}, {tuned['train_seconds'] / 60:.0f} min). Task files"
        f" generated once (seed"
        f" {doc['tasks']['config']['seed']}, {pairs} verification positives instead of the"
        " official 1,000,000) and read by both the project and the unmodified official Python"
        " benchmark, which scores the same CSV files. Test sequences, percent:"
    )


@renderer("hpatches_style_table")
def hpatches_style_table(results) -> str:
    """Verification AP, matching mAP by level, retrieval mAP; the official code's difference."""
    out = []
    for name, r in _rows(results[STEM]).items():
        m = r["matching"]
        out.append(
            [
                name,
                pct(r["verification"]["imbalanced"]["mean"], 2),
                *(pct(m[k], 2) for k in ("easy", "hard", "tough")),
                f"**{pct(m['map'], 2)}**",
                pct(r["retrieval"]["map"], 2),
                f"{r['official_max_abs_diff']:.0e}",
            ]
        )
    header = [
        "descriptor",
        "verification AP",
        "matching easy",
        "hard",
        "tough",
        "matching mAP",
        "retrieval mAP",
        "max abs. diff. vs official",
    ]
    return table(header, out)


@renderer("hpatches_style_target")
def hpatches_style_target(results) -> str:
    """The supervised figure: fine-tuned ckn-grad vs RootSIFT + 3 matching mAP, met or not."""
    doc = results[STEM]
    t = doc["target"]
    rows = _rows(doc)
    tuned = next(r for r in doc["results"] if "recipe" in r)
    start = rows[tuned["recipe"]["start"]]
    figures = sum(len(v) for r in doc["results"] for v in r["official"].values())
    return para(
        f"Supervised target (issue 22): {t['statement']}: {pct(t['finetuned_matching_map'], 2)}"
        f" vs RootSIFT {pct(t['rootsift_matching_map'], 2)} ({signed(t['gain_points'], 2)}"
        f" points): **{'met' if t['met'] else 'not met'}** (unsupervised"
        f" {tuned['recipe']['start']}: {pct(start['matching']['map'], 2)}). The official code"
        f" gives the same {figures} figures to {doc['official']['max_abs_diff']:.0e} at most."
    )


LEVERS = "hpatches_levers"


@renderer("hpatches_levers_table")
def hpatches_levers_table(results) -> str:
    """How the recipe was chosen: matching mAP on a train sequence held out, per lever."""
    doc = results[LEVERS]
    r = doc["results"][0]
    val = r["validation_sequence"]
    rows = [
        ["SIFT", "", f2(r["sift"]["map"]), ""],
        ["RootSIFT", "", f2(r["rootsift"]["map"]), ""],
        ["ckn-grad, unsupervised", "", f2(r["unsupervised"]["map"]), ""],
        ["ckn-grad + PCA to 128-D", "", f2(r["pca_128"]["map"]), ""],
    ]
    for name, lever in r["levers"].items():
        change = ", ".join(f"{k} {v}" for k, v in lever["change"].items()) or "the reference"
        rows.append(
            [
                f"learned projection: {name}",
                change,
                f"**{f2(lever['matching']['map'])}**",
                signed(lever["gain_over_rootsift"], 2),
            ]
        )
    header = ["descriptor", "change", f"matching mAP on {val}", "vs RootSIFT"]
    reference = _recipe(doc["reference"])
    return (
        para(
            f"The recipe was chosen before the run above, on the train sequences alone"
            f" (`python benchmarks/hpatches_levers.py`, {run(doc, LEVERS)}): models trained on"
            f" {', '.join(s for s in r['train_sequences'])} (early stopping on"
            f" {', '.join(r['finetune_validation']['held_out'])}), matching mAP (percent) on {val}"
            f" held out; the test sequences ({', '.join(doc['test_sequences_never_read'])})"
            f" never read. Reference lever: {reference}; each row changes one setting."
        )
        + "\n\n"
        + table(header, rows)
    )
