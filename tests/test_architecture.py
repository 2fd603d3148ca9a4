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
- no file of the libraries exceeds 700 lines;
- library messages name dataclass fields, never a command-line ``--flag``;
- pooling heads are entries of one registry (no head-name comparison elsewhere), every describer
  is an entry of ``DESCRIBERS`` built from one frozen config, and every image option of
  ``eval-images`` / ``index build`` is in the one table of modes (``cli/image_modes.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
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
    "tests/test_row_calls.py": "run_rows and CALL_PIXELS, a CPU batch as calls of a few rows",
    "tests/test_weights.py": "load_params, the state-dict key and shape check",
    "tests/test_ckn_backbone.py": "the CKN backbone's jitted map, geometry and memory estimate",
    "tests/test_global_desc.py": "one compilation of the backbone's jitted apply",
    "tests/test_global_head.py": "the learned heads' forward pieces and initialization",
    "tests/test_hpatches.py": "hand-made cases of the HPatches tasks' pieces (matching of one "
    "image, retrieval lists, pair distances, AP of ranks), the official split lists",
    "tests/test_hpstyle.py": "the jitter and overlap geometry of HPatches-style data",
    "tests/test_patchsets.py": "the patch-set builders' grouping, geometry and cache internals",
    "tests/test_regions.py": "patch frames and the inside-image fraction",
    "tests/test_pooling.py": "the R-MAC region boxes",
    "tests/test_cam.py": "the CAM thresholds and one compilation of its jitted pieces",
    "tests/test_vlad.py": "one compilation of the batched VLAD",
    "tests/test_search.py": "the exact search's trace counter",
    "tests/test_metrics.py": "the blocked patch-retrieval pass and its count modes",
    "tests/test_revisited.py": "the revisited protocol's per-query lists",
    "tests/test_index_store.py": "interrupted index writes and the index's searcher / backbone",
    "tests/test_index_scale.py": "a part save interrupted in its codes writer; the on-disk "
    "row reader of re-scoring",
    "tests/test_reproduce_finetune.py": "tiny models in the CLI: reproduce's ckn_config patched",
}

#: The entry points: what a README example needs; the rest is public by stage.
CKN_TOP = {
    "CKN", "KernelLayer", "Filters", "LayerParams", "kernel_layer_apply", "CKNConfig",
    "LayerConfig", "LayerGeometry", "TrainConfig", "PRESETS", "get_preset", "PRECISIONS", "train",
    "describe", "finetune", "FinetuneConfig", "FinetuneReport", "save", "load",
    "read_training_report", "InputError", "enable_compile_cache", "count_compilations",
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


# --------------------------------------------------------------------------- one name per setting

#: A command-line flag inside a string: what library messages must not name (they name fields).
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant of a file that is not a docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docs = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def _flag_hits(files) -> list[str]:
    return [f"{_rel(p)}:{line}: {m}" for p in files for line, text in _strings(p)
            for m in FLAG.findall(text)]  # fmt: skip


def test_library_messages_name_fields_not_flags():
    # The libraries speak of their dataclass fields (max_side, whiten_images); the command line
    # turns them into flags (retrieval/cli/flags.py fields_as_flags).
    files = [p for p in _py_files("ckn", "retrieval") if "cli" not in p.relative_to(ROOT).parts]
    hits = _flag_hits(files)
    assert not hits, hits


def test_the_flag_scan_sees_a_planted_flag(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('"""Docstrings may say --max-side."""\n\ndef g():\n'
                 '    raise ValueError("use --max-side 512")\n')  # fmt: skip
    assert _flag_hits([f]) == [f"{f}:4: --max-side"]


# --------------------------------------------------------------------------- registries

#: Where a pooling-head name may be compared: the registry itself; the learned heads' own two
#: kinds (gem: a learned p, rmac: a projection: other parameters); a network's fc6 output.
HEAD_NAME_PLACES = {"retrieval/_src/heads.py", "retrieval/_src/nets/backbone.py"}


def _head_name_compares(files, names) -> list[str]:
    out = []
    for p in files:
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.Compare):
                consts = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
                if consts & set(names):
                    out.append(f"{_rel(p)}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_pooling_heads_are_one_registry_and_no_name_chain_elsewhere():
    from retrieval.image import HEADS, POOLING_HEADS, GlobalConfig, PoolingHead

    assert HEADS == tuple(POOLING_HEADS)
    field = next(f for f in dataclasses.fields(GlobalConfig) if f.name == "head")
    assert field.metadata["setting"].choices == HEADS
    for name, entry in POOLING_HEADS.items():
        assert isinstance(entry, PoolingHead) and callable(entry.pool), name
        assert isinstance(entry.multiscale_p(3.0), float), name
        assert set(entry.uses) <= {f.name for f in dataclasses.fields(GlobalConfig)}, name
    files = [p for p in _py_files("retrieval") if _rel(p) not in HEAD_NAME_PLACES
             and "global_head" not in p.relative_to(ROOT).parts]  # fmt: skip
    hits = _head_name_compares(files, HEADS)
    assert not hits, hits


def test_the_head_name_scan_sees_a_planted_chain(tmp_path):
    f = tmp_path / "x.py"
    f.write_text('def g(h):\n    return 1 if h == "gem" else 2\n')
    assert _head_name_compares([f], ("gem",)) == [f"{f}:2: h == 'gem'"]


def test_every_describer_is_a_registry_entry_built_from_one_frozen_config():
    from retrieval import image

    entries = image.DESCRIBERS
    for name, entry in entries.items():
        cfg = entry.config
        assert dataclasses.is_dataclass(cfg) and cfg.__dataclass_params__.frozen, name
        for member in ("describe", "train", "whitening_vectors", "with_whitening"):
            assert callable(getattr(entry.make, member, None)), (name, member)
    classes = {e.make for e in entries.values()}
    public = [getattr(image, n) for n in image.__all__ if n.endswith("Describer")]
    extra = [c for c in public if inspect.isclass(c) and c not in classes
             and c not in (image.Describer, image.BaseDescriber)]  # fmt: skip
    assert not extra, extra


def test_every_image_option_is_in_the_one_table_of_modes():
    # Each option of eval-images and index build that describes images is in
    # retrieval.cli.image_modes.APPLIES (option -> modes); the rest are the command's own.
    from retrieval.cli.image_modes import APPLIES
    from retrieval.cli.main import build_parser

    own = {"--images", "--json", "--strict", "--quiet", "--out", "--overwrite", "--help"}
    own |= {"--fitted", "--shard", "--nprobe"}  # index build: a part of a sharded index; search
    sub = build_parser()._subparsers._group_actions[0].choices
    parsers = [sub["eval-images"], sub["index"]._subparsers._group_actions[0].choices["build"]]
    for p in parsers:
        options = {a.option_strings[-1] for a in p._actions if a.option_strings} - own - {"-h"}
        assert options <= set(APPLIES), options - set(APPLIES)
