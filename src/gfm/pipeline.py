"""The pipeline's stages, declared once: what each stage reads, writes, runs and which params keys it depends on.

Both drivers are derived from :data:`STAGES`:

* ``dvc.yaml`` is rendered from it (:func:`render_dvc_yaml`; ``gfm pipeline --write dvc.yaml`` regenerates the
  checked-in file, and a test fails when it is stale). Each stage's code dependencies are computed, not chosen:
  the import closure inside ``src/gfm`` of the modules the stage runs (:func:`code_deps`).
* the Snakemake rules take their paths (:func:`path`), their params trigger (:func:`trigger_values`) and their
  code inputs (:func:`code_deps`) from it (workflow/rules/common.smk).
* the stages that read other stages' outputs by path (generalize, report, accelerate) build them with
  :func:`path` / :func:`under`.

Path templates use the wildcards ``{task}``, ``{optimizer}`` and ``{model}``; params keys may use ``{task}``
and ``{store}`` (``<task>-<optimizer>``). Pure and cheap to import: the Snakefile imports it at every start.
"""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["PATHS", "STAGES", "Stage", "path", "under", "stage", "trigger_keys", "trigger_values", "code_deps",
           "import_closure", "render_dvc_yaml", "add_commands"]

# Every output of the pipeline, relative to the workspace root.
PATHS = {
    "trajectories": "data/trajectories/{task}/{optimizer}.zarr",
    "split": "data/splits/{task}/{optimizer}.json",
    "models": "data/models/{task}/{optimizer}",
    "model": "data/models/{task}/{optimizer}/{model}",
    "train_index": "data/models/{task}/{optimizer}/index.json",
    "forecasts": "data/forecasts/{task}/{optimizer}",
    "metrics": "data/metrics/{task}/{optimizer}.json",
    "plots": "data/plots/{task}/{optimizer}",
    "generalize": "data/metrics/generalize.json",
    "accelerate": "data/metrics/accelerate/{task}/{optimizer}.json",
    "headline_metrics": "metrics.json",
    "headline_plots": "plots",
    "reports": "reports",
}

SRC = "src/gfm"   # the package's source, relative to the workspace root (gfm workspace copies it there)


def path(name: str, task: str | None = None, optimizer: str | None = None, model: str | None = None) -> str:
    """The path of output ``name``; without arguments the template itself (Snakemake wildcards)."""
    template = PATHS[name]
    if task is None:
        return template
    return template.format(task=task, optimizer=optimizer, model=model)


def under(root: str | Path, name: str, task: str | None = None, optimizer: str | None = None,
          model: str | None = None, *, replaces: str | None = None) -> Path:
    """Output ``name`` below a directory given on a stage's command line (``--data``, ``--metrics``): ``root``
    stands for ``replaces``, by default the template's directories before its first wildcard
    (``under(metrics_dir, "metrics", task, optimizer)`` is ``metrics_dir/<task>/<optimizer>.json``); a
    ``replaces`` template is filled with the same wildcards."""
    template = PATHS[name]
    if replaces is None:
        replaces = template.split("{", 1)[0].rstrip("/")
    wildcards = {"task": task, "optimizer": optimizer, "model": model}
    full, replaces = template.format(**wildcards), replaces.format(**wildcards)
    if not full.startswith(replaces + "/"):
        raise ValueError(f"{name}: {full} does not lie below {replaces}")
    return Path(root) / full[len(replaces) + 1:]


@dataclass(frozen=True)
class Stage:
    """One DVC stage: the Snakemake ``rules`` it runs, on ``targets``, once per item of ``foreach`` (``stores``,
    ``accelerate.stores`` or None for one stage).

    ``deps`` are data dependencies; ``params`` the params keys (DVC's list, and the Snakemake params trigger
    of its rules unless ``rule_params`` narrows one); ``modules`` what ``gfm <stage>`` runs, whose import
    closure becomes code dependencies; ``rule_file`` the rules file. ``notes`` map an entry to the comment
    written after it in dvc.yaml; ``comment`` is written above the stage; ``extra`` is DVC YAML appended as is."""

    name: str
    rules: tuple[str, ...]
    targets: tuple[str, ...]
    outs: tuple[str, ...]
    deps: tuple[str, ...]
    params: tuple[str, ...]
    modules: tuple[str, ...]
    rule_file: str
    foreach: str | None = "stores"
    rule_params: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    extra: str = ""


_STORE = ("trajectories", "split")

STAGES: tuple[Stage, ...] = (
    Stage("generate", rules=("generate",), targets=("trajectories",), outs=("trajectories",), deps=(),
          params=("seed", "generate.dataset_seeds", "store", "tasks.{task}", "stores.{store}"),
          modules=("gfm.generate",), rule_file="generate.smk"),
    Stage("split", rules=("split",), targets=("split",), outs=("split",), deps=("trajectories",),
          params=("split",), modules=("gfm.split",), rule_file="generate.smk"),
    Stage("train", rules=("train", "train_index"), targets=("train_index",), outs=("models",), deps=_STORE,
          params=("forecast", "train", "models", "stores.{store}"),
          # one train job per model: it depends on its own model's entry only
          rule_params={"train": ("forecast", "train.seed", "train.budget", "train.tuning", "models.{model}",
                                 "stores.{store}")},
          modules=("gfm.train", "gfm.train_index"), rule_file="train.smk",
          notes={"stores.{store}": "its optional per-store `models` list"},
          comment="One stage per store (each DVC stage costs ~2 s of Snakemake start-up); inside it Snakemake runs "
                  "the store's model jobs in parallel. The target is the store's index.json, whose rule needs "
                  "every model directory of train.models: DVC cannot interpolate a list into `cmd`."),
    Stage("forecast", rules=("forecast",), targets=("forecasts",), outs=("forecasts",),
          deps=(*_STORE, "models"), params=("forecast", "train.models", "stores.{store}"),
          modules=("gfm.forecast",), rule_file="forecast.smk"),
    Stage("evaluate", rules=("evaluate",), targets=("metrics",), outs=("metrics", "plots"),
          deps=(*_STORE, "forecasts"),
          params=("seed", "forecast", "train.models", "stores.{store}", "tasks.{task}", "evaluate"),
          modules=("gfm.evaluate",), rule_file="evaluate.smk",
          notes={"tasks.{task}": "downstream loss regenerates each test run's data from its task"},
          comment="The full metrics and plot data are cached like every other output (data/ is not in git), so "
                  "`dvc push` / `dvc pull` share them and a consumer's tree equals the producer's. They are plain "
                  "outs, not DVC metrics/plots: the headline stage condenses them into what `dvc metrics` and "
                  "`dvc plots` show."),
    Stage("headline", rules=("headline",), targets=("headline_metrics", "headline_plots"), outs=(),
          deps=("data/metrics", "data/plots"), params=("stores", "train.models"), foreach=None,
          modules=("gfm.headline",), rule_file="evaluate.smk",
          notes={"stores": "which stores it shows (the Snakemake rule's inputs)"},
          comment="What DVC shows, tracked by git (cache: false) so that `dvc metrics diff`, `dvc exp show` and "
                  "`dvc plots diff` compare commits without a pull: metrics.json, one xLV per (store, model), and "
                  "plots/, evaluate's plot data of every store with one directory per kind of plot "
                  "(src/gfm/headline.py).",
          extra="metrics:\n  - metrics.json:\n      cache: false\nouts:\n  - plots:\n      cache: false\n"),
    Stage("generalize", rules=("generalize",), targets=("generalize",), outs=("generalize",),
          deps=("data/models", "data/trajectories", "data/splits"),
          params=("forecast", "generalize", "tasks", "stores"), foreach=None,
          modules=("gfm.generalize",), rule_file="generalize.smk",
          notes={"tasks": "the pair labels name what differs between the two tasks",
                 "outs": "shown in reports/summary.md; cached, not a DVC metric (see headline)"}),
    Stage("accelerate", rules=("accelerate",), targets=("accelerate",), outs=("accelerate",),
          deps=("split", "models"),
          params=("seed", "generate.dataset_seeds", "forecast", "accelerate", "tasks.{task}", "stores.{store}"),
          foreach="accelerate.stores", modules=("gfm.accelerate",), rule_file="accelerate.smk",
          notes={"outs": "shown in reports/summary.md; cached, not a DVC metric (see headline)"},
          comment="Jump-ahead training (src/gfm/accelerate.py): plain vs forecaster-jump loops on a store's "
                  "test runs."),
    Stage("report", rules=("report",), targets=("reports",), outs=("reports",),
          deps=("data/metrics", "data/plots", "data/models"),
          params=("report", "seed", "generate.dataset_seeds", "forecast", "train", "stores", "generalize",
                  "accelerate"),
          foreach=None, modules=("gfm.report",), rule_file="evaluate.smk",
          notes={"data/models": "budgets, tuned options and validation curves of the learned models"}),
)


def stage(name: str) -> Stage:
    for st in STAGES:
        if st.name == name:
            return st
    raise KeyError(f"{name}: no such stage (stages: {', '.join(s.name for s in STAGES)})")


def _rule_stage(rule: str) -> Stage:
    for st in STAGES:
        if rule in st.rules:
            return st
    raise KeyError(f"{rule}: no stage runs this rule")


# --- params trigger ------------------------------------------------------------------------------------------
def trigger_keys(rule: str) -> tuple[str, ...]:
    """The params keys (templates) whose values decide whether a job of ``rule`` is stale."""
    st = _rule_stage(rule)
    return st.rule_params.get(rule, st.params)


def _lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None   # an optional section left out: as absent for DVC
        node = node[part]
    return node


def trigger_values(config: dict, rule: str, task: str | None = None, optimizer: str | None = None,
                   model: str | None = None) -> str:
    """The values of :func:`trigger_keys` for one job, as one JSON string (Snakemake's params trigger re-runs a
    job when it changes). ``device`` is never a key: a machine setting, not a study parameter."""
    store = f"{task}-{optimizer}"
    keys = [k.format(task=task, store=store, model=model) for k in trigger_keys(rule)]
    return json.dumps({k: _lookup(config, k) for k in keys}, sort_keys=True)


# --- code dependencies ---------------------------------------------------------------------------------------
def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(tree: ast.AST, *, module_level: bool):
    """Import statements that can run: all of them, lazy ones inside functions included, or (``module_level``)
    those that run when the module is imported. ``if TYPE_CHECKING:`` blocks never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if module_level and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


@cache
def _parse(file: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(file.read_text(), filename=str(file))


@cache
def _module_file(name: str, src: Path) -> Path | None:
    """``gfm.a.b`` -> src/a/b.py or src/a/b/__init__.py (``src`` is the gfm package directory)."""
    parts = name.split(".")[1:]
    base = src.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(name: str, file: Path, src: Path, *, module_level: bool) -> frozenset[str]:
    """The ``gfm`` modules that module ``name`` (source ``file``) imports."""
    return _imports_cached(name, file, file.stat().st_mtime_ns, src, module_level)


@cache
def _imports_cached(name: str, file: Path, mtime_ns: int, src: Path, module_level: bool) -> frozenset[str]:
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(_parse(file, mtime_ns), module_level=module_level):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        found.add(base)
        # `from pkg import x`: x is a submodule or an attribute of pkg
        found.update(f"{base}.{a.name}" for a in node.names if _module_file(f"{base}.{a.name}", src))
    return frozenset(m for m in found if (m == "gfm" or m.startswith("gfm.")) and _module_file(m, src))


def import_closure(modules: tuple[str, ...] | list[str], src: str | Path = SRC) -> list[Path]:
    """Source files of ``modules`` and of every ``gfm`` module they import, directly or not, lazy imports
    inside functions included (walked in the AST, not executed).

    A package entered only as the parent of an imported module contributes its module-level imports (what
    importing it runs), not the lazy ones of its functions (``gfm.__getattr__``'s)."""
    src = Path(src)
    full: set[str] = set()
    parents: set[str] = set()
    todo = [(m, False) for m in modules]
    while todo:
        name, module_level = todo.pop()
        seen = parents if module_level else full
        if name in full or name in seen:
            continue
        file = _module_file(name, src)
        if file is None:
            raise FileNotFoundError(f"{name}: no source under {src} (the stage table names a module that is gone)")
        seen.add(name)
        todo += [(p, True) for p in _parents(name)]
        todo += [(m, False) for m in _imports(name, file, src, module_level=module_level)]
    return sorted({_module_file(m, src) for m in full | parents})


def code_deps(name: str, src: str | Path = SRC) -> list[str]:
    """The code dependencies of stage ``name``: its import closure, as paths like ``src/gfm/x.py``."""
    src = Path(src)
    return [f"{SRC}/{f.relative_to(src).as_posix()}" for f in import_closure(stage(name).modules, src)]


# --- dvc.yaml ------------------------------------------------------------------------------------------------
_DVC_ITEM = {"stores": {"task": "${item.task}", "optimizer": "${item.optimizer.name}", "store": "${key}"},
             "accelerate.stores": {"task": "${item.task}", "optimizer": "${item.optimizer}", "store": "${key}"}}

HEADER = """\
# Generated from src/gfm/pipeline.py by `gfm pipeline --write dvc.yaml`: edit the stage table there, not this file.
# DVC decides which stages are stale (content hashes in dvc.lock); each stage runs its own Snakemake rule
# (--allowed-rules, so a stage never re-runs another stage's jobs). Machine settings come from a Snakemake
# profile (SNAKEMAKE_PROFILE=profiles/slurm dvc repro), never from `cmd`. Code deps are the import closure of
# the modules each stage runs. tests/test_dag_agreement.py checks that Snakemake and DVC describe one DAG.
stages:
"""

FOOTER = """
# `dvc plots show` / `dvc plots diff`: one plot per store and kind, from the headline stage's plots/ (DVC
# configures plots by path prefix, hence a directory per kind). Templates: workflow/plots/*.json (Vega-Lite;
# one line per model or series, one dash style per revision).
plots:
  - plots/error_vs_horizon:
      x: step
      y: mse
      x_label: optimizer step
      y_label: weight MSE on the test runs (log scale)
      template: workflow/plots/error_vs_horizon.json
  - plots/trajectory:
      x: step
      y: value
      x_label: optimizer step
      y_label: weight (one test run)
      template: workflow/plots/trajectory.json
"""


def _dvc_path(entry: str, item: dict | None) -> str:
    """A path name of :data:`PATHS` (rendered for DVC's foreach item) or a literal path."""
    template = PATHS.get(entry, entry)
    return template.format(**item) if item else template


def _wrap(text: str, indent: str) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(indent) + 2 + len(line) + 1 + len(word) > 110:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [f"{indent}# {ln}" for ln in lines + [line] if ln]


def _entries(key: str, values: list[str], notes: dict[str, str], indent: str, raw: list[str]) -> list[str]:
    """A YAML list under ``key``; an entry whose template (``raw``) has a note gets it as a trailing comment."""
    head = f"{indent}{key}:"
    lines = [head + " " * max(1, 35 - len(head)) + f"# {notes[key]}" if key in notes else head]
    for value, template in zip(values, raw):
        text = f'{indent}  - "{value}"' if "$" in value and "/" not in value else f"{indent}  - {value}"
        if template in notes:
            text += " " * max(1, 35 - len(text)) + f"# {notes[template]}"
        lines.append(text)
    return lines


def render_stage(st: Stage, src: str | Path = SRC) -> list[str]:
    item = _DVC_ITEM.get(st.foreach) if st.foreach else None
    indent = "      " if item else "    "
    lines = [f"  {st.name}:"] + _wrap(st.comment, "    ")
    if item:
        lines += [f"    foreach: ${{{st.foreach}}}", "    do:"]
    targets = " ".join(_dvc_path(t, item) for t in st.targets)
    lines.append(f"{indent}cmd: snakemake --cores all --allowed-rules {' '.join(st.rules)} -- {targets}")
    deps = [_dvc_path(d, item) for d in st.deps]
    deps += sorted({f"workflow/rules/{st.rule_file}"})
    deps += code_deps(st.name, src)
    lines += _entries("deps", deps, {_dvc_path(k, item): v for k, v in st.notes.items()}, indent, deps)
    params = [p.format(task=(item or {}).get("task", "{task}"), store=(item or {}).get("store", "{store}"))
              for p in st.params]
    lines += _entries("params", params, st.notes, indent, list(st.params))
    if st.outs:
        outs = [_dvc_path(o, item) for o in st.outs]
        lines += _entries("outs", outs, st.notes, indent, outs)
    lines += [f"{indent}{ln}" for ln in st.extra.splitlines()]
    return lines


def render_dvc_yaml(src: str | Path = SRC) -> str:
    """dvc.yaml as generated from :data:`STAGES` and the source under ``src`` (the code deps)."""
    body = [ln for st in STAGES for ln in render_stage(st, src)]
    return HEADER + "\n".join(body) + "\n" + FOOTER


# --- commands ------------------------------------------------------------------------------------------------
def _cmd_pipeline(args: argparse.Namespace) -> int:
    text = render_dvc_yaml(args.src)
    if args.write is None:
        print(text, end="")
        return 0
    out = Path(args.write)
    if out.exists() and out.read_text() == text:
        print(f"{out}: up to date")
        return 0
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"{out}: written from the stage table in {SRC}/pipeline.py")
    return 0


def _cmd_train_index(args: argparse.Namespace) -> int:
    from gfm.train_index import run

    run(args.params, args.store, Path(args.out))
    return 0


def add_commands(sub) -> None:
    """``gfm pipeline`` and ``gfm train-index`` on the CLI's subparsers."""
    p = sub.add_parser("pipeline", help="dvc.yaml from the stage table (src/gfm/pipeline.py)",
                       description="Render dvc.yaml from the stage table, with each stage's code dependencies "
                                   "computed from the source; print it, or write it with --write.")
    p.add_argument("--write", metavar="DVC.yaml", help="write here (atomically) instead of printing")
    p.add_argument("--src", default=SRC, metavar="DIR", help="the gfm package source (default: %(default)s)")
    p.set_defaults(func=_cmd_pipeline)
    t = sub.add_parser("train-index", help="a store's index.json: its trained models and their kinds")
    t.add_argument("--params", default="params.yaml", metavar="P", help="the params file (default: %(default)s)")
    t.add_argument("--store", required=True, metavar="KEY", help="<task>-<optimizer>, a key of `stores`")
    t.add_argument("--out", required=True, metavar="INDEX.json", help="where to write it")
    t.set_defaults(func=_cmd_train_index)


if __name__ == "__main__":   # python -m gfm.pipeline [--write dvc.yaml]: the same as gfm pipeline
    import sys

    _parser = argparse.ArgumentParser(prog="python -m gfm.pipeline")
    add_commands(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args(["pipeline", *sys.argv[1:]])
    raise SystemExit(_args.func(_args))
