"""Forecast your own training run with a model the pipeline trained.

    python examples/forecast_my_run.py               # gfm_function's fit of dataset seed 1 (see DEFAULT_MODELS)
    python examples/forecast_my_run.py --model data/models/mlp_regression/sgd/lstm/3 --store runs/my_run.zarr

A user loop (a 1 -> 10 -> 1 ReLU MLP fitting y = a x with SGD, minibatches from a shuffling DataLoader: the
kind of run the default study's mlp_regression-sgd store holds) is recorded with gfm.record up to the model's
last horizon. The model reads records 0..prefix_end only and forecasts the weights at its horizons; the rest of
the recording is the truth the forecast is compared with, beside last_value (staying at record prefix_end).
The model's network, optimizer and record spacing are checked against the run first (gfm.load_forecaster
finds the store it was trained on beside it), so a model of another network or optimizer is refused.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gfm

ROOT = Path(__file__).resolve().parents[1]
# Without --model: the first of these that exists, i.e. what `make run` (the default study) or
# `make run PRESET=quick` (build/quick/) leaves behind; both train gfm_function on mlp_regression-sgd.
DEFAULT_MODELS = [ROOT / "data/models/mlp_regression/sgd/gfm_function/1",
                  ROOT / "build/quick/data/models/mlp_regression/sgd/gfm_function/1"]


def default_model() -> Path:
    for path in DEFAULT_MODELS:
        if (path / "config.json").is_file():
            return path
    print("error: no trained model found at " + " or ".join(str(p) for p in DEFAULT_MODELS)
          + "; run `make run PRESET=quick` (about 3 minutes) or `make run` first, or pass --model DIR",
          file=sys.stderr)
    raise SystemExit(2)


def user_run(store: str, *, hidden: int, samples: int, batch_size: int, lr: float, steps: int, every: int,
             seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Train a fresh network for ``steps`` SGD steps, recording it every ``every`` steps into ``store``.

    Returns:
        The trained network and its data (x, y).
    """
    torch.manual_seed(seed)
    x = torch.randn(samples, 1)
    y = x * torch.randn(())
    net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    done = 0
    with gfm.record(store, net, opt, every=every, overwrite=True) as rec:   # record 0 = the initial weights
        while done < steps:
            for xb, yb in loader:
                loss = ((net(xb) - yb) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss)
                done += 1
                if done == steps:
                    break
    return net, x, y


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model directory of the train stage (one seed); default: the first of "
                    "DEFAULT_MODELS that exists")
    ap.add_argument("--store", default="runs/my_run.zarr", help="where to record the run")
    ap.add_argument("--hidden", type=int, default=10, help="hidden width (the model's training network: 10)")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    fc = gfm.load_forecaster(args.model or default_model())
    every = fc.trained_on.record_every or 1
    K, horizons = fc.prefix_end, fc.horizons
    print(f"{fc}\n  reads records 0..{K} (steps 0..{K * every}), forecasts records {list(horizons)}")
    net, x, y = user_run(args.store, hidden=args.hidden, samples=args.samples, batch_size=args.batch_size, lr=args.lr,
                   steps=horizons[-1] * every, every=every, seed=args.seed)

    out = fc.forecast(args.store)                 # (run, horizon, param); only records 0..K are read
    ts = gfm.open_trajectories(args.store)
    truth = ts.weights[0][list(horizons)]         # where the run really went
    stay = ts.weights[0, K]
    mse = ((out.weights[0] - truth) ** 2).mean(axis=1)
    mse_stay = ((stay - truth) ** 2).mean(axis=1)
    print(f"{'step':>6} {'forecast MSE':>13} {'last_value MSE':>15}")
    for step, a, b in zip(out.steps, mse, mse_stay):
        print(f"{step:>6} {a:>13.3g} {b:>15.3g}")
    ratio = mse[-1] / mse_stay[-1]
    print(f"at step {out.steps[-1]} the forecast's weight MSE is {ratio:.3g}x staying at step {K * every}'s: "
          + ("better than stopping there" if ratio < 1 else "NOT better than stopping there on this run"))

    # the same run as arrays (what a loop that keeps its own weights would pass): SGD has no state to give
    run = gfm.prefix_from_arrays(ts.weights[0, : K + 1], optimizer="sgd", lr=args.lr, record_every=every,
                                 layout=net)
    same = fc.forecast(run)
    print("forecast from arrays == forecast from the store:", np.array_equal(same.weights, out.weights))

    probe = copy.deepcopy(net)  # the forecast as a network: its loss on the run's own data

    def loss_at(load) -> float:
        load(probe)
        with torch.no_grad():
            return float(((probe(x) - y) ** 2).mean())

    losses = {"forecast": loss_at(lambda m: out.load_into(m, horizon=horizons[-1])),
              "run": loss_at(lambda m: ts.load_into(m, 0, horizons[-1])),
              "prefix_end": loss_at(lambda m: ts.load_into(m, 0, K))}
    print(f"training loss at step {out.steps[-1]}: forecast weights {losses['forecast']:.4g}, the run's own "
          f"{losses['run']:.4g} (at step {K * every}: {losses['prefix_end']:.4g})")
    return {"forecast": out, "truth": truth, "mse": mse, "mse_last_value": mse_stay, "from_arrays": same,
            "losses": losses}


if __name__ == "__main__":
    main()
