"""``ckn reproduce``: the Patch-CKN patch-retrieval table on RomePatches-style data.

Builds the data (the embedded default, or Oxford-layout homography sequences),
trains CKN-raw, CKN-white and CKN-grad without labels on the train split,
describes every patch with them and with the baselines (SIFT, RootSIFT,
normalized pixels), and reports all-vs-all patch-retrieval mAP per split in
the paper's form (descriptor, coverage, dimension, train mAP, test mAP).
With a ``finetune`` config, the run's ckn-grad is also fine-tuned with labels
(``ckn.finetune``) on the train split's groups, whole train scenes held out for
validation (``finetune_rows``), and scored as one more row on both splits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import ckn
from ckn import InputError
from ckn.files import atomic_path
from retrieval._src import data as patchsets
from retrieval._src.baselines import BASELINES, describe_baseline
from retrieval._src.evaluation import evaluate_descriptors

#: Patch retrieval mAP on RomePatches reported by [P1] (ICCV 2015 numbers as
#: quoted by He, Lu, Sclaroff, CVPR 2018, Table 2; CKN_NOTES section 3).
PAPER_ROMEPATCHES = {
    "sift": {"coverage": "51x51", "dim": 128, "train_map": 91.6, "test_map": 87.9},
    "alexnet-conv3": {"coverage": "99x99", "dim": 384, "train_map": 81.6, "test_map": 79.2},
    "philippnet": {"coverage": "64x64", "dim": 512, "train_map": 86.1, "test_map": 81.4},
    "ckn-grad": {"coverage": "51x51", "dim": 1024, "train_map": 92.5, "test_map": 88.1},
}

SPLITS = (("train", 0), ("test", 1))

DEFAULT_DESCRIPTORS = ("ckn-raw", "ckn-white", "ckn-grad", "sift", "rootsift", "pixels")

#: ``--quick``: fewer sub-patches and k-means iterations per layer (the
#: architectures are the presets').
QUICK_TRAIN = {"num_patches": 30_000, "kmeans_iters": 20}

#: The fine-tuned row (``finetune=``): its name, the model it starts from, and
#: the share of train rows held out by scene for validation (0.2, as
#: ``ckn finetune``'s default and ``benchmarks/finetune_patches.py``).
FINETUNED = "ckn-grad fine-tuned"
FINETUNE_FROM = "ckn-grad"
FINETUNED_DIR = "ckn-grad-finetuned"  # its model folder under OUT/models
FINETUNE_VAL_FRACTION = 0.2
#: ``--quick --finetune``: epochs of the short fine-tune (the rest as ckn.FinetuneConfig).
QUICK_FINETUNE_EPOCHS = 5


def load_data(
    *, quick: bool, sequences: str | None, patches: str | None, seed: int, progress: bool
):
    """The patch set of the run: a given .npz, Oxford-layout sequences, or the embedded default."""
    if patches is not None:
        ps = patchsets.load_patchset(patches, require_split=True)
        return ps, f"patch file {patches}"
    if sequences is not None:
        ps = patchsets.build_sequences(sequences, progress=progress)  # deterministic: no seed
        return ps, f"homography sequences in {sequences}"
    ps = patchsets.build_default(quick=quick, seed=seed, progress=progress)
    return ps, "embedded default" + (" (quick)" if quick else "")


def ckn_config(name: str, *, quick: bool, train_overrides: dict | None = None) -> ckn.CKNConfig:
    """The preset ``name`` as ``ckn reproduce`` trains it: with ``--quick``'s smaller training
    settings (``QUICK_TRAIN``) when ``quick``, then ``train_overrides`` (TrainConfig fields)."""
    cfg = ckn.get_preset(name)
    over = dict(QUICK_TRAIN if quick else {})
    over.update(train_overrides or {})
    if over:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **over))
    return cfg


def finetune_rows(ps, *, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Rows of ``ps`` to fine-tune on and to validate on: the train split only.

    Whole train scenes (or groups, without scene ids) are held out for
    validation by ``ckn.supervised.validation_split``; no test-split row is in either.

    Returns:
      (fine-tune rows (N_f,), validation rows (N_v,) sorted int64 indices into
      ``ps``, "scene" or "group").
    """
    train = np.flatnonzero(np.asarray(ps.split) == 0)
    ft, va, by = ckn.supervised.validation_split(
        ps.labels[train], ps.scene[train], fraction=FINETUNE_VAL_FRACTION, seed=seed
    )
    return train[ft], train[va], by


def reproduce(
    *,
    quick: bool = False,
    sequences: str | None = None,
    patches: str | None = None,
    out_dir: str | os.PathLike | None = None,
    descriptors: tuple[str, ...] = DEFAULT_DESCRIPTORS,
    seed: int = 0,
    configs: dict[str, ckn.CKNConfig] | None = None,
    batch_size: int = 256,
    precision: str = "highest",
    finetune: ckn.FinetuneConfig | None = None,
    progress: bool = True,
    log=print,
    metadata: Callable[[], dict] | None = None,
) -> dict:
    """Runs the whole benchmark; returns the results dict (also written to ``out_dir``).

    Args:
      quick: the small default data set and lighter training (QUICK_TRAIN).
      sequences: an Oxford/HPatches-layout folder instead of the default data.
      patches: a RomePatches-style .npz (with ``split``) instead of building data.
      out_dir: where results.json, results.png and the trained models go (None: nothing written).
      descriptors: CKN preset names and baseline names, in table order.
      seed: data and training seed.
      configs: CKN configs by name, replacing the presets (used by tests and ablations).
      precision: matrix-product precision of the CKN descriptors, "highest"
        (fp32) or "default" (the backend's fastest: TF32 / bf16 passes on
        GPUs, the same as "highest" on CPU); training always runs in fp32.
      batch_size: patches per jitted describe call.
      finetune: settings of the fine-tuned row (FINETUNED, placed after
        ckn-grad, which ``descriptors`` must hold): the run's ckn-grad
        fine-tuned on ``finetune_rows`` with seed ``seed``; None: no such row.
      progress: show progress bars (stderr).
      log: called with each progress line.
      metadata: called once at the end; its dict is stored as the results'
        ``metadata`` (the command line passes its provenance record, taken
        when the run started).
    """
    t_start = time.perf_counter()
    configs = dict(configs or {})
    for name in descriptors:
        if name not in configs and name not in BASELINES and name not in ckn.PRESETS:
            known = ", ".join([*ckn.PRESETS, *BASELINES])
            raise InputError(f"unknown descriptor {name!r}; expected one of {known}")
    if finetune is not None and FINETUNE_FROM not in descriptors:
        raise InputError(f"the fine-tuned row starts from {FINETUNE_FROM}: add it to descriptors")
    t0 = time.perf_counter()
    ps, data_desc = load_data(
        quick=quick, sequences=sequences, patches=patches, seed=seed, progress=progress
    )
    data_seconds = time.perf_counter() - t0
    split = np.asarray(ps.split)
    if not (split == 0).any() or not (split == 1).any():
        raise InputError("the data set needs both a train and a test split")
    stats = patchsets.patchset_stats(ps)
    size = ps.patches.shape[1]
    log(
        f"data: {data_desc}: {len(ps)} patches of {size}x{size} in {stats['groups']} groups "
        f"(train {int((split == 0).sum())}, test {int((split == 1).sum())}), {data_seconds:.1f} s"
    )
    out = None if out_dir is None else Path(out_dir)  # folders made when something is saved
    rows = []
    curves = {}
    for name in descriptors:
        row: dict = {"descriptor": name, "coverage": f"{size}x{size}"}
        t0 = time.perf_counter()
        if name in BASELINES:
            desc = describe_baseline(name, ps.patches)
            row["train_seconds"] = 0.0
        else:
            cfg = configs.get(name) or ckn_config(name, quick=quick)
            train_x = ps.patches[split == 0]
            model, reports = ckn.train(cfg, train_x, seed=seed, progress=progress)
            row["train_seconds"] = time.perf_counter() - t0
            row["sigma"] = [r.sigma for r in reports]
            row["config"] = cfg.to_dict()
            if out is not None:
                ckn.save(model, out / "models" / name, training={"seed": seed, "data": data_desc})
            t0 = time.perf_counter()
            desc = ckn.describe(
                model, ps.patches, batch_size=batch_size, progress=progress, precision=precision
            )
        row["describe_seconds"] = time.perf_counter() - t0
        rows.append(_score(row, desc, ps, curves, log))
        if name == FINETUNE_FROM and finetune is not None:
            row = _finetuned_row(
                model, ps, finetune, seed, data_desc, out, batch_size, precision, progress
            )
            rows.append(_score(row, row.pop("_desc"), ps, curves, log))
    results = {
        "data": {
            "description": data_desc,
            "seconds": data_seconds,
            "stats": stats,
            "info": ps.info,
        },
        "protocol": (
            "all-vs-all patch retrieval within each split, query excluded, relevant = same group, "
            "non-interpolated AP, ties broken against relevant items; mAP in percent"
        ),
        "quick": quick,
        "seed": seed,
        "precision": precision,
        "finetune": None if finetune is None else dataclasses.asdict(finetune),
        "rows": rows,
        "paper_romepatches": PAPER_ROMEPATCHES,
        "seconds": time.perf_counter() - t_start,
        "metadata": None if metadata is None else metadata(),
    }
    if out is not None:
        write_results(results, curves, out)
    return results


def _score(row: dict, desc: np.ndarray, ps, curves: dict, log) -> dict:
    """Adds dim and the per-split mAP and metrics of (N, D) ``desc`` to ``row``; logs it."""
    name = row["descriptor"]
    split = np.asarray(ps.split)
    row["dim"] = int(desc.shape[1])
    for sname, sval in SPLITS:
        sel = split == sval
        ev = evaluate_descriptors(desc[sel], ps.labels[sel])
        row[f"{sname}_map"] = 100.0 * ev["map"]
        row[f"{sname}_metrics"] = ev
        if sname == "test":
            curves[name] = ev["precision_recall"]
    log(
        f"{name:>10}: dim {row['dim']:5d}  train mAP {row['train_map']:5.1f}  "
        f"test mAP {row['test_map']:5.1f}  "
        f"(train {row['train_seconds']:.1f} s, describe {row['describe_seconds']:.1f} s)"
    )
    return row


def _finetuned_row(model, ps, cfg, seed, data_desc, out, batch_size, precision, progress) -> dict:
    """The FINETUNED row: ``model`` fine-tuned on ``finetune_rows`` (descriptors in "_desc")."""
    size = ps.patches.shape[1]
    ft, va, by = finetune_rows(ps, seed=seed)
    names = np.asarray(ps.scene_names)
    info = {
        "from": FINETUNE_FROM,
        "seed": seed,
        "validation_by": by,
        "validation_fraction": FINETUNE_VAL_FRACTION,
        "finetune_patches": int(ft.size),
        "validation_patches": int(va.size),
        "finetune_scenes": sorted(set(names[ps.scene[ft]].tolist())),
        "validation_scenes": sorted(set(names[ps.scene[va]].tolist())) if by == "scene" else [],
    }
    t0 = time.perf_counter()
    tuned, report = ckn.finetune(
        model,
        ps.patches[ft],
        ps.labels[ft],
        config=cfg,
        seed=seed,
        validation=(ps.patches[va], ps.labels[va]),
        progress=progress,
    )
    row: dict = {"descriptor": FINETUNED, "coverage": f"{size}x{size}"}
    row["train_seconds"] = time.perf_counter() - t0
    row["finetune"] = {**info, "report": report.to_dict()}
    if out is not None:
        ckn.save(
            tuned,
            out / "models" / FINETUNED_DIR,
            training={"seed": seed, "data": data_desc, **row["finetune"]},
        )
    t0 = time.perf_counter()
    row["_desc"] = ckn.describe(
        tuned, ps.patches, batch_size=batch_size, progress=progress, precision=precision
    )
    row["describe_seconds"] = time.perf_counter() - t0
    return row


def format_table(results: dict) -> str:
    """The table of the README: descriptor, coverage, dimension, train and test mAP, test
    nearest-neighbour accuracy and FPR at 95% recall (in %), and the paper's mAPs."""
    lines = [
        f"{'descriptor':<19} {'coverage':>8} {'dim':>5} {'train mAP':>9} {'test mAP':>9} "
        f"{'test NN acc.':>12} {'test FPR95':>10}   paper (RomePatches) train/test",
    ]
    for r in results["rows"]:
        paper = PAPER_ROMEPATCHES.get(r["descriptor"])
        ref = f"{paper['train_map']:.1f} / {paper['test_map']:.1f}" if paper else "-"
        m = r.get("test_metrics") or {}
        nn = f"{100 * m['nn_accuracy']:.1f}" if "nn_accuracy" in m else "-"
        fpr = f"{100 * m['fpr95']:.2f}" if "fpr95" in m else "-"
        lines.append(
            f"{r['descriptor']:<19} {r['coverage']:>8} {r['dim']:>5} {r['train_map']:>9.1f} "
            f"{r['test_map']:>9.1f} {nn:>12} {fpr:>10}   {ref}"
        )
    return "\n".join(lines)


def write_results(results: dict, curves: dict, out: Path) -> None:
    with atomic_path(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(results, indent=2, default=_json_default))
    _figure(results, curves, out / "results.png")


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _figure(results: dict, curves: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = make_figure(results, curves)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def make_figure(results: dict, curves: dict):
    """The results figure (a matplotlib Figure, Agg backend).

    Left: train / test mAP per descriptor, the axis zoomed to the values (its
    lower end said in the axis label), each bar labelled with its value, the
    paper's RomePatches numbers marked as black lines on the bars they
    compare with, the legend below the axes; right: the test PR curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.25, 1]})
    ax = axes[0]
    names = [r["descriptor"] for r in rows]
    xs = np.arange(len(rows))
    width = 0.38
    colours = {"train": "#4c72b0", "test": "#dd8452"}
    paper = {n: PAPER_ROMEPATCHES[n] for n in names if n in PAPER_ROMEPATCHES}
    values = [r[f"{s}_map"] for r in rows for s in ("train", "test")]
    values += [p[f"{s}_map"] for p in paper.values() for s in ("train", "test")]
    lo = max(0.0, np.floor(min(values) - 0.15 * (max(values) - min(values)) - 1.0))
    hi = min(100.0, max(values)) + 0.12 * (max(values) - lo) + 0.5
    for k, s in enumerate(("train", "test")):
        offset = (k - 0.5) * width
        bars = ax.bar(
            xs + offset, [r[f"{s}_map"] for r in rows], width, label=f"{s} split", color=colours[s]
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        for i, n in enumerate(names):
            if n in paper:
                ax.hlines(
                    paper[n][f"{s}_map"],
                    xs[i] + offset - width / 2,
                    xs[i] + offset + width / 2,
                    colors="black",
                    linewidth=2,
                    label="paper (RomePatches)" if (k, i) == (0, names.index(n)) else None,
                )
    ax.set_ylim(lo, hi)
    ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= 100])
    ax.set_xticks(xs, names, rotation=25, ha="right")
    ax.set_ylabel(f"patch retrieval mAP (%), axis from {lo:.0f}")
    ax.set_title(results["data"]["description"], fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    ax.legend(
        by_label.values(),
        by_label.keys(),
        fontsize=8,
        ncols=3,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        frameon=False,
    )
    for name, c in curves.items():
        if c is not None:
            axes[1].plot(c["recall"], c["precision"], label=name)
    axes[1].set_xlabel("recall")
    axes[1].set_ylabel("precision")
    axes[1].set_title("test split, mean precision at each recall", fontsize=10)
    axes[1].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig
