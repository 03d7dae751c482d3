"""Forecasts that do not veto each other: a model that refuses a store (StoreNotSupported) is recorded as refused
by train, forecast and evaluate while the other models are forecast and scored; non-finite draws never drop a
point forecast; the test prefixes are read in one call; the stage commands print one line."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY
from gfm import cli
from gfm.artifacts.output_contents import MARKER_FILE, MARKER_KEY
from gfm.artifacts.outputs import REFUSAL, write_json_output
from gfm.forecasters import FORECASTERS, StoreNotSupported
from gfm.stages import evaluate, forecast, split, train, train_index
from gfm.tools.check import check_path

KEY = "mlp_regression-adam"
REASON = "linear cannot rebuild this store's activation 'gelu' (test refusal)"
MODELS = ["last_value", "linear"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tiny_params, tiny_store, tmp_path_factory):
    """The split of the tiny adam store and its last_value fit, shared; linear is fitted (or refused) per test."""
    root = tmp_path_factory.mktemp("refusals")
    params = dataclasses.replace(tiny_params, train=dataclasses.replace(tiny_params.train, models=MODELS),
                                 stores={KEY: tiny_params.stores[KEY]})
    sp = root / "split.json"
    split.run(params.split, store=tiny_store, out=sp)
    train.run(params, store_key=KEY, model="last_value", split=sp, store=tiny_store, out=root / "models" / "last_value",
              progress=False)
    return params, root, sp


@pytest.fixture
def run_dir(base, tmp_path) -> Path:
    """A private models directory holding the shared last_value fit."""
    _, root, _ = base
    shutil.copytree(root / "models" / "last_value", tmp_path / "models" / "last_value")
    return tmp_path


def _refuse(*args, **kwargs):
    raise StoreNotSupported(REASON)


def _train_linear(params, tiny_store, sp, d: Path):
    return train.run(params, store_key=KEY, model="linear", split=sp, store=tiny_store, out=d / "models" / "linear",
                     progress=False)


def _forecast(params, tiny_store, sp, d: Path, names=None) -> dict:
    return forecast.run(params, store_key=KEY, store=tiny_store, split=sp, models=d / "models", out=d / "forecasts",
                        names=names)


def _evaluate(params, tiny_store, sp, d: Path) -> dict:
    return evaluate.run(params, store_key=KEY, store=tiny_store, split=sp, forecasts=d / "forecasts",
                        metrics=d / "metrics.json", plots=d / "plots")


def _all_ok(*paths: Path) -> None:
    for path in paths:
        bad = [line for v in check_path(path) for line in v.lines() if not v.ok]
        assert not bad, bad


def _names(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


# --- one model's refusal ----------------------------------------------------------------------------------
def test_a_refusal_at_train_is_recorded_and_the_other_models_are_forecast_and_scored(base, tiny_store, run_dir,
                                                                                     monkeypatch):
    params, _, sp = base
    monkeypatch.setattr(FORECASTERS["linear"], "fit", _refuse)
    summary = _train_linear(params, tiny_store, sp, run_dir)
    assert summary.refused == REASON and summary.seeds == {}
    linear = run_dir / "models" / "linear"
    assert _names(linear) == {MARKER_FILE, "refused.json"}  # no weights, no summary.json
    record = json.loads((linear / "refused.json").read_text())
    assert record[MARKER_KEY]["kind"] == REFUSAL.name
    assert {k: record[k] for k in ("model", "kind", "refused", "stage")} == {
        "model": "linear", "kind": "linear", "refused": REASON, "stage": "train"}
    index = train_index.index(params, KEY, run_dir / "models")
    assert index == {"store": KEY, "models": {"last_value": "last_value", "linear": "linear"},
                     "refused": {"linear": REASON}}
    write_json_output(run_dir / "models" / "index.json", train_index.TRAIN_INDEX, index)  # gfm check reads it below

    summaries = _forecast(params, tiny_store, sp, run_dir)
    assert summaries["linear"]["refused"] == REASON and summaries["last_value"]["n_runs"] == 6
    assert _names(run_dir / "forecasts") == {MARKER_FILE, "last_value.zarr", "linear.refused.json"}

    m = _evaluate(params, tiny_store, sp, run_dir)
    assert m["models"]["linear"] == {"refused": REASON}
    lv = m["models"]["last_value"]
    assert math.isfinite(lv["final_mse"]["mean"]) and lv["final_xlv"]["mean"] == pytest.approx(1.0)
    assert json.loads((run_dir / "metrics.json").read_text())["models"]["linear"] == {"refused": REASON}
    curves = (run_dir / "plots" / "mse_vs_horizon.csv").read_text()
    assert "last_value," in curves and "linear," not in curves
    _all_ok(run_dir / "models", run_dir / "forecasts", run_dir / "metrics.json")


def test_a_refusal_at_forecast_time_is_recorded_and_replaced_by_a_later_forecast(base, tiny_store, run_dir,
                                                                                 monkeypatch):
    params, _, sp = base
    _train_linear(params, tiny_store, sp, run_dir)
    with monkeypatch.context() as mp:
        mp.setattr(FORECASTERS["linear"], "_forecast", _refuse)
        summaries = _forecast(params, tiny_store, sp, run_dir)
    assert summaries["linear"] == {"model": "linear", "kind": "linear", "refused": REASON, "stage": "forecast"}
    assert _names(run_dir / "forecasts") == {MARKER_FILE, "last_value.zarr", "linear.refused.json"}
    _all_ok(run_dir / "forecasts")
    assert _evaluate(params, tiny_store, sp, run_dir)["models"]["linear"] == {"refused": REASON}

    _forecast(params, tiny_store, sp, run_dir)  # the directory holding a refusal is the stage's own to replace
    assert _names(run_dir / "forecasts") == {MARKER_FILE, "last_value.zarr", "linear.zarr"}
    assert "final_mse" in _evaluate(params, tiny_store, sp, run_dir)["models"]["linear"]


def test_other_errors_still_fail_the_stages(base, tiny_store, run_dir, monkeypatch):
    params, _, sp = base

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a refusal")

    monkeypatch.setattr(FORECASTERS["linear"], "fit", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _train_linear(params, tiny_store, sp, run_dir)
    assert not (run_dir / "models" / "linear").exists()
    monkeypatch.undo()
    _train_linear(params, tiny_store, sp, run_dir)
    monkeypatch.setattr(FORECASTERS["linear"], "_forecast", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        _forecast(params, tiny_store, sp, run_dir)
    assert not (run_dir / "forecasts").exists()


def test_every_model_refused_still_gives_a_metrics_file_with_its_reference(base, tiny_store, run_dir, monkeypatch):
    params, _, sp = base
    only = dataclasses.replace(params, train=dataclasses.replace(params.train, models=["linear"]))
    monkeypatch.setattr(FORECASTERS["linear"], "fit", _refuse)
    _train_linear(only, tiny_store, sp, run_dir)
    _forecast(only, tiny_store, sp, run_dir)
    m = _evaluate(only, tiny_store, sp, run_dir)
    assert m["models"] == {"linear": {"refused": REASON}}
    assert math.isfinite(m["reference"]["true_final_loss"]["mean"]) and m["counts"]["test_runs"] == 6
    assert (run_dir / "plots" / "mse_vs_horizon.csv").read_text() == "model,horizon,step,mse,mse_std\n"
    _all_ok(run_dir / "metrics.json", run_dir / "forecasts", run_dir / "plots")


def test_check_refuses_a_damaged_refusal_and_evaluate_names_it(base, tiny_store, run_dir, monkeypatch):
    params, _, sp = base
    monkeypatch.setattr(FORECASTERS["linear"], "fit", _refuse)
    _train_linear(params, tiny_store, sp, run_dir)
    _forecast(params, tiny_store, sp, run_dir)
    path = run_dir / "forecasts" / "linear.refused.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "refused": ""}))
    (verdict,) = check_path(path)
    assert verdict.kind == "model refusal" and verdict.problems == ["'refused' must be a non-empty string"]
    with pytest.raises(Exception, match="linear.refused.json: not a model refusal"):
        _evaluate(params, tiny_store, sp, run_dir)
    path.write_text(json.dumps({**record, "model": "other"}))
    with pytest.raises(Exception, match="records the refusal of model 'other', not 'linear'"):
        _evaluate(params, tiny_store, sp, run_dir)
    assert not (run_dir / "metrics.json").exists()


def _params_file(tmp_path: Path) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data["models"] = {k: v for k, v in data["models"].items() if k in MODELS}
    data["train"]["models"] = MODELS
    if isinstance((data["train"].get("tuning") or {}).get("space"), dict):
        data["train"]["tuning"]["space"] = {k: v for k, v in data["train"]["tuning"]["space"].items() if k in MODELS}
    data["accelerate"]["models"] = ["linear"]
    data["report"]["claims"] = []
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_stage_commands_print_one_line_each_and_a_refusal_exits_0(base, tiny_store, run_dir, monkeypatch, capsys):
    _, _, sp = base
    p = str(_params_file(run_dir))
    d = run_dir

    def one_line(argv: list[str]) -> str:
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        with pytest.raises(ValueError):
            json.loads(out)  # a line for people; the details are in the output files
        return out.strip()

    line = one_line(["split", "--params", p, "--in", str(tiny_store), "--out", str(d / "split.json")])
    assert line == f"wrote {d / 'split.json'}: 2 dataset seeds, 12 train, 6 val, 6 test runs (0 diverged)"
    train_argv = ["train", "--params", p, "--store", KEY, "--model", "linear", "--split", str(sp), "--in",
                  str(tiny_store), "--out", str(d / "models" / "linear")]
    line = one_line(train_argv)
    assert line.startswith(f"wrote {d / 'models' / 'linear'}: linear (linear) fitted on 2 dataset seeds in ")
    monkeypatch.setattr(FORECASTERS["linear"], "fit", _refuse)
    line = one_line(train_argv)  # replaces the fitted models: a refusal is this stage's output too
    assert line == f"{KEY}/linear: refused the store: {REASON} (wrote {d / 'models' / 'linear'}/refused.json)"
    assert _names(d / "models" / "linear") == {MARKER_FILE, "refused.json"}
    line = one_line(["forecast", "--params", p, "--store", KEY, "--in", str(tiny_store), "--split", str(sp),
                     "--models", str(d / "models"), "--out", str(d / "forecasts")])
    assert line == f"wrote {d / 'forecasts'}: 1 models forecast 6 test runs; 1 refused the store: linear ({REASON})"
    line = one_line(["evaluate", "--params", p, "--store", KEY, "--in", str(tiny_store), "--split", str(sp),
                     "--forecasts", str(d / "forecasts"), "--metrics", str(d / "m.json"), "--plots", str(d / "pl")])
    assert line == f"wrote {d / 'm.json'}: 1 models scored on 6 test runs; refused the store: linear"
    monkeypatch.undo()
    one_line(train_argv)  # and a refusal is replaced by a fit
    assert "summary.json" in _names(d / "models" / "linear")


# --- draws: non-finite ones never drop the point forecast ----------------------------------------------------
def _sampling_linear(monkeypatch, bad_runs) -> None:
    """linear, made to draw 4 samples per run around its point forecast; the draws of store runs ``bad_runs``
    (None: every run) hold NaN and Inf, as a sampled trajectory that blew up would."""
    cls = FORECASTERS["linear"]

    def sample(self, prefix, horizon, n, seed):
        point = self._forecast(prefix, (horizon,))  # (run, 1, param)
        g = torch.Generator().manual_seed(seed)
        out = point + 0.01 * torch.randn((prefix.n_runs, n, prefix.n_params), generator=g)
        bad = np.ones(prefix.n_runs, bool) if bad_runs is None else np.isin(prefix.run_ids, bad_runs)
        out[torch.from_numpy(bad), 0, 0] = float("nan")
        out[torch.from_numpy(bad), 1, 2] = float("inf")
        return out

    monkeypatch.setattr(cls, "n_samples", lambda self: 4)
    monkeypatch.setattr(cls, "_sample_final", sample)


@pytest.mark.parametrize("every", [False, True], ids=["one run", "every run"])
def test_nonfinite_draws_keep_the_point_forecast_and_are_counted(base, tiny_store, run_dir, monkeypatch, every):
    params, _, sp = base
    _train_linear(params, tiny_store, sp, run_dir)
    test = json.loads(sp.read_text())["datasets"]["1"]["test"]
    _sampling_linear(monkeypatch, None if every else [test[0]])
    _forecast(params, tiny_store, sp, run_dir)
    fs = forecast.open_forecasts(run_dir / "forecasts" / "linear.zarr")
    bad = ~np.isfinite(fs.samples.reshape(len(fs.samples), -1)).all(axis=1)
    assert fs.attrs["nonfinite_draw_runs"] == bad.sum() == (6 if every else 1)
    assert np.isfinite(fs.weights).all() and fs.attrs["samples"] == 4
    if not every:
        assert fs.store_index[bad].tolist() == [test[0]]
    _all_ok(run_dir / "forecasts")

    m = _evaluate(params, tiny_store, sp, run_dir)
    linear = m["models"]["linear"]
    assert math.isfinite(linear["final_mse"]["mean"])  # the point forecast is scored whatever the draws
    unc = linear["uncertainty"]
    assert unc["nonfinite_draw_runs"] == (6 if every else 1) and unc["samples"] == 4
    for scores in (unc, unc["loss"]):
        for key in ("coverage_50", "coverage_90", "crps"):
            if every:
                assert scores[key]["n"] == 0 and math.isnan(scores[key]["mean"])
            else:  # the other runs of seed 1 and all of seed 2 are scored: finite, both seeds
                assert scores[key]["n"] == 2 and math.isfinite(scores[key]["mean"]), (key, scores[key])
    _all_ok(run_dir / "metrics.json")


def test_check_still_names_a_draw_made_nonfinite_after_the_count(base, tiny_store, run_dir, monkeypatch):
    import zarr

    params, _, sp = base
    _train_linear(params, tiny_store, sp, run_dir)
    test = json.loads(sp.read_text())["datasets"]["1"]["test"]
    _sampling_linear(monkeypatch, [test[0]])
    _forecast(params, tiny_store, sp, run_dir)
    store = run_dir / "forecasts" / "linear.zarr"
    zarr.open_array(str(store / "samples"), mode="r+")[4, 1, 0] = np.inf  # another run, not counted
    (verdict,) = check_path(store)
    assert len(verdict.problems) == 1 and "samples: non-finite draws of 2 runs" in verdict.problems[0]
    assert "attribute nonfinite_draw_runs records 1 such runs" in verdict.problems[0]
    with pytest.raises(Exception, match="nonfinite_draw_runs records 1"):
        forecast.open_forecasts(store)


# --- the test prefixes: one read ----------------------------------------------------------------------------
def _count_reads(monkeypatch) -> list[int]:
    """Runs per prefix read of the forecast stage; the store made to say one run per write block, as a recorded
    store does."""
    reads: list[int] = []
    real_read, real_open = forecast.Trajectories.from_store, forecast.open_trajectories

    def counted(store, runs, **kw):
        reads.append(len(runs))
        return real_read(store, runs, **kw)

    def one_run_blocks(path):
        ts = real_open(path)
        ts.attrs["block_runs"] = 1
        return ts

    monkeypatch.setattr(forecast.Trajectories, "from_store", staticmethod(counted))
    monkeypatch.setattr(forecast, "open_trajectories", one_run_blocks)
    return reads


def test_forecast_reads_every_test_prefix_in_one_call_for_all_models(base, tiny_store, run_dir, monkeypatch):
    params, _, sp = base
    _train_linear(params, tiny_store, sp, run_dir)
    reads = _count_reads(monkeypatch)
    _forecast(params, tiny_store, sp, run_dir)
    assert reads == [6]  # 6 test runs of 2 dataset seeds, 2 models, block_runs 1: one read


def test_prefixes_over_the_byte_budget_are_read_in_batches_with_the_same_forecasts(base, tiny_store, run_dir,
                                                                                    monkeypatch):
    params, _, sp = base
    _train_linear(params, tiny_store, sp, run_dir)
    _forecast(params, tiny_store, sp, run_dir)
    whole = forecast.open_forecasts(run_dir / "forecasts" / "linear.zarr")
    reads = _count_reads(monkeypatch)
    one = forecast.Prefixes.of(forecast.open_trajectories(tiny_store), {"1": [0]}, params.forecast.prefix_end)
    monkeypatch.setattr(forecast, "PREFIX_BYTES", 2 * one.run_bytes + 1)  # 2 runs' prefixes per read
    shutil.rmtree(run_dir / "forecasts")
    _forecast(params, tiny_store, sp, run_dir)
    assert reads == [2, 2, 2] * 2  # per model: the batches straddle the two dataset seeds (3 test runs each)
    batched = forecast.open_forecasts(run_dir / "forecasts" / "linear.zarr")
    np.testing.assert_array_equal(batched.weights, whole.weights)
    np.testing.assert_array_equal(batched.store_index, whole.store_index)
    np.testing.assert_array_equal(batched.dataset_seed, whole.dataset_seed)
