"""Typed params: every bad input is one line naming the key path, exit code 2, no traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gfm.config import load_params, parse_params
from gfm.errors import ParamsError

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
    data["stores"]["digits-adam"]["optimizer"]["name"] = "adamw"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert any("tasks.mlp_regression.steps: got -3" in line for line in lines)
    assert any("stores.digits-adam.optimizer.name: got 'adamw'" in line for line in lines)


def test_cli_unknown_store_key(tmp_path):
    proc = run_cli("generate", "--params", str(ROOT / "params.yaml"), "--store", "nope-sgd", "--out", str(tmp_path / "x.zarr"))
    assert proc.returncode == 2 and "stores.nope-sgd: no such store" in proc.stderr


def test_validate_ok_summary():
    proc = run_cli("validate", str(ROOT / "params.yaml"))
    assert proc.returncode == 0 and "ok (" in proc.stdout


def test_json_schema_agrees_with_params():
    """The schema Snakemake checks accepts the real params and rejects a wrong top-level key or type."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(ROOT / "workflow" / "schemas" / "params.schema.yaml")
    for f in ("params.yaml", "tests/params.tiny.yaml"):
        validate(yaml.safe_load((ROOT / f).read_text()), schema)
    bad = copy.deepcopy(DEFAULT)
    bad["tasks"]["digits"]["steps"] = 0
    with pytest.raises(WorkflowError):
        validate(bad, schema)
    bad = copy.deepcopy(DEFAULT)
    bad["surprise"] = 1
    with pytest.raises(WorkflowError):
        validate(bad, schema)


def test_json_schema_names_every_params_section():
    """The schema and the dataclasses describe the same top-level sections (no silent drift)."""
    import dataclasses

    from gfm.config import Params

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "params.schema.yaml").read_text())
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(Params)}
