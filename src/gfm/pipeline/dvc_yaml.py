"""dvc.yaml rendered from the stage table, and the commands ``gfm pipeline``, ``gfm schema`` and ``gfm train-index``.

    gfm pipeline --write dvc.yaml          # or: python -m gfm.pipeline --write dvc.yaml
    gfm schema --write workflow/schemas/params.schema.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gfm.pipeline import PATHS, SRC, STAGES, Stage
from gfm.pipeline.closure import collapsed, stage_code
from gfm.pipeline.generated import emit, generated_kind

__all__ = ["render_dvc_yaml", "render_stage", "add_commands", "DVC_YAML"]


_DVC_ITEM = {"stores": {"task": "${item.task}", "optimizer": "${item.optimizer.name}", "store": "${key}"},
             "accelerate.stores": {"task": "${item.task}", "optimizer": "${item.optimizer}", "store": "${key}"}}

HEADER = """\
# Generated from src/gfm/pipeline/__init__.py by `gfm pipeline --write dvc.yaml`: edit the stage table there, not this file.
# DVC decides which stages are stale (content hashes in dvc.lock); each stage runs its own Snakemake rule
# (--allowed-rules, so a stage never re-runs another stage's jobs). Machine settings come from a Snakemake
# profile (SNAKEMAKE_PROFILE=profiles/slurm dvc repro), never from `cmd`. Code deps are the import closure of
# the modules each stage runs. tests/test_dag_agreement.py checks that Snakemake and DVC describe one DAG.
stages:
"""

FOOTER = """
# `dvc plots show` / `dvc plots diff`: one plot per store and kind, from the headline stage's plots/ (DVC
# configures plots by path prefix, hence a directory per kind). Templates: workflow/plots/*.json (Vega-Lite;
# one line per model or series, one dash style per revision). The page (dvc_plots/index.html) draws offline:
# .dvc/config names workflow/plots/page/template.html, which carries Vega inline (src/gfm/tools/plots_page.py).
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

DVC_YAML = generated_kind("generated dvc.yaml", HEADER, "gfm pipeline")


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
    rules, *code = stage_code(st.name, src)
    deps = [*(_dvc_path(d, item) for d in st.deps), rules, *collapsed(code, src)]
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
    return emit(args.write, DVC_YAML, lambda: render_dvc_yaml(args.src), f"the stage table in {SRC}/pipeline/__init__.py")


def _cmd_schema(args: argparse.Namespace) -> int:
    from gfm.pipeline.params_schema import PARAMS_SCHEMA, render_params_schema

    return emit(args.write, PARAMS_SCHEMA, render_params_schema, f"the params dataclasses in {SRC}/config")


def _cmd_train_index(args: argparse.Namespace) -> int:
    from gfm.stages.train_index import run

    run(args.params, args.store, Path(args.out))
    return 0


def add_commands(sub) -> None:
    """``gfm pipeline``, ``gfm schema`` and ``gfm train-index`` on the CLI's subparsers."""
    p = sub.add_parser("pipeline", help="dvc.yaml from the stage table (src/gfm/pipeline/__init__.py)",
                       description="Render dvc.yaml from the stage table, with each stage's code dependencies "
                                   "computed from the source; print it, or write it with --write.")
    p.add_argument("--write", metavar="DVC.yaml", help="write here (atomically) instead of printing; an existing "
                   "file is replaced only if this command wrote it (its generated-by first line)")
    p.add_argument("--src", default=SRC, metavar="DIR", help="the gfm package source (default: %(default)s)")
    p.set_defaults(func=_cmd_pipeline)
    sc = sub.add_parser("schema", help="the params schema Snakemake checks, from the params dataclasses",
                        description="Render the JSON schema of params.yaml (workflow/schemas/params.schema.json) from "
                                    "the params dataclasses and the task and optimizer registries; print it, or "
                                    "write it with --write.")
    sc.add_argument("--write", metavar="SCHEMA.yaml", help="write here (atomically) instead of printing; an existing "
                    "file is replaced only if this command wrote it (its generated-by first line)")
    sc.set_defaults(func=_cmd_schema)
    t = sub.add_parser("train-index", help="a store's index.json: its trained models and their kinds")
    t.add_argument("--params", default="params.yaml", metavar="P", help="the params file (default: %(default)s)")
    t.add_argument("--store", required=True, metavar="KEY", help="<task>-<optimizer>, a key of `stores`")
    t.add_argument("--out", required=True, metavar="INDEX.json", help="where to write it")
    t.set_defaults(func=_cmd_train_index)
