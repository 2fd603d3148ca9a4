"""Render every measured figure of README.md from ``benchmarks/results/*.json``.

    python benchmarks/report.py --check   # exit 1 and print a diff when README.md is stale
    python benchmarks/report.py --write   # rewrite README.md from the results
    python benchmarks/report.py --list    # the renderers and the blocks that use them

README.md is written by people, except inside marked blocks:

    <!-- report:NAME -->
    ... generated markdown (a table, sentences with numbers) ...
    <!-- /report:NAME -->

or inline, inside a sentence: ``took <!-- report:NAME -->43 s<!-- /report:NAME --> on``.
The contents of each block are replaced by ``RENDERERS[NAME](results)`` (a block named
``NAME:ARG`` gets ``RENDERERS[NAME](results, "ARG")``); everything outside the blocks is
left as it is. A renderer (``benchmarks/readme_figures/``, one module per README section)
reads JSON files only, never runs a benchmark, so ``--check`` takes a second and runs in
the test suite (``tests/test_readme.py``).

How to add a figure to the README:

1. have a benchmark write it into a JSON under ``benchmarks/results/`` with the provenance
   record (``retrieval.cli.provenance.start()`` when the run starts, ``finish()`` at the
   end), run from a clean tree at a commit that contains the script;
2. write a renderer in the section's module of ``benchmarks/readme_figures/``
   (``@renderer("name")``, ``fn(results) -> str``); speed figures name the machine
   (``core.speed_note``), claim tallies use ``core.tally`` (distinct comparisons,
   differences under 0.1 mAP are ties);
3. put ``<!-- report:name -->`` and ``<!-- /report:name -->`` in README.md where the figure
   goes and run ``python benchmarks/report.py --write``.

A speed figure is only comparable with the machine's own limit in the same run, so a run on
another host does not silently replace one: the new run becomes ``STEM.json`` and the earlier
host's is kept as ``STEM_HOST.json`` (e.g. ``bench_encode_cpu_xeon.json``), and the README's
per-host tables (``core.host_runs``) show both.

A figure measured once without a benchmark script goes into ``benchmarks/results/oneoffs.json``
with its date, machine and command. Never type a measured number into README.md by hand.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from readme_figures import RENDERERS, ReportError, Results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_OPEN = re.compile(r"<!-- report:(?P<key>[^ ]+) -->")
_BLOCK = re.compile(
    r"<!-- report:(?P<key>[A-Za-z0-9_.:-]+) -->(?P<body>.*?)<!-- /report:(?P=key) -->", re.S
)


def blocks(text: str) -> list[str]:
    """The block keys of ``text`` in order; a marker without its closing one is an error."""
    keys = [m["key"] for m in _BLOCK.finditer(text)]
    opened = [m["key"] for m in _OPEN.finditer(text)]
    if opened != keys:
        missing = [k for k in opened if k not in keys] or opened
        raise ReportError(f"README block {missing[0]!r} has no closing <!-- /report:... -->")
    return keys


def render_block(key: str, results: Results) -> str:
    """The markdown of the block ``key`` (``NAME`` or ``NAME:ARG``)."""
    name, _, arg = key.partition(":")
    if name not in RENDERERS:
        raise ReportError(f"README block {key!r}: no renderer named {name!r}")
    fn = RENDERERS[name]
    takes_arg = len(inspect.signature(fn).parameters) > 1
    if bool(arg) != takes_arg:
        need = "needs an argument (NAME:ARG)" if takes_arg else "takes no argument"
        raise ReportError(f"README block {key!r}: renderer {name!r} {need}")
    return fn(results, arg) if arg else fn(results)


def render(text: str, results: Results | None = None) -> str:
    """``text`` with every block's contents replaced by its renderer's output.

    A block whose opening marker ends its line is a block of lines (its contents
    start and end with a newline); otherwise it is inline.
    """
    results = results or Results()
    blocks(text)

    def fill(m: re.Match) -> str:
        key = m["key"]
        out = render_block(key, results)
        if m["body"].startswith("\n"):
            out = "\n" + out.strip("\n") + "\n"
        elif "\n" in out.strip("\n"):
            raise ReportError(f"inline README block {key!r} rendered several lines")
        return f"<!-- report:{key} -->{out}<!-- /report:{key} -->"

    return _BLOCK.sub(fill, text)


def diff(old: str, new: str, name: str = "README.md") -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"{name} (as committed)",
            f"{name} (rendered from benchmarks/results)",
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff if README is stale")
    mode.add_argument("--write", action="store_true", help="rewrite README from the results")
    mode.add_argument("--list", action="store_true", help="list renderers and their blocks")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=None, help="results folder (default: ours)")
    args = p.parse_args(argv)
    text = args.readme.read_text()
    results = Results(args.results) if args.results else Results()
    try:
        if args.list:
            used = blocks(text)
            for name, fn in sorted(RENDERERS.items()):
                keys = [k for k in used if k.partition(":")[0] == name] or ["(unused)"]
                doc = (fn.__doc__ or "").strip().splitlines()[0:1]
                print(f"{name:<28} {', '.join(keys)}  {doc[0] if doc else ''}")
            return 0
        new = render(text, results)
    except ReportError as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if new != text:
            sys.stdout.write(diff(text, new, args.readme.name))
            print(
                f"{args.readme} differs from its rendering: "
                "run python benchmarks/report.py --write",
                file=sys.stderr,
            )
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
