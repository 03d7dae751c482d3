"""docs/extending.md's recipes, followed as written: each copies the package, adds the page's code blocks where
the page says, and runs the result through generate, split, train, forecast and evaluate with the CLI.

The page is the source of the code: a recipe that no longer works as written fails here, not for a reader."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY

PAGE = ROOT / "docs" / "extending.md"
PACKAGE = ROOT / "src" / "gfm"


def section(title: str) -> str:
    """The text of the page's ``## title`` section."""
    text = PAGE.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), re.S)


def files_named(title: str) -> list[str]:
    """The files a recipe says it touches: the backquoted paths of its bold "Files:" sentence."""
    first = section(title).split("**Files:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"`([^`]+\.(?:py|smk|md))`", first)


def copy_package(tmp: Path) -> Path:
    src = tmp / "src"
    shutil.copytree(PACKAGE, src / "gfm", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def insert_into_tuple(source: str, anchor: str, entry: str) -> str:
    """``source`` with ``entry`` added as the last item of the tuple that starts at the line ``anchor``."""
    close = source.index(")}", source.index(anchor))   # the tuple closes, then the comprehension
    if source[close - 1] == "\n":   # one item per line
        return source[:close] + entry.rstrip() + "\n" + source[close:]
    return source[:close].rstrip(", ") + ", " + entry.strip().rstrip(",") + source[close:]


def add_to_registry(module: Path, anchor: str, code: str, entry: str) -> None:
    """Edit ``module`` as a recipe says: ``code`` above the registry that starts at ``anchor``, and ``entry`` as
    the last item of the tuple the registry is built from."""
    text = module.read_text().replace("\n" + anchor, "\n" + code + "\n\n" + anchor, 1)
    module.write_text(insert_into_tuple(text, anchor, entry))


def run_study(tmp: Path, src: Path, params: dict, store_key: str, models: list[str]) -> dict:
    """generate -> split -> train ``models`` -> train-index -> forecast -> evaluate one store with the copied
    package; the metrics JSON."""
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    task, optimizer = store_key.rsplit("-", 1)
    env = {**os.environ, "PYTHONPATH": str(src)}

    def gfm(*args: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "gfm", *args], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"gfm {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    store, split = f"data/trajectories/{task}/{optimizer}.zarr", f"data/splits/{task}/{optimizer}.json"
    models_dir = f"data/models/{task}/{optimizer}"
    common = ["--params", "params.yaml", "--store", store_key]
    gfm("validate", "params.yaml")
    gfm("generate", *common, "--out", store)
    gfm("split", "--params", "params.yaml", "--in", store, "--out", split)
    for model in models:
        gfm("train", *common, "--model", model, "--split", split, "--in", store, "--out", f"{models_dir}/{model}")
    gfm("train-index", *common, "--out", f"{models_dir}/index.json")
    gfm("forecast", *common, "--in", store, "--split", split, "--models", models_dir, "--out", "forecasts")
    gfm("evaluate", *common, "--in", store, "--split", split, "--forecasts", "forecasts",
        "--metrics", "metrics.json", "--plots", "plots")
    return json.loads((tmp / "metrics.json").read_text())


def tiny(store_key: str, store: dict, models: list[str]) -> dict:
    """The tiny study, training ``models`` on one store (``store``: its entry under ``stores``)."""
    params = yaml.safe_load(TINY.read_text())
    params["stores"] = {store_key: store}
    params["train"]["models"] = models
    params["accelerate"]["stores"] = {}
    params["report"]["claims"] = []
    params["report"]["target_task"] = store["task"]
    return params


def final_mse(metrics: dict, model: str) -> float:
    entry = metrics["models"][model]
    return float(entry["final_mse"]["mean"] if isinstance(entry["final_mse"], dict) else entry["final_mse"])


def test_the_forecaster_recipe_touches_two_files_and_its_model_runs_through_the_stages(tmp_path):
    assert files_named("A forecaster") == ["src/gfm/forecasters/<name>.py", "tests/test_<name>.py"]
    module, = code_blocks("A forecaster", "python")
    entries = yaml.safe_load(code_blocks("A forecaster", "yaml")[0])
    src = copy_package(tmp_path)
    (src / "gfm" / "forecasters" / "last_steps.py").write_text(module)   # the one file the package gains
    params = tiny("mlp_regression-sgd", {"task": "mlp_regression", "optimizer": {"name": "sgd", "lr": 0.05}},
                  ["last_value", "last_steps"])
    params["models"]["last_steps"] = entries["models"]["last_steps"]
    params["train"]["tuning"]["space"]["last_steps"] = entries["train"]["tuning"]["space"]["last_steps"]
    metrics = run_study(tmp_path, src, params, "mlp_regression-sgd", ["last_value", "last_steps"])
    assert math.isfinite(final_mse(metrics, "last_steps")) and math.isfinite(final_mse(metrics, "last_value"))
    log = (tmp_path / "data/models/mlp_regression/sgd/last_steps/1/train_log.csv").read_text().splitlines()
    assert len(log) >= 2   # the one training loop ran and scored validation runs


def test_the_optimizer_recipe_touches_the_spec_and_its_test_and_a_store_trains_with_it(tmp_path):
    assert files_named("An optimizer") == ["src/gfm/core/optimizers.py", "tests/test_optimizers.py"]
    rules, entry = code_blocks("An optimizer", "python")
    src = copy_package(tmp_path)
    add_to_registry(src / "gfm" / "core" / "optimizers.py", "SPECS: dict[str, OptimizerSpec] = ", rules, entry)
    params = tiny("mlp_regression-signsgd",
                  {"task": "mlp_regression", "optimizer": {"name": "signsgd", "lr": 0.01}}, ["last_value", "linear"])
    metrics = run_study(tmp_path, src, params, "mlp_regression-signsgd", ["last_value", "linear"])
    assert math.isfinite(final_mse(metrics, "linear"))


def test_the_task_kind_recipe_generates_trains_and_evaluates_a_new_family(tmp_path):
    assert files_named("A task kind")[:2] == ["src/gfm/config/tasks.py", "src/gfm/tasks/<kind>.py"]
    config_class, task_module = code_blocks("A task kind", "python")
    src = copy_package(tmp_path)
    add_to_registry(src / "gfm" / "config" / "tasks.py", "TASK_KINDS: dict[str, type[TaskConfig]] = ",
                    config_class, "CubicRegressionConfig")
    (src / "gfm" / "tasks" / "cubic.py").write_text(task_module)
    params = tiny("cubic-sgd", {"task": "cubic", "optimizer": {"name": "sgd", "lr": 0.01}}, ["last_value", "linear"])
    params["tasks"] = {"cubic": {"kind": "cubic_regression", "dim": 1, "hidden": [6], "n_samples": 40,
                                 "batch_size": 16, "runs_per_dataset": 12, "steps": 40}}
    metrics = run_study(tmp_path, src, params, "cubic-sgd", ["last_value", "linear"])
    assert math.isfinite(final_mse(metrics, "linear"))


def test_every_stage_has_the_files_the_stage_recipe_names():
    from gfm.cli import build_parser
    from gfm.pipeline import STAGES

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    snakefile = (ROOT / "workflow" / "Snakefile").read_text()
    for stage in STAGES:
        assert (ROOT / "workflow" / "rules" / stage.rule_file).is_file(), stage.name
        assert f"rules/{stage.rule_file}" in snakefile, stage.name
        assert stage.name in commands, stage.name
        for module in stage.modules:
            where = ROOT / "src" / Path(*module.split("."))
            assert where.with_suffix(".py").is_file() or (where / "__init__.py").is_file(), (stage.name, module)


@pytest.mark.parametrize("title", ["A forecaster", "An optimizer", "A task kind", "A pipeline stage"])
def test_every_file_a_recipe_names_exists(title):
    for name in files_named(title) or re.findall(r"`(src/[^`]+\.py|workflow/[^`]+\.smk)`", section(title)):
        if "<" not in name:
            assert (ROOT / name).is_file(), f"{title}: {name}"
