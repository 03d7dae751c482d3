"""Sampled forecasts: the scores (src/gfm/metrics/uncertainty.py), gfm_function's draws and their calibration
(src/gfm/forecasters/function_sampling.py), and the forecast store / evaluate plumbing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gfm.forecasters.base import Trajectories, make_forecaster
from gfm.forecasters.model_files import read_model, save_model
from gfm.metrics.uncertainty import central_interval, covered, crps
from stage_helpers import first_seed_runs, train_and_forecast

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the scores, on cases with a known distribution -----------------------------------------------------
def test_a_correct_distribution_covers_at_the_nominal_rates_and_scores_the_known_crps():
    """Draws and truth from the same N(0, 1): the central 50% / 90% intervals cover at 0.5 / 0.9 (up to the
    S-draw interval's own shortfall: 0.891 expected at S = 200) and the CRPS is 1/sqrt(pi), its closed form."""
    rng = np.random.default_rng(0)
    draws, truth = rng.standard_normal((20000, 200)), rng.standard_normal(20000)
    assert covered(draws, truth, 0.5).mean() == pytest.approx(0.5, abs=0.015)
    assert covered(draws, truth, 0.9).mean() == pytest.approx(0.9, abs=0.02)
    assert crps(draws, truth).mean() == pytest.approx(1 / math.sqrt(math.pi), abs=0.015)


def test_too_narrow_or_too_wide_distributions_miss_the_rates_and_score_worse():
    rng = np.random.default_rng(1)
    truth = rng.standard_normal(4000)
    right = crps(rng.standard_normal((4000, 200)), truth).mean()
    for scale, direction in ((0.3, -1), (3.0, 1)):
        draws = scale * rng.standard_normal((4000, 200))
        c90 = covered(draws, truth, 0.9).mean()
        assert (c90 - 0.9) * direction > 0.05
        assert crps(draws, truth).mean() > right + 0.02   # proper: the right spread scores best


def test_crps_matches_its_definition_and_is_the_absolute_error_of_a_point():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 13)), rng.standard_normal(7)
    brute = np.abs(x - y[:, None]).mean(1) - 0.5 * np.abs(x[:, :, None] - x[:, None, :]).mean((1, 2))
    assert np.allclose(crps(x, y), brute)
    point = np.repeat(x[:, :1], 5, axis=1)
    assert np.allclose(crps(point, y), np.abs(x[:, 0] - y))
    lo, hi = central_interval(x, 0.9)
    assert (lo <= hi).all() and lo.shape == (7,)
    with pytest.raises(ValueError, match="level"):
        central_interval(x, 1.5)


# --- gfm_function's draws --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_runs(tiny_store, tiny_split):
    return first_seed_runs(tiny_store, tiny_split)


@pytest.fixture(scope="module")
def sampler(tiny_params, tiny_runs):
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    fc = make_forecaster("gfm_function", {"steps": 60, "eval_every": 20, "patience": 3, "probes": 16,
                                          "batch_size": 8, "samples": 24}, prefix_end=K, horizons=hz)
    fc.fit(tiny_runs["train"], tiny_runs["val"], rng=torch.Generator().manual_seed(0))
    return fc


def test_calibration_reaches_its_target_on_the_validation_runs(sampler, tiny_params, tiny_runs):
    """The spread is chosen on validation runs: the real (replayed) draws of those runs cover their true final
    weights near the target, although the choice was made on a linearisation of the replay."""
    cal = sampler.extra["calibration"]
    assert sampler.n_samples() == 24 and sampler.extra["spread"] > 0
    assert cal["linearised_val_coverage"] == pytest.approx(0.9, abs=0.02)
    val, H = tiny_runs["val"], tiny_params.forecast.horizons[-1]
    draws = sampler.sample_final(val, horizon=H, n=24, seed=0).numpy()
    assert covered(draws, val.weights[:, H].numpy(), 0.9).mean() == pytest.approx(0.9, abs=0.08)


def test_draws_are_spread_per_run_reproducible_and_round_trip(sampler, tiny_params, tiny_runs, tmp_path):
    test, H = tiny_runs["test"], tiny_params.forecast.horizons[-1]
    draws = sampler.sample_final(test, horizon=H, n=24, seed=3)
    assert draws.shape == (test.n_runs, 24, test.n_params) and torch.isfinite(draws).all()
    assert float(draws.std(1).mean()) > 0
    # a run's draws do not depend on which runs share the call
    one = dataclass_subset(test, [2])
    assert torch.equal(sampler.sample_final(one, horizon=H, n=24, seed=3)[0], draws[2])
    assert not torch.equal(sampler.sample_final(test, horizon=H, n=24, seed=4), draws)
    save_model(sampler, tmp_path / "m")
    again = read_model(tmp_path / "m")
    assert again.n_samples() == 24 and torch.equal(again.sample_final(test, horizon=H, n=24, seed=3), draws)


def dataclass_subset(tr: Trajectories, idx: list[int]) -> Trajectories:
    import dataclasses

    return dataclasses.replace(tr, weights=tr.weights[idx], lr=tr.lr[idx],
                               states={k: v[idx] for k, v in tr.states.items()},
                               hyper={k: v[idx] for k, v in tr.hyper.items()},
                               run_ids=np.asarray(tr.run_ids)[idx])


def test_point_models_and_samples_zero_do_not_sample(tiny_params, tiny_runs):
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    fc = make_forecaster("gfm_function", {"steps": 5, "eval_every": 5, "probes": 4, "samples": 0},
                         prefix_end=K, horizons=hz)
    fc.fit(tiny_runs["train"], tiny_runs["val"], rng=torch.Generator().manual_seed(0))
    assert fc.n_samples() == 0 and "spread" not in fc.extra
    lv = make_forecaster("last_value", None, prefix_end=K, horizons=hz)
    assert lv.n_samples() == 0
    from gfm.forecasters.base import ForecasterError

    with pytest.raises(ForecasterError, match="points, not samples"):
        lv.sample_final(tiny_runs["test"], horizon=hz[-1], n=4, seed=0)


# --- the stages: forecast writes the draws, check validates them, evaluate scores them ------------------
@pytest.fixture(scope="module")
def sampled_pipeline(tiny_params, tiny_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    params, split_path = train_and_forecast(tiny_params, tiny_store, root, ["last_value", "gfm_function"])
    return params, root, split_path


def test_forecast_store_holds_checked_draws_and_evaluate_scores_them(sampled_pipeline, tiny_store):
    import shutil

    import zarr

    from gfm.stages import evaluate, forecast
    from gfm.tools.check import check_path

    params, root, split_path = sampled_pipeline
    fs = forecast.open_forecasts(root / "forecasts" / "gfm_function.zarr")
    assert fs.attrs["samples"] == 16 and fs.samples.shape == (len(fs.store_index), 16, fs.weights.shape[2])
    assert forecast.open_forecasts(root / "forecasts" / "last_value.zarr").samples is None
    (verdict,) = check_path(root / "forecasts" / "gfm_function.zarr")
    assert verdict.ok and "16 draws per run" in verdict.summary
    result = evaluate.run(params, store_key="mlp_regression-adam", store=tiny_store, split=split_path,
                          forecasts=root / "forecasts", metrics=root / "metrics.json", plots=root / "plots")
    u = result["models"]["gfm_function"]["uncertainty"]
    assert u["samples"] == 16 and "uncertainty" not in result["models"]["last_value"]
    for scores in (u, u["loss"]):
        assert 0 <= scores["coverage_50"]["mean"] <= scores["coverage_90"]["mean"] <= 1
        assert scores["crps"]["mean"] > 0 and len(params.generate.dataset_seeds) == scores["crps"]["n"]
    assert json.loads((root / "metrics.json").read_text())["models"]["gfm_function"]["uncertainty"] == u

    # a store whose draws do not match its runs is refused by `gfm check`, naming the array
    bad = root / "bad.zarr"
    shutil.copytree(root / "forecasts" / "gfm_function.zarr", bad)
    g = zarr.open_group(str(bad), mode="r+")
    del g["samples"]
    g.create_array("samples", data=np.zeros((2, 16, fs.weights.shape[2]), np.float32))
    (verdict,) = check_path(bad)
    assert not verdict.ok and any("samples" in p for p in verdict.problems)
