"""Recording many runs into one store: ``gfm.record(mode="a")`` per run vs ``gfm.record_runs``.

The loop is benchmarks/declared_io.py's: a 1 -> 10 -> 1 ReLU MLP (31 parameters) fitting y = a x with SGD,
200 steps (201 records), runs split over 2 dataset seeds. For each N of ``--runs`` it times, on the same runs:

* ``loop``: the training loop alone, nothing recorded (what recording adds is measured against it);
* ``append``: one ``gfm.record`` per run, the first with ``mode="w"``, the others ``mode="a"`` (each append
  links the store's files into a staged copy, adds the run, flushes and swaps it in);
* ``record_runs``: one ``gfm.record_runs`` block, one ``runs.record`` per run, the store written at the end.

and reports seconds per run (over all runs, and over the last 8, which shows how a run's cost grows with
the store), record_runs' write of the store at the block's exit, and the ratio append / record_runs. Both stores are checked to hold the same
weights. Not a test: the numbers depend on the machine and its load (printed).

Usage::

    python -m benchmarks.record_runs                    # N = 32 and 128
    python -m benchmarks.record_runs --runs 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gfm

STEPS = 200
SEEDS = (1, 2)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(100, 1, generator=g)
    return x, (x * torch.randn(1, generator=g)).squeeze(-1)


def _runs(n: int):
    """The n runs: (dataset seed, model, optimizer, x, y), the same every call."""
    for r in range(n):
        seed = SEEDS[r % len(SEEDS)]
        torch.manual_seed(10_000 * seed + r)
        model = nn.Sequential(nn.Linear(1, 10), nn.ReLU(), nn.Linear(10, 1))
        yield seed, model, torch.optim.SGD(model.parameters(), lr=0.05), *_data(seed)


def _train(model, opt, x, y, rec=None) -> None:
    for _ in range(STEPS):
        rows = torch.randint(0, 100, (64,))
        loss = ((model(x[rows]).squeeze(-1) - y[rows]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss)


def loop_only(n: int) -> float:
    t0 = time.perf_counter()
    for _, model, opt, x, y in _runs(n):
        _train(model, opt, x, y)
    return time.perf_counter() - t0


def append(path: Path, n: int) -> tuple[float, list[float]]:
    """Seconds in all, and each run's seconds."""
    t0, each = time.perf_counter(), []
    for r, (seed, model, opt, x, y) in enumerate(_runs(n)):
        t = time.perf_counter()
        with gfm.record(path, model, opt, mode="w" if r == 0 else "a", dataset_seed=seed, loss="mse") as rec:
            _train(model, opt, x, y, rec)
        each.append(time.perf_counter() - t)
    return time.perf_counter() - t0, each


def record_runs(path: Path, n: int) -> tuple[float, list[float], float]:
    """Seconds in all, each run's seconds, and the seconds of writing the store at the block's exit."""
    t0, each = time.perf_counter(), []
    with gfm.record_runs(path) as runs:
        for seed, model, opt, x, y in _runs(n):
            t = time.perf_counter()
            with runs.record(model, opt, dataset_seed=seed, loss="mse") as rec:
                _train(model, opt, x, y, rec)
            each.append(time.perf_counter() - t)
        t_exit = time.perf_counter()
    return time.perf_counter() - t0, each, time.perf_counter() - t_exit


def _files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, nargs="+", default=[32, 128], help="numbers of runs (default: 32 128)")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    loop_only(2)  # torch's first calls are slow: not counted in the first row
    with tempfile.TemporaryDirectory(prefix="record_runs.") as tmp:
        for n in args.runs:
            load = os.getloadavg()[0]
            s_loop = loop_only(n)
            a, b = Path(tmp, f"append{n}.zarr"), Path(tmp, f"runs{n}.zarr")
            s_append, each_append = append(a, n)
            s_runs, each_run, s_exit = record_runs(b, n)
            wa, wb = gfm.open_trajectories(a).weights[:], gfm.open_trajectories(b).weights[:]
            assert np.array_equal(wa, wb), "the two stores differ"
            rows.append({"runs": n, "load_before": load, "load_after": os.getloadavg()[0],
                         "loop_s_per_run": s_loop / n, "append_s_per_run": s_append / n,
                         "record_runs_s_per_run": s_runs / n, "ratio": s_append / s_runs,
                         "append_last8_s_per_run": float(np.mean(each_append[-8:])),
                         "record_runs_last8_s_per_run": float(np.mean(each_run[-8:])), "record_runs_exit_s": s_exit,
                         "files_append": _files(a), "files_record_runs": _files(b)})
    print(f"{STEPS + 1} records x 31 params per run, {torch.get_num_threads()} torch thread")
    print("| runs | load (1 min, before/after) | loop alone (s/run) | gfm.record mode=\"a\" (s/run; last 8) | "
          "gfm.record_runs (s/run; last 8; write at exit s) | append / record_runs | files (append / record_runs) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runs']} | {r['load_before']:.1f} / {r['load_after']:.1f} | {r['loop_s_per_run']:.3f} | "
              f"{r['append_s_per_run']:.3f}; {r['append_last8_s_per_run']:.3f} | {r['record_runs_s_per_run']:.3f}; "
              f"{r['record_runs_last8_s_per_run']:.3f}; {r['record_runs_exit_s']:.2f} | {r['ratio']:.1f}x | "
              f"{r['files_append']} / {r['files_record_runs']} |")
    result = {"steps": STEPS, "params": 31, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
