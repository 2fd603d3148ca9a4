"""The layers of the project and its public API by stage (ARCHITECTURE.md), checked on the tree.

- ``ckn`` imports nothing from ``retrieval`` (lazy imports and importlib strings included);
- no file outside ``ckn/`` imports ``ckn._src``, and no file outside ``retrieval/`` (nor
  ``retrieval/cli``) imports ``retrieval._src``, except the tests about an internal listed in
  ``INTERNAL_TESTS`` (ruff TID251 says the same at lint time);
- the libraries do not import the app layer (``retrieval.cli``);
- ``ckn.__all__`` and ``retrieval.__all__`` are exactly the curated entry points below;
- every public module (the top levels and the stage modules) star-imports, every ``__all__``
  name is bound, public, and documented if a function or class; no name is exported by two
  stage modules;
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

#: Tests about an internal: the only files outside the packages that may import a ``_src``
#: module (file -> what internal they test). Keep it short: prefer public names.
INTERNAL_TESTS = {
    "tests/test_ops.py": "ckn's to_float (the input dtype conversion)",
    "tests/test_sharding.py": "kmeans's NUM_BLOCKS (row blocks of the sharded k-means)",
    "tests/test_nets.py": "the network blocks and state-dict layouts of each backbone",
    "tests/test_weights.py": "load_params, the state-dict key and shape check",
    "tests/test_ckn_backbone.py": "the CKN backbone's jitted map, geometry and memory estimate",
    "tests/test_global_desc.py": "one compilation of the backbone's jitted apply",
    "tests/test_global_head.py": "the learned heads' forward pieces and initialization",
    "tests/test_patchsets.py": "the patch-set builders' grouping, geometry and cache internals",
    "tests/test_regions.py": "patch frames and the inside-image fraction",
    "tests/test_pooling.py": "the R-MAC region boxes",
    "tests/test_cam.py": "the CAM thresholds and one compilation of its jitted pieces",
    "tests/test_vlad.py": "one compilation of the batched VLAD",
    "tests/test_search.py": "the exact search's trace counter",
    "tests/test_metrics.py": "the blocked patch-retrieval pass and its count modes",
    "tests/test_revisited.py": "the revisited protocol's per-query lists",
    "tests/test_index_store.py": "interrupted index writes and the index's searcher / backbone",
    "tests/test_reproduce_finetune.py": "tiny models in the CLI: reproduce's ckn_config patched",
}

#: The entry points: what a README example needs; the rest is public by stage.
CKN_TOP = {
    "CKN", "KernelLayer", "Filters", "LayerParams", "kernel_layer_apply", "CKNConfig",
    "LayerConfig", "LayerGeometry", "TrainConfig", "PRESETS", "get_preset", "PRECISIONS", "train",
    "describe", "finetune", "FinetuneConfig", "FinetuneReport", "save", "load",
    "read_training_report", "InputError",
}  # fmt: skip
RETRIEVAL_TOP = {
    "reproduce", "build_default", "load_patchset", "save_patchset", "PatchSet",
    "evaluate_descriptors", "load_backbone", "extract_global", "GlobalConfig", "evaluate",
    "build_index", "load_index", "query_index", "write_tfds",
}  # fmt: skip
STAGES = {
    "ckn": ("ops", "unsupervised", "supervised", "losses", "files", "sharding"),
    "retrieval": ("patches", "local", "image", "nets", "index", "metrics"),
}
#: Names that must stay internal (not exported by any public module).
INTERNAL_NAMES = {"NUM_BLOCKS", "check_precision", "to_float", "load_npy", "check_batch"}


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
    return [f"{_rel(p)}: {m}" for p in files for m in _imported_modules(p) if predicate(m)]


def test_ckn_imports_nothing_from_retrieval():
    hits = _hits(_py_files("ckn"), lambda m: m == "retrieval" or m.startswith("retrieval."))
    assert not hits, hits


def _is_src(package: str):
    return lambda m: m == f"{package}._src" or m.startswith(f"{package}._src.")


def _src_violations(files, package: str, allowed=INTERNAL_TESTS) -> list[str]:
    """Imports of ``package._src`` in ``files``, except in the allowed ones."""
    rest = [p for p in files if _rel(p) not in allowed and p.name != "test_architecture.py"]
    return _hits(rest, _is_src(package))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)


def test_no_ckn_src_import_outside_ckn():
    files = _py_files("retrieval", "tests", "benchmarks", "examples")
    hits = _src_violations(files, "ckn")
    assert not hits, hits


def test_no_retrieval_src_import_outside_retrieval_nor_in_the_cli():
    files = _py_files("retrieval/cli", "tests", "benchmarks", "examples")
    hits = _src_violations(files, "retrieval")
    assert not hits, hits


def test_internal_tests_allow_list_is_current():
    # Every listed file exists and still needs its exception.
    stale = [
        f
        for f in INTERNAL_TESTS
        if not (ROOT / f).exists()
        or not _hits([ROOT / f], lambda m: _is_src("ckn")(m) or _is_src("retrieval")(m))
    ]
    assert not stale, stale


def test_the_checker_sees_a_planted_src_import(tmp_path):
    f = tmp_path / "test_x.py"
    f.write_text("from retrieval._src.global_desc import GlobalConfig\nimport ckn._src.ops\n")
    assert _src_violations([f], "retrieval") and _src_violations([f], "ckn")
    assert not _src_violations([f], "retrieval", allowed={str(f): "planted"})


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


def _api_problems(module_name: str) -> list[str]:
    """What is wrong with a public module: no docstring, an ``__all__`` name that is unbound,
    private, internal or repeated, a function or class without a docstring."""
    mod = importlib.import_module(module_name)
    names = list(getattr(mod, "__all__", []))
    problems = [] if (mod.__doc__ or "").strip() else [f"{module_name}: no module docstring"]
    try:
        exec(f"from {module_name} import *", {})
    except (AttributeError, ImportError) as e:
        problems.append(f"{module_name}: star import fails ({e})")
    ns = {n: getattr(mod, n) for n in names if hasattr(mod, n)}
    problems += [f"{module_name}.{n}: unbound" for n in names if n not in ns]
    problems += [f"{module_name}.{n}: private" for n in names if n.startswith("_")]
    problems += [f"{module_name}.{n}: internal" for n in names if n in INTERNAL_NAMES]
    problems += [f"{module_name}: {n} listed twice" for n in set(names) if names.count(n) > 1]
    problems += [
        f"{module_name}.{n}: no docstring"
        for n in names
        if n in ns
        and (inspect.isfunction(ns[n]) or inspect.isclass(ns[n]))
        and not (inspect.getdoc(ns[n]) or "").strip()
    ]
    return problems


PUBLIC_MODULES = [*STAGES, *(f"{p}.{s}" for p, stages in STAGES.items() for s in stages)]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_module_star_imports_and_is_documented(module_name):
    problems = _api_problems(module_name)
    assert not problems, problems


def test_top_levels_are_the_curated_entry_points():
    import ckn
    import retrieval

    assert set(ckn.__all__) == CKN_TOP, set(ckn.__all__) ^ CKN_TOP
    assert set(retrieval.__all__) == RETRIEVAL_TOP, set(retrieval.__all__) ^ RETRIEVAL_TOP
    for package, stages in STAGES.items():  # `import ckn` alone gives ckn.ops.kappa etc.
        mod = importlib.import_module(package)
        assert all(hasattr(mod, s) for s in stages), package


def _exported_twice(modules: list[str]) -> dict[str, list[str]]:
    homes: dict[str, list[str]] = {}
    for m in modules:
        for n in importlib.import_module(m).__all__:
            homes.setdefault(n, []).append(m)
    return {n: ms for n, ms in homes.items() if len(ms) > 1}


def test_no_name_is_exported_by_two_stage_modules():
    stages = [m for m in PUBLIC_MODULES if "." in m]
    twice = _exported_twice(stages)
    assert not twice, twice


def test_the_api_checks_see_planted_faults(tmp_path, monkeypatch):
    pkg = tmp_path / "planted_api"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "def f():\n    pass\n\n\ndef _g():\n    pass\n\n\nNUM_BLOCKS = 4\n"
        "__all__ = ['f', '_g', 'NUM_BLOCKS', 'missing', 'f']\n"
    )
    (pkg / "a.py").write_text('"""A."""\n\n\ndef h():\n    "h."\n\n\n__all__ = ["h"]\n')
    (pkg / "b.py").write_text('"""B."""\n\nfrom planted_api.a import h\n\n__all__ = ["h"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    problems = " ".join(_api_problems("planted_api"))
    for fault in ("no module docstring", "missing: unbound", "_g: private", "NUM_BLOCKS: internal",
                  "f listed twice", "f: no docstring"):  # fmt: skip
        assert fault in problems, fault
    assert _exported_twice(["planted_api.a", "planted_api.b"]) == {
        "h": ["planted_api.a", "planted_api.b"]
    }


def test_library_files_stay_small():
    big = {
        str(p.relative_to(ROOT)): n
        for p in _py_files("ckn", "retrieval")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, big
