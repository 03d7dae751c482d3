"""The stage table (gfm.pipeline) is the one declaration of the DAG: dvc.yaml is generated from it and fresh, each
stage's code deps hold every module it imports, and the rule files are the table's rules and nothing else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY
from gfm import pipeline
from gfm.artifacts.outputs import OutputError
from gfm.base.errors import GFMError
from gfm.pipeline.closure import code_deps, collapsed, import_closure
from gfm.pipeline.dvc_yaml import render_dvc_yaml

RULES = ROOT / "workflow" / "rules"


def _dvc_stages() -> dict[str, dict]:
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    return {name: st.get("do", st) for name, st in doc["stages"].items()}


def test_checked_in_dvc_yaml_is_generated_from_the_table():
    expected = render_dvc_yaml(ROOT / "src" / "gfm")
    assert (ROOT / "dvc.yaml").read_text() == expected, (
        "dvc.yaml is stale (the stage table or a module's imports changed): regenerate it with "
        "`gfm pipeline --write dvc.yaml` and commit it")


def test_snakemake_code_inputs_are_dvc_yamls_code_deps_file_by_file(tmp_path):
    """Both drivers take a stage's code from the stage table and the source (neither reads the other's files):
    the Snakemake inputs (stage_codes, as workflow/rules/common.smk computes them) are dvc.yaml's code deps with
    each directory written out; a cache of the scans gives the same, and an unreadable one is ignored."""
    from gfm.pipeline.closure import stage_codes

    src = ROOT / "src" / "gfm"
    expected = {}
    for name, st in _dvc_stages().items():
        deps = [d for d in st["deps"] if d.startswith(("src/", "workflow/"))]
        expected[name] = [f for d in deps for f in (
            sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / d).rglob("*.py")) if (ROOT / d).is_dir() else [d])]
    cache = tmp_path / "scans.json"
    first = stage_codes(cache=cache, src=src)
    assert first == expected
    assert stage_codes(cache=cache, src=src) == first and cache.is_file()
    cache.write_text('{"not": "a scan"}')
    assert stage_codes(cache=cache, src=src) == first


def test_a_package_that_imports_its_own_directory_depends_on_every_module_in_it():
    """gfm.tasks imports every module of its own directory (pkgutil) and finds each kind's Task class by the
    name its config gives: the AST cannot follow that, so every module of the package is a code dep of the
    stages that import it."""
    tasks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "src" / "gfm" / "tasks").glob("*.py"))
    for stage in ("generate", "evaluate", "accelerate"):
        assert set(tasks) <= set(code_deps(stage, ROOT / "src" / "gfm")), stage


# Run in a fresh interpreter: per stage, import its modules, report the gfm modules loaded, then forget them
# (torch and the other third-party modules stay loaded, so the stages after the first cost little).
_LOADED = """
import json, sys
out = {}
for stage, modules in json.loads(sys.argv[1]).items():
    for name in [n for n in sys.modules if n == "gfm" or n.startswith("gfm.")]:
        del sys.modules[name]
    for m in modules:
        __import__(m)
    out[stage] = sorted(m.__file__ for n, m in sys.modules.items()
                        if (n == "gfm" or n.startswith("gfm.")) and getattr(m, "__file__", None))
print(json.dumps(out))
"""


def test_every_module_a_stage_imports_is_one_of_its_deps():
    """What importing each stage's modules loads is inside the computed closure (which the test above keeps
    equal to dvc.yaml's deps); the closure also holds the lazy imports that plain importing does not run."""
    stages = {st.name: list(st.modules) for st in pipeline.STAGES}
    proc = subprocess.run([sys.executable, "-c", _LOADED, json.dumps(stages)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    problems = []
    for stage, files in json.loads(proc.stdout).items():
        loaded = {Path(f).resolve().relative_to(ROOT).as_posix() for f in files}
        assert len(loaded) > len(stages[stage]), stage
        deps = set(code_deps(stage, ROOT / "src" / "gfm"))
        if loaded - deps:
            problems.append(f"{stage}: imports {sorted(loaded - deps)}, missing from its computed code deps")
    assert not problems, "\n".join(problems)


def test_generate_depends_on_what_shapes_a_store():
    """The defaults and checks a store is written with (config, errors, layout, schema) and the version it
    records are code deps of generate, though generate.py does not name them all."""
    deps = set(_dvc_stages()["generate"]["deps"])
    for module in ("gfm.base.errors", "gfm.core.layout", "gfm.base.schema", "gfm._version", "gfm.core.optimizers", "gfm.config"):
        base = ROOT / "src" / module.replace(".", "/")
        file = (base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py")
        file = file.relative_to(ROOT).as_posix()
        # a dep of its own, or inside a subpackage dvc.yaml lists whole
        assert file in deps or any(file.startswith(d + "/") for d in deps), module


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "gfm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "gfm"


def test_closure_follows_lazy_relative_and_from_imports(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": """
            from gfm._version import v
            def __getattr__(name):      # lazy attribute of the package: not run by importing a submodule
                from gfm import heavy
                return heavy
            """,
        "_version.py": "v = 1\n",
        "heavy.py": "",
        "a.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from gfm import typing_only
            def f():
                from gfm.sub import c   # lazy, inside a function
                return c
            """,
        "typing_only.py": "",
        "sub/__init__.py": "from . import d\n",
        "sub/c.py": "from ..b import x\n",
        "sub/d.py": "",
        "b.py": "x = 1\n",
        "unused.py": "",
    })
    got = {p.relative_to(src).as_posix() for p in import_closure(["gfm.a"], src)}
    assert got == {"__init__.py", "_version.py", "a.py", "sub/__init__.py", "sub/c.py", "sub/d.py", "b.py"}


def test_closure_holds_every_module_of_a_package_that_imports_its_own_directory(tmp_path):
    src = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from gfm.reg import base\n",
        "reg/__init__.py": """
            import importlib
            import pkgutil
            for _module in pkgutil.iter_modules(__path__):    # a registry that fills itself (gfm.forecasters)
                importlib.import_module(f"{__name__}.{_module.name}")
            """,
        "reg/base.py": "",
        "reg/one.py": "",
        "reg/sub/__init__.py": "",
        "reg/sub/two.py": "",
        "other.py": "",
    })
    got = {p.relative_to(src).as_posix() for p in import_closure(["gfm.a"], src)}
    assert got == {"__init__.py", "a.py", "reg/__init__.py", "reg/base.py", "reg/one.py", "reg/sub/__init__.py"}


def test_a_module_that_is_gone_is_named(tmp_path):
    src = _package(tmp_path, {"__init__.py": "", "a.py": ""})
    with pytest.raises(FileNotFoundError, match="gfm.gone"):
        import_closure(["gfm.gone"], src)


def test_rule_files_hold_the_tables_rules_and_no_python():
    defined = {}
    for smk in RULES.glob("*.smk"):
        text = smk.read_text()
        for name in re.findall(r"^rule (\w+):", text, flags=re.M):
            defined[name] = smk.name
        assert not re.search(r"^\s+run:", text, flags=re.M), f"{smk.name}: a run: block (rules call gfm <stage>)"
        if smk.name != "common.smk":
            assert not re.search(r"^def ", text, flags=re.M), f"{smk.name}: functions belong in common.smk"
    declared = {rule: st.rule_file for st in pipeline.STAGES for rule in st.rules}
    assert defined == declared


def test_rule_triggers_lie_within_their_stages_params():
    for st in pipeline.STAGES:
        for rule in st.rules:
            for key in pipeline.trigger_keys(rule):
                assert any(key == k or key.startswith(k + ".") for k in st.params), (rule, key)


def test_trigger_values_are_the_listed_keys_of_one_job():
    config = {"seed": 3, "forecast": {"prefix_end": 20}, "train": {"seed": 1, "budget": {}, "models": ["m"]},
              "models": {"m": {"kind": "linear"}, "other": {"kind": "lstm"}},
              "stores": {"t-sgd": {"task": "t"}, "u-sgd": {"task": "u"}}}
    got = json.loads(pipeline.trigger_values(config, "train", "t", "sgd", "m"))
    assert got == {"forecast": {"prefix_end": 20}, "train.seed": 1, "train.budget": {}, "train.tuning": None,
                   "models.m": {"kind": "linear"}, "stores.t-sgd": {"task": "t"}}


def test_paths_from_the_table():
    assert pipeline.path("split", "mlp", "sgd") == "data/splits/mlp/sgd.json"
    assert pipeline.path("model") == "data/models/{task}/{optimizer}/{model}"
    assert pipeline.under("d", "trajectories", "mlp", "adam", replaces="data") == Path("d/trajectories/mlp/adam.zarr")
    assert pipeline.under("m", "metrics", "mlp", "adam") == Path("m/mlp/adam.json")
    assert pipeline.under("x", "model", "mlp", "adam", "lstm", replaces=pipeline.PATHS["models"]) == Path("x/lstm")
    with pytest.raises(ValueError, match="does not lie below"):
        pipeline.under("x", "metrics", "mlp", "adam", replaces="data/models")


def test_train_index_lists_the_stores_models_and_refuses_a_foreign_file(tmp_path, capsys):
    from gfm.artifacts.outputs import marked
    from gfm.config import load_params
    from gfm.stages.train_index import TRAIN_INDEX, run

    params = load_params(TINY)
    key = next(iter(params.stores))
    out = tmp_path / "index.json"
    result = run(TINY, key, out)
    assert result == {"store": key, "models": {m: params.models[m]["kind"] for m in params.store_models(key)}}
    assert json.loads(out.read_text()) == marked(TRAIN_INDEX, result)  # with its ownership marker (gfm.artifacts.outputs)
    assert capsys.readouterr().out == f"{len(result['models'])} models\n"
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}\n')
    with pytest.raises(OutputError, match="not a train index"):
        run(TINY, key, foreign)
    assert foreign.read_text() == '{"mine": 1}\n'
    with pytest.raises(GFMError, match="not a key of `stores`"):
        run(TINY, "nope-sgd", tmp_path / "x.json")


def test_a_subpackage_is_one_dep_only_when_every_file_in_it_is_one(tmp_path):
    src = _package(tmp_path, {"__init__.py": "", "a.py": "", "whole/__init__.py": "", "whole/x.py": "",
                              "part/__init__.py": "", "part/y.py": "", "part/z.py": ""})
    (src / "whole" / "__pycache__").mkdir()
    (src / "whole" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    deps = [f"src/gfm/{n}" for n in ("__init__.py", "a.py", "whole/__init__.py", "whole/x.py", "part/__init__.py",
                                     "part/y.py")]
    assert collapsed(deps, src) == ["src/gfm/__init__.py", "src/gfm/a.py", "src/gfm/part/__init__.py",
                                    "src/gfm/part/y.py", "src/gfm/whole"]


def test_python_bytecode_is_not_part_of_a_directory_dep():
    assert "__pycache__/" in (ROOT / ".dvcignore").read_text().splitlines()


def test_no_module_imports_from_the_package_face():
    # The package face (gfm/__init__.py) sits on top: it re-exports the library's entry points lazily. A module
    # that reads a name from it (say `from gfm import __version__`) draws an arrow back up and ties its stage's
    # code deps to the face; `from gfm import <submodule>` is fine.
    import ast

    src = ROOT / "src" / "gfm"
    submodules = {p.stem for p in src.glob("*.py")} | {p.name for p in src.iterdir() if (p / "__init__.py").exists()}
    upward = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "gfm" and node.level == 0:
                upward += [f"{path.relative_to(src)}: from gfm import {a.name}" for a in node.names
                           if a.name not in submodules]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "gfm" \
                    and node.attr not in submodules:
                upward.append(f"{path.relative_to(src)}: gfm.{node.attr}")
    assert not upward, upward
