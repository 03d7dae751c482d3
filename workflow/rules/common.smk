# Paths, params triggers and code inputs of every rule, from the stage table in src/gfm/pipeline/__init__.py (the one
# declaration of the stages; dvc.yaml is generated from it). Helper functions live here only: the rule files
# hold rules (snakemake --lint).

from gfm.core.optimizers import OPTIMIZER_NAMES
from gfm.pipeline import path, trigger_values
from gfm.pipeline.closure import stage_codes
from gfm.base.schema import NAME_PATTERN

STORES = {key: (spec["task"], spec["optimizer"]["name"]) for key, spec in config["stores"].items()}

# Each stage's code: its rule file and its import closure, computed from the source as dvc.yaml's code deps are
# (file by file: a directory's mtime does not change when a file in it is edited). As rule inputs they are
# checksummed in Snakemake's records, from which `gfm commit` judges them by content; and they make Snakemake
# re-run a job whose code was edited (its mtime trigger), as DVC does from their hashes. The cache keeps each
# module's imports by content hash, so a start parses only the modules edited since the last one.
CODE = stage_codes(cache=".snakemake/gfm/code-scans.json")


def trigger(rule):
    """Snakemake's params trigger of ``rule``: the values of the params keys the stage table gives it."""
    return lambda wc: trigger_values(config, rule, wc.get("task"), wc.get("optimizer"), wc.get("model"))


def declared_source(wildcards):
    """The store a declared task takes in (tasks.<task>.path: a generate job's input, so Snakemake re-runs it
    when the store changes); nothing for a generated task."""
    task = config["tasks"].get(wildcards.task, {})
    return [task["path"]] if task.get("kind") == "recorded" else []


def store_models(task, optimizer):
    """Forecasters trained on one store: its own `models` list, else train.models (as Params.store_models)."""
    own = config["stores"][f"{task}-{optimizer}"].get("models")
    return list(own if own is not None else config.get("train", {}).get("models", []))


def model_paths(task, optimizer, models):
    return [path("model", task, optimizer, m) for m in models]


def accelerate_stores():
    """(task, optimizer) of every store of the jump-ahead experiment."""
    return [(s["task"], s["optimizer"]) for s in config.get("accelerate", {}).get("stores", {}).values()]


def evaluated_stores():
    """(task, optimizer) of every store that trains a model, in params order: the stores evaluate scores."""
    return [(t, o) for t, o in STORES.values() if store_models(t, o)]


def of_stores(name, stores):
    return [path(name, t, o) for t, o in stores]


def generalize_inputs():
    """Every store's trajectories, split and trained models: the job reads the pairs' subset, but its DVC
    stage depends on the parent directories (dvc.yaml cannot list pair-dependent paths), so both drivers
    wait for the same things."""
    out = []
    for task, optimizer in STORES.values():
        out += [path("trajectories", task, optimizer), path("split", task, optimizer)]
        if store_models(task, optimizer):
            out.append(path("train_index", task, optimizer))
    return out


def figure_category(wildcards):
    """Snakemake report category of one reports/figures/<figure>.png, from the suffix report.py gives it."""
    for suffix, category in (("-mse", "Forecast error vs horizon"), ("-trajectory", "Trajectories"),
                             ("-val-curves", "Validation curves")):
        if wildcards.figure.endswith(suffix):
            return category
    return "Overview"


def all_outputs():
    out = []
    for task, optimizer in STORES.values():
        out += [path("trajectories", task, optimizer), path("split", task, optimizer)]
        if store_models(task, optimizer):
            out += [path("train_index", task, optimizer), path("metrics", task, optimizer)]
    if config.get("train", {}).get("models"):
        out += [path("generalize"), path("reports"), path("headline_metrics"), path("headline_plots")]
    out += of_stores("accelerate", accelerate_stores())
    return out


wildcard_constraints:
    task=NAME_PATTERN,
    optimizer="|".join(OPTIMIZER_NAMES),
    model=NAME_PATTERN,
