"""Jump ahead in your own PyTorch training loop with gfm.jump_ahead: record a few runs of the loop, fit two
forecasters on them, then train one new run plain and one with jumps per forecaster.

    python examples/jump_my_loop.py          # writes runs/jump_my_loop.zarr (its time: README)

The loop: a Tanh MLP (8 -> 32 -> 32 -> 1) fitted to a smooth nonlinear target with MSE, full batch on 4,096
samples, SGD with momentum. Three disjoint sets are drawn: the training samples, the ``check`` samples that
decide whether a jump is kept (``holdout_loss``), and the ``test`` samples on which the runs are compared, so
the comparison is not made on the data that chose the jumps.

For each new run it prints the wall-clock seconds of the training loop (jump attempts included, the per-step
test-loss monitoring not) to first reach the plain run's final test loss, the jumps accepted of those tried,
and the final test loss after the same number of optimizer steps; then which one wins, whichever it is.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

import gfm
from gfm.forecasters import Trajectories, make_forecaster

DIM, WIDTH = 8, 32


def make_data(seed: int = 0, n: int = 4096) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """y = sin(x.a) + 0.5 tanh(x.b) + noise: training, check (decides jumps) and test sets, disjoint."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 2 * 1024, DIM, generator=g)
    a, b = torch.randn(DIM, generator=g) / math.sqrt(DIM), torch.randn(DIM, generator=g)
    y = torch.sin(2 * x @ a) + 0.5 * torch.tanh(x @ b) + 0.05 * torch.randn(len(x), generator=g)
    return {"train": (x[:n], y[:n]), "check": (x[n : n + 1024], y[n : n + 1024]), "test": (x[n + 1024 :], y[n + 1024 :])}


def make_run(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """One run of the loop: its own initialisation, the same data and hyper-parameters."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(DIM, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def mse(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    with torch.no_grad():
        return float(((model(data[0]).squeeze(-1) - data[1]) ** 2).mean())


def train(model, opt, data, steps: int, jumper=None) -> tuple[list[float], list[float]]:
    """``steps`` full-batch steps. Returns the loop's wall-clock seconds and the test loss after each step
    (index 0: before training); the test loss is monitoring, outside the clock."""
    x, y = data["train"]
    seconds, test, clock = [0.0], [mse(model, data["test"])], 0.0
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if jumper is not None:
            jumper.step()
        clock += time.perf_counter() - t0
        seconds.append(clock)
        test.append(mse(model, data["test"]))
    return seconds, test


def record(path: str, data, n_runs: int, steps: int) -> gfm.store.reader.TrajectoryStore:
    """``n_runs`` plain runs of the loop into one store (gfm.record_runs), one record per optimizer step."""
    with gfm.record_runs(path, overwrite=True) as runs:
        for r in range(n_runs):
            model, opt = make_run(seed=r)
            with runs.record(model, opt, dataset_seed=0, loss="mse") as rec:
                x, y = data["train"]
                for _ in range(steps):
                    loss = ((model(x).squeeze(-1) - y) ** 2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    rec.step(loss)
    return gfm.open_trajectories(path)


def main(path: str = "runs/jump_my_loop.zarr", n_runs: int = 12, record_steps: int = 120, steps: int = 400,
         prefix_end: int = 10, horizons: tuple[int, ...] = (40, 80, 120), every: int = 20,
         fit_steps: int = 150) -> dict[str, dict[str, float]]:
    """Record ``n_runs`` runs of ``record_steps`` steps, fit ``gfm_function`` and ``linear`` (records
    0..``prefix_end`` -> ``horizons``), then train a new run for ``steps`` steps plain and with jumps every
    ``every`` steps.

    Returns:
        Per loop (``plain``, ``gfm_function``, ``linear``): ``seconds_to_target`` (inf: never reached),
        ``loop_seconds``, ``final_test_loss``, ``accepted``, ``attempts``, ``jumped_steps``, ``jump_seconds``
        and ``forecast_seconds`` (the helper's time, from ``jumper.stats``).
    """
    torch.set_num_threads(1)
    data = make_data()
    t0 = time.perf_counter()
    ts = record(path, data, n_runs, record_steps)
    n_fit = n_runs * 3 // 4
    fit_runs, val_runs = Trajectories.from_store(ts, range(n_fit)), Trajectories.from_store(ts, range(n_fit, n_runs))
    forecasters = {
        # the best forecaster of plain-MLP runs in this project: it rebuilds the network's function (Tanh, from
        # the nn.Sequential; MSE, from loss="mse") and replays the optimizer on a learned surrogate gradient
        "gfm_function": make_forecaster("gfm_function", {"steps": fit_steps, "eval_every": 50, "samples": 0},
                                        prefix_end=prefix_end, horizons=list(horizons)),
        # the cheap one: extrapolate the slope over the last 5 records
        "linear": make_forecaster("linear", {"window": 5}, prefix_end=prefix_end, horizons=list(horizons)),
    }
    for fc in forecasters.values():
        fc.fit(fit_runs, val_runs, rng=torch.Generator().manual_seed(0))
    print(f"recorded {ts.n_runs} runs x {record_steps} steps ({ts.n_params} params) and fitted "
          f"{', '.join(forecasters)} in {time.perf_counter() - t0:.1f} s")

    new_seed = n_runs  # a run none of the forecasters saw
    results, curves = {}, {}
    model, opt = make_run(new_seed)
    curves["plain"] = train(model, opt, data, steps)
    results["plain"] = {"accepted": 0, "attempts": 0, "jumped_steps": 0, "jump_seconds": 0.0, "forecast_seconds": 0.0}
    for name, fc in forecasters.items():
        model, opt = make_run(new_seed)
        with gfm.jump_ahead(model, opt, fc, every=every, horizons=list(horizons),
                            holdout_loss=lambda m=model: mse(m, data["check"])) as jumper:
            curves[name] = train(model, opt, data, steps, jumper)
        s = jumper.stats
        results[name] = {"accepted": s.accepted, "attempts": s.attempts, "jumped_steps": s.jumped_steps,
                         "jump_seconds": s.seconds, "forecast_seconds": s.forecast_seconds}
    target = curves["plain"][1][-1]
    for name, (seconds, test) in curves.items():
        hit = next((k for k, v in enumerate(test) if v <= target), None)
        results[name] |= {"seconds_to_target": math.inf if hit is None else seconds[hit], "final_test_loss": test[-1],
                          "loop_seconds": seconds[-1]}
    _print(results, steps, target)
    return results


def _print(results: dict[str, dict[str, float]], steps: int, target: float) -> None:
    print(f"new run, {steps} optimizer steps each; target: the plain run's final test loss {target:.4g}")
    # jump s: all the helper's time (window, forecasts, held-out checks), inside loop s; forecast s: part of it
    print(f"  {'loop':<13} {'s to target':>11} {'loop s':>7} {'jumps kept/tried':>16} {'steps jumped':>12} "
          f"{'jump s':>7} {'forecast s':>10} {'final test loss':>15}")
    for name, r in results.items():
        to = "never" if math.isinf(r["seconds_to_target"]) else f"{r['seconds_to_target']:.2f}"
        print(f"  {name:<13} {to:>11} {r['loop_seconds']:>7.2f} {r['accepted']:>7}/{r['attempts']:<8} "
              f"{r['jumped_steps']:>12} {r['jump_seconds']:>7.2f} {r['forecast_seconds']:>10.2f} "
              f"{r['final_test_loss']:>15.4g}")
    plain = results["plain"]
    for name, r in results.items():
        if name != "plain" and r["seconds_to_target"] >= plain["seconds_to_target"]:
            print(f"{name} is not faster than plain here: its forecasts and checks took {r['jump_seconds']:.2f} s, "
                  f"and its {r['accepted']} kept jumps skipped {r['jumped_steps']} steps, which take the plain loop "
                  f"{r['jumped_steps'] * plain['loop_seconds'] / steps:.2f} s.")
    best = min(results, key=lambda n: (results[n]["seconds_to_target"], results[n]["final_test_loss"]))
    if best == "plain":
        print("wins here: plain. No jump-ahead loop reached the plain run's final test loss sooner on this loop.")
    else:
        r = results[best]
        print(f"wins here: {best}, {plain['seconds_to_target'] / r['seconds_to_target']:.2f}x faster to the plain "
              f"run's final test loss ({r['accepted']} jumps kept, {r['jumped_steps']} steps skipped).")


if __name__ == "__main__":
    main()
