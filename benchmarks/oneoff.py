"""Record a one-off figure: run a command once, keep its outcome in results/oneoffs.json.

    python benchmarks/oneoff.py NAME [--note TEXT] -- COMMAND [ARG ...]

For a figure that no benchmark script produces (a CI run's test count and duration,
say): the command runs once in a subprocess (stdin closed, output passed through), and
``oneoffs.json["figures"][NAME]`` gets the provenance record taken when it started
(``retrieval.cli.provenance``: commit, dirty flag, CPU, load average; finished with the
wall seconds), the command, its exit status and the last lines of its output. The README
renderers read the figure from there (``benchmarks/readme_figures/``), never from a
hand-typed number. Run it from a clean tree at a commit, like every benchmark.

Example:

    python benchmarks/oneoff.py ci_run -- bash .ci/run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import deque
from pathlib import Path

from retrieval.cli import provenance

RESULTS = Path(__file__).resolve().parent / "results" / "oneoffs.json"
TAIL = 40


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("oneoff.py: error: give the command after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the figure's key in oneoffs.json")
    p.add_argument("--note", default="", help="what the figure is, one line")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv[:cut])
    command = argv[cut + 1 :]
    if not command:
        p.error("no command after --")
    meta = provenance.start(command)
    tail: deque[str] = deque(maxlen=TAIL)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    rc = proc.wait()
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"figures": {}}
    doc.setdefault("figures", {})[args.name] = {
        "note": args.note,
        "returncode": rc,
        "output_tail": list(tail),
        "metadata": provenance.finish(meta),
    }
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"oneoff.py: {args.name}: exit {rc}, recorded in {args.out}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
