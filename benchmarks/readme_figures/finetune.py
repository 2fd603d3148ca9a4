"""README "Supervised fine-tuning (patches)": finetune_patches.py's table, timing and ablation."""

from __future__ import annotations

from .core import cpu, f1, f2, para, renderer, run, table, thousands

STEM = "finetune_patches"
LABELS = {"default": "embedded default", "oxford": "Oxford sequences"}


def _range(xs: list[float]) -> str:
    lo, hi = f1(min(xs)), f1(max(xs))
    return f"about {lo}" if lo == hi else f"{lo} to {hi}"


def _rows(doc: dict) -> dict[str, dict]:
    return {r["data"]: r for r in doc["results"]}


@renderer("finetune_run")
def finetune_run(results) -> str:
    """Where the fine-tuning table comes from."""
    doc = results[STEM]
    return para(
        "`nice python benchmarks/finetune_patches.py --sequences ../shared/data/oxford_affine"
        f" --ablation` (the run: {run(doc, STEM)}; trained on the train split's groups,"
        " validated on held-out train scenes, scored on the test split):"
    )


@renderer("finetune_table")
def finetune_table(results) -> str:
    """Test mAP of SIFT, RootSIFT, ckn-grad before and after fine-tuning, and the target."""
    out = []
    for data, r in _rows(results[STEM]).items():
        target = r["sift"]["test"] + 3
        met = r["finetuned"]["test_map"] >= target
        out.append(
            [
                LABELS[data],
                f2(r["sift"]["test"]),
                f2(r["rootsift"]["test"]),
                f2(r["unsupervised"]["test"]),
                f2(r["finetuned"]["test_map"]),
                f"{f2(target)}: **{'met' if met else 'not met'}**",
            ]
        )
    header = [
        "test mAP",
        "SIFT",
        "RootSIFT",
        "ckn-grad (unsupervised)",
        "ckn-grad fine-tuned",
        "target SIFT + 3",
    ]
    return table(header, out)


@renderer("finetune_reading")
def finetune_reading(results) -> str:
    """Gains, the default run's time, and the Oxford ablation."""
    doc = results[STEM]
    rows = _rows(doc)
    gains = [r["finetuned"]["test_map"] - r["unsupervised"]["test"] for r in rows.values()]
    d = rows["default"]
    rep = d["finetuned"]["report"]
    stop = (
        f"early stop at epoch {rep['epochs_done']}"
        if rep.get("stopped_early")
        else f"{rep['epochs_done']} epochs"
    )
    batch = (
        d["finetuned"]["config"]["groups_per_batch"] * d["finetuned"]["config"]["patches_per_group"]
    )
    other = results["reproduce_default"]
    tuned = next(r for r in other["rows"] if r["descriptor"].endswith("fine-tuned"))
    same_cpu = cpu(other) == cpu(doc)
    elsewhere = (
        f"; {tuned['train_seconds']:.0f} s in the `ckn reproduce --finetune` run above, on the"
        " same CPU model at another load"
        if same_cpu
        else ""
    )
    ab = rows["oxford"]["ablation"]
    ref = ab["reference"]
    con = ab["contrastive loss"]
    lin = ab["filters+linear"]
    epochs = ref["config"]["epochs"]
    start = " (its best epoch is the start)" if con["report"]["best_epoch"] == 0 else ""
    lin_gain = lin["test_map"] - ref["test_map"]
    fits = (
        ": it fits the train scenes without a test gain"
        if lin["train_map"] - ref["train_map"] >= 0.1 and lin_gain < 0.1
        else ""
    )
    return para(
        f"Fine-tuning gains {_range(gains)} points. Fine-tuning"
        f" {thousands(d['finetune_patches'])} default patches took {d['finetuned']['seconds']:.0f}"
        f" s in this run ({stop}, best epoch {rep['best_epoch']};"
        f" {rep['steps_per_second']:.2f} steps/s of {batch} patches{elsewhere})."
        f" Ablation on Oxford ({epochs} epochs): triplet {f2(ref['test_map'])}, contrastive"
        f" {f2(con['test_map'])}{start}, margin x0.5 / x2:"
        f" {f2(ab['triplet margin x0.5']['test_map'])} / {f2(ab['triplet margin x2']['test_map'])},"
        f" filters + linear map {f2(lin['test_map'])} (train-split mAP {f2(ref['train_map'])} ->"
        f" {f2(lin['train_map'])}{fits})."
    )
