"""Classical baselines against closed-form trajectories whose future they should (or provably can) get right."""

from __future__ import annotations

import pytest
import torch

from gfm.forecasters import ForecasterError, Trajectories, make_forecaster
from margins import THREADS, at_least, data_seed, fit_rng

K, H = 10, (20, 30, 40)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # GFM_TEST_THREADS: tests/margins.py
    yield
    torch.set_num_threads(before)


def traj(w: torch.Tensor) -> Trajectories:
    """Wrap (run, record, param) weights as SGD trajectories with a constant lr."""
    n, t, _ = w.shape
    return Trajectories(weights=w.float(), lr=torch.full((n, t), 0.1), optimizer="sgd", record_every=1, steps=t - 1)


def geometric(n: int, p: int, *, seed: int, t: int = 41) -> torch.Tensor:
    """w_k = w* + (w_0 - w*) q^k per parameter (gradient descent on a quadratic), q per run in [0.85, 0.97]."""
    g = torch.Generator().manual_seed(seed)
    w0, wstar = torch.randn(n, 1, p, generator=g), torch.randn(n, 1, p, generator=g)
    q = 0.85 + 0.12 * torch.rand(n, 1, 1, generator=g)
    k = torch.arange(t, dtype=torch.float32).view(1, -1, 1)
    return wstar + (w0 - wstar) * q**k


def mse(fc, data: Trajectories) -> float:
    pred = fc.forecast(data, horizons=fc.horizons)
    return float(((pred - data.weights[:, list(fc.horizons)]) ** 2).mean())


def test_last_value_and_linear_are_exact_where_they_should_be():
    k = torch.arange(41, dtype=torch.float32).view(1, -1, 1)
    line = traj(3.0 - 0.5 * k * torch.ones(2, 1, 3))
    lv = make_forecaster("last_value", {}, prefix_end=K, horizons=H)
    assert torch.equal(lv.forecast(line, horizons=H), line.weights[:, [K] * 3])
    lin = make_forecaster("linear", {"window": 4}, prefix_end=K, horizons=H)
    torch.testing.assert_close(lin.forecast(line, horizons=H), line.weights[:, list(H)])


def test_linear_window_longer_than_the_prefix_is_refused():
    with pytest.raises(ForecasterError, match="window 11 .*prefix_end is 10"):
        make_forecaster("linear", {"window": 11}, prefix_end=K, horizons=H)


def test_exp_fit_recovers_a_geometric_decay_on_its_grid():
    fc = make_forecaster("exp_fit", {}, prefix_end=K, horizons=H)
    r = fc.ratios()[[150, 200, 240]].float()  # exactly representable ratios
    k = torch.arange(41, dtype=torch.float32).view(1, -1, 1)
    w = 0.7 + torch.tensor([1.0, -2.0, 0.5]).view(1, 1, 3) * r.view(1, 1, 3) ** k
    data = traj(w)
    torch.testing.assert_close(fc.forecast(data, horizons=H), data.weights[:, list(H)], rtol=1e-4, atol=1e-5)


def test_exp_fit_forecasts_stay_bounded_on_a_growing_trajectory():
    k = torch.arange(41, dtype=torch.float32).view(1, -1, 1)
    data = traj(1.05**k * torch.ones(1, 1, 2))  # growth: outside the model (r < 1); must not blow up
    fc = make_forecaster("exp_fit", {"r_max": 0.99}, prefix_end=K, horizons=H)
    pred = fc.forecast(data, horizons=H)
    assert torch.isfinite(pred).all() and pred.abs().max() < 100


def test_learned_baselines_beat_last_value_on_held_out_geometric_runs():
    train, val, test = (traj(geometric(n, 4, seed=data_seed(s))) for n, s in ((40, 1), (10, 2), (20, 3)))
    base = mse(make_forecaster("last_value", {}, prefix_end=K, horizons=H), test)
    fit = {"steps": 600, "eval_every": 3, "patience": 200, "batch_size": 64}  # 3 minibatches = one pass
    # lfd2: w_h is exactly linear in (w_0, w_K) for each q, so a linear farcaster can do well on a narrow q range
    for kind, opts in (("lfd2", {"loss": "mse", "lr": 0.02}), ("introspection", {"lr": 0.01}),
                       ("wnn", {"lr": 0.005})):
        fc = make_forecaster(kind, {**fit, **opts}, prefix_end=K, horizons=H)
        log = fc.fit(train, val, rng=fit_rng(0))
        assert log[-1]["best_val_loss"] < log[0]["val_loss"], kind
        # measured 5.3-6.8x (lfd2, introspection) and 64-93x (wnn) over seeds (BENCHMARKS.md, "Test margins")
        at_least(f"beats_last_value[{kind}]", base / mse(fc, test), 2)


def test_lfd2_regulariser_penalises_late_steps_larger_than_the_first():
    fc = make_forecaster("lfd2", {"beta": 1.0}, prefix_end=K, horizons=H)
    target = torch.zeros(4, 30)
    calm = torch.zeros(4, 30)
    jumpy = calm.clone()
    jumpy[:, -1] = 1.0  # last predicted step of 1 per row; the observed first steps are 0.1 per row
    early = (torch.full((4,), 0.1),)
    base = fc._loss(jumpy, target, (torch.full((4,), 10.0),))  # early steps larger: no penalty
    assert float(fc._loss(calm, target, early)) == 0.0
    torch.testing.assert_close(fc._loss(jumpy, target, early), base + (4 * 1.0 - 4 * 0.1))


def test_wnn_refuses_a_history_longer_than_the_prefix():
    with pytest.raises(ForecasterError, match="5 values 3 records apart need a prefix of 13 records"):
        make_forecaster("wnn", {"stride": 3}, prefix_end=K, horizons=H)


def test_fit_without_records_up_to_the_last_horizon_is_refused():
    short = traj(geometric(4, 2, seed=0, t=25))
    fc = make_forecaster("introspection", {}, prefix_end=K, horizons=H)
    with pytest.raises(ForecasterError, match="have 25 records; fitting horizons up to 40 needs 41"):
        fc.fit(short, short, rng=torch.Generator().manual_seed(0))
