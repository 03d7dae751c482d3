"""gfm.record: a user's own training loop written as a trajectory store the pipeline reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import gfm
from gfm.base.errors import StoreNotFoundError
from gfm.config import SplitConfig
from gfm.core.optimizers import HYPER_NAMES, STATE_NAMES, update
from gfm.forecasters import Trajectories, make_forecaster
from gfm.recording.capture import RecordError
from gfm.stages.split import make_split
from margins import THREADS, at_least, fit_rng


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: on a small shared CPU, OpenMP threads contending with other jobs made these tests many
    times slower (BENCHMARKS.md, "Test suite")."""
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)  # GFM_TEST_THREADS: tests/margins.py
    yield
    torch.set_num_threads(n)


class UserNet(nn.Module):
    """A network the project does not define: LayerNorm, tanh, a skip connection, an unused-by-default name."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(2, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 1)

    def forward(self, x):
        h = self.embed(x)
        return self.head(torch.tanh(self.norm(h)) + h)


def toy_data(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 2, generator=g)
    return x, x @ torch.randn(2, 1, generator=g)


def train_loop(model, opt, x, y, steps, rec=None, sched=None, snapshots=None):
    """A plain user loop: 4 minibatches of 16 per epoch."""
    for k in range(steps):
        b = slice(k % 4 * 16, (k % 4 + 1) * 16)
        loss = ((model(x[b]) - y[b]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if rec is not None:
            rec.step(loss)
        if snapshots is not None:
            snapshots.append((torch.cat([p.detach().flatten() for p in model.parameters()]).clone(), float(loss.detach()),
                              opt.param_groups[0]["lr"],
                              torch.cat([opt.state[p]["exp_avg"].flatten() for p in model.parameters()]).clone()
                              if isinstance(opt, torch.optim.Adam) else None))


def test_records_weights_state_lr_and_loss_exactly(tmp_path):
    torch.manual_seed(0)
    x, y = toy_data(0)
    model = UserNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=6, gamma=0.5)
    w0 = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
    snaps = []
    with gfm.record(tmp_path / "u.zarr", model, opt, every=3, chunk_steps=4) as rec:
        train_loop(model, opt, x, y, 30, rec=rec, sched=sched, snapshots=snaps)
    ts = gfm.open_trajectories(tmp_path / "u.zarr")
    assert (ts.n_runs, ts.n_records, ts.n_params) == (1, 11, (2 * 6 + 6) + (6 + 6) + (6 + 1))
    assert ts.optimizer["name"] == "adam" and ts.optimizer["beta1"] == pytest.approx(0.8)
    assert ts.state_names == ("exp_avg", "exp_avg_sq") and ts.record_every == 3
    assert ts.attrs["task"]["steps"] == 30
    W = ts.weights[0]
    np.testing.assert_array_equal(W[0], w0.numpy())
    for j in range(1, 11):  # record j = after 3 j steps
        w, _, lr, m = snaps[3 * j - 1]
        np.testing.assert_array_equal(W[j], w.numpy())
        np.testing.assert_array_equal(ts.state("exp_avg")[0, j], m.numpy())
        assert ts.lr[0, j] == pytest.approx(lr)  # the lr the next update uses (StepLR halves it every 6 steps)
    assert ts.lr[0, 0] == pytest.approx(0.01) and ts.lr[0, 10] == pytest.approx(0.01 * 0.5**5)
    # the loss of a record is the loss of the update leaving it; the last one falls back to the last step's
    np.testing.assert_allclose(ts.loss[0, :10], [snaps[3 * j][1] for j in range(10)], rtol=1e-6)
    assert ts.loss[0, 10] == pytest.approx(snaps[-1][1]) and ts.attrs["loss_source"] == "step+last_step_loss"
    np.testing.assert_array_equal(ts.final()[0][0], W[-1])
    # written in whole chunks of 4 records: 11 records -> 3 chunk files per array, one run
    assert sorted(p.name for p in (tmp_path / "u.zarr" / "weights" / "c" / "0").iterdir()) == ["0", "1", "2"]
    # any record loads back into a fresh network
    net = ts.load_into(UserNet(), run=0, step=10)
    assert torch.equal(torch.cat([p.detach().flatten() for p in net.parameters()]), torch.from_numpy(W[10]))


def test_evaluate_callable_gives_full_loss_at_every_record(tmp_path):
    torch.manual_seed(1)
    x, y = toy_data(1)
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def full_loss():
        with torch.no_grad():
            return float(((model(x) - y) ** 2).mean())

    with gfm.record(tmp_path / "e.zarr", model, opt, evaluate=full_loss) as rec:
        train_loop(model, opt, x, y, 12, rec=rec)
    ts = gfm.open_trajectories(tmp_path / "e.zarr")
    assert ts.attrs["loss_source"] == "evaluate" and ts.state_names == ()
    for j in (0, 5, 12):
        ts.load_into(model, 0, j)
        assert ts.loss[0, j] == pytest.approx(full_loss(), rel=1e-6)
    assert ts.loss[0, -1] < ts.loss[0, 0]


def test_user_loop_runs_train_a_gfm_that_forecasts_a_held_out_run(tmp_path):
    """The issue's test: record 24 runs of a user model (momentum SGD), split them like any store, fit GFM on
    the train runs, forecast the test runs from their first 8 records."""
    path = tmp_path / "runs.zarr"
    for r in range(24):
        torch.manual_seed(100 + r)
        x, y = toy_data(r)
        model = UserNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        with gfm.record(path, model, opt, mode="w" if r == 0 else "a", dataset_seed=r % 2) as rec:
            train_loop(model, opt, x, y, 40, rec=rec)
    ts = gfm.open_trajectories(path)
    assert ts.n_runs == 24 and ts.n_records == 41 and ts.state_names == ("momentum_buffer",)
    runs = ts.runs
    assert list(runs["index"][:4]) == [0, 0, 1, 1] and not runs["diverged"].any()
    assert ts.attrs["dataset_seeds"] == [0, 1]
    # momentum buffer really is torch's: w_{k+1} = w_k - lr * b_{k+1} (no weight decay)
    W, B = ts.weights[5], ts.state("momentum_buffer")[5]
    np.testing.assert_allclose(W[1:] - W[:-1], -0.02 * B[1:], atol=1e-6)

    split = make_split(runs["dataset_seed"], runs["index"], runs["diverged"], SplitConfig())
    train = [r for d in split["datasets"].values() for r in d["train"]]
    val = [r for d in split["datasets"].values() for r in d["val"]]
    test = [r for d in split["datasets"].values() for r in d["test"]]
    assert len(train) == 12 and len(test) == 6
    tr, va, te = (Trajectories.from_store(ts, ids) for ids in (train, val, test))
    fc = make_forecaster("gfm", {"width": 16, "steps": 80, "eval_every": 40}, prefix_end=8,
                         horizons=[16, 24, 40])
    fc.fit(tr, va, rng=fit_rng(0))
    pred = fc.forecast(te.prefix(8), horizons=[40])
    assert pred.shape == (6, 1, ts.n_params) and torch.isfinite(pred).all()
    mse = float(((pred[:, 0] - te.weights[:, 40]) ** 2).mean())
    lin = make_forecaster("linear", {"window": 1}, prefix_end=8, horizons=[40])
    mse_lin = float(((lin.forecast(te.prefix(8), horizons=[40])[:, 0] - te.weights[:, 40]) ** 2).mean())
    prefix_gap = float(((te.weights[:, 8] - te.weights[:, 40]) ** 2).mean())
    # a trained field: far better than extrapolating the momentum-driven slope, and not exploding
    at_least("record_gfm_vs_linear", mse_lin / mse, 3)
    assert mse < 3 * prefix_gap, (mse, prefix_gap)


@pytest.mark.parametrize("make,name", [
    (lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), "adamw"),
    (lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True), "adamw"),
    (lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1), "adam"),
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), "nesterov"),
    (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01), "momentum"),
], ids=["AdamW", "Adam-decoupled", "Adam", "SGD-nesterov", "SGD-momentum"])
def test_each_torch_optimizer_is_stored_under_the_rule_that_replays_it(tmp_path, make, name):
    """The stored name and hyper-parameters drive gfm.core.optimizers.update through the recorded run: from each
    stored record and state, with the gradient torch used, the next stored record and state come out."""
    torch.manual_seed(2)
    x, y = toy_data(2)
    model = UserNet()
    opt = make(model.parameters())
    grads = []
    with gfm.record(tmp_path / "o.zarr", model, opt) as rec:
        for k in range(12):
            b = slice(k % 4 * 16, (k % 4 + 1) * 16)
            loss = ((model(x[b]) - y[b]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]).clone())
            opt.step()
            rec.step(loss)
    ts = gfm.open_trajectories(tmp_path / "o.zarr")
    assert ts.optimizer["name"] == name and ts.state_names == STATE_NAMES[name]
    assert ts.attrs["store"] == f"recorded-{name}"
    hp = {k: float(ts.hyper[k][0]) for k in (*HYPER_NAMES[name], "eps")}
    assert hp["weight_decay"] > 0
    W = torch.from_numpy(ts.weights[0])
    S = {s: torch.from_numpy(ts.state(s)[0]) for s in ts.state_names}
    for n, g in enumerate(grads, start=1):
        w, state = update(name, W[n - 1], g, {s: v[n - 1] for s, v in S.items()}, hp, n)
        torch.testing.assert_close(w, W[n], rtol=0, atol=1e-6)
        for s, v in state.items():
            torch.testing.assert_close(v, S[s][n], rtol=0, atol=1e-6)
    other = {"adamw": "adam", "adam": "adamw", "nesterov": "momentum", "momentum": "nesterov"}[name]
    w, _ = update(other, W[0], grads[0], {s: v[0] for s, v in S.items()}, hp, 1)
    assert (w - W[1]).abs().max() > 1e-4  # the sibling rule would not replay it: the names matter


def test_refuses_what_it_cannot_record(tmp_path):
    model = UserNet()
    with pytest.raises(RecordError, match="amsgrad"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.AdamW(model.parameters(), amsgrad=True))
    with pytest.raises(RecordError, match="dampening"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                                               dampening=0.5))
    with pytest.raises(RecordError, match="centered"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.RMSprop(model.parameters(), centered=True))
    with pytest.raises(RecordError, match="Adagrad is not supported.*AdamW"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.Adagrad(model.parameters()))
    groups = [{"params": [model.embed.weight], "decoupled_weight_decay": True},
              {"params": [p for n, p in model.named_parameters() if n != "embed.weight"]}]
    with pytest.raises(RecordError, match="decoupled_weight_decay"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.Adam(groups, weight_decay=0.1))
    other = nn.Linear(2, 2)
    with pytest.raises(RecordError, match="not parameters of the model"):
        gfm.record(tmp_path / "a.zarr", model, torch.optim.SGD([*model.parameters(), *other.parameters()], lr=0.1))
    with pytest.raises(RecordError, match="no store to add"):
        gfm.record(tmp_path / "none.zarr", model, torch.optim.SGD(model.parameters(), lr=0.1), mode="a")


def test_crash_inside_the_block_leaves_no_finished_store(tmp_path):
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = toy_data(0)
    with pytest.raises(RuntimeError, match="boom"):
        with gfm.record(tmp_path / "c.zarr", model, opt, chunk_steps=2) as rec:
            train_loop(model, opt, x, y, 5, rec=rec)
            raise RuntimeError("boom")
    assert (tmp_path / "c.zarr.partial").is_dir() and not (tmp_path / "c.zarr").exists()
    with pytest.raises(StoreNotFoundError, match="partial"):
        gfm.open_trajectories(tmp_path / "c.zarr")


def test_append_refuses_a_mismatched_run_and_keeps_the_store(tmp_path):
    x, y = toy_data(0)
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gfm.record(tmp_path / "s.zarr", model, opt) as rec:
        train_loop(model, opt, x, y, 8, rec=rec)
    model = UserNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(RecordError, match="number of records"):
        with gfm.record(tmp_path / "s.zarr", model, opt, mode="a") as rec:
            train_loop(model, opt, x, y, 6, rec=rec)
    wide = nn.Sequential(nn.Linear(2, 9), nn.Tanh(), nn.Linear(9, 1))
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    with pytest.raises(RecordError, match="parameter layout"):
        with gfm.record(tmp_path / "s.zarr", wide, opt, mode="a") as rec:
            train_loop(wide, opt, x, y, 8, rec=rec)
    ts = gfm.open_trajectories(tmp_path / "s.zarr")  # still complete, still one run, no leftovers
    assert ts.n_runs == 1 and json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]
