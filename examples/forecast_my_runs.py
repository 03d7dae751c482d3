"""Your own training runs through the pipeline: record them (gfm.record_runs), declare the store, run it.

    python examples/forecast_my_runs.py        # records 32 runs of the loop below into recorded/my_runs.zarr
                                               # and writes params.my_runs.yaml
    make run PRESET=my_runs                    # trains, forecasts, evaluates and reports it in build/my_runs/;
                                               # report: build/my_runs/reports/summary.md (times: README)

The loop is an ordinary PyTorch loop (a Tanh MLP on a noisy nonlinear regression, SGD with momentum); replace
it with yours. What the recorder is told, beyond the weights it reads itself:

* ``dataset_seed``: runs that share a dataset (the split keeps each seed's runs apart, and every comparison in
  the report is paired over seeds);
* ``loss="mse"``: the loss, which no module records (the activation, Tanh, is read from the nn.Sequential;
  pass ``activation=`` for a network whose activation cannot be read);
* ``eval_data``: held-out data of the run, so that the report's downstream loss is computed on the run's own
  data; without it those columns are left empty, never filled from another task's data.

The params file is a preset: ``tasks.my_runs`` declares the store by path and content hash (``gfm declare``
writes that entry; a re-recorded store is refused until it is declared again), and the rest is the study:
the forecast protocol (observe records 0..10, forecast records 20, 40, ... to the last), the forecasters, their budget and tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

import gfm

# The study around the declared store. Every forecaster gets the same budget and the same number of tuning
# trials on validation runs; gfm_function refuses a network whose activation the store does not record.
STUDY = """\
# params.my_runs.yaml: your recorded runs through the pipeline (examples/forecast_my_runs.py wrote this file)
seed: 0
device: auto
generate: {{dataset_seeds: {seeds}, progress: false}}
store: {{chunk_runs: 8, chunk_steps: 32, shard_runs: 64}}
split: {{train: 0.5, val: 0.25, test: 0.25}}
tasks: {{}}
stores: {{}}
forecast: {{prefix_end: 10, horizons: {horizons}}}
train:
  seed: 0
  models: [last_value, linear, exp_fit, lstm, gfm_state, gfm_function]
  budget: {{steps: 150, eval_every: 25, patience: 3}}
  tuning:
    trials: 2
    space:
      lstm: {{lr: [0.003, 0.01]}}
      gfm_state: {{lr: [0.002, 0.005]}}
      gfm_function: {{lr: [0.01, 0.02], basis: [2, 4]}}
models:
  last_value: {{kind: last_value}}
  linear: {{kind: linear, window: 1}}
  exp_fit: {{kind: exp_fit, window: 0, r_max: 0.999, grid: 128}}
  lstm: {{kind: lstm, hidden: 16, layers: 1, lr: 0.003, batch_size: 256}}
  gfm_state: {{kind: gfm, structure: state_input, field: coordinate, run_context: prefix, width: 32, depth: 2,
              t_sampling: grid, batch_size: 128, param_sample: 64, lr: 0.002}}
  gfm_function: {{kind: gfm_function, probes: 32, basis: 2, batch_size: 16, points: 8, lr: 0.02, samples: 16}}
evaluate: {{trajectory_params: 4}}
generalize: {{models: [], pairs: []}}   # transfer pairs compare generated tasks
accelerate: {{stores: {{}}}}               # jump-ahead re-trains generated tasks only
report:
  title: "Forecasting my recorded runs"
  target_task: {task}
  claims:
    - {{model: gfm_function, baseline: lstm, threshold: 1.0, text: "gfm_function final MSE <= lstm"}}
    - {{model: gfm_state, baseline: lstm, threshold: 1.0, text: "gfm_state final MSE <= lstm"}}
"""


def make_dataset(seed: int, n: int = 256, dim: int = 2) -> tuple[torch.Tensor, ...]:
    """One dataset: y = sin(2 x.w) + noise, split into training and held-out halves."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.sin(2 * x @ torch.randn(dim, generator=g)) + 0.1 * torch.randn(n, generator=g)
    return x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :]


def record_runs(path: str | Path, *, seeds: list[int], runs_per_seed: int, steps: int,
                model_fn=lambda: nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1)),
                **record_kwargs) -> Path:
    """Train ``runs_per_seed`` runs on each dataset seed with the loop of this file, recording every step into
    one store at ``path`` (replaced if it is one), written once all runs are recorded."""
    with gfm.record_runs(path, overwrite=True) as runs:
        for seed in seeds:
            x, y, x_eval, y_eval = make_dataset(seed)
            for r in range(runs_per_seed):
                torch.manual_seed(1000 * seed + r)  # the run's initialisation and minibatch order
                model = model_fn()
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
                with runs.record(model, opt, dataset_seed=seed, loss="mse", eval_data=(x_eval, y_eval),
                                 **record_kwargs) as rec:
                    for _ in range(steps):
                        batch = torch.randint(0, len(x), (32,))
                        loss = ((model(x[batch]).squeeze(-1) - y[batch]) ** 2).mean()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                        rec.step(loss)
    return Path(path)


def write_study(params: str | Path, stores: dict[str, str | Path], seeds: list[int], steps: int = 100) -> Path:
    """Write the preset ``params``: the study text above with each store (task name -> store path) declared
    in it, as ``gfm declare STORE --params PARAMS --task NAME --write`` declares one in an existing file (path
    relative to the preset's directory, content hash, the optimizer the store holds)."""
    from gfm.config import load_params
    from gfm.recording.declare import declare_entries

    params = Path(params)
    tasks, entries = [], []
    for task, store in stores.items():
        name, entry, key, spec = declare_entries(store, task=task, root=params.resolve().parent)
        tasks.append(f"  {name}: {{kind: recorded, path: {entry['path']}, sha256: {entry['sha256']}}}")
        entries.append(f"  {key}: {{task: {name}, optimizer: {{name: {spec['optimizer']['name']}}}}}")
    declared = "tasks:\n" + "\n".join(tasks) + "\nstores:\n" + "\n".join(entries) + "\n"
    horizons = list(range(20, steps + 1, 20))  # observe records 0..10, forecast every 20th to the last
    params.write_text(STUDY.format(seeds=list(seeds), task=next(iter(stores)), horizons=horizons).replace("tasks: {}\nstores: {}\n",
                                                                                     declared))
    load_params(params)  # as every stage will read it
    print(f"{params}: declares {', '.join(str(s) for s in stores.values())}")
    return params


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="recorded/my_runs.zarr", help="the store to record (default: %(default)s)")
    ap.add_argument("--params", default="params.my_runs.yaml", help="the preset to write (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=16, help="runs per dataset seed (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default: %(default)s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [1, 2]
    store = record_runs(args.store, seeds=seeds, runs_per_seed=args.runs, steps=args.steps)
    params = write_study(args.params, {"my_runs": store}, seeds, steps=args.steps)
    print(f"next: make run PRESET={params.name.removeprefix('params.').removesuffix('.yaml')}")
    return params


if __name__ == "__main__":
    main()
