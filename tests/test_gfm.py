"""GFM forecasters against analytic oracles: gradient recovery, the quadratic field, overfitting, transfer.

The shared Forecaster contract (shapes, determinism, save/load, prefix-only use) is checked for ``gfm`` and
``gfm_plain`` by tests/test_forecasters_contract.py with their tiny-params options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gfm.core.optimizers import STATE_NAMES, init_state, update
from gfm.forecasters import ForecasterError, Trajectories, make_forecaster, read_model
from gfm.forecasters.gfm_features import recover_gradient
from gfm.forecasters.model_files import save_model
from gfm.stages import generate
from gfm.store.reader import open_trajectories
from margins import THREADS, at_least, fit_rng

HP = {
    "sgd": {"lr": 0.05, "weight_decay": 0.01},
    "momentum": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "adam": {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    "nesterov": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01},
    "adamw": {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls: a second thread only adds contention on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # GFM_TEST_THREADS: tests/margins.py
    yield
    torch.set_num_threads(before)


def _quadratic_runs(name: str, R: int, seed: int, *, P: int = 3, m: int = 50, noise: float = 0.0):
    """Runs of optimizer ``name`` on one fixed quadratic 0.5 (w - c)^T A (w - c) from random inits.

    Returns:
        (Trajectories, true gradients (run, m, param)).
    """
    g = torch.Generator().manual_seed(100)
    q = torch.randn(P, P, generator=g)
    A = q @ q.T / P + 0.5 * torch.eye(P)
    c = torch.randn(P, generator=g)
    gi = torch.Generator().manual_seed(seed)
    w = torch.randn(R, P, generator=gi)
    hp = {k: torch.full((R, 1), v) for k, v in HP[name].items()}
    state = init_state(name, w)
    ws, ss, gs = [w], [state], []
    for k in range(m):
        grad = (w - c) @ A + noise * torch.randn(R, P, generator=gi)
        gs.append(grad)
        w, state = update(name, w, grad, state, hp, k + 1)
        ws.append(w)
        ss.append(state)
    traj = Trajectories(
        weights=torch.stack(ws, 1), lr=torch.full((R, m + 1), HP[name]["lr"]), optimizer=name, record_every=1,
        steps=m, states={n: torch.stack([s[n] for s in ss], 1) for n in STATE_NAMES[name]},
        hyper={k: torch.full((R,), v) for k, v in HP[name].items()})
    return traj, torch.stack(gs, 1)


@pytest.mark.parametrize("name", sorted(STATE_NAMES))
def test_logged_state_recovers_the_true_gradient(name):
    traj, grads = _quadratic_runs(name, 8, 0, noise=0.3)
    torch.testing.assert_close(recover_gradient(traj), grads, rtol=1e-3, atol=1e-4)


def test_optimizer_aware_gfm_recovers_the_field_of_a_fixed_quadratic():
    # pure (full-batch) SGD on one quadratic: the true field is g(w) = A (w - c), linear in w. On recorded
    # points (grid sampling) the flow-matching target is exactly -m lr g(w_k), so a joint field with a linear
    # path recovers it; the bound is raised because early gradients reach > 5 window stds.
    train, _ = _quadratic_runs("sgd", 64, 1)
    val, _ = _quadratic_runs("sgd", 16, 2)
    test, grads = _quadratic_runs("sgd", 16, 3)
    horizons = [10, 25, 50]
    fc = make_forecaster("gfm", {"field": "joint", "width": 32, "depth": 1, "bound": 20.0, "t_sampling": "grid",
                                 "steps": 1500, "eval_every": 300, "lr": 0.005}, prefix_end=5, horizons=horizons)
    fc.fit(train, val, rng=torch.Generator().manual_seed(0))
    pred = fc.forecast(test, horizons=horizons)
    mse = float((pred - test.weights[:, horizons]).pow(2).mean())
    last_value = float((test.weights[:, 5:6] - test.weights[:, horizons]).pow(2).mean())
    assert mse < 1e-4, f"forecast MSE {mse:.2e} on held-out inits (last value: {last_value:.2e})"
    assert last_value > 1e-2


@pytest.fixture(scope="module")
def tiny_sgd_gd(tiny_params, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gfm") / "ls_gd.zarr"
    generate.run(tiny_params, "least_squares_1d_gd-sgd", out=out, progress=False)
    return out


OVERFIT = {"steps": 800, "eval_every": 10, "patience": 1000, "lr": 0.005, "width": 128, "depth": 3,
           "batch_size": 64, "t_sampling": "grid"}


@pytest.mark.parametrize("kind,options", [("gfm_plain", {}), ("gfm", {"structure": "state_input"})])
def test_velocity_heads_overfit_a_single_tiny_adam_trajectory(kind, options, tiny_store, tiny_params):
    one = Trajectories.from_store(open_trajectories(tiny_store), [0])
    f = tiny_params.forecast
    fc = make_forecaster(kind, {**OVERFIT, **options}, prefix_end=f.prefix_end, horizons=f.horizons)
    log = fc.fit(one, one, rng=fit_rng(0))
    first, best = log[0]["train_loss"], min(r["train_loss"] for r in log)
    at_least(f"overfit[{kind} {options}]", first / best, 50)  # measured 226-263x over seeds (BENCHMARKS.md)


@pytest.mark.parametrize("target", ["velocity", "gradient"])
def test_rule_head_overfits_a_single_tiny_gradient_descent_trajectory(target, tiny_sgd_gd, tiny_params):
    # full-batch GD: the gradient is a smooth function of time. (A minibatch gradient is white noise in t, which
    # a smooth field memorises only slowly; the Adam store's velocity is already smoothed by the first moment.)
    one = Trajectories.from_store(open_trajectories(tiny_sgd_gd), [0])
    f = tiny_params.forecast
    fc = make_forecaster("gfm", {**OVERFIT, "target": target}, prefix_end=f.prefix_end, horizons=f.horizons)
    log = fc.fit(one, one, rng=fit_rng(0))
    first, best = log[0]["train_loss"], min(r["train_loss"] for r in log)
    at_least(f"overfit[rule/{target}]", first / best, 100)


def test_coordinate_field_forecasts_a_network_size_it_never_saw():
    train, _ = _quadratic_runs("momentum", 16, 1, P=3)
    other, _ = _quadratic_runs("momentum", 4, 2, P=7)
    fc = make_forecaster("gfm", {"steps": 20, "eval_every": 10}, prefix_end=5, horizons=[20, 50])
    fc.fit(train, train, rng=torch.Generator().manual_seed(0))
    pred = fc.forecast(other, horizons=[20, 50])
    assert pred.shape == (4, 2, 7) and torch.isfinite(pred).all()


@pytest.mark.parametrize("options", [{"field": "joint", "structure": "rule"}, {"structure": "state_input"},
                                     {"solver": "rk4", "steps_per_record": 2, "run_context": "state", "param_sample": 2}])
def test_variants_round_trip_through_save_and_load(options, tmp_path):
    train, _ = _quadratic_runs("adam", 12, 1)
    fc = make_forecaster("gfm", {**options, "steps": 20, "eval_every": 10}, prefix_end=5, horizons=[20, 50])
    log = fc.fit(train, train, rng=torch.Generator().manual_seed(0))
    assert [r["step"] for r in log] == [10, 20] and all("val_loss" in r for r in log)
    pred = fc.forecast(train, horizons=[20, 50])
    loaded = read_model(save_model(fc, tmp_path / "m"))
    assert loaded.config == fc.config and torch.equal(loaded.forecast(train, horizons=[20, 50]), pred)


def test_bad_options_and_inputs_are_clear_errors():
    with pytest.raises(ForecasterError, match="solver: got 'leapfrog'; expected one of 'euler', 'midpoint', 'rk4'"):
        make_forecaster("gfm", {"solver": "leapfrog"}, prefix_end=5, horizons=[10])
    with pytest.raises(ForecasterError, match="structure: unknown key"):
        make_forecaster("gfm_plain", {"structure": "rule"}, prefix_end=5, horizons=[10])
    train, _ = _quadratic_runs("sgd", 4, 1)
    coarse = Trajectories(weights=train.weights[:, ::2], lr=train.lr[:, ::2], optimizer="sgd", record_every=2,
                          steps=50, hyper=train.hyper)
    fc = make_forecaster("gfm", {"target": "gradient"}, prefix_end=5, horizons=[10])
    with pytest.raises(ForecasterError, match="needs every step recorded"):
        fc.fit(coarse, coarse, rng=torch.Generator().manual_seed(0))
    fc = make_forecaster("gfm", {"steps": 2, "eval_every": 1}, prefix_end=5, horizons=[10])
    fc.fit(train, train, rng=torch.Generator().manual_seed(0))
    adam, _ = _quadratic_runs("adam", 4, 1)
    with pytest.raises(ForecasterError, match="fitted on sgd runs, got adam runs"):
        fc.forecast(adam, horizons=[10])
