"""Train time and forecast throughput of every model in ``train.models`` on one store (BENCHMARKS.md).

Usage::

    gfm generate --params params.yaml --store digits-momentum --out /tmp/b/digits/momentum.zarr
    gfm split --params params.yaml --in /tmp/b/digits/momentum.zarr --out /tmp/b/digits/momentum.json
    python -m benchmarks.training --params params.yaml --store digits-momentum \\
        --in /tmp/b/digits/momentum.zarr --split /tmp/b/digits/momentum.json --out /tmp/b/models --threads 1

Prints one Markdown table row per model: fit seconds summed over dataset seeds (what one train job costs,
without the process start-up), epochs, and forecasts/s on the test runs of one dataset seed
(forecasting all test runs in one call, after a warm-up call).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gfm.config import load_params
from gfm.forecasters import Trajectories, read_model
from gfm.stages import train
from gfm.store.reader import open_trajectories


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--store", required=True)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="*", help="default: train.models")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    ts = open_trajectories(args.inp)
    split = json.loads(Path(args.split).read_text())["datasets"]
    seed = sorted(split, key=int)[0]
    test = Trajectories.from_store(ts, split[seed]["test"])
    print(f"store {args.store}: {ts.n_runs} runs x {ts.n_records} records x {ts.n_params} params; "
          f"{len(split)} dataset seeds; threads={args.threads}")
    print("| model | fit s (all seeds) | epochs (mean) | val MSE @ last horizon (mean) | forecasts/s |")
    print("|---|---|---|---|---|")
    for model in args.models or params.train.models:
        out = Path(args.out) / args.store / model
        t0 = time.perf_counter()
        s = train.run(params, store_key=args.store, model=model, split=Path(args.split), store=Path(args.inp),
                      out=out, progress=False)
        fit = time.perf_counter() - t0
        fc = read_model(out / seed)
        fc.forecast(test, horizons=fc.horizons)  # warm-up
        t1 = time.perf_counter()
        fc.forecast(test, horizons=fc.horizons)
        rate = test.n_runs / (time.perf_counter() - t1)
        last = str(fc.horizons[-1])
        epochs = np.mean([e["epochs"] for e in s.seeds.values()])
        mse = np.mean([e["val_weight_mse"][last] for e in s.seeds.values()])
        print(f"| {model} | {fit:.1f} | {epochs:.0f} | {mse:.3g} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
