"""The pieces every README renderer uses: the results folder, the registry, provenance
phrases, number formats and claim tallies.

A renderer is ``fn(results) -> markdown`` (or ``fn(results, arg)`` for a block
named ``NAME:ARG``), registered with ``@renderer("NAME")``; it reads only
``results[STEM]`` (``benchmarks/results/STEM.json``), or for the settings the README states
the package's own (``settings.py``: ``ckn.PRESETS``), and never runs a benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"

#: name -> renderer; filled by ``@renderer`` in the section modules.
RENDERERS: dict[str, Callable[..., str]] = {}

#: A difference of mAP points below this is a tie in every tally.
TIE = 0.1


class ReportError(Exception):
    """A README block or a result file the renderers cannot use (one line)."""


def renderer(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register ``fn`` as the renderer of the README blocks ``<!-- report:NAME[:ARG] -->``."""

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        if name in RENDERERS:
            raise ReportError(f"two renderers named {name!r}")
        RENDERERS[name] = fn
        return fn

    return register


class Results:
    """The JSON files of a results folder, read once each: ``results["reproduce_default"]``."""

    def __init__(self, folder: str | Path = RESULTS):
        self.folder = Path(folder)
        self.docs: dict[str, dict] = {}

    def __getitem__(self, stem: str) -> dict:
        if stem not in self.docs:
            path = self.folder / f"{stem}.json"
            if not path.exists():
                raise ReportError(f"{path} is missing")
            self.docs[stem] = json.loads(path.read_text())
        return self.docs[stem]


def host_runs(results: Results, stem: str) -> list[tuple[str, dict]]:
    """``(file name, result)`` of STEM.json and of the other hosts' runs kept beside it
    (STEM_HOST.json, e.g. ``bench_encode_cpu_xeon.json``), STEM.json first."""
    names = sorted(p.stem for p in results.folder.glob(f"{stem}_*.json"))
    return [(f"{n}.json", results[n]) for n in (stem, *names)]


# -- provenance ---------------------------------------------------------------------------


def meta(doc: dict) -> dict:
    """The provenance record of a result (``metadata``, or ``machine`` in older scripts)."""
    return doc.get("metadata") or doc.get("machine") or {}


def cpu(doc: dict) -> str:
    """``"Intel Xeon Processor @ 2.80GHz, 2 cores"``, or ``"machine not recorded"``."""
    m = meta(doc)
    model = m.get("cpu") or (m.get("machine") or {}).get("cpu")
    count = m.get("cpu_count") or (m.get("machine") or {}).get("cpu_count")
    if not model or not count:
        return "machine not recorded"
    model = re.sub(r"\((R|TM)\)", "", model)
    return f"{' '.join(model.split())}, {count} cores"


def load(doc: dict) -> str:
    """``"load 5.9 -> 5.5"``: the 1-minute load average at the start and at the end."""
    m = meta(doc)
    start, end = m.get("load_average_start"), m.get("load_average_end")
    if not start and not end:
        return "load not recorded"
    if start and end:
        return f"load {start[0]:.1f} -> {end[0]:.1f}"
    return f"load {(start or end)[0]:.1f} at the {'start' if start else 'end'}"


def busy(doc: dict, threshold: float = 1.5) -> bool:
    """Whether other jobs shared the CPU: a 1-minute load above ``threshold`` at the start, or
    at the end above ``threshold`` plus the CPU count (the end load counts the benchmark's own
    threads, up to one per core: a benchmark alone on 2 cores ends near 2)."""
    m = meta(doc)
    start, end = m.get("load_average_start"), m.get("load_average_end")
    own = m.get("cpu_count") or 0
    return bool(start and start[0] > threshold) or bool(end and end[0] > threshold + own)


def commit(doc: dict) -> str:
    """``"a clean tree at cbd2b86"``, or what is wrong with the record."""
    m = meta(doc)
    sha, dirty = m.get("commit"), m.get("dirty")
    if not sha:
        return "commit not recorded"
    if len(sha) != 40:
        return f"short commit {sha}"
    if dirty is False:
        return f"a clean tree at {sha[:7]}"
    if dirty is True:
        return f"{sha[:7]} with uncommitted changes"
    return f"{sha[:7]}, dirty flag not recorded"


def wall_seconds(doc: dict) -> float | None:
    m = meta(doc)
    for v in (m.get("wall_seconds"), m.get("seconds_total"), doc.get("seconds")):
        if v:
            return float(v)
    return None


def duration(seconds: float | None) -> str:
    """``"18 min"`` / ``"45 s"`` / ``"duration not recorded"``."""
    if seconds is None:
        return "duration not recorded"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def run(doc: dict, stem: str, *, extra: str = "") -> str:
    """``"`benchmarks/results/STEM.json` (EXTRA), 18 min on CPU, 2 cores, load 5.9 -> 5.5, a
    clean tree at cbd2b86"``: the result file, its duration, machine, load and commit."""
    name = f"`benchmarks/results/{stem}.json`" + (f" ({extra})" if extra else "")
    machine = cpu(doc)
    where = f" on {machine}" if machine != "machine not recorded" else f", {machine}"
    return f"{name}, {duration(wall_seconds(doc))}{where}, {load(doc)}, {commit(doc)}"


def speed_note(doc: dict) -> str:
    """The machine of a speed figure, its load, and whether other jobs shared the CPU."""
    m = meta(doc)
    if not m.get("load_average_start") and not m.get("load_average_end"):
        return f"{cpu(doc)}, load not recorded"
    shared = "shared with other jobs: noisy" if busy(doc) else "quiet"
    return f"{cpu(doc)}, {load(doc)}, {shared}"


# -- numbers ------------------------------------------------------------------------------


def f1(x: float) -> str:
    return f"{x:.1f}"


def f2(x: float) -> str:
    return f"{x:.2f}"


def pct(x: float, digits: int = 1) -> str:
    """A fraction as percent points: ``pct(0.9493) == "94.9"``."""
    return f"{100 * x:.{digits}f}"


def signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}"


def thousands(n: int) -> str:
    return f"{n:,}"


def median(xs: Iterable[float]) -> float:
    return statistics.median(list(xs))


def count(n: int, total: int) -> str:
    """``"all 60"``, ``"none of 44"``, ``"6 of 8"``."""
    if n == total and total > 2:
        return f"all {total}"
    if n == 0:
        return f"none of {total}"
    return f"{n} of {total}"


# -- claim tallies ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tally:
    """Distinct comparisons ``a`` against ``b`` in mAP points: above, tied, below.

    A tie is ``|a - b| < TIE``.

    Comparisons whose results are bit-identical (same ``key``) are counted once.
    """

    above: int
    ties: int
    below: int
    diffs: tuple[float, ...]

    @property
    def n(self) -> int:
        return self.above + self.ties + self.below

    def of(self, noun: str = "", what: str = "above") -> str:
        """``"6 of 8 settings (1 tie)"`` (``what``: above, below or ties)."""
        k = {"above": self.above, "below": self.below, "ties": self.ties}[what]
        s = count(k, self.n) + (f" {noun}" if noun else "")
        if what != "ties" and self.ties:
            s += f" ({self.ties} tie{'s' if self.ties > 1 else ''})"
        return s

    @property
    def median(self) -> float:
        return median(self.diffs)


def tally(
    pairs: Iterable[tuple[float, float]],
    keys: Iterable[object] | None = None,
    *,
    tie: float = TIE,
) -> Tally:
    """Tally ``a`` against ``b`` over comparisons given in mAP points.

    Args:
      pairs: ``(a, b)`` per setting, in percent points.
      keys: per setting, what makes two settings' results bit-identical (default: the
        pair itself); a repeated key is counted once.
      tie: differences ``|a - b| < tie`` are ties.
    """
    pairs = list(pairs)
    keys = list(keys) if keys is not None else [(float(a), float(b)) for a, b in pairs]
    seen: dict[object, tuple[float, float]] = {}
    for key, pair in zip(keys, pairs, strict=True):
        seen.setdefault(key, pair)
    diffs = tuple(float(a) - float(b) for a, b in seen.values())
    above = sum(d >= tie for d in diffs)
    below = sum(d <= -tie for d in diffs)
    return Tally(above, len(diffs) - above - below, below, diffs)


# -- layout -------------------------------------------------------------------------------


def para(text: str, width: int = 100) -> str:
    """``text`` (one paragraph, or a ``- `` bullet) wrapped at ``width`` columns."""
    import textwrap

    text = " ".join(text.split())
    if text.startswith("- "):
        return textwrap.fill(
            text[2:], width, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
        )
    return textwrap.fill(text, width, break_on_hyphens=False, break_long_words=False)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
