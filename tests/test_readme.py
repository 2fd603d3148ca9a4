"""README.md's figures are its rendering from benchmarks/results/*.json, and those results
carry a clean provenance record (no benchmark runs here: JSON reading only)."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _load_report():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _load_report()
from readme_figures import core  # noqa: E402  (benchmarks/ is on sys.path now)


def test_readme_equals_its_rendering_from_the_results():
    text = (ROOT / "README.md").read_text()
    new = report.render(text, core.Results(RESULTS))
    assert new == text, (
        "README.md differs from its rendering from benchmarks/results/*.json; run "
        "`python benchmarks/report.py --write` (never edit a figure by hand):\n"
        + report.diff(text, new)
    )


def test_every_renderer_is_used_by_a_readme_block():
    used = {k.partition(":")[0] for k in report.blocks((ROOT / "README.md").read_text())}
    assert set(core.RENDERERS) - used == set()


def test_a_changed_figure_is_caught(tmp_path):
    """A planted change in one result changes the rendering (the check has teeth)."""
    planted = tmp_path / "results"
    shutil.copytree(RESULTS, planted)
    doc = json.loads((planted / "reproduce_default.json").read_text())
    row = next(r for r in doc["rows"] if r["descriptor"] == "ckn-grad")
    row["test_map"] += 0.3
    (planted / "reproduce_default.json").write_text(json.dumps(doc))
    text = (ROOT / "README.md").read_text()
    new = report.render(text, core.Results(planted))
    assert new != text
    assert f"**{row['test_map']:.1f}**" in new


def test_a_changed_preset_is_caught(monkeypatch):
    """The presets table and the common settings are the code's, not typed copies."""
    import dataclasses

    import ckn

    grad = ckn.get_preset("ckn-grad")
    monkeypatch.setitem(ckn.PRESETS, "ckn-grad", dataclasses.replace(grad, blur=1.0))
    monkeypatch.setattr(ckn.ops, "NORM_EPS", 1e-6)
    text = (ROOT / "README.md").read_text()
    new = report.render(text, core.Results(RESULTS))
    assert "| `ckn-grad` |" in new and "1-px blur before the gradients" in new
    assert "x / max(||x||, 1e-6)" in new
    assert "1.5-px blur before the gradients" not in new


def test_blocks_inline_and_of_lines_and_their_errors():
    core.RENDERERS["_test_value"] = lambda results: "value"
    core.RENDERERS["_test_arg"] = lambda results, arg: f"value {arg}\nsecond line"
    try:
        text = (
            "a <!-- report:_test_value -->old<!-- /report:_test_value --> b\n"
            "<!-- report:_test_arg:x -->\nold\n<!-- /report:_test_arg:x -->\n"
        )
        assert report.render(text) == (
            "a <!-- report:_test_value -->value<!-- /report:_test_value --> b\n"
            "<!-- report:_test_arg:x -->\nvalue x\nsecond line\n<!-- /report:_test_arg:x -->\n"
        )
        errors = {
            "<!-- report:_test_value -->\nx\n": "no closing",
            "<!-- report:nope -->x<!-- /report:nope -->": "no renderer named 'nope'",
            "<!-- report:_test_arg -->x<!-- /report:_test_arg -->": "needs an argument",
            "<!-- report:_test_value:y -->x<!-- /report:_test_value:y -->": "takes no argument",
            "<!-- report:_test_arg:y -->x<!-- /report:_test_arg:y -->": "rendered several lines",
        }
        for bad, message in errors.items():
            with pytest.raises(core.ReportError, match=message):
                report.render(bad)
    finally:
        del core.RENDERERS["_test_value"], core.RENDERERS["_test_arg"]


def test_check_exits_1_with_a_diff_and_write_fixes_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    stale = original.replace(
        "<!-- report:vlad_table -->\n| k |", "<!-- report:vlad_table -->\n| K |"
    )
    assert stale != original
    readme.write_text(stale)
    assert report.main(["--check", "--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert "-| K |" in out and "+| k |" in out
    assert report.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == original
    assert report.main(["--check", "--readme", str(readme)]) == 0


def test_tally_counts_distinct_comparisons_and_ties():
    t = core.tally([(80.0, 79.0), (80.0, 79.0), (50.05, 50.0), (40.0, 41.0)])
    assert (t.above, t.ties, t.below, t.n) == (1, 1, 1, 3)  # the repeated pair counts once
    assert t.of("settings") == "1 of 3 settings (1 tie)"
    keyed = core.tally([(80.0, 79.0), (80.0, 79.0)], keys=["a", "b"])  # other settings: both
    assert keyed.n == 2
    assert core.tally([(1.0, 0.9)]).ties == 1  # a difference under 0.1 mAP is a tie
    assert core.tally([(1.0, 0.85)]).above == 1


def test_machine_and_provenance_phrases():
    doc = {"metadata": {"cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2}}
    assert core.cpu(doc) == "Intel Xeon Processor, 2 cores"
    assert core.cpu({"metadata": {"cpu_count": 2}}) == "machine not recorded"
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert core.commit({"metadata": {"commit": sha, "dirty": False}}) == "a clean tree at 0123456"
    assert "uncommitted" in core.commit({"metadata": {"commit": sha, "dirty": True}})
    assert (
        core.commit({"metadata": {"commit": "0123456", "dirty": False}}) == "short commit 0123456"
    )


# -- provenance of the results --------------------------------------------------------------

#: Results made before the provenance rule, each waiting for its re-run from a clean tree
#: (result -> who re-runs it). Remove an entry when its re-run lands: the test fails until then.
PENDING = {}


#: Files computed from other results, not measurements (no provenance of their own).
DERIVED = {"reruns"}


def _meta(doc: dict) -> dict:
    return doc.get("metadata") or doc.get("machine") or {}


def _script(command: str) -> str | None:
    """The file in the repository that a recorded command ran."""
    words = command.split()
    for w in words:
        if w.endswith(".py") and not w.startswith("/"):
            return w
        if w.endswith(".ci/run"):
            return ".ci/run"
    if words and words[0] == "ckn" and len(words) > 1:
        return f"retrieval/cli/{words[1].replace('-', '_')}.py"
    return None


@functools.cache
def _records() -> dict[str, dict]:
    out = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.stem in DERIVED:
            continue
        doc = json.loads(path.read_text())
        if path.stem == "oneoffs":
            for name, fig in doc["figures"].items():
                out[f"oneoffs:{name}"] = fig
        else:
            out[path.stem] = doc
    return out


def _problems(doc: dict) -> list[str]:
    m = _meta(doc)
    found = []
    sha = m.get("commit") or ""
    if not re.fullmatch(r"[0-9a-f]{40}", sha):
        found.append(f"commit {sha!r} is not a full SHA")
    if m.get("dirty") is not False:
        found.append(f"dirty is {m.get('dirty')!r}, not false")
    if not m.get("cpu") or not m.get("cpu_count"):
        found.append("CPU model or core count not recorded")
    script = _script(m.get("command") or doc.get("command") or "")
    if script is None:
        found.append("no script named in the command")
    elif re.fullmatch(r"[0-9a-f]{40}", sha) and shutil.which("git"):
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", sha], capture_output=True)
        if known.returncode == 0:  # a shallow clone may lack old commits: nothing to check then
            has = subprocess.run(
                ["git", "-C", str(ROOT), "cat-file", "-e", f"{sha}:{script}"], capture_output=True
            )
            if has.returncode != 0:
                found.append(f"commit {sha[:7]} does not contain {script}")
    model = doc.get("model")
    if isinstance(model, dict) and model.get("trained_here") is False:
        found.append("its model was reused from a folder, not trained in the run")
    run = doc.get("models_run")
    if "models_run" in doc and (not run or run.get("dirty") is not False):
        found.append("the run that trained its models has no clean provenance")
    return found


@pytest.mark.parametrize("name", sorted(_records()))
def test_result_has_a_clean_provenance_record(name):
    problems = _problems(_records()[name])
    if name in PENDING:
        assert problems, f"{name} is clean now: remove it from PENDING in tests/test_readme.py"
        pytest.xfail(f"{name}: {PENDING[name]} ({'; '.join(problems)})")
    assert not problems, f"benchmarks/results {name}: {'; '.join(problems)}"
