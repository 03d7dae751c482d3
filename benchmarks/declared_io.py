"""Forecasting a recorded store as fast as a generated one: the read that the forecast stage makes, and the stage.

One run of this script builds three stores of the same size (``--runs`` runs of a 1 -> 10 -> 1 ReLU MLP, 201
records, 31 parameters, SGD; 2 dataset seeds):

* ``recorded``: written by ``gfm.record`` from a plain PyTorch loop, one run per ``with`` block, as a user
  records; the recorder writes one run per chunk (its write block is one run);
* ``taken in``: the same store declared (``tasks.<name>: {kind: recorded, ...}``) and taken in by ``gfm
  generate`` (gfm.recording.declare.intake), which rewrites it in the generated layout (``store.chunk_runs`` runs per
  chunk);
* ``generated``: ``gfm generate`` of an ``mlp_regression`` task of the same shape (the reference).

On each it times, median of ``--repeats``, the test runs' prefixes (records 0..prefix_end, weights, state, lr)
read two ways: one read per write block (``block_runs``), what the forecast stage did before, and one read of
all test runs (gfm.stages.forecast.Prefixes), what it does now; and the whole forecast stage (``forecast.run``) with
the closed-form models (``last_value``, ``linear``), whose forecasts cost nothing beside the read. The ratios
answer: is a recorded store forecast within 2x of a generated one of the same size?

Usage::

    python -m benchmarks.declared_io                    # 240 runs (120 per seed), 3 repeats
    python -m benchmarks.declared_io --runs 64 --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from torch import nn

import gfm
from gfm.config import load_params
from gfm.forecasters import Trajectories
from gfm.recording.declare import declare_entries
from gfm.stages import forecast, generate, split, train

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200


def record_store(path: Path, runs_per_seed: int, seeds=(1, 2)) -> float:
    """Record ``runs_per_seed`` runs per dataset seed of the y = a x regression loop; seconds per run."""
    t0, first = time.perf_counter(), True
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(100, 1, generator=g)
        y = (x * torch.randn(1, generator=g)).squeeze(-1)
        for r in range(runs_per_seed):
            torch.manual_seed(10_000 * seed + r)
            model = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1))
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            with gfm.record(path, model, opt, mode="w" if first else "a", dataset_seed=seed) as rec:
                for _ in range(STEPS):
                    rows = torch.randint(0, 100, (64,))
                    loss = ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    rec.step(loss)
            first = False
    return (time.perf_counter() - t0) / (runs_per_seed * len(seeds))


def study(root: Path, recorded: Path, runs_per_seed: int) -> Path:
    """A params file with the recorded store declared and a generated store of the same shape."""
    name, entry, key, spec = declare_entries(recorded, task="mine", root=root)
    data = yaml.safe_load((ROOT / "tests" / "params.tiny.yaml").read_text())
    data["tasks"] = {"mine": entry, "mlp_regression": {
        "kind": "mlp_regression", "dim": 1, "hidden": [10], "n_samples": 100, "batch_size": 64,
        "runs_per_dataset": runs_per_seed, "steps": STEPS}}
    data["stores"] = {key: spec, "mlp_regression-sgd": {"task": "mlp_regression", "optimizer": {"name": "sgd", "lr": 0.05}}}
    data["store"] = {"chunk_runs": 8, "chunk_steps": 32, "shard_runs": 256}
    data["forecast"] = {"prefix_end": 20, "horizons": [40, 100, 200]}
    data["train"]["models"] = ["last_value", "linear"]
    data["train"]["tuning"] = {"trials": 0, "space": {}}
    data["report"]["target_task"] = "mlp_regression"
    data["generalize"] = {"models": [], "pairs": []}
    data["accelerate"] = {**data.get("accelerate", {}), "stores": {}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def per_block_read(ts, runs: list[int], k: int) -> None:
    """The forecast stage's read before: one read per store write block of the test runs."""
    block = int(ts.attrs["block_runs"])
    for start in range(0, len(runs), block):
        Trajectories.from_store(ts, runs[start : start + block], records=k + 1)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=240, help="runs per store, over 2 dataset seeds (default: 240)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    per_seed = args.runs // 2
    with tempfile.TemporaryDirectory(prefix="declared_io.") as tmp:
        root = Path(tmp)
        recorded = root / "recorded" / "mine.zarr"
        s_record = record_store(recorded, per_seed)
        params = load_params(study(root, recorded, per_seed))
        stores = {"recorded": recorded}
        t0 = time.perf_counter()
        stores["taken in"] = root / "data" / "trajectories" / "mine" / "sgd.zarr"
        generate.run(params, "mine-sgd", out=stores["taken in"], progress=False)
        s_intake = time.perf_counter() - t0
        t0 = time.perf_counter()
        stores["generated"] = root / "data" / "trajectories" / "mlp_regression" / "sgd.zarr"
        generate.run(params, "mlp_regression-sgd", out=stores["generated"], progress=False)
        s_generate = time.perf_counter() - t0
        k = params.forecast.prefix_end
        rows = {}
        for label, path in stores.items():
            key = "mine-sgd" if label != "generated" else "mlp_regression-sgd"
            sp = root / "splits" / f"{label.replace(' ', '_')}.json"
            split.run(params.split, store=path, out=sp)
            models = root / "models" / label.replace(" ", "_")
            for m in params.train.models:
                train.run(params, store_key=key, model=m, split=sp, store=path, out=models / m, progress=False)
            ts = gfm.open_trajectories(path)
            by_seed, _ = forecast.test_runs(forecast.read_split(sp, store=ts))
            runs = [r for s in sorted(by_seed, key=int) for r in by_seed[s]]
            out = root / "forecasts" / label.replace(" ", "_")
            stage = functools.partial(forecast.run, params, store_key=key, store=path, split=sp, models=models,
                                      out=out)
            rows[label] = {
                "block_runs": int(ts.attrs["block_runs"]), "test_runs": len(runs),
                "prefix_per_block_s": timed(functools.partial(per_block_read, ts, runs, k), args.repeats),
                "prefix_one_call_s": timed(functools.partial(Trajectories.from_store, ts, runs, records=k + 1),
                                           args.repeats),
                "forecast_stage_s": timed(stage, args.repeats),
            }
    result = {"runs": args.runs, "records": STEPS + 1, "params": 31, "repeats": args.repeats,
              "record_s_per_run": s_record, "intake_s": s_intake, "generate_s": s_generate,
              "threads": torch.get_num_threads(), "load": os.getloadavg()[0], "stores": rows,
              "ratio_taken_in_vs_generated": rows["taken in"]["forecast_stage_s"] / rows["generated"]["forecast_stage_s"],
              "ratio_recorded_vs_generated": rows["recorded"]["forecast_stage_s"] / rows["generated"]["forecast_stage_s"]}
    print(f"{args.runs} runs x {STEPS + 1} records x 31 params; recording {s_record:.3f} s/run, intake "
          f"{s_intake:.2f} s, generation {s_generate:.2f} s; median of {args.repeats}")
    print("| store | block_runs | test runs | prefixes, one read per block (s) | prefixes, one read (s) | "
          "forecast stage (s) |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['block_runs']} | {r['test_runs']} | {r['prefix_per_block_s']:.4f} | "
              f"{r['prefix_one_call_s']:.4f} | {r['forecast_stage_s']:.3f} |")
    print(f"forecast stage, taken in / generated: {result['ratio_taken_in_vs_generated']:.2f}x; "
          f"recorded as written / generated: {result['ratio_recorded_vs_generated']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
