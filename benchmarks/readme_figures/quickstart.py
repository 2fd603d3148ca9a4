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
    train = g["config"]["train"]
    # A patch set read from the cache loads in a fraction of the time its build took.
    built = doc["data"]["seconds"] >= 0.5 * doc["data"]["info"].get("build_seconds", 0)
    cached = "patch set built" if built else "patch set read from the cache"
    return para(
        f"`--quick` uses the small variant of the default data ({photos} photos,"
        f" {thousands(stats['patches'])} patches) and {thousands(train['num_patches'])}"
        f" sub-patches / {train['kmeans_iters']} k-means iterations"
        " per layer. The run recorded in `benchmarks/results/reproduce_quick.json` (first run,"
        f" {cached}; later runs read it from `~/.cache/ckn`, or `$CKN_CACHE`) took"
        f" {duration(meta(doc)['wall_seconds'])} ({speed_note(doc)}; {commit(doc)}), and"
        f" printed ckn-grad {f1(g['train_map'])} / {f1(g['test_map'])} vs SIFT"
        f" {f1(s['train_map'])} / {f1(s['test_map'])} train / test mAP."
    )


def _pytest_summary(fig: dict) -> dict:
    """Counts and seconds from a recorded pytest summary line, or the hand record."""
    if "result" in fig:
        return fig["result"]
    for line in reversed(fig.get("output_tail", [])):
        seconds = re.search(r" in ([\d.]+)s\b", line)
        counts = re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)\b", line)
        if seconds and counts:
            return {"seconds": float(seconds[1]), **{k: int(n) for n, k in counts}}
    raise ReportError("oneoffs.json: no pytest summary line in the recorded output")


def _skip_reasons(fig: dict) -> str:
    """Why tests were skipped or expected to fail, from the recorded summary lines:
    ``" (skipped: the optional torch not installed; ...)"``, or "" when none is recorded."""
    tail = fig.get("output_tail", [])
    missing = sorted({m for line in tail for m in re.findall(r"could not import '([\w.]+)'", line)})
    other = sorted(
        {
            line.split(": ", 1)[-1].strip()
            for line in tail
            if line.startswith("SKIPPED") and "could not import" not in line
        }
    )
    xfail = sorted(
        {line.split(" - ", 1)[0].split("::")[-1] for line in tail if line.startswith("XFAIL")}
    )
    parts = []
    if missing:
        parts.append(f"skipped: the optional {', '.join(missing)} not installed")
    parts += [f"skipped: {reason}" for reason in other]
    if xfail:
        parts.append(f"expected to fail: {', '.join(xfail)}")
    return f" ({'; '.join(parts)})" if parts else ""


@renderer("suite_run")
def suite_run(results) -> str:
    """The last recorded run of the test suite (oneoffs.json: test_suite, else ci_run)."""
    figures = results["oneoffs"]["figures"]
    fig = figures.get("test_suite") or figures["ci_run"]
    m = meta(fig)
    r = _pytest_summary(fig)
    date = m.get("date") or (m.get("started_utc") or "")[:10] or "date not recorded"
    machine = cpu(fig)
    if machine == "machine not recorded":
        where = f"{machine}, load {r['load']}" if "load" in r else machine
    else:
        where = speed_note(fig)
    outcome = "passed" if fig.get("returncode") == 0 else f"failed (exit {fig.get('returncode')})"
    counts = ", ".join(
        f"{r[k]} {k}" for k in ("passed", "failed", "skipped", "xfailed", "xpassed") if r.get(k)
    )
    return para(
        f"The last recorded run (`{m['command']}`, {commit(fig)}, {date},"
        f" `benchmarks/results/oneoffs.json`) {outcome}: {counts}{_skip_reasons(fig)}, the tests"
        f" in {duration(r['seconds'])}, the whole run in {duration(m['wall_seconds'])}"
        f" ({where})."
    )
