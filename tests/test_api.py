"""Forecasting a new run with a trained model (gfm.load_forecaster, gfm.forecast_run, gfm.prefix_from_arrays):
the same numbers as the forecast stage, the README's example end to end, and every mismatch named."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gfm
from conftest import ROOT
from gfm.forecasters import ForecasterError, ModelFileError, Trajectories, make_forecaster
from gfm.forecasters.trained import RunMismatchError, TrainedForecaster, TrainedOn
from gfm.stages import forecast, generate, split, train
from gfm.stages.forecast import open_forecasts

pytestmark = pytest.mark.usefixtures("one_thread")

STORE = "mlp_regression-sgd"
MODELS = ("gfm", "lstm", "last_value")


@pytest.fixture(scope="module")
def pipeline(tiny_params, tmp_path_factory) -> Path:
    """The tiny study's mlp_regression-sgd store, split, three trained models and their forecasts, laid out as
    the pipeline lays out a workspace's data/ directory."""
    data = tmp_path_factory.mktemp("ws") / "data"
    store = data / "trajectories" / "mlp_regression" / "sgd.zarr"
    split_file = data / "splits" / "mlp_regression" / "sgd.json"
    models = data / "models" / "mlp_regression" / "sgd"
    generate.run(tiny_params, STORE, out=store, progress=False)
    split.run(tiny_params.split, store=store, out=split_file)
    for name in MODELS:
        train.run(tiny_params, store_key=STORE, model=name, split=split_file, store=store, out=models / name,
                  progress=False)
    forecast.run(tiny_params, store_key=STORE, store=store, split=split_file, models=models,
                 out=data / "forecasts" / "mlp_regression" / "sgd", names=list(MODELS))
    return data


def _paths(data: Path) -> tuple[Path, Path]:
    return data / "trajectories" / "mlp_regression" / "sgd.zarr", data / "models" / "mlp_regression" / "sgd"


@pytest.mark.parametrize("name", MODELS)
def test_same_numbers_as_the_forecast_stage(pipeline, name):
    store, models = _paths(pipeline)
    stage = open_forecasts(pipeline / "forecasts" / "mlp_regression" / "sgd" / f"{name}.zarr")
    for seed in (1, 2):
        sel = stage.dataset_seed == seed
        out = gfm.forecast_run(models / name, store, seed=seed, runs=stage.store_index[sel])
        assert out.weights.dtype == np.float32 and out.weights.shape == stage.weights[sel].shape
        np.testing.assert_array_equal(out.weights, stage.weights[sel])
        assert out.horizons == (16, 24, 32, 40) and out.steps == out.horizons
        assert list(out.run_ids) == list(stage.store_index[sel])


def test_gfm_forecasts_held_out_runs_better_than_last_value(pipeline):
    """On the tiny study's test runs (6, both seeds) GFM's weight MSE is below last_value's at every horizon
    (measured: 0.0037 / 0.0057 / 0.0089 / 0.0126 against 0.0069 / 0.0129 / 0.0189 / 0.0241)."""
    store, models = _paths(pipeline)
    test = {s: e["test"] for s, e in json.loads((pipeline / "splits" / "mlp_regression" / "sgd.json").read_text())[
        "datasets"].items()}
    truth = gfm.open_trajectories(store).weights[:]
    err = {}
    for name in ("gfm", "last_value"):
        outs = [gfm.forecast_run(models / name, store, seed=s, runs=ids) for s, ids in test.items()]
        pred = np.concatenate([o.weights for o in outs])
        ids = np.concatenate([o.run_ids for o in outs])
        err[name] = ((pred - truth[ids][:, list(outs[0].horizons)]) ** 2).mean(axis=(0, 2))
    assert (err["gfm"] < 0.75 * err["last_value"]).all(), err


def test_what_the_model_was_trained_on_is_found_beside_it(pipeline):
    store, models = _paths(pipeline)
    fc = gfm.load_forecaster(models / "lstm" / "2")
    t = fc.trained_on
    assert (t.store, t.optimizer, t.record_every, t.steps, t.n_params) == (STORE, "sgd", 1, 40, 19)
    assert [s.name for s in t.layout] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert (fc.kind, fc.prefix_end, fc.horizons) == ("lstm", 8, (16, 24, 32, 40))
    # a copied fit without its store: what the model itself saved (GFM keeps optimizer, steps, size)
    lone = pipeline.parent / "lone" / "gfm"
    shutil.copytree(models / "gfm" / "1", lone)
    t = gfm.load_forecaster(lone).trained_on
    assert (t.store, t.optimizer, t.steps, t.n_params, t.layout) == (None, "sgd", 40, 19, None)
    with pytest.raises(ModelFileError, match=r"one fit per dataset seed \(1, 2\); pass seed="):
        gfm.load_forecaster(models / "gfm")
    # a copied lstm knows neither: forecasting needs the training store's run length
    shutil.copytree(models / "lstm" / "1", pipeline.parent / "lone" / "lstm")
    with pytest.raises(ForecasterError, match="length of the runs .* unknown.*pass store="):
        gfm.forecast_run(pipeline.parent / "lone" / "lstm", store, runs=[0])
    assert gfm.forecast_run(pipeline.parent / "lone" / "lstm", store, runs=[0], store=store).weights.shape == (1, 4, 19)


def test_a_store_that_contradicts_the_model_is_refused(pipeline, tiny_store):
    _, models = _paths(pipeline)
    for name in ("gfm", "lstm"):  # gfm: its own config.json says sgd; lstm: summary.json's store key does
        with pytest.raises(ModelFileError, match=r"contradicted \(optimizer 'sgd' in .*summary.json, 'adam' in "):
            gfm.load_forecaster(models / name / "1", store=tiny_store)


def test_mismatched_runs_are_refused_naming_each_mismatch(pipeline, tiny_store, tmp_path):
    store, models = _paths(pipeline)
    fc = gfm.load_forecaster(models / "gfm", seed=1)
    with pytest.raises(RunMismatchError, match="optimizer: the run uses adam, the model was fitted on sgd runs"):
        fc.forecast(tiny_store)
    # another network: a user's 1 -> 8 -> 1 MLP
    net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
    w = torch.cat([p.detach().flatten() for p in net.parameters()]).repeat(12, 1).numpy()
    wide = gfm.prefix_from_arrays(w, optimizer="sgd", lr=0.05, layout=net)
    with pytest.raises(RunMismatchError, match=r"layout: .*first difference: 0.weight \[8, 1\] in the run, "
                                               r"0.weight \[6, 1\] in the training runs.*allow_other_layout"):
        fc.forecast(wide)
    assert fc.forecast(wide, allow_other_layout=True).weights.shape == (1, 4, 25)  # the coordinate field transfers
    no_layout = gfm.prefix_from_arrays(w, optimizer="sgd", lr=0.05)
    with pytest.raises(RunMismatchError, match="parameters: the run has 25, the model's training runs 19"):
        fc.forecast(no_layout)
    ts = gfm.open_trajectories(store)
    sparse = gfm.prefix_from_arrays(ts.weights[0, :9], optimizer="sgd", lr=0.05, record_every=2, layout=ts.layout)
    with pytest.raises(RunMismatchError, match="record_every: the run is recorded every 2 steps, the model's "
                                               "training runs every 1"):
        fc.forecast(sparse)
    short = gfm.prefix_from_arrays(ts.weights[0, :5], optimizer="sgd", lr=0.05, layout=ts.layout)
    with pytest.raises(ForecasterError, match="needs records 0..8"):
        fc.forecast(short)
    with pytest.raises(ForecasterError, match=r"horizons \[20\] were not fitted"):
        fc.forecast(store, [20], runs=[0])
    with pytest.raises(ForecasterError, match="wrap it with gfm.prefix_from_arrays"):
        fc.forecast(ts.weights[0])
    # the closed-form baseline learns nothing from its runs: any optimizer, any network
    assert gfm.forecast_run(models / "last_value" / "1", tiny_store, runs=[0, 1]).weights.shape == (2, 4, 19)


def test_state_and_hyper_parameters_an_optimizer_aware_model_reads(tiny_store):
    ts = gfm.open_trajectories(tiny_store)
    runs = Trajectories.from_store(ts, range(6))
    fc = make_forecaster("gfm", {"structure": "rule", "width": 8, "steps": 2, "eval_every": 2},
                         prefix_end=8, horizons=[16, 40])
    fc.fit(runs, runs, rng=torch.Generator().manual_seed(0))
    assert fc.states_needed() == ("exp_avg", "exp_avg_sq")
    trained = TrainedForecaster(fc, Path("m"), TrainedOn(optimizer="adam", record_every=1, steps=40, n_params=19))
    bare = gfm.prefix_from_arrays(ts.weights[0, :9], optimizer="adam", lr=ts.lr[0, :9])
    problems = trained.mismatches(bare)
    assert problems == ["optimizer state: the model reads exp_avg, exp_avg_sq at the prefix end; the run has none "
                        "(record it with gfm.record, or pass states= to prefix_from_arrays)"]
    full = gfm.prefix_from_arrays(ts.weights[0, :9], optimizer="adam", lr=ts.lr[0, :9],
                                  hyper={k: float(v[0]) for k, v in ts.hyper.items()},
                                  states={s: ts.state(s)[0, :9] for s in ts.state_names})
    np.testing.assert_array_equal(trained.forecast(full).weights, trained.forecast(tiny_store, runs=[0]).weights)
    partial = dataclasses.replace(full, hyper={"lr": full.hyper["lr"]})
    # a joint field is built for one network size: no allow_other_layout makes it forecast another
    joint = make_forecaster("gfm", {"field": "joint", "width": 8, "steps": 2, "eval_every": 2}, prefix_end=8,
                            horizons=[16, 40])
    joint.fit(runs, runs, rng=torch.Generator().manual_seed(0))
    wide = gfm.prefix_from_arrays(np.zeros((9, 25)), optimizer="adam", lr=0.01, states={
        s: np.zeros((9, 25)) for s in ts.state_names})
    assert TrainedForecaster(joint, Path("j"), TrainedOn(optimizer="adam")).mismatches(
        wide, allow_other_layout=True) == ["parameters: the run has 25, and this gfm model forecasts networks of "
                                           "exactly 19 (its field is built for one size)"]
    assert trained.mismatches(partial) == ["hyper-parameters: the model reads beta1, beta2, weight_decay, eps; the run "
                                           "has lr"]


def test_prefix_from_arrays_refuses_what_it_cannot_read():
    w = np.zeros((5, 3), np.float32)
    with pytest.raises(ForecasterError, match="optimizer: got 'lbfgs'; expected one of adam, adamw, momentum"):
        gfm.prefix_from_arrays(w, optimizer="lbfgs", lr=0.1)
    with pytest.raises(ForecasterError, match=r"lr: got shape \(4,\); expected a number, \(5,\) or \(1, 5\)"):
        gfm.prefix_from_arrays(w, optimizer="sgd", lr=np.ones(4))
    with pytest.raises(ForecasterError, match="'beta1' is not a hyper-parameter of momentum"):
        gfm.prefix_from_arrays(w, optimizer="momentum", lr=0.1, hyper={"beta1": 0.9})
    with pytest.raises(ForecasterError, match=r"'exp_avg' is not state of nesterov \(it keeps \['momentum_buffer'\]\)"):
        gfm.prefix_from_arrays(w, optimizer="nesterov", lr=0.1, states={"exp_avg": w})
    with pytest.raises(ForecasterError, match="layout: its tensors hold 4 parameters; the weights have 3"):
        gfm.prefix_from_arrays(w, optimizer="sgd", lr=0.1, layout=[("a", (2, 2))])
    with pytest.raises(ForecasterError, match=r"hyper\['momentum'\]: expected finite values >= 0"):
        gfm.prefix_from_arrays(w, optimizer="momentum", lr=0.1, hyper={"momentum": float("nan")})
    run = gfm.prefix_from_arrays(w, optimizer="adamw", lr=0.1, record_every=4)
    assert {k: float(v[0]) for k, v in run.hyper.items()} == pytest.approx(
        {"beta1": 0.9, "beta2": 0.999, "lr": 0.1, "weight_decay": 0.0, "eps": 1e-8})
    assert (run.n_runs, run.n_records, run.steps, run.states) == (1, 5, 16, {})


def _example():
    spec = importlib.util.spec_from_file_location("forecast_my_run", ROOT / "examples" / "forecast_my_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_example_end_to_end_matches_the_forecast_stage(pipeline, tiny_params, tmp_path, capsys):
    """examples/forecast_my_run.py records a user's run and forecasts it with a pipeline model; the forecast
    stage, given that recorded run as a test run, writes the same numbers."""
    _, models = _paths(pipeline)
    user_store = tmp_path / "my_run.zarr"
    result = _example().main(["--model", str(models / "gfm" / "1"), "--store", str(user_store), "--hidden", "6",
                              "--samples", "40", "--batch-size", "16", "--seed", "3"])
    out = result["forecast"]
    assert out.weights.shape == (1, 4, 19) and out.horizons == (16, 24, 32, 40) and np.isfinite(out.weights).all()
    np.testing.assert_array_equal(result["from_arrays"].weights, out.weights)
    printed = capsys.readouterr().out
    assert "forecast from arrays == forecast from the store: True" in printed and "last_value MSE" in printed
    # on this run (measured: final-step weight MSE 0.0024 vs 0.0161; training loss 0.068 vs 0.297 at the prefix end)
    assert result["mse"][-1] < result["mse_last_value"][-1] / 2
    assert result["losses"]["forecast"] < result["losses"]["prefix_end"] / 2
    # the stage: the user's run (dataset seed 0) as the one test run, the seed-1 fit as seed 0's model
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"datasets": {"0": {"train": [], "val": [], "test": [0], "diverged": []}}}))
    shutil.copytree(models / "gfm" / "1", tmp_path / "models" / "gfm" / "0")
    forecast.run(tiny_params, store_key=STORE, store=user_store, split=split_file, models=tmp_path / "models",
                 out=tmp_path / "fc", names=["gfm"])
    np.testing.assert_array_equal(open_forecasts(tmp_path / "fc" / "gfm.zarr").weights, out.weights)
    # and the forecast network is the forecast
    net = nn.Sequential(nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 1))
    out.load_into(net, horizon=40)
    np.testing.assert_array_equal(torch.cat([p.detach().flatten() for p in net.parameters()]).numpy(),
                                  out.weights[0, -1])
    with pytest.raises(ForecasterError, match="has parameters"):
        out.load_into(nn.Linear(1, 1))
