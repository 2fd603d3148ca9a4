"""Supervised ckn-grad on HPatches-style data: the levers, measured on TRAIN sequences only.

    nice python benchmarks/hpatches_levers.py --sequences ../shared/data/oxford_affine \\
        [--json benchmarks/results/hpatches_levers.json] [--work DIR] [--folds graf]
        [--network-levers] [--network-epochs E]

Issue 22 item 7: choose the fine-tuning recipe for ``benchmarks/hpatches_style.py`` (train
bikes, graf, leuven, ubc; test bark, boat, trees, wall) without looking at the test
sequences. This script reads only the train sequences (a folder of links to them is
built; the test folders are never opened) and, for each fold (a validation sequence v,
default graf; the other three train):

1. HPatches-style data of the train sequences (``build_hpatches_style``, default settings,
   as ``ckn patches --sequences DIR --hpatches-style OUT``), converted to patch files
   (``hpatches_to_patchset``: a group = one reference patch across its 16 files, 51 x 51);
2. ckn-grad trained without labels on the three training sequences (``ckn.train``, the
   preset, as ``ckn train --preset ckn-grad``);
3. each lever: ``ckn.finetune`` on those three sequences less a held-out scene
   (``validation_split`` fraction 0.2, as ``ckn finetune``), one setting changed from the
   reference; the reference also validates on the held-out scene (early stopping, the best
   epoch) as ``ckn finetune`` does, the changed runs keep their last epoch;
4. HPatches matching (the official protocol, ``evaluate_hpatches``; mAP and easy / hard /
   tough) on v, beside SIFT, RootSIFT and the unsupervised model at the same place.

Levers with a fixed network (the learned projection: ``trainable = "projection"``) share the
network's descriptors (``ckn.finetune(features=...)``; bit for bit what ``ckn finetune``
computes itself), and are scored on the network's descriptors of v projected by the learned
matrix (the fine-tuned model's descriptors: the network is kept bit for bit).
Data levers fine-tune the reference on fewer rows (half the groups; one training sequence of
two), what more training data would buy read backwards. ``--network-levers`` adds runs that
train the network (filters, +linear,
filters+projection; ``--network-epochs`` each, slow on a CPU). Not measured here:
augmentation and a learnable input map / pooling (ckn-grad's gradient map and pooling have
no trainable array; see the JSON's ``not_measured``).

Writes ``{"metadata": provenance, "results": [one record per fold], "recipe": ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402
import numpy as np  # noqa: E402

import ckn  # noqa: E402
from ckn.ops import project_descriptors as project  # noqa: E402
from retrieval import patches as rp  # noqa: E402

_META = bench_common.metadata()

TRAIN_SEQUENCES = ("bikes", "graf", "leuven", "ubc")
TEST_SEQUENCES = ("bark", "boat", "trees", "wall")  # never read here
VAL_FRACTION = 0.2  # ckn finetune's --val-fraction default
SEED = 0

#: The reference: a 128-D projection learned on the fixed unsupervised network.
REFERENCE = ckn.FinetuneConfig(
    trainable="projection", projection=128, epochs=40, lr=3e-3, patience=10
)

#: One change each from the reference (fixed network: fast). The reference runs as ``ckn
#: finetune`` does (validation on the held-out scene, early stopping, the best epoch); the
#: changed runs skip that validation (its all-vs-all mAP of ~9,000 patches per epoch is most
#: of a run's time on this CPU) and keep their last epoch.
PROJECTION_LEVERS = {
    "projection 128 (reference)": {},
    "projection 64": {"projection": 64},
    "contrastive loss": {"loss": "contrastive"},
    "mining: 8 patches per group (32 groups)": {"patches_per_group": 8, "groups_per_batch": 32},
    "mining: 2 patches per group (128 groups)": {"patches_per_group": 2, "groups_per_batch": 128},
    "lr 1e-3": {"lr": 1e-3},
}

#: Less training data, the reference settings otherwise (what more data would buy, read
#: backwards: the train sequences are all there is): a name -> which fine-tuning rows to keep
#: (``tr`` the fine-tuning rows, ``labels`` / ``scenes`` / ``scene_names`` of the patch set).
DATA_LEVERS = {
    "data: half the groups (every other reference patch)": lambda tr, labels, scenes, names: tr[
        labels[tr] % 2 == 0
    ],
    "data: one sequence (v_bikes) instead of two": lambda tr, labels, scenes, names: tr[
        names[scenes[tr]] == "v_bikes"
    ],
}

#: Runs that train the network itself (--network-levers; epochs from --network-epochs).
NETWORK_LEVERS = {
    "filters (ckn finetune's default)": {"trainable": "filters"},
    "filters+linear": {"trainable": "filters+linear"},
    "filters+projection 128": {"trainable": "filters+projection", "projection": 128},
}

NOT_MEASURED = {
    "augmentation": "not built: the groups already hold 15 jittered views (e / h / t) per "
    "reference patch",
    "learnable input map and pooling": "ckn-grad's gradient map and Gaussian pooling have no "
    "trainable array (--trainable +input adds nothing for it)",
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _train_links(root: Path, work: Path) -> Path:
    """A folder of links to the train sequences only (the test ones are never opened)."""
    links = work / "train_sequences"
    links.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_SEQUENCES:
        link = links / name
        if not link.exists():
            os.symlink((root / name).resolve(), link)
    return links


def _matching(describe, folder: Path) -> dict:
    """Matching on the validation sequence: a describe function or (16, N, D) descriptors."""
    data = rp.load_hpatches(folder, "all")
    res = rp.evaluate_hpatches(describe, data, config=rp.HPatchesConfig(tasks=("matching",)))
    m = res.as_dict()["matching"]
    return {k: 100.0 * m[k] for k in ("map", "easy", "hard", "tough")}


def _fold(hp: Path, val_seq: str, work: Path, args) -> dict:
    t0 = time.perf_counter()
    names = sorted(p.name for p in hp.iterdir() if p.is_dir())
    val_name = next(n for n in names if n.split("_", 1)[1] == val_seq)
    ps = rp.hpatches_to_patchset(hp, split={n: "train" for n in names if n != val_name})
    val_dir = work / f"val_{val_seq}"
    val_dir.mkdir(exist_ok=True)
    if not (val_dir / val_name).exists():
        os.symlink(hp / val_name, val_dir / val_name)
    _log(f"fold {val_seq}: {len(ps)} training patches ({', '.join(ps.scene_names)})")
    out = {"validation_sequence": val_seq, "train_sequences": [str(s) for s in ps.scene_names]}
    for base in ("sift", "rootsift"):
        out[base] = _matching(rp.patch_describer(base, rp.HPATCHES_SIZE), val_dir)
        _log(f"  {base}: matching mAP {out[base]['map']:.2f}")
    t = time.perf_counter()
    model, _ = ckn.train(ckn.get_preset("ckn-grad"), ps.patches, seed=SEED)
    out["unsupervised_seconds"] = time.perf_counter() - t
    # The fixed network's descriptors of the validation sequence, projected by each lever
    # (what describing with the fine-tuned model gives, its network being the same bit for bit).
    trunk = rp.describe_hpatches(
        rp.load_hpatches(val_dir, "all"), rp.patch_describer(model, rp.HPATCHES_SIZE)
    )
    out["unsupervised"] = _matching(trunk, val_dir)
    _log(f"  ckn-grad unsupervised: {out['unsupervised']['map']:.2f}")
    tr, va, by = ckn.supervised.validation_split(
        ps.labels, ps.scene, fraction=VAL_FRACTION, seed=SEED
    )
    held = sorted({str(s) for s in ps.scene_names[ps.scene[va]]})
    out["finetune_validation"] = {"by": by, "held_out": held, "rows": [int(tr.size), int(va.size)]}
    t = time.perf_counter()
    features = (ckn.describe(model, ps.patches[tr]), ckn.describe(model, ps.patches[va]))
    out["features_seconds"] = time.perf_counter() - t
    rows = np.unique(np.linspace(0, tr.size - 1, min(ckn.supervised.PCA_ROWS, tr.size)).astype(int))
    w = ckn.supervised.pca_projection(features[0][rows], REFERENCE.projection)
    pca = {k: np.stack([np.asarray(project(v, w)) for v in d]) for k, d in trunk.items()}
    out["pca_128"] = _matching(pca, val_dir)
    _log(f"  ckn-grad + PCA 128 (the projection's start): {out['pca_128']['map']:.2f}")
    levers = [(k, v, True, None) for k, v in PROJECTION_LEVERS.items()]
    levers += [(k, {}, True, keep) for k, keep in DATA_LEVERS.items()]
    if args.network_levers:
        extra = {"epochs": args.network_epochs, "lr": 1e-3, "patience": 5}
        levers += [(k, {**extra, **v}, False, None) for k, v in NETWORK_LEVERS.items()]
    out["levers"] = {}
    for name, change, fixed, keep in levers:
        cfg = dataclasses.replace(REFERENCE, **change)
        validate = not (fixed and (change or keep))
        # ``sub``: positions in ``tr`` of the rows this lever fine-tunes on (all but data levers).
        sub = np.arange(tr.size)
        if keep is not None:
            sub = np.searchsorted(tr, keep(tr, ps.labels, ps.scene, ps.scene_names))
        t = time.perf_counter()
        tuned, report = ckn.finetune(
            model,
            ps.patches[tr[sub]],
            ps.labels[tr[sub]],
            config=cfg,
            seed=SEED,
            validation=(ps.patches[va], ps.labels[va]) if validate else None,
            features=(features if validate else (features[0][sub], None)) if fixed else None,
        )
        seconds = time.perf_counter() - t
        if fixed:
            w = tuned.projection.get_value()
            proj = {k: np.stack([np.asarray(project(v, w)) for v in d]) for k, d in trunk.items()}
            scores = _matching(proj, val_dir)
        else:
            scores = _matching(rp.patch_describer(tuned, rp.HPATCHES_SIZE), val_dir)
        out["levers"][name] = {
            "change": change if keep is None else {"training_rows": int(sub.size)},
            "config": dataclasses.asdict(cfg),
            "matching": scores,
            "gain_over_rootsift": scores["map"] - out["rootsift"]["map"],
            "validation": validate,
            "finetune_val_map": [
                None if h["val_map"] is None else 100.0 * h["val_map"] for h in report.history
            ],
            "best_epoch": report.best_epoch,
            "epochs_done": report.epochs_done,
            "seconds": seconds,
        }
        _log(
            f"  {name}: matching mAP {scores['map']:.2f} (RootSIFT {out['rootsift']['map']:.2f});"
            f" best epoch {report.best_epoch} of {report.epochs_done}, {seconds:.0f} s"
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sequences", required=True, help="the oxford_affine folder")
    ap.add_argument("--json", default=str(bench_common.RESULTS / "hpatches_levers.json"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--folds", default="graf", help="validation sequences, comma-separated")
    ap.add_argument("--network-levers", action="store_true", help="also train the network")
    ap.add_argument("--network-epochs", type=int, default=4)
    args = ap.parse_args(argv)
    root = Path(args.sequences)
    folds = args.folds.split(",")
    if not set(folds) <= set(TRAIN_SEQUENCES):
        ap.error(f"--folds must name train sequences ({', '.join(TRAIN_SEQUENCES)})")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        t = time.perf_counter()
        hp = work / "hpatches_style"
        if not (hp / "hpatches_style.json").is_file():
            rp.build_hpatches_style(_train_links(root, work), hp)
        _log(f"HPatches-style train data: {time.perf_counter() - t:.0f} s")
        results = [_fold(hp, v, work, args) for v in folds]
    bench_common.write_json(
        args.json,
        _META,
        results,
        train_sequences=list(TRAIN_SEQUENCES),
        test_sequences_never_read=list(TEST_SEQUENCES),
        reference=dataclasses.asdict(REFERENCE),
        not_measured=NOT_MEASURED,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
