"""Stage train: per-seed fits, output layout, determinism, CLI errors, and its Snakemake/DVC wiring."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, run_tool
from gfm import cli
from gfm.artifacts.output_contents import MARKER_FILE
from gfm.config import load_params
from gfm.forecasters import FORECASTERS, read_model
from gfm.pipeline.forecaster_kinds import neural_kinds
from gfm.stages import train, train_fit

STORE = "mlp_regression-adam"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split_file(tiny_split) -> Path:
    return tiny_split


def _run(tiny_params, tiny_store, split, out, model="lstm"):
    return train.run(tiny_params, store_key=STORE, model=model, split=split, store=tiny_store, out=out,
                     progress=False)


def test_one_model_per_dataset_seed_with_logs_and_summary(tiny_params, tiny_store, split_file, tmp_path):
    out = tmp_path / "lstm"
    summary = _run(tiny_params, tiny_store, split_file, out)
    seeds = sorted(json.loads(split_file.read_text())["datasets"])
    assert sorted(summary.seeds) == seeds == ["1", "2"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, *seeds, "summary.json"]
    assert not out.with_name("lstm.tmp").exists()
    for seed in seeds:
        d = out / seed
        assert sorted(p.name for p in d.iterdir()) == [MARKER_FILE, "config.json", "train_log.csv", "weights.safetensors"]
        rows = list(csv.DictReader((d / "train_log.csv").open()))
        assert list(rows[0]) == list(train_fit.LOG_COLUMNS) and len(rows) == summary.seeds[seed]["epochs"] >= 1
        assert all(float(r["val_loss"]) == float(r["val_loss"]) for r in rows)  # finite: val runs were given
        assert read_model(d).name == "lstm"
    meta = json.loads((out / "summary.json").read_text())
    assert meta["kind"] == "lstm" and meta["seeds"]["1"]["train_runs"] == 6 and meta["seeds"]["1"]["val_runs"] == 3
    assert set(meta["seeds"]["1"]["val_weight_mse"]) == {str(h) for h in tiny_params.forecast.horizons}


def test_refit_is_byte_identical_and_replaces_the_old_directory(tiny_params, tiny_store, split_file, tmp_path):
    a, b = tmp_path / "a" / "lstm", tmp_path / "b" / "lstm"
    _run(tiny_params, tiny_store, split_file, a)
    shutil.copytree(a, b)  # an older fit of this stage, with a dataset seed the new split no longer has
    shutil.copytree(a / "1", b / "7")
    _run(tiny_params, tiny_store, split_file, b)
    assert not (b / "7").exists()
    for seed in ("1", "2"):
        assert (a / seed / "weights.safetensors").read_bytes() == (b / seed / "weights.safetensors").read_bytes()


def test_diverged_runs_are_dropped(tiny_params, tiny_store, split_file, tmp_path):
    split = json.loads(split_file.read_text())
    entry = split["datasets"]["1"]
    entry["diverged"] = entry["train"][:2] + entry["val"][:1]
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    summary = _run(tiny_params, tiny_store, path, tmp_path / "lv", model="last_value")
    s1 = summary.seeds["1"]
    assert (s1["train_runs"], s1["val_runs"], s1["dropped_diverged"]) == (4, 2, 3)
    assert summary.seeds["2"]["train_runs"] == 6
    # a closed-form model still gets a log: one epoch-0 row in weight units
    rows = list(csv.DictReader((tmp_path / "lv" / "1" / "train_log.csv").open()))
    assert len(rows) == 1 and rows[0]["epoch"] == "0"


def test_seeds_differ_per_fit_and_are_stable():
    s = train.derive_seed(0, STORE, "lstm", 1)
    assert s == train.derive_seed(0, STORE, "lstm", 1) and 0 <= s < 2**63
    others = {train.derive_seed(0, STORE, "lstm", 2), train.derive_seed(0, STORE, "gru", 1),
              train.derive_seed(1, STORE, "lstm", 1), train.derive_seed(0, "digits-sgd", "lstm", 1)}
    assert s not in others and len(others) == 4


def _tiny_with(tmp_path, **models) -> Path:
    data = yaml.safe_load((ROOT / "tests" / "params.tiny.yaml").read_text())
    data["models"].update(models)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_rejects_unknown_model_options_with_one_line_each(tmp_path, capsys):
    params = _tiny_with(tmp_path, lstm={"kind": "lstm", "hiddn": 4, "lr": -1.0})
    code = cli.main(["train", "--params", str(params), "--store", STORE, "--model", "lstm", "--split", "x.json",
                     "--in", "x.zarr", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2, err
    assert "models.lstm.hiddn: unknown key; allowed keys are" in err[0] + err[1]
    assert "models.lstm.lr: got -1.0; expected a value > 0" in err[0] + err[1]
    assert not (tmp_path / "out").exists()


def test_one_gfm_train_checks_the_models_once(tiny_store, split_file, tmp_path, monkeypatch):
    calls, real = [], train.model_problems
    monkeypatch.setattr(train, "model_problems", lambda *a, **k: calls.append(a) or real(*a, **k))
    code = cli.main(["train", "--params", str(TINY), "--store", STORE, "--model", "last_value", "--split", str(split_file),
                     "--in", str(tiny_store), "--out", str(tmp_path / "lv"), "--quiet"])
    assert code == 0 and len(calls) == 1
    calls.clear()  # the library entry point checks what it is given itself
    _run(load_params(TINY), tiny_store, split_file, tmp_path / "lv2", model="last_value")
    assert len(calls) == 1


def test_cli_rejects_an_unknown_model_name(tmp_path, capsys):
    params = _tiny_with(tmp_path)
    code = cli.main(["train", "--params", str(params), "--store", STORE, "--model", "nope", "--split", "x.json",
                     "--in", "x.zarr", "--out", str(tmp_path / "out")])
    assert code == 2 and "--model: got 'nope'; expected one of" in capsys.readouterr().err


def test_the_kinds_snakemake_gives_a_gpu_are_the_registrys_neural_ones():
    assert neural_kinds() == {k for k, cls in FORECASTERS.items() if cls.neural}
    assert {"lstm", "gfm"} <= neural_kinds() and not {"gfm_function", "lstm_z", "linear"} & neural_kinds()


def test_a_forecaster_kind_is_read_from_its_source_inherited_neural_included(tmp_path):
    (tmp_path / "base.py").write_text("class Forecaster:\n    neural: ClassVar[bool] = True\n")
    (tmp_path / "toy.py").write_text(
        "class _Small(Forecaster):\n    neural = False\n\n\n"
        "@register\nclass Big(Forecaster):\n    name = 'big'\n\n\n"
        "@register\nclass Tiny(_Small):\n    name = 'tiny'\n\n\n"
        "class Unregistered(Forecaster):\n    name = 'nope'\n")
    assert neural_kinds(tmp_path) == {"big"}
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "toy.py").write_text("@register\nclass Odd(Forecaster):\n    name = 'odd'\n    neural = FLAG\n")
    with pytest.raises(ValueError, match="Odd.neural must be a literal"):
        neural_kinds(odd)


def test_snakemake_plans_one_train_job_per_store_and_model(repo_copy):
    out = run_tool(["snakemake", "-n"], repo_copy).stdout
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out, flags=re.M))
    assert int(counts["train"]) == len(params["stores"]) * len(params["train"]["models"])
    assert int(counts["train_index"]) == len(params["stores"])


@pytest.mark.slow
def test_dvc_repro_trains_one_store_then_is_up_to_date(repo_copy):
    stage = f"train@{STORE}"
    run_tool(["dvc", "repro", stage], repo_copy, timeout=1200)
    models = yaml.safe_load((repo_copy / "params.yaml").read_text())["train"]["models"]
    base = repo_copy / "data" / "models" / "mlp_regression" / "adam"
    assert json.loads((base / "index.json").read_text())["models"].keys() == set(models)
    for m in models:
        assert read_model(base / m / "1").horizons == (16, 24, 32, 40)
    assert "up to date" in run_tool(["dvc", "repro", stage], repo_copy).stdout
