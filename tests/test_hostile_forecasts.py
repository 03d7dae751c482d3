"""Forecast stores and fitted models that could pass off wrong numbers (RELIABILITY.md, "Forecast stores and
fitted models: no wrong numbers"): a missing chunk that would read as zeros, NaN forecasts, a store of the
wrong shape, damaged fitted values of a saved model, and the Python API's own inputs. Every case is refused
by `gfm check` (exit 1, a named problem), by the stage that reads it (exit 2, one `error:` line) and by the
Python API (a GFMError), with the same rules.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import gfm
from gfm.base.errors import GFMError, StoreSchemaError
from gfm.forecasters import FORECASTERS, ForecasterError, Trajectories, make_forecaster
from gfm.forecasters.model_files import save_model
from gfm.stages import forecast
from gfm.store.reader import open_trajectories
from test_hostile_inputs import Run, _assert_named, _assert_refused, _cli, closed_params, lstm_model  # noqa: F401
from test_reliability import KEY, staged  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Staged:
    """A private copy of one staged run: store, split, models and forecasts of last_value and linear."""

    root: Path
    params: Path

    @property
    def forecasts(self) -> Path:
        return self.root / "forecasts"

    def evaluate(self) -> list[str]:
        r = self.root
        return ["evaluate", "--params", str(self.params), "--store", KEY, "--in", str(r / "store.zarr"),
                "--split", str(r / "split.json"), "--forecasts", str(self.forecasts),
                "--metrics", str(r / "metrics.json"), "--plots", str(r / "plots")]

    def nothing_scored(self) -> bool:
        return not (self.root / "metrics.json").exists() and not (self.root / "plots").exists()


@pytest.fixture
def st(staged, tiny_store, closed_params, tmp_path) -> Staged:  # noqa: F811
    _, root, sp = staged
    s = Staged(tmp_path / "run", closed_params)
    s.root.mkdir()
    shutil.copytree(tiny_store, s.root / "store.zarr")
    shutil.copy(sp, s.root / "split.json")
    shutil.copytree(root / "forecasts", s.forecasts)
    shutil.copytree(root / "models", s.root / "models")
    return s


def _with_samples(store: Path, n: int = 3) -> None:
    """Rewrite the forecast store ``store`` with ``n`` draws per run (the point forecast, repeated), through the
    forecast stage's own writer."""
    fs = forecast.open_forecasts(store)
    attrs = {k: v for k, v in fs.attrs.items() if k not in ("chunks", "complete")}
    tmp = store.with_name("tmp.zarr")
    forecast.write_forecast_store(tmp, weights=fs.weights, store_index=fs.store_index, dataset_seed=fs.dataset_seed,
                                  samples=np.repeat(fs.weights[:, -1:], n, axis=1), attrs={**attrs, "samples": n})
    shutil.rmtree(store)
    tmp.rename(store)


# --- 1. a missing or non-finite chunk never reads as forecast numbers -----------------------------------
@pytest.mark.parametrize("array,key", [("weights", "c/0/3/0"), ("runs/store_index", "c/0"),
                                       ("runs/dataset_seed", "c/0"), ("samples", "c/0/0/0")])
def test_a_missing_chunk_is_refused_by_check_evaluate_and_the_api(st, array, key, capfd):
    store = st.forecasts / "linear.zarr"
    if array == "samples":
        _with_samples(store)
    (store / array / key).unlink()
    message = f"array {array}: chunk {key} missing"
    _assert_named(*_cli(["check", str(store)], capfd)[:2], message)
    code, _, err = _cli(st.evaluate(), capfd)
    _assert_refused(code, err, message)
    assert st.nothing_scored()
    with pytest.raises(StoreSchemaError, match=message):
        forecast.open_forecasts(store)


def test_nan_forecasts_are_refused_naming_the_runs_and_chunk(st, capfd):
    store = st.forecasts / "linear.zarr"
    w = zarr.open_array(str(store / "weights"), mode="r+")
    run = int(zarr.open_array(str(store / "runs/store_index"), mode="r")[2])
    w[2, 1, 3] = np.nan
    message = f"weights: non-finite forecasts of 1 runs ({run}) (store runs) in chunk c/0/1/0"
    _assert_named(*_cli(["check", str(store)], capfd)[:2], message)
    code, _, err = _cli(st.evaluate(), capfd)
    _assert_refused(code, err, message)
    assert st.nothing_scored()


def test_uncounted_nan_draws_are_refused_naming_the_chunk(st, capfd):
    """Draws may be non-finite (the point forecast stands; evaluate scores the other runs' draws), but only the
    runs the writer counted in nonfinite_draw_runs: one that became NaN or Inf later is named with its chunk."""
    store = st.forecasts / "linear.zarr"
    _with_samples(store)
    zarr.open_array(str(store / "samples"), mode="r+")[0, 1, 0] = np.inf
    _assert_named(*_cli(["check", str(store)], capfd)[:2], "samples: non-finite draws of 1 runs")
    with pytest.raises(StoreSchemaError, match="in chunk c/0/0/0; attribute nonfinite_draw_runs records 0 such runs"):
        forecast.open_forecasts(store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["nonfinite_draw_runs"] = 1  # what the forecast stage writes for such draws
    (store / "zarr.json").write_text(json.dumps(meta))
    assert _cli(["check", str(store)], capfd)[0] == 0
    assert forecast.open_forecasts(store).attrs["nonfinite_draw_runs"] == 1


def test_a_store_without_nan_fill_or_chunk_record_is_refused(st, capfd):
    """A store of the earlier layout (fill value 0, no chunk record): a missing chunk there read as zeros."""
    store = st.forecasts / "linear.zarr"
    meta = json.loads((store / "weights" / "zarr.json").read_text())
    meta["fill_value"] = 0.0
    (store / "weights" / "zarr.json").write_text(json.dumps(meta))
    root = json.loads((store / "zarr.json").read_text())
    del root["attributes"]["chunks"]
    (store / "zarr.json").write_text(json.dumps(root))
    code, out, _ = _cli(["check", str(store)], capfd)
    _assert_named(code, out, "array weights: fill_value 0.0")
    _assert_named(code, out, "no completeness record")
    _assert_refused(*_cli(st.evaluate(), capfd)[::2], "fill_value 0.0")


def test_a_chunk_record_that_disagrees_with_the_grid_is_refused(st, capfd):
    store = st.forecasts / "last_value.zarr"
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"]["chunks"]["weights"] = 3
    (store / "zarr.json").write_text(json.dumps(root))
    _assert_named(*_cli(["check", str(store)], capfd)[:2], "array weights: attribute chunks records 3 chunk files, its grid has 4")


def test_the_forecast_stage_checks_its_store_before_it_is_complete(st, monkeypatch):
    """The writer runs gfm check's rules on what it wrote: a store they refuse is never renamed into place."""
    from gfm.config import load_params
    from gfm.stages import forecast_check

    real = forecast_check.chunk_record
    monkeypatch.setattr(forecast, "chunk_record", lambda g: {**real(g), "weights": 1})  # a miscounted record
    out = st.root / "new_forecasts"
    with pytest.raises(StoreSchemaError, match="attribute chunks records 1 chunk files"):
        forecast.run(load_params(st.params), store_key=KEY, store=st.root / "store.zarr", split=st.root / "split.json",
                     models=st.root / "models", out=out)
    assert not [p for p in st.root.iterdir() if p.name.startswith("new_forecasts")]


def test_a_written_store_holds_every_chunk_even_one_equal_to_the_fill_value(tmp_path):
    out = tmp_path / "f.zarr"
    forecast.write_forecast_store(out, weights=np.ones((1, 2, 3), np.float32), store_index=np.zeros(1, np.int64),
                                  dataset_seed=np.zeros(1, np.int64), samples=None,
                                  attrs={"kind": "forecast", "schema_version": 1, "prefix_end": 0, "horizons": [1, 2],
                                         "samples": 0, "n_runs": 1})
    assert (out / "runs/store_index/c/0").is_file()  # all zeros, the int fill value: zarr skips such by default
    assert zarr.open_group(str(out), mode="r").attrs["chunks"] == {"weights": 2, "runs/store_index": 1,
                                                                  "runs/dataset_seed": 1}


# --- 3. a sound store that is not a forecast of these runs ----------------------------------------------
def _rewrite(store: Path, change: Callable[[dict, np.ndarray], tuple[dict, np.ndarray]]) -> None:
    fs = forecast.open_forecasts(store)
    attrs, weights = change({k: v for k, v in fs.attrs.items() if k not in ("chunks", "complete")}, fs.weights)
    shutil.rmtree(store)
    forecast.write_forecast_store(store, weights=weights, store_index=fs.store_index, dataset_seed=fs.dataset_seed,
                                  samples=None, attrs=attrs)


@pytest.mark.parametrize("change,message", [
    (lambda a, w: (a, w[:, :, :7]), "forecasts hold 7 parameters per run; the trajectory store's runs have 19"),
    (lambda a, w: ({**a, "prefix_end": 4}, w), "forecasts from prefix end 4 at horizons"),
    (lambda a, w: ({**a, "horizons": [16, 24, 32, 36]}, w), "params ask for 8 and [16, 24, 32, 40]"),
], ids=["other network size", "other prefix end", "other horizons"])
def test_evaluate_refuses_a_store_of_the_wrong_shape_in_one_line(st, change, message, capfd):
    store = st.forecasts / "linear.zarr"
    _rewrite(store, change)
    assert _cli(["check", str(store)], capfd)[0] == 0  # sound on its own
    code, _, err = _cli(st.evaluate(), capfd)
    _assert_refused(code, err, message)
    assert st.nothing_scored()


# --- 2. damaged fitted values of a saved model ----------------------------------------------------------
@pytest.fixture(scope="module")
def function_model(tiny_store, tmp_path_factory) -> Path:
    """A genuine saved gfm_function forecaster (it keeps the training runs' steps), fitted for two updates."""
    fields = {f.name for f in dataclasses.fields(FORECASTERS["gfm_function"].Config)}
    short = {k: v for k, v in {"steps": 2, "eval_every": 1}.items() if k in fields}
    traj = Trajectories.from_store(open_trajectories(tiny_store), list(range(12)))
    fc = make_forecaster("gfm_function", {"probes": 4, "batch_size": 4, "samples": 0, **short}, prefix_end=8,
                         horizons=[16, 24, 32, 40])
    fc.fit(traj.select(range(8)), traj.select(range(8, 12)), rng=torch.Generator().manual_seed(0))
    return save_model(fc, tmp_path_factory.mktemp("models") / "gfm_function")


def _edit_config(d: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((d / "config.json").read_text())
    change(meta)
    (d / "config.json").write_text(json.dumps(meta))


_FITTED = {
    "scales a string": ("lstm", lambda m: m["extra"].__setitem__("scales", "abc"),
                        "extra.scales is 'abc'; expected a mapping"),
    "a scale missing": ("lstm", lambda m: m["extra"]["scales"].pop("weight"), "extra.scales.weight is missing"),
    "a horizon scale short": ("lstm", lambda m: m["extra"]["scales"]["horizon"].pop(),
                              "extra.scales.horizon is [")
    ,
    "a zero scale": ("lstm", lambda m: m["extra"]["scales"].__setitem__("step", 0.0),
                     "extra.scales.step is 0.0; expected a positive number"),
    "no fitted values": ("lstm", lambda m: m.pop("extra"), "extra.scales is missing"),
    "steps 0": ("gfm_function", lambda m: m["extra"].__setitem__("steps", 0),
                "extra.steps is 0; expected an integer >= 1"),
    "an unknown optimizer": ("gfm_function", lambda m: m["extra"].__setitem__("optimizer", "lbfgs"),
                             "extra.optimizer is 'lbfgs'"),
    "layers not pairs": ("gfm_function", lambda m: m["extra"].__setitem__("layers", [[6, 1, 2]]),
                         "extra.layers[0] is [6, 1, 2]"),
    "n_params not the layers'": ("gfm_function", lambda m: m["extra"].__setitem__("n_params", 20),
                                 "extra.n_params is 20; extra.layers hold 19"),
    "prefix_end -3": ("lstm", lambda m: m.__setitem__("prefix_end", -3), "'prefix_end' is -3"),
}


@pytest.mark.parametrize("case", list(_FITTED))
def test_damaged_fitted_values_are_refused_at_load_and_by_check(case, tiny_store, lstm_model, function_model,  # noqa: F811
                                                                 tmp_path, capfd):
    kind, change, message = _FITTED[case]
    d = tmp_path / kind
    shutil.copytree(lstm_model if kind == "lstm" else function_model, d)
    _edit_config(d, change)
    _assert_named(*_cli(["check", str(d)], capfd)[:2], message)
    with pytest.raises(GFMError, match="config.json: ") as exc:
        gfm.load_forecaster(d, store=tiny_store)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_forecast_stage_refuses_damaged_fitted_values_in_one_line(staged, tiny_store, closed_params, lstm_model,  # noqa: F811
                                                                  tmp_path, capfd):
    _, root, sp = staged
    r = Run(tmp_path / "run", tiny_store, sp, tmp_path / "run" / "models", closed_params, lstm_model)
    r.root.mkdir()
    shutil.copytree(root / "models" / "linear", r.models / "linear")
    _edit_config(r.neural("1"), lambda m: m["extra"].__setitem__("scales", "abc"))
    code, _, err = _cli(r.forecast(), capfd)
    _assert_refused(code, err, "extra.scales is 'abc'")
    assert r.nothing_written()


def test_gfm_fitted_values_that_contradict_each_other_are_named():
    fc = make_forecaster("gfm_plain", {}, prefix_end=8, horizons=[16, 24])
    extra = {"optimizer": "adam", "steps": 40, "record_every": 1, "dt": 0.025, "n_params": 19, "n_static": 3,
             "n_features": 6, "n_run": 1, "scales": {"w": 1.0, "x": 1.0, "v": 1.0, "g": 1.0,
                                                      "hyper_mean": {"lr": -4.6}, "hyper_std": {"lr": 0.0}}}
    assert fc.fitted_relations(extra) == []
    assert fc.fitted_relations({**extra, "dt": 0.5, "n_run": 2}) == [
        "extra.dt is 0.5; record_every / steps is 0.025", "extra.n_run is 2; scales.hyper_mean holds 1"]


def test_every_saved_kind_declares_what_its_fitted_values_hold():
    """A forecaster that keeps fitted values declares them; the schema of one that keeps none is empty."""
    learned = {k for k, cls in FORECASTERS.items() if not cls.closed_form}
    for kind in FORECASTERS:
        fc = make_forecaster(kind, {}, prefix_end=8, horizons=[16, 24])
        assert bool(fc.fitted_schema()) == (kind in learned), kind


# --- 4. the Python API's own inputs ---------------------------------------------------------------------
def test_api_refuses_a_nan_prefix_naming_the_run(st, capfd):
    store = st.root / "store.zarr"
    zarr.open_array(str(store / "weights"), mode="r+")[5, 2, 0] = np.nan  # a record the model reads
    model = gfm.load_forecaster(st.root / "models" / "linear", seed=1, store=store)
    with pytest.raises(ForecasterError, match=r"run 5 holds non-finite values \(NaN or Inf\) in records 0\.\.8"):
        model.forecast(store, runs=[4, 5])
    run = gfm.prefix_from_arrays(np.full((9, 19), np.nan, np.float32), optimizer="adam", lr=0.01)
    with pytest.raises(ForecasterError, match="run 0 holds non-finite"):
        model.forecast(run)


def test_forecast_stage_refuses_a_nan_prefix_naming_the_store_run(st, capfd):
    store = st.root / "store.zarr"
    datasets = json.loads((st.root / "split.json").read_text())["datasets"]
    seed = sorted(datasets)[0]
    run = datasets[seed]["test"][0]
    zarr.open_array(str(store / "weights"), mode="r+")[run, 3, 0] = np.nan  # as a missing chunk reads
    argv = ["forecast", "--params", str(st.params), "--store", KEY, "--in", str(store), "--split",
            str(st.root / "split.json"), "--models", str(st.root / "models"), "--out", str(st.root / "new")]
    code, _, err = _cli(argv, capfd)
    _assert_refused(code, err, f"store run {run} of dataset seed {seed} holds non-finite values in records 0..8 "
                               "(not flagged diverged)")
    assert not [p for p in st.root.iterdir() if p.name.startswith("new")]


def test_a_forecaster_refuses_empty_and_non_integer_horizons(st):
    from gfm.forecasters import read_model

    fc = read_model(st.root / "models" / "linear" / "1")
    prefix = Trajectories.from_store(open_trajectories(st.root / "store.zarr"), [0, 1], records=9)
    for horizons, message in (([], "horizons: got none"), ([16.0], "horizons: got 16.0; expected integers")):
        with pytest.raises(ForecasterError, match=message):
            fc.forecast(prefix, horizons=horizons)


@pytest.mark.parametrize("kwargs,message", [
    ({"horizons": []}, "horizons: got none"),
    ({"runs": [1.7]}, "runs: got 1.7; expected integers"),
    ({"runs": [True]}, "runs: got True; expected integers"),
    ({"horizons": [16.5]}, "horizons: got 16.5; expected integers"),
])
def test_api_refuses_empty_horizons_and_non_integers(st, kwargs, message):
    store = st.root / "store.zarr"
    model = gfm.load_forecaster(st.root / "models" / "linear", seed=1, store=store)
    with pytest.raises(ForecasterError, match=message):
        model.forecast(store, **kwargs)


def test_api_refuses_a_layout_with_negative_sizes():
    w = np.zeros((9, 19), np.float32)
    with pytest.raises(ForecasterError, match=r"layout: tensor 'a' has shape \[2, -1\]; expected positive sizes"):
        gfm.prefix_from_arrays(w, optimizer="adam", lr=0.01, layout=[("a", (2, -1)), ("b", (21,))])  # adds up to 19


def test_function_model_refuses_another_input_size_even_with_allow_other_layout(function_model, tiny_store):
    model = gfm.load_forecaster(function_model, store=tiny_store)

    def run(n_in: int, hidden: int):
        layout = [("0.weight", (hidden, n_in)), ("0.bias", (hidden,)), ("2.weight", (1, hidden)), ("2.bias", (1,))]
        n = hidden * n_in + 2 * hidden + 1
        w = np.random.default_rng(0).normal(size=(9, n)).astype(np.float32)
        states = {"exp_avg": np.zeros_like(w), "exp_avg_sq": np.full_like(w, 1e-4)}
        return gfm.prefix_from_arrays(w, optimizer="adam", lr=0.01, layout=layout, states=states)

    with pytest.raises(ForecasterError, match="not another input or output size"):
        model.forecast(run(2, 6), allow_other_layout=True)
    out = model.forecast(run(1, 12), allow_other_layout=True)  # another hidden width: what the field allows
    assert out.weights.shape == (1, 4, 37) and np.isfinite(out.weights).all()


# --- the trajectory store's per-run fields (filled with 0; zarr stores no all-zero chunk) -----------------
@pytest.mark.parametrize("field,message", [
    ("lr", "runs/lr: 8 runs (8, 9, 10, 11, 12, ...) hold a learning rate of 0"),
    ("dataset_seed", "runs/dataset_seed: 8 runs (8, 9, 10, 11, 12, ...) hold seeds the store does not list"),
])
def test_check_names_a_missing_chunk_of_a_per_run_field(tiny_store, tmp_path, field, message, capfd):
    store = tmp_path / "store.zarr"
    shutil.copytree(tiny_store, store)
    # a store written before the completeness record (attribute chunks), which would name the chunk itself
    # (tests/test_hostile_trajectory_chunks.py): the values are then what tells a missing chunk
    meta = json.loads((store / "zarr.json").read_text())
    del meta["attributes"]["chunks"]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert _cli(["check", str(store)], capfd)[0] == 0
    (store / "runs" / field / "c" / "1").unlink()
    _assert_named(*_cli(["check", str(store)], capfd)[:2], message)
