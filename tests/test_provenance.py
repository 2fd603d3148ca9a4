"""The provenance record of results: commit and dirty flag at the start, on a temporary clone."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from retrieval.cli import provenance

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if shutil.which("git") is None or provenance.code_state(ROOT)["commit"] is None:
        pytest.fail("the provenance tests need git and a git checkout of the project")
    dest = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(dest)], check=True)
    return dest


def test_clean_clone_records_its_commit_and_is_not_dirty(clone):
    head = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert provenance.code_state(clone) == {"commit": head, "dirty": False}
    assert len(head) == 40


def test_an_edit_to_measured_code_makes_it_dirty_a_result_file_does_not(clone):
    target = clone / "ckn" / "_src" / "ops.py"
    original = target.read_text()
    try:
        target.write_text(original + "\n# edited\n")
        assert provenance.code_state(clone)["dirty"] is True
    finally:
        target.write_text(original)
    assert provenance.code_state(clone)["dirty"] is False
    results = clone / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "new_result.json").write_text("{}\n")
    assert provenance.code_state(clone)["dirty"] is False  # outputs are not measured code
    (clone / "retrieval" / "untracked_module.py").write_text("x = 1\n")
    assert provenance.code_state(clone)["dirty"] is True  # untracked code counts


def test_outside_git_commit_and_dirty_are_none(tmp_path):
    assert provenance.code_state(tmp_path) == {"commit": None, "dirty": None}


def test_start_and_finish_record_what_a_result_needs():
    meta = provenance.start(["ckn", "reproduce", "--quick"])
    time.sleep(0.01)
    done = provenance.finish(meta)
    assert done["command"] == "ckn reproduce --quick"
    for key in ("commit", "dirty", "versions", "devices", "cpu_count", "load_average_start"):
        assert key in done
    assert done["wall_seconds"] >= 0.01 and "load_average_end" in done and "_t0" not in done
    assert done["versions"]["jax"] and done["versions"]["numpy"]
