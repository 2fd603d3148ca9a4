"""The layers of the project (ARCHITECTURE.md), checked on the source tree.

- ``ckn`` imports nothing from ``retrieval`` (lazy imports and importlib strings included);
- no file outside ``ckn/`` imports ``ckn._src`` (ruff TID251 says the same at lint time);
- the libraries do not import the app layer (``retrieval.cli``);
- ``from ckn import *`` and ``from retrieval import *`` work, every public name is bound
  and every public function or class has a docstring;
- no file of the libraries exceeds 700 lines.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 700


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imported_modules(path: Path) -> list[str]:
    """Every module name an import statement, ``importlib.import_module`` or ``__import__``
    call in the file names (string arguments only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def _hits(files, predicate) -> list[str]:
    return [
        f"{p.relative_to(ROOT)}: {m}" for p in files for m in _imported_modules(p) if predicate(m)
    ]


def test_ckn_imports_nothing_from_retrieval():
    hits = _hits(_py_files("ckn"), lambda m: m == "retrieval" or m.startswith("retrieval."))
    assert not hits, hits


def test_no_ckn_src_import_outside_ckn():
    files = [
        p
        for p in _py_files("retrieval", "tests", "benchmarks", "examples")
        if p.name != "test_architecture.py"
    ]
    hits = _hits(files, lambda m: m == "ckn._src" or m.startswith("ckn._src."))
    assert not hits, hits


def test_libraries_do_not_import_the_app_layer():
    files = [p for p in _py_files("ckn", "retrieval") if "cli" not in p.relative_to(ROOT).parts]
    hits = _hits(files, lambda m: m == "retrieval.cli" or m.startswith("retrieval.cli."))
    assert not hits, hits


def test_the_checker_sees_a_hidden_import(tmp_path):
    # The scan must catch what the old ckn/cli.py did: a module named in a string.
    f = tmp_path / "x.py"
    f.write_text(
        "import importlib\ndef g():\n    from ckn._src import ops\n"
        "    return importlib.import_module('retrieval._src.cli_patches')\n"
    )
    assert "ckn._src" in _imported_modules(f)
    assert "retrieval._src.cli_patches" in _imported_modules(f)


@pytest.mark.parametrize("package", ["ckn", "retrieval"])
def test_star_import_and_docstrings(package):
    mod = importlib.import_module(package)
    ns: dict = {}
    exec(f"from {package} import *", ns)
    assert set(mod.__all__) <= set(ns), set(mod.__all__) - set(ns)
    assert len(set(mod.__all__)) == len(mod.__all__), "duplicate names in __all__"
    undocumented = [
        name
        for name in mod.__all__
        if (inspect.isfunction(ns[name]) or inspect.isclass(ns[name]))
        and not (inspect.getdoc(ns[name]) or "").strip()
    ]
    assert not undocumented, undocumented


def test_library_files_stay_small():
    big = {
        str(p.relative_to(ROOT)): n
        for p in _py_files("ckn", "retrieval")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, big
