"""Sequence baselines and the per-parameter features they read."""

from __future__ import annotations

import pytest
import torch

from gfm.forecasters import ForecasterError, make_forecaster
from gfm.forecasters.features import (
    SEQUENCE_FEATURES,
    fit_scales,
    from_rows,
    residual_targets,
    sequence_features,
    to_rows,
)
from gfm.forecasters.fitting import val_scores
from margins import THREADS, at_least, data_seed, fit_rng
from test_classical import H, K, geometric, mse, traj


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # GFM_TEST_THREADS: tests/margins.py
    yield
    torch.set_num_threads(before)


def test_rows_round_trip_is_run_major():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)  # (run, record, param)
    rows = to_rows(x)
    assert rows.shape == (8, 3) and torch.equal(rows[1 * 4 + 2], x[1, :, 2])
    assert torch.equal(from_rows(rows, 2), x)


def test_features_use_one_global_scale_and_the_last_observed_value():
    data = traj(geometric(3, 5, seed=0))
    scales = fit_scales(data, K, H)
    assert scales["weight"] == pytest.approx(float(data.weights[:, : K + 1].pow(2).mean().sqrt()), rel=1e-5)
    x = sequence_features(data.prefix(K), scales)
    assert x.shape == (15, K + 1, len(SEQUENCE_FEATURES))
    w = to_rows(data.weights[:, : K + 1])
    torch.testing.assert_close(x[..., 0], w / scales["weight"])
    assert torch.equal(x[:, -1, 1], torch.zeros(15))  # displacement from w_K is 0 at K
    assert torch.equal(x[:, 0, 2], torch.zeros(15))  # no step before record 0
    torch.testing.assert_close(x[0, :, 3], torch.arange(K + 1) / 40)
    assert torch.equal(x[..., 4], torch.zeros(15, K + 1))  # constant lr: the standardised log lr is 0
    y = residual_targets(data, K, H, scales)
    assert y.shape == (15, len(H))
    for j in range(len(H)):  # each horizon's targets have unit RMS on the train set
        assert float(y[:, j].pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("kind,opts", [("lstm", {"hidden": 16}), ("transformer", {"d_model": 16, "heads": 2})])
def test_sequence_models_beat_last_value_on_held_out_geometric_runs(kind, opts):
    train, val, test = (traj(geometric(n, 4, seed=data_seed(s))) for n, s in ((40, 1), (10, 2), (20, 3)))
    base = mse(make_forecaster("last_value", {}, prefix_end=K, horizons=H), test)
    fc = make_forecaster(kind, {**opts, "lr": 0.01, "steps": 180, "eval_every": 3, "patience": 60,
                                "batch_size": 64}, prefix_end=K, horizons=H)
    fc.fit(train, val, rng=fit_rng(0))
    at_least(f"beats_last_value[{kind}]", base / mse(fc, test), 5)


def test_early_stopping_keeps_the_best_validation_state():
    train, val = traj(geometric(20, 3, seed=1)), traj(geometric(5, 3, seed=2))
    fc = make_forecaster("lstm", {"hidden": 8, "lr": 0.05, "steps": 30, "patience": 3, "eval_every": 1,
                                  "batch_size": 16}, prefix_end=K, horizons=H)
    log = fc.fit(train, val, rng=torch.Generator().manual_seed(0))
    best = min(r["val_loss"] for r in log)
    assert log[-1]["best_val_loss"] == best
    # the kept state scores the best validation loss, not the last epoch's
    assert val_scores(fc, val)["val_loss"] == pytest.approx(best, rel=1e-4)
    if len(log) < 30:  # stopped early: exactly `patience` epochs after the best one
        assert [r["val_loss"] for r in log].index(best) == len(log) - 1 - 3


def test_transformer_heads_must_divide_d_model():
    with pytest.raises(ForecasterError, match="heads: got 3; expected a divisor of d_model"):
        make_forecaster("transformer", {"d_model": 16, "heads": 3}, prefix_end=K, horizons=H)
