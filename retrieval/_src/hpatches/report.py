"""The HPatches table as text: the three tasks by noise level and sequence kind, published beside.

:func:`format_hpatches` renders the summary of ``HPatchesResult.as_dict()`` (fractions) in
percent; the published figures (:data:`PUBLISHED`) are shown, labelled with their source, only
for the split they were measured on.
"""

from __future__ import annotations

from retrieval._src.hpatches.layout import LEVELS

#: Published mean mAP (fractions), HPatches Python benchmark, Liberty-trained models.
PUBLISHED = {
    "source": "HardNet repository figure (Mishchuk et al. 2017), Liberty-trained, "
    "HPatches Python benchmark",
    "split": "full",
    "matching": {
        "rSIFT": 0.2722,
        "TFeat-M*": 0.3264,
        "L2Net+": 0.4504,
        "HardNet": 0.5218,
        "HardNet+": 0.5276,
    },
    "retrieval": {
        "rSIFT": 0.4249,
        "TFeat-M*": 0.5203,
        "L2Net+": 0.6337,
        "HardNet": 0.6944,
        "HardNet+": 0.6966,
    },
}


def _pct(x) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def format_hpatches(summary: dict, *, name: str = "") -> str:
    """Text table of an HPatches summary (``HPatchesResult.as_dict()``), figures in percent.

    Args:
      summary: the summary (its ``split`` and ``tasks`` keys and any of the three tasks).
      name: the descriptor's name, for the title.

    Returns:
      Lines joined by newlines (no trailing newline).
    """
    lines = [
        f"HPatches, split {summary['split']}"
        + (f", descriptor {name}" if name else "")
        + f" (task definitions: {summary['tasks']})"
    ]
    v = summary.get("verification")
    if v is not None:
        lines.append(f"verification ({v['pairs']} pairs)   balanced AUC (%)   imbalanced AP (%)")
        lines.append("                        inter   intra      inter   intra")
        for level in (*LEVELS, "mean"):
            b, i = v["balanced"], v["imbalanced"]
            lines.append(
                f"  {level:<20}{_pct(b['inter'][level])}  {_pct(b['intra'][level])}"
                f"     {_pct(i['inter'][level])}  {_pct(i['intra'][level])}"
            )
    for task in ("matching", "retrieval"):
        t = summary.get(task)
        if t is None:
            continue
        extra = (
            f"{t['sequences']} sequences"
            if task == "matching"
            else f"{t['queries']} queries, {t['distractors']} distractors, "
            f"mean over list sizes {', '.join(t['by_list_size'])}"
        )
        lines.append(f"{task} mAP (%) ({extra})")
        lines.append("    easy    hard   tough   illum    view    mean")
        lines.append("  " + "  ".join(_pct(t[k]) for k in (*LEVELS, "illum", "view", "map")))
    published = [
        f"  {task}: " + ", ".join(f"{m} {100 * x:.2f}" for m, x in PUBLISHED[task].items())
        for task in ("matching", "retrieval")
        if task in summary
    ]
    if published and summary["split"] == PUBLISHED["split"]:
        lines.append(f"published mAP (%), split {PUBLISHED['split']}, {PUBLISHED['source']}:")
        lines += published
    return "\n".join(lines)
