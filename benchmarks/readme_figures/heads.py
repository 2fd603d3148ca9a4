"""README "Learned global heads": train_global.py's table and target (train_global)."""

from __future__ import annotations

from .core import f1, para, pct, renderer, run, table, tally, thousands

STEM = "train_global"
#: JSON head -> the README's row label.
LABELS = {
    "gem-p": "GeM p = 3 -> learned p (batch-hard)",
    "gem-p pool": "GeM p = 3 -> learned p (pool-mined)",
    "gem-p + Lw pool": "GeM + Lw fitted on train -> learned p + whitening",
    "rmac-proj": "R-MAC (Tolias) -> R-MAC + learned projection",
    "rmac-proj pool": "same, pool-mined",
    "rmac-proj + Lw": "R-MAC + Lw -> learned projection + whitening",
}
TESTS = ("test-photos", "test-oxford")


def _targets(doc: dict) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for r in doc["target"]["rows"]:
        out.setdefault(r["head"], {})[r["set"]] = r
    return out


@renderer("heads_run")
def heads_run(results) -> str:
    """The run and the sets of train_global.py."""
    doc = results[STEM]
    sets = doc["sets"]
    photos = doc["protocol"]["photos"]

    def n(s):
        return f"{thousands(sets[s]['images'])} images"

    return para(
        f"`nice python benchmarks/train_global.py` (the run: {run(doc, STEM)}):"
        f" EfficientNet-Lite0 at {doc['protocol']['common_config']['side']} px; trained on region"
        f" views of {len(photos['train'])} photos ({n('train')},"
        f" {thousands(sets['train']['groups'])} groups), validated on {len(photos['val'])} other"
        " photos, scored on two test sets never trained or tuned on: region views of the"
        f" {len(photos['test'])} default test photos ({n('test-photos')}) and Oxford-affine regions"
        f" cropped through the ground-truth homographies ({n('test-oxford')}). mAP %, off-the-shelf"
        " head -> learned:"
    )


@renderer("heads_table")
def heads_table(results) -> str:
    """Off-the-shelf -> learned mAP of each head on the two test sets."""
    rows = []
    for head, per in _targets(results[STEM]).items():
        rows.append(
            [LABELS.get(head, head)]
            + [f"{pct(per[s]['off_the_shelf'])} -> {pct(per[s]['learned'])}" for s in TESTS]
        )
    return table(["head", "test photos", "test Oxford"], rows)


@renderer("heads_target")
def heads_target(results) -> str:
    """The target (learned above off-the-shelf on every test set), gains, and the fitted start."""
    doc = results[STEM]
    tg = _targets(doc)
    rows = [per[s] for per in tg.values() for s in TESTS]
    shelf = tally([(100 * r["learned"], 100 * r["off_the_shelf"]) for r in rows])
    init = tally([(100 * r["learned"], 100 * r["init"]) for r in rows])
    met = shelf.above == shelf.n
    gains = [100 * (r["learned"] - r["off_the_shelf"]) for r in rows]
    best = max(rows, key=lambda r: r["learned"] - r["off_the_shelf"])
    res = {(r["set"], r["head"], r["variant"]): 100 * r["map"] for r in doc["results"]}

    def lw(set_):
        return (
            f"GeM {f1(res[(set_, 'GeM p=3', 'off-the-shelf')])} ->"
            f" {f1(res[(set_, 'GeM p=3 + Lw', 'off-the-shelf')])}, R-MAC"
            f" {f1(res[(set_, 'R-MAC (Tolias)', 'off-the-shelf')])} ->"
            f" {f1(res[(set_, 'R-MAC (Tolias) + Lw', 'off-the-shelf')])}"
        )

    trained = ", ".join(
        f"{pct(tg[h][s]['learned'])}" for h in ("gem-p + Lw pool", "rmac-proj + Lw") for s in TESTS
    )
    return para(
        "Target (each learned head above its off-the-shelf version on every test set; a"
        f" difference under 0.1 mAP is a tie): {'met' if met else 'not met'},"
        f" {shelf.of()}, by {f1(min(gains))} to {f1(max(gains))} points. The largest gain is"
        f" {LABELS.get(best['head'], best['head'])} on {best['set']}"
        f" ({f1(100 * (best['learned'] - best['off_the_shelf']))}). Lw fitted on these few"
        f" training images: {lw('test-photos')} on the test photos, {lw('test-oxford')} on"
        f" Oxford; shrunk towards the identity and trained, the whitened heads reach {trained}"
        " (GeM then R-MAC; photos then Oxford). Training adds little beyond the fitted start:"
        f" above it in {init.of()}."
    )
