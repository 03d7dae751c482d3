"""The pipeline's stages, declared once: what each stage reads, writes, runs and which params keys it depends on.

Both drivers are derived from :data:`STAGES`:

* ``dvc.yaml`` is rendered from it (:mod:`gfm.pipeline.dvc_yaml`; ``gfm pipeline --write dvc.yaml`` regenerates
  the checked-in file, and a test fails when it is stale). Each stage's code dependencies are computed, not
  chosen: the import closure inside ``src/gfm`` of the modules the stage runs (:mod:`gfm.pipeline.closure`).
* the Snakemake rules take their paths (:func:`path`), their params trigger (:func:`trigger_values`) and their
  code inputs (the code deps dvc.yaml lists) from it (workflow/rules/common.smk).
* the stages that read other stages' outputs by path (generalize, report, accelerate) build them with
  :func:`path` / :func:`under`.

Path templates use the wildcards ``{task}``, ``{optimizer}`` and ``{model}``; params keys may use ``{task}``
and ``{store}`` (``<task>-<optimizer>``). Pure and cheap to import: the Snakefile imports it at every start, and
the stages that build paths with it have it in their import closure, so it holds the table and nothing else.

May import: gfm.base, gfm.core, gfm.artifacts, gfm.config (what the generated files are made of) and
gfm.stages (``train-index``'s command). The table itself imports nothing of gfm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PATHS", "SRC", "STAGES", "Stage", "path", "under", "stage", "trigger_keys", "trigger_values"]

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
          modules=("gfm.stages.generate",), rule_file="generate.smk"),
    Stage("split", rules=("split",), targets=("split",), outs=("split",), deps=("trajectories",),
          params=("split",), modules=("gfm.stages.split",), rule_file="generate.smk"),
    Stage("train", rules=("train", "train_index"), targets=("train_index",), outs=("models",), deps=_STORE,
          params=("forecast", "train", "models", "stores.{store}"),
          # one train job per model: it depends on its own model's entry only
          rule_params={"train": ("forecast", "train.seed", "train.budget", "train.tuning", "models.{model}",
                                 "stores.{store}")},
          modules=("gfm.stages.train", "gfm.stages.train_index"), rule_file="train.smk",
          notes={"stores.{store}": "its optional per-store `models` list"},
          comment="One stage per store (each DVC stage pays one Snakemake start-up); inside it Snakemake runs "
                  "the store's model jobs in parallel. The target is the store's index.json, whose rule needs "
                  "every model directory of train.models: DVC cannot interpolate a list into `cmd`."),
    Stage("forecast", rules=("forecast",), targets=("forecasts",), outs=("forecasts",),
          deps=(*_STORE, "models"), params=("forecast", "train.models", "stores.{store}"),
          modules=("gfm.stages.forecast",), rule_file="forecast.smk"),
    Stage("evaluate", rules=("evaluate",), targets=("metrics",), outs=("metrics", "plots"),
          deps=(*_STORE, "forecasts"),
          params=("seed", "forecast", "train.models", "stores.{store}", "tasks.{task}", "evaluate"),
          modules=("gfm.stages.evaluate",), rule_file="evaluate.smk",
          notes={"tasks.{task}": "downstream loss regenerates each test run's data from its task"},
          comment="The full metrics and plot data are cached like every other output (data/ is not in git), so "
                  "`dvc push` / `dvc pull` share them and a consumer's tree equals the producer's. They are plain "
                  "outs, not DVC metrics/plots: the headline stage condenses them into what `dvc metrics` and "
                  "`dvc plots` show."),
    Stage("headline", rules=("headline",), targets=("headline_metrics", "headline_plots"), outs=(),
          deps=("data/metrics", "data/plots"), params=("stores", "train.models"), foreach=None,
          modules=("gfm.report.headline",), rule_file="evaluate.smk",
          notes={"stores": "which stores it shows (the Snakemake rule's inputs)"},
          comment="What DVC shows, tracked by git (cache: false) so that `dvc metrics diff`, `dvc exp show` and "
                  "`dvc plots diff` compare commits without a pull: metrics.json, one xLV per (store, model), and "
                  "plots/, evaluate's plot data of every store with one directory per kind of plot "
                  "(src/gfm/report/headline.py).",
          extra="metrics:\n  - metrics.json:\n      cache: false\nouts:\n  - plots:\n      cache: false\n"),
    Stage("generalize", rules=("generalize",), targets=("generalize",), outs=("generalize",),
          deps=("data/models", "data/trajectories", "data/splits"),
          params=("forecast", "generalize", "tasks", "stores"), foreach=None,
          modules=("gfm.stages.generalize",), rule_file="generalize.smk",
          notes={"tasks": "the pair labels name what differs between the two tasks",
                 "outs": "shown in reports/summary.md; cached, not a DVC metric (see headline)"}),
    Stage("accelerate", rules=("accelerate",), targets=("accelerate",), outs=("accelerate",),
          deps=("split", "models"),
          params=("seed", "generate.dataset_seeds", "forecast", "accelerate", "tasks.{task}", "stores.{store}"),
          foreach="accelerate.stores", modules=("gfm.stages.accelerate",), rule_file="accelerate.smk",
          notes={"outs": "shown in reports/summary.md; cached, not a DVC metric (see headline)"},
          comment="Jump-ahead training (src/gfm/stages/accelerate.py): plain vs forecaster-jump loops on a store's "
                  "test runs."),
    Stage("report", rules=("report",), targets=("reports",), outs=("reports",),
          deps=("data/metrics", "data/plots", "data/models"),
          params=("report", "seed", "generate.dataset_seeds", "forecast", "train", "stores", "generalize",
                  "accelerate"),
          foreach=None, modules=("gfm.report.summary",), rule_file="evaluate.smk",
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
