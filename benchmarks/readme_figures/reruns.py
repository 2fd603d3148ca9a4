"""What a re-run changed: the README's note beside a result that replaced another (reruns)."""

from __future__ import annotations

from .core import commit, para, renderer


@renderer("rerun")
def rerun(results, stem: str) -> str:
    """Whether the re-run of STEM moved its figures (benchmarks/rerun_diff.py)."""
    r = results["reruns"][stem]
    what = r.get("what", "quality figures")
    points = r.get("units", "mAP points") == "mAP points"
    prev = commit({"metadata": r["previous"]})
    when = (r["previous"].get("started_utc") or "")[:10]
    before = f"the run it replaced ({prev}{', ' + when if when else ''})"
    if not r["changed"]:
        return para(f"Re-run: all {r['compared']} {what} of `{stem}.json` equal those of {before}.")
    top = r["largest"][0]

    def fmt(x: float) -> str:
        return f"{x:.2f}" if points else f"{x:.6g}"

    most = r["max_abs_diff_points"]
    if points and most < 0.005:  # invisible at two decimals: say so instead of "0.00"
        return para(
            f"Re-run: {r['changed']} of {r['compared']} {what} of `{stem}.json` differ from"
            f" {before}, all by less than 0.005 mAP points (at most {most:.1g}); the figures here"
            " are the re-run's."
        )
    size = (
        f", {r['changed_by_0.05_or_more']} of them by 0.05 mAP points or more, by at most"
        f" {most:.2f}"
        if points
        else f", by at most {most:.2g}"
    )
    return para(
        f"Re-run: {r['changed']} of {r['compared']} {what} of `{stem}.json` differ from"
        f" {before}{size} (`{top['figure']}`: {fmt(top['previous'])} -> {fmt(top['current'])});"
        " the figures here are the re-run's."
    )
