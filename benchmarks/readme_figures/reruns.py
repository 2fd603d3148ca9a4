"""What a re-run changed: the README's note beside a result that replaced another (reruns)."""

from __future__ import annotations

from .core import commit, para, renderer


@renderer("rerun")
def rerun(results, stem: str) -> str:
    """Whether the re-run of STEM moved its quality figures (benchmarks/rerun_diff.py)."""
    r = results["reruns"][stem]
    prev = commit({"metadata": r["previous"]})
    when = (r["previous"].get("started_utc") or "")[:10]
    before = f"the run it replaced ({prev}{', ' + when if when else ''})"
    if not r["changed"]:
        return para(
            f"Re-run: all {r['compared']} quality figures of `{stem}.json` equal those of {before}."
        )
    top = r["largest"][0]
    return para(
        f"Re-run: {r['changed']} of {r['compared']} quality figures of `{stem}.json` differ from"
        f" {before}, {r['changed_by_0.05_or_more']} of them by 0.05 mAP points or more, by at"
        f" most {r['max_abs_diff_points']:.2f} (`{top['figure']}`: {top['previous']:.2f} ->"
        f" {top['current']:.2f}); the figures here are the re-run's."
    )
