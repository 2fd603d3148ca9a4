"""README "Quickstart": what `ckn reproduce --quick` printed and took, and the CI run
(reproduce_quick, oneoffs)."""

from __future__ import annotations

import re

from .core import (
    ReportError,
    commit,
    cpu,
    duration,
    f1,
    load,
    meta,
    para,
    renderer,
    speed_note,
    thousands,
)


@renderer("quick_run")
def quick_run(results) -> str:
    """The quick data's size, the run's time and machine, and two of its rows."""
    doc = results["reproduce_quick"]
    stats = doc["data"]["stats"]
    photos = sum(s["scenes"] for s in stats["splits"].values())
    rows = {r["descriptor"]: r for r in doc["rows"]}
    g, s = rows["ckn-grad"], rows["sift"]
    # A patch set read from the cache loads in a fraction of the time its build took.
    built = doc["data"]["seconds"] >= 0.5 * doc["data"]["info"].get("build_seconds", 0)
    cached = "patch set built" if built else "patch set read from the cache"
    return para(
        f"`--quick` uses the small variant of the default data ({photos} photos,"
        f" {thousands(stats['patches'])} patches) and 30,000 sub-patches / 20 k-means iterations"
        " per layer. The run recorded in `benchmarks/results/reproduce_quick.json` (first run,"
        f" {cached}; later runs read it from `~/.cache/ckn`, or `$CKN_CACHE`) took"
        f" {duration(meta(doc)['wall_seconds'])} ({speed_note(doc)}; {commit(doc)}), and"
        f" printed ckn-grad {f1(g['train_map'])} / {f1(g['test_map'])} vs SIFT"
        f" {f1(s['train_map'])} / {f1(s['test_map'])} train / test mAP."
    )


def _pytest_summary(fig: dict) -> dict:
    """passed / skipped / seconds from a recorded pytest summary line, or the hand record."""
    if "result" in fig:
        return fig["result"]
    for line in reversed(fig.get("output_tail", [])):
        m = re.search(r"(\d+) passed(?:, (\d+) skipped)?.* in ([\d.]+)s", line)
        if m:
            return {"passed": int(m[1]), "skipped": int(m[2] or 0), "seconds": float(m[3])}
    raise ReportError("oneoffs.json ci_run: no pytest summary line in its output")


@renderer("ci_run")
def ci_run(results) -> str:
    """The last recorded clean-clone CI run."""
    fig = results["oneoffs"]["figures"]["ci_run"]
    m = meta(fig)
    r = _pytest_summary(fig)
    date = m.get("date") or (m.get("started_utc") or "")[:10] or "date not recorded"
    machine = cpu(fig)
    where = f"on {machine}" if machine != "machine not recorded" else machine
    loads = f"load {r['load']}" if "load" in r else load(fig)
    outcome = "passed" if fig.get("returncode") == 0 else f"failed (exit {fig.get('returncode')})"
    return para(
        f"The last recorded CI run (`{m['command']}` on a clean clone of {m['commit'][:7]},"
        f" {date}, `benchmarks/results/oneoffs.json`) {outcome}: {r['passed']} passed and"
        f" {r['skipped']} skipped without `../shared/data`, {r['seconds']:.0f} s, {where},"
        f" {loads}."
    )
