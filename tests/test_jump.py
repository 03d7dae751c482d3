"""gfm.jump_ahead: a rejected jump leaves the run exactly as plain training, an accepted one lowers the held-out
loss and is counted, the window is what gfm.record stores, and every bad argument is refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gfm
from gfm.forecasters import Forecaster, TrainedForecaster, TrainedOn
from gfm.recording.jump import JumpError

pytestmark = pytest.mark.usefixtures("one_thread")

D, N = 5, 128


class FarAway(Forecaster):
    """Garbage: the last weights plus 1000 at every horizon, or NaN where ``nan`` (never worth a jump)."""

    name, neural, closed_form = "far_away", False, True

    def __init__(self, *, nan: bool = False, **kw):
        super().__init__(**kw)
        self.nan, self.prefixes = nan, []

    def _forecast(self, prefix, horizons):
        self.prefixes.append(prefix)
        out = prefix.weights[:, -1:].expand(-1, len(horizons), -1) + 1e3
        return torch.full_like(out, math.nan) if self.nan else out


class Optimum(Forecaster):
    """The least-squares optimum of the training data (weight then bias, ``nn.Linear``'s order) at every
    horizon: the place a converging run is going."""

    name, neural, closed_form = "optimum", False, True

    def __init__(self, x, y, **kw):
        super().__init__(**kw)
        ones = torch.ones(len(x), 1)
        self.w = torch.linalg.lstsq(torch.cat([x, ones], 1), y).solution.reshape(-1)

    def _forecast(self, prefix, horizons):
        return self.w.expand(prefix.n_runs, len(horizons), -1).clone()


class Fitted(Forecaster):
    """A forecaster that learned from runs (not closed form): what it saved of them is checked."""

    name, neural, closed_form = "fitted_stub", False, False

    def __init__(self, extra, **kw):
        super().__init__(**kw)
        self.extra = dict(extra)

    def _forecast(self, prefix, horizons):
        return prefix.weights[:, -1:].expand(-1, len(horizons), -1).clone()


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    w = torch.randn(D, 1, generator=g)
    return x, x @ w + 0.01 * torch.randn(N, 1, generator=g), xv, xv @ w + 0.01 * torch.randn(N, 1, generator=g)


def _setup(opt: str = "momentum", dropout: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Dropout(0.1), nn.Linear(D, 1)) if dropout else nn.Sequential(nn.Linear(D, 1))
    if opt == "adam":
        return model, torch.optim.Adam(model.parameters(), lr=0.01)
    return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)


def _holdout(model, xv, yv, *, leave_eval: bool = False):
    def loss():
        model.eval()  # a careless holdout_loss: leaves the model in eval mode unless the helper restores it
        with torch.no_grad():
            value = float(((model(xv) - yv) ** 2).mean()) + 0.0 * float(torch.rand(()))  # draws from torch's RNG
        if not leave_eval:
            model.train()
        return value
    return loss


def _train(model, opt, x, y, steps: int, jumper=None, on_step=None):
    for _ in range(steps):
        idx = torch.randperm(N)[:32]  # the global RNG picks the minibatch: an attempt must not move it
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if jumper is not None:
            before = jumper.holdout_loss() if on_step is not None else None
            gained = jumper.step()
            if on_step is not None:
                on_step(before, gained)


def test_rejected_jumps_leave_the_run_bit_for_bit_as_plain_training():
    x, y, xv, yv = _data()
    model, opt = _setup(dropout=True)
    _train(model, opt, x, y, 60)
    plain = [p.detach().clone() for p in model.parameters()]
    plain_state = [s["momentum_buffer"].clone() for s in opt.state.values()]
    for nan in (False, True):
        model, opt = _setup(dropout=True)
        fc = FarAway(nan=nan, prefix_end=4, horizons=[8, 12])
        jumper = gfm.jump_ahead(model, opt, fc, every=10, horizons=[8, 12],
                                holdout_loss=_holdout(model, xv, yv, leave_eval=True))
        with jumper:
            _train(model, opt, x, y, 60, jumper)
        assert (jumper.stats.attempts, jumper.stats.rejected, jumper.stats.accepted) == (6, 6, 0)  # steps 10, 20, ..., 60
        assert jumper.stats.jumped_steps == 0 and jumper.virtual_steps == 60
        assert model.training and model[0].training  # the held-out check's eval() was undone
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain)), nan
        assert all(torch.equal(s["momentum_buffer"], b) for s, b in zip(opt.state.values(), plain_state))


def test_a_forecast_of_the_optimum_is_taken_and_lowers_the_held_out_loss():
    x, y, xv, yv = _data()
    model, opt = _setup()
    hl = _holdout(model, xv, yv)
    jumps = []
    with gfm.jump_ahead(model, opt, Optimum(x, y, prefix_end=3, horizons=[13, 23]), every=5, horizons=[13, 23],
                        holdout_loss=hl) as jumper:
        _train(model, opt, x, y, 5, jumper, on_step=lambda before, gained: gained and jumps.append(
            (before, hl(), gained)))
    assert len(jumps) == 1  # at step 5, the first full window; the next window is not full before step 8
    before, after, gained = jumps[0]
    assert after <= before and after < 1e-3 < before
    assert gained == 10  # of two equal candidates the first is taken: horizon 13, 10 records past prefix_end 3
    s = jumper.stats
    assert (s.attempts, s.accepted, s.rejected, s.jumped_steps, jumper.virtual_steps) == (1, 1, 0, 10, 15)
    assert s.forecast_seconds > 0 and s.holdout_seconds > 0 and s.seconds >= s.forecast_seconds + s.holdout_seconds
    assert s.as_dict()["accepted"] == 1


def test_the_window_is_what_gfm_record_stores(tmp_path: Path):
    x, y, xv, yv = _data()
    model, opt = _setup("adam")
    with gfm.record(tmp_path / "run.zarr", model, opt, every=2) as rec:
        for _ in range(10):
            _train(model, opt, x, y, 1)
            rec.step()
    ts = gfm.open_trajectories(tmp_path / "run.zarr")
    model, opt = _setup("adam")
    fc = FarAway(prefix_end=3, horizons=[5])
    with gfm.jump_ahead(model, opt, fc, every=10, horizons=[5], holdout_loss=_holdout(model, xv, yv),
                        record_every=2) as jumper:
        _train(model, opt, x, y, 10, jumper)
    (prefix,) = fc.prefixes  # at step 10: records 2..5 (steps 4..10) relabelled 0..3
    assert torch.equal(prefix.weights[0], torch.from_numpy(ts.weights[0, 2:6]))
    assert torch.equal(prefix.lr[0], torch.from_numpy(ts.lr[0, 2:6]))
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(prefix.states[name][0], torch.from_numpy(ts.state(name)[0, 2:6])), name
    assert prefix.optimizer == "adam" and prefix.record_every == 2 and set(prefix.hyper) >= {"lr", "beta1", "eps"}


@pytest.mark.parametrize("reset", [True, False])
def test_state_after_jump_reset_zeroes_the_optimizer_state_and_keep_keeps_it(reset):
    x, y, xv, yv = _data()
    model, opt = _setup("adam")
    jumper = gfm.jump_ahead(model, opt, Optimum(x, y, prefix_end=2, horizons=[6]), every=4, horizons=[6],
                            holdout_loss=_holdout(model, xv, yv), state_after_jump="reset" if reset else "keep")
    _train(model, opt, x, y, 3, jumper)
    _train(model, opt, x, y, 1)  # step 4, up to opt.step()
    states = lambda: [t for s in opt.state.values() for t in s.values()]  # noqa: E731
    before = [t.clone() for t in states()]
    assert jumper.step() == 4 and jumper.stats.accepted == 1  # horizon 6, 4 records past prefix_end 2
    if reset:
        assert all(not t.any() for t in states())  # exp_avg, exp_avg_sq and the step count all zero
    else:
        assert all(t.any() for t in states()) and all(torch.equal(a, b) for a, b in zip(states(), before))
    _train(model, opt, x, y, 3)  # Adam goes on from the zeroed state (its bias correction restarts at step 1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(opt.state[next(model.parameters())]["step"]) == (3 if reset else 7)


def _refusal(**change):
    """jump_ahead's keywords with ``change`` applied, on a momentum-SGD Linear(5, 1) (6 parameters)."""
    x, y, xv, yv = _data()
    model, opt = _setup()
    kw = {"forecaster": FarAway(prefix_end=2, horizons=[4, 6]), "every": 4, "horizons": [4],
          "holdout_loss": _holdout(model, xv, yv), "optimizer": opt} | change
    with pytest.raises(JumpError) as err:
        gfm.jump_ahead(model, kw.pop("optimizer"), kw.pop("forecaster"), **kw)
    return str(err.value)


def _trained(**facts):
    return TrainedForecaster(Fitted({}, prefix_end=2, horizons=[4]), Path("m"), TrainedOn(**facts))


@pytest.mark.parametrize("change, words", [
    ({"state_after_jump": "zero"}, ["state_after_jump='zero'", "'keep'", "'reset'"]),
    ({"horizons": [5]}, ["horizons=[5]", "fitted for [4, 6]"]),
    ({"horizons": []}, ["horizons=[]", "none given"]),
    ({"horizons": [4.5]}, ["horizons=[4.5]", "record indices"]),
    ({"every": 3, "record_every": 2}, ["every=3", "multiple of record_every (2)"]),
    ({"every": 0}, ["every=0", "integer >= 1"]),
    ({"holdout_loss": 1.5}, ["holdout_loss", "callable"]),
    ({"forecaster": "linear"}, ["forecaster: got str", "fitted forecaster"]),
    ({"optimizer": "adagrad"}, ["optimizer:", "Adagrad", "not supported"]),
    ({"forecaster": Fitted({"optimizer": "adam", "steps": 40, "n_params": 6}, prefix_end=2, horizons=[4])},
     ["forecaster:", "optimizer: the run uses momentum, the model was fitted on adam runs"]),
    ({"forecaster": Fitted({"optimizer": "momentum", "steps": 40, "n_params": 7}, prefix_end=2, horizons=[4])},
     ["forecaster:", "parameters: the model has 6, the forecaster's training runs 7"]),
    ({"forecaster": Fitted({"optimizer": "momentum", "n_params": 6}, prefix_end=2, horizons=[4])},
     ["forecaster:", "does not know the length of the runs", "store="]),
    ({"forecaster": Fitted({"record_every": 1, "steps": 40}, prefix_end=2, horizons=[4]), "record_every": 2},
     ["record_every=2", "recorded every 1 steps"]),
    ({"forecaster": _trained(optimizer="adam", record_every=1, steps=40, n_params=6)},
     ["forecaster:", "optimizer: the run uses momentum, the model was fitted on adam runs"]),
    ({"forecaster": _trained(optimizer="momentum", record_every=1, steps=40, n_params=9)},
     ["forecaster:", "parameters: the run has 6, the model's training runs 9"]),
])
def test_bad_arguments_are_refused_by_name(change, words):
    if change.get("optimizer") == "adagrad":
        change["optimizer"] = torch.optim.Adagrad(nn.Linear(D, 1).parameters())
    message = _refusal(**change)
    assert all(w in message for w in words), message
    assert "\n" not in message


def test_a_non_finite_held_out_loss_of_the_current_weights_is_refused_and_nothing_moves():
    x, y, xv, yv = _data()
    model, opt = _setup()
    jumper = gfm.jump_ahead(model, opt, Optimum(x, y, prefix_end=2, horizons=[4]), every=3, horizons=[4],
                            holdout_loss=lambda: float("nan"))
    _train(model, opt, x, y, 2, jumper=None)
    jumper.step(), jumper.step()
    _train(model, opt, x, y, 1)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(JumpError, match=r"holdout_loss\(\) returned nan at the current weights \(step 3\)"):
        jumper.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights))
    with jumper:
        pass
    with pytest.raises(JumpError, match="after its `with` block ended"):
        jumper.step()
