"""Typed params: every bad input is one line naming the key path, exit code 2, no traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gfm.base.errors import ParamsError
from gfm.config import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def problems_of(mutate) -> list[str]:
    data = copy.deepcopy(DEFAULT)
    mutate(data)
    with pytest.raises(ParamsError) as exc:
        parse_params(data)
    return exc.value.problems


def test_default_and_tiny_params_load():
    p = load_params(ROOT / "params.yaml")
    assert "mlp_regression-sgd" in p.stores
    spec, task = p.lookup_store("mlp_regression-adam")
    assert spec.optimizer.name == "adam" and task.kind == "mlp_regression"
    load_params(ROOT / "tests" / "params.tiny.yaml")


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(bogus=1), "bogus: unknown key"),
        (lambda d: d["tasks"]["mlp_regression"].update(steps=-5), "tasks.mlp_regression.steps: got -5; expected a value >= 1"),
        (lambda d: d["tasks"]["mlp_regression"].update(steps="many"), "tasks.mlp_regression.steps: got 'many'; expected an integer"),
        (lambda d: d["tasks"]["digits"].update(kind="imagenet"), "tasks.digits.kind: got 'imagenet'; expected one of"),
        (lambda d: d["stores"]["mlp_regression-sgd"]["optimizer"].update(name="lbfgs"),
         "stores.mlp_regression-sgd.optimizer.name: got 'lbfgs'; expected one of"),
        (lambda d: d["stores"]["mlp_regression-sgd"]["optimizer"].update(beta1=0.9), "not used by optimizer 'sgd'"),
        (lambda d: d["stores"]["mlp_regression-adam"]["optimizer"].update(lr={"low": 0.1, "high": 0.01}), "expected a value >= low"),
        (lambda d: d.update(device="tpu"), "device: got 'tpu'; expected one of 'auto', 'cpu', 'cuda'"),
        (lambda d: d["generate"].update(dataset_seeds=[]), "generate.dataset_seeds: got an empty list"),
        (lambda d: d["stores"].update({"wrong-name": d["stores"]["digits-sgd"]}), "store keys are '<task>-<optimizer>'"),
        (lambda d: d["tasks"]["mlp_regression"].update(record_every=3), "expected a divisor of steps"),
        (lambda d: d["split"].update(train=0.9), "train + val + test"),
        (lambda d: d["store"].update(shard_runs=10), "expected a multiple of chunk_runs"),
        (lambda d: d["stores"]["digits-sgd"].update(task="nope"), "stores.digits-sgd.task: got 'nope'"),
        (lambda d: d["tasks"]["mlp_regression"].pop("kind"), "tasks.mlp_regression.kind: got None"),
        (lambda d: d["tasks"]["mlp_regression"].update(hidden=[]), "tasks.mlp_regression.hidden: got an empty list"),
        (lambda d: d["tasks"]["mlp_regression"].update(init={"dist": "normal", "scale": float("nan")}), "expected a finite number"),
    ],
)
def test_bad_params_name_the_key(mutate, expected):
    probs = problems_of(mutate)
    assert any(expected in p for p in probs), probs
    assert all("\n" not in p for p in probs)


def test_every_problem_is_reported_at_once():
    def mutate(d):
        d["tasks"]["mlp_regression"]["steps"] = -1
        d["seed"] = "x"
    probs = problems_of(mutate)
    assert len(probs) >= 2


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gfm", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("seed: 0\nbogus: 1\n", "bogus: unknown key"),
        ("{{{ not yaml", "not valid YAML"),
        ("- a\n- list\n", "expected a mapping"),
        (None, "file not found"),
    ],
)
def test_cli_exit_2_one_line_no_traceback(tmp_path, content, expected):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    for args in (["validate", str(path)], ["generate", "--params", str(path), "--store", "x", "--out", str(tmp_path / "o.zarr")]):
        proc = run_cli(*args)
        assert proc.returncode == 2, proc
        assert expected in proc.stderr
        assert "Traceback" not in proc.stderr
        assert all(line.startswith("error: ") for line in proc.stderr.strip().splitlines())
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_cli_negative_steps_and_unknown_names(tmp_path):
    data = copy.deepcopy(DEFAULT)
    data["tasks"]["mlp_regression"]["steps"] = -3
    data["stores"]["digits-adam"]["optimizer"]["name"] = "lbfgs"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any("tasks.mlp_regression.steps: got -3" in line for line in lines)
    assert any("stores.digits-adam.optimizer.name: got 'lbfgs'" in line for line in lines)


def test_cli_unknown_store_key(tmp_path):
    proc = run_cli("generate", "--params", str(ROOT / "params.yaml"), "--store", "nope-sgd", "--out", str(tmp_path / "x.zarr"))
    assert proc.returncode == 2 and "stores.nope-sgd: no such store" in proc.stderr


def test_validate_ok_summary():
    proc = run_cli("validate", str(ROOT / "params.yaml"))
    assert proc.returncode == 0 and "ok (" in proc.stdout


SCHEMA = ROOT / "workflow" / "schemas" / "params.schema.json"


def test_checked_in_params_schema_is_generated_from_the_dataclasses():
    from gfm.pipeline.params_schema import render_params_schema

    assert SCHEMA.read_text() == render_params_schema(), (
        "workflow/schemas/params.schema.json is stale (a params dataclass, a task kind or an optimizer changed): "
        "regenerate it with `gfm schema --write workflow/schemas/params.schema.json` and commit it")


def _schema_refuses(mutate) -> bool:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    data = copy.deepcopy(DEFAULT)
    mutate(data)
    try:
        validate(data, str(SCHEMA), set_default=False)
    except WorkflowError:
        return True
    return False


def test_json_schema_agrees_with_params():
    """The schema Snakemake checks accepts the presets and the tiny params, and refuses what the dataclasses
    refuse field by field: ranges, unknown keys (a task's by its kind, an optimizer's by its name), names."""
    from snakemake.utils import validate

    from gfm.base.params_yaml import parse_yaml, read_params_text

    for f in ("params.yaml", "params.quick.yaml", "params.jump.yaml", "tests/params.tiny.yaml"):
        validate(parse_yaml(read_params_text(ROOT / f)), str(SCHEMA), set_default=False)
    refused = {
        "a range": lambda d: d["tasks"]["digits"].update(steps=0),
        "a top-level key": lambda d: d.update(surprise=1),
        "a key of another task kind": lambda d: d["tasks"]["digits"].update(classes=3),
        "a kind": lambda d: d["tasks"]["digits"].update(kind="imagenet"),
        "a key the optimizer does not read": lambda d: d["stores"]["digits-adam"]["optimizer"].update(momentum=0.5),
        "an optimizer name": lambda d: d["stores"]["digits-adam"]["optimizer"].update(name="lbfgs"),
        "a hyper-parameter range": lambda d: d["stores"]["digits-adam"]["optimizer"].update(beta1=1.0),
        "a store key": lambda d: d["stores"].update({"digits-lbfgs": d["stores"]["digits-adam"]}),
        "a task name": lambda d: d["tasks"].update({"9lives": d["tasks"]["digits"]}),
        "a model without a kind": lambda d: d["models"].update(extra={"hidden": 3}),
        "a missing section": lambda d: d.pop("split"),
        "a zero test fraction": lambda d: d["split"].update(train=0.75, test=0.0),
    }
    assert [what for what, mutate in refused.items() if not _schema_refuses(mutate)] == []
    for what, mutate in refused.items():
        if what != "a missing section":  # the loader gives a left-out section its defaults
            assert problems_of(mutate), what


def test_json_schema_names_every_params_section():
    """The schema and the dataclasses describe the same top-level sections (no silent drift)."""
    import dataclasses

    from gfm.config import Params

    schema = yaml.safe_load(SCHEMA.read_text())
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(Params)}


# ------------------------------------------------------------------------------- sizes, limits, references

TASK_VARIANTS = [
    {"kind": "least_squares", "dim": 7},
    {"kind": "mlp_regression", "dim": 3, "hidden": [5, 4]},
    {"kind": "mlp_classification", "dim": 2, "classes": 4, "hidden": [6]},
    {"kind": "digits", "hidden": [10, 3]},
    {"kind": "cifar10", "channels": [8, 16], "downsample": 2},
    {"kind": "cifar10", "channels": [4], "downsample": 4},
    {"kind": "cifar10", "channels": [2, 3, 4], "downsample": 1},
]


@pytest.mark.parametrize("fields", TASK_VARIANTS, ids=lambda f: f"{f['kind']}-{len(str(f))}")
def test_param_count_from_the_config_matches_the_task_layout(fields):
    """Validation counts parameters without torch; the count must be the layout the generator uses."""
    from gfm.config import TASK_KINDS
    from gfm.tasks import make_task

    cfg = TASK_KINDS[fields["kind"]](**{k: v for k, v in fields.items() if k != "kind"})
    task = make_task(cfg)
    assert cfg.n_params() == task.n_params
    if cfg.kind != "cifar10":  # (its data are files)
        import torch

        x, _ = task.sample_data(torch.Generator().manual_seed(0))
        assert x.shape[1] == cfg.input_width()


def test_one_list_of_task_kinds_names_each_task_class():
    """TASK_KINDS is the one list of task kinds: each kind's config names the Task class that runs it, and
    gfm.tasks builds it by that name (a recorded store's kind has none: its runs are taken in)."""
    from gfm.config import TASK_KINDS
    from gfm.tasks import Task, task_class

    for kind, cfg in TASK_KINDS.items():
        if kind == "recorded":
            assert cfg.task_class == ""
            with pytest.raises(ValueError, match="no Task class"):
                task_class(kind)
        else:
            assert issubclass(task_class(kind), Task) and task_class(kind).__name__ == cfg.task_class.split(":")[1]
    with pytest.raises(ValueError, match="unknown task kind 'imagenet'"):
        task_class("imagenet")


def test_every_task_of_the_default_params_counts_like_its_layout():
    from gfm.tasks import make_task

    for name, cfg in load_params(ROOT / "params.yaml").tasks.items():  # cifar10 included (no store uses it)
        assert cfg.n_params() == make_task(cfg).n_params, name


def test_state_array_counts_match_the_optimizers():
    from gfm.config import OPTIMIZER_STATE_ARRAYS
    from gfm.core.optimizers import STATE_NAMES

    assert OPTIMIZER_STATE_ARRAYS == {k: len(v) for k, v in STATE_NAMES.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_block_estimate_counts_exactly_what_simulate_records(optimizer):
    import torch

    from gfm.config import OptimizerConfig, estimate_store
    from gfm.stages.generate import simulate
    from gfm.stages.runs import run_ids, setup_run
    from gfm.tasks import make_task

    cfg = load_params(ROOT / "tests" / "params.tiny.yaml").tasks["mlp_regression"]
    opt = OptimizerConfig(name=optimizer, lr=0.01)
    task = make_task(cfg)
    import inspect

    named = {"task_name": "mlp_regression"} if "task_name" in inspect.signature(setup_run).parameters else {}
    setups = [setup_run(task, opt, 0, r, **named) for r in run_ids([1], 3)]
    rec = simulate(task, opt, setups, device=torch.device("cpu"))
    e = estimate_store(cfg, optimizer, n_seeds=1, shard_runs=3)
    recorded = sum(v.nbytes for k, v in rec.items() if k != "diverged")
    assert e.block_runs == 3 and e.record_bytes == recorded
    assert e.store_bytes == cfg.runs_per_dataset * recorded // 3


@pytest.mark.parametrize("name", ["params.yaml", "params.quick.yaml", "params.jump.yaml", "tests/params.tiny.yaml"])
def test_presets_fit_the_default_limits(name):
    from gfm.config import LimitsConfig

    p = load_params(ROOT / name)
    assert p.limits == LimitsConfig()  # the files spell out the defaults


def test_limits_refuse_and_a_raised_limit_accepts():
    def big(d):
        d["tasks"]["digits"]["runs_per_dataset"] = 100_000
    probs = problems_of(big)
    assert any(p.startswith("stores.digits-adam: the store needs") and "limits.max_store_bytes = 200.0 GiB" in p
               for p in probs), probs
    data = copy.deepcopy(DEFAULT)
    big(data)
    data["limits"] = {"max_store_bytes": 10**15, "max_total_steps": 10**15}
    parse_params(data)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["report"].update(target_task="cifar10"), "report.target_task: got 'cifar10'; expected a task some store trains:"),
    (lambda d: d["report"].update(target_task="nope"), "least_squares_1d_gd, least_squares_1d_sgd"),
    (lambda d: d.pop("stores"), "stores: missing; expected a mapping of store keys"),
    (lambda d: d["train"].update(models=["lstm", "gfm", "lstm"]), "train.models: ['lstm'] listed more than once"),
    (lambda d: d["tasks"]["digits"].update(runs_per_dataset=1), "tasks.digits.runs_per_dataset: got 1; the split"),
    (lambda d: d["generate"].update(dataset_seeds=[1, 2**63]), "generate.dataset_seeds[1]: got 9223372036854775808"),
    (lambda d: d["train"].update(seed=-1), "train.seed: got -1"),
    (lambda d: d["tasks"]["mlp_regression"].update(steps=1e3), "got 1000.0; expected an integer (write 1000"),
])
def test_cross_references_and_ranges(mutate, expected):
    probs = problems_of(mutate)
    assert any(expected in p for p in probs), probs


def test_an_empty_params_file_is_refused(tmp_path):
    for text in ("{}\n", ""):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        with pytest.raises(ParamsError) as exc:
            load_params(path)
        assert exc.value.problems in (["tasks: missing; expected a mapping of task names to tasks",
                                       "stores: missing; expected a mapping of store keys to stores (at least one: a "
                                       "study with no store has nothing to run)"],
                                      ["<top>: got None; expected a mapping"])


def test_an_unused_task_may_record_fewer_steps_than_the_horizons():
    """forecast.horizons is checked against the tasks forecasters are trained on, not an unused entry."""
    data = copy.deepcopy(DEFAULT)
    data["tasks"]["cifar10"]["steps"] = 20
    parse_params(data)
