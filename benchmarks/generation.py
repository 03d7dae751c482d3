"""Generation benchmark: the stacked generator against the naive per-run loop, side by side in one run.

For each workload (a store of ``params.yaml`` and a number of runs R) it times, on the same runs with the
same seeds, data, minibatch order and recording:

* ``batched``: :func:`gfm.stages.generate.simulate`, all R runs as one stacked model, in this process, with
  torch's default thread count and again with one thread;
* ``naive``: ``train_reference`` (benchmarks/reference.py: one ``nn.Module`` + ``torch.optim`` per run) for
  every run, one after another, in this process;
* ``naive x2``: the same naive loop split over two worker processes (one per core, one thread each), each
  running half of the runs: what a user who parallelises per-run jobs gets. Wall time from "go" to the last
  worker's answer; the workers are started and warmed up before the clock starts.

Per-run setup (:func:`gfm.stages.runs.setup_run`: data sampling, initial weights, batch order) is excluded from all
of them. Every timing is repeated ``--repeats`` times, interleaved, and the median is reported. It also
measures a large float32 matmul to give the machine's attainable GFLOP/s.

Usage::

    python -m benchmarks.generation                       # full table of BENCHMARKS.md (its time: there)
    python -m benchmarks.generation --quick               # R = 16, 64; one repeat; two optimizers
    python -m benchmarks.generation --runs 256 --stores mlp_regression-adam --repeats 5 --json out.json
    make bench                                            # the full one
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.reference import train_reference
from gfm.config import Params, load_params
from gfm.stages.generate import simulate
from gfm.stages.runs import RunId, RunSetup, run_ids, setup_run
from gfm.tasks import Task, make_task

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORES = ["mlp_regression-sgd", "mlp_regression-momentum", "mlp_regression-adam", "mlp_regression-rmsprop"]
QUICK_STORES = ["mlp_regression-sgd", "mlp_regression-adam"]


@dataclass
class Row:
    """One workload's medians (seconds) and what follows from them."""

    store: str
    runs: int
    params_per_run: int
    batched_s: float
    batched_1t_s: float
    naive_s: float
    naive_x2_s: float
    gflop: float  # matmul work of the workload, see matmul_flops
    max_abs_diff: float  # batched vs naive final weights



def pick_runs(params: Params, n: int) -> list[tuple[int, int]]:
    """``n`` runs (dataset seed, index) of store ``key``, spread over the dataset seeds like the store's own."""
    seeds = params.generate.dataset_seeds
    ids = run_ids(seeds, math.ceil(n / len(seeds)))
    by_seed = [[r for r in ids if r.dataset_seed == s] for s in seeds]
    order = [r for group in zip(*by_seed) for r in group]  # round-robin over seeds
    return [(r.dataset_seed, r.index) for r in order[:n]]


def build(params: Params, key: str, runs: list[tuple[int, int]]) -> tuple[Task, object, list[RunSetup]]:
    spec, task_cfg = params.lookup_store(key)
    task = make_task(task_cfg)
    setups = [setup_run(task, spec.optimizer, params.seed, RunId(d, i), task_name=spec.task) for d, i in runs]
    return task, spec.optimizer, setups


def matmul_flops(task: Task, steps: int, batch: int, n_samples: int) -> float:
    """Dense matmul FLOPs of one run's training + recording (both implementations need this much).

    Per step: minibatch forward (2 B M), backward (2 B M for the weight gradients + 2 B M' for the input
    gradients of every layer but the first) and the recorded full-data loss (2 N M), with M = sum of
    in x out over the Linear layers and M' the same without the first layer. Element-wise work is not counted.
    """
    dims = getattr(task, "dims", None)
    if dims is None:  # least squares: one (in -> 1) layer
        dims = [task.n_params, 1]
    macs = [a * b for a, b in zip(dims[:-1], dims[1:])]
    m, m_rest = sum(macs), sum(macs[1:])
    b = batch or n_samples
    per_step = 2 * b * m + 2 * b * m + 2 * b * m_rest + 2 * n_samples * m
    return per_step * steps + 2 * n_samples * m  # + the final record


def time_batched(task: Task, opt, setups: list[RunSetup], threads: int | None) -> tuple[float, np.ndarray]:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        rec = simulate(task, opt, setups, device=torch.device("cpu"))
        return time.perf_counter() - t0, rec["weights"][:, -1]
    finally:
        torch.set_num_threads(old)


def time_naive(task: Task, opt, setups: list[RunSetup]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    finals = [train_reference(task, opt, s)["weights"][-1] for s in setups]
    return time.perf_counter() - t0, np.stack(finals)


class NaiveWorkers:
    """Worker processes (one thread each) that each train a share of the runs naively when told "go".

    The protocol is JSON lines over stdin/stdout: the job, then "ready", then one "go" per repeat.
    """

    def __init__(self, params_path: Path, key: str, runs: list[tuple[int, int]], n_workers: int):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.procs = []
        for w in range(n_workers):
            share = runs[w::n_workers]
            p = subprocess.Popen([sys.executable, "-m", "benchmarks.generation", "--worker"], cwd=ROOT, env=env,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            p.stdin.write(json.dumps({"params": str(params_path), "key": key, "runs": share}) + "\n")
            p.stdin.flush()
            self.procs.append(p)
        for p in self.procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"naive worker failed to start (said {line!r})")

    def run(self) -> float:
        """Wall time of all workers training their shares concurrently."""
        t0 = time.perf_counter()
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in self.procs:
            reply = json.loads(p.stdout.readline())
            assert reply["runs"] > 0, f"worker trained no runs: {reply}"
        return time.perf_counter() - t0

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()
            p.wait(timeout=60)


def worker_main() -> None:
    """Body of a naive worker process (see :class:`NaiveWorkers`)."""
    torch.set_num_threads(1)
    job = json.loads(sys.stdin.readline())
    params = load_params(job["params"])
    task, opt, setups = build(params, job["key"], [tuple(r) for r in job["runs"]])
    train_reference(task, opt, setups[0])  # warm-up (first-call allocations, lazy imports)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.perf_counter()
        for s in setups:
            train_reference(task, opt, s)
        print(json.dumps({"runs": len(setups), "seconds": time.perf_counter() - t0}), flush=True)


def peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Median GFLOP/s of a float32 (size x size) @ (size x size) matmul with ``threads`` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            rates.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
        return statistics.median(rates)
    finally:
        torch.set_num_threads(old)


def bench_workload(params: Params, params_path: Path, key: str, n_runs: int, repeats: int) -> Row:
    runs = pick_runs(params, n_runs)
    task, opt, setups = build(params, key, runs)
    cfg = task.cfg
    # warm-up both paths on a few runs so that no timing pays first-call costs
    time_batched(task, opt, setups[:4], None)
    time_naive(task, opt, setups[:1])
    workers = NaiveWorkers(params_path, key, runs, n_workers=2)
    t = {"batched": [], "batched_1t": [], "naive": [], "naive_x2": []}
    try:
        for _ in range(repeats):
            s, w_batched = time_batched(task, opt, setups, None)
            t["batched"].append(s)
            t["batched_1t"].append(time_batched(task, opt, setups, 1)[0])
            s, w_naive = time_naive(task, opt, setups)
            t["naive"].append(s)
            t["naive_x2"].append(workers.run())
    finally:
        workers.close()
    med = {k: statistics.median(v) for k, v in t.items()}
    gflop = n_runs * matmul_flops(task, cfg.steps, cfg.batch_size, cfg.n_samples) / 1e9
    return Row(key, n_runs, task.n_params, med["batched"], med["batched_1t"], med["naive"], med["naive_x2"], gflop,
               float(np.abs(w_batched - w_naive).max()))


def table(rows: list[Row], peak: dict[int, float]) -> str:
    """Markdown table of BENCHMARKS.md: times, ratios (naive time / batched time) and achieved GFLOP/s."""
    head = ("| store | R | P | batched s (default thr / 1 thr) | naive s | naive 2 procs s "
            "| naive / batched | naive 2 procs / batched | batched GFLOP/s | % of 2-thread matmul | max abs diff |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rate = r.gflop / min(r.batched_s, r.batched_1t_s)
        lines.append(
            f"| {r.store} | {r.runs} | {r.params_per_run} | {r.batched_s:.3f} / {r.batched_1t_s:.3f} "
            f"| {r.naive_s:.2f} | {r.naive_x2_s:.2f} "
            f"| {r.naive_s / r.batched_s:.1f}x / {r.naive_s / r.batched_1t_s:.1f}x "
            f"| {r.naive_x2_s / r.batched_s:.1f}x / {r.naive_x2_s / r.batched_1t_s:.1f}x "
            f"| {rate:.2f} | {100 * rate / peak[2]:.1f}% | {r.max_abs_diff:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.generation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--stores", nargs="+", default=None, help=f"store keys (default {' '.join(DEFAULT_STORES)})")
    ap.add_argument("--runs", nargs="+", type=int, default=None, help="values of R (default 16 64 256)")
    ap.add_argument("--digits-runs", type=int, default=16,
                    help="R of the digits-adam row (0 = none); its naive loop is the slow part")
    ap.add_argument("--repeats", type=int, default=3, help="timings per workload; the median is reported")
    ap.add_argument("--quick", action="store_true", help="R = 16 64, one repeat, sgd + adam, no digits")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    if args.repeats < 1:
        ap.error(f"--repeats: got {args.repeats}; expected at least 1")
    stores = args.stores or (QUICK_STORES if args.quick else DEFAULT_STORES)
    runs = args.runs or ([16, 64] if args.quick else [16, 64, 256])
    repeats = 1 if args.quick else args.repeats
    params = load_params(args.params)
    unknown = [k for k in stores if k not in params.stores]
    if unknown:
        ap.error(f"--stores: {unknown} not in {args.params}; expected some of {sorted(params.stores)}")
    workloads = [(k, r) for k in stores for r in runs]
    if args.digits_runs and not args.quick:
        workloads.append(("digits-adam", args.digits_runs))

    print(f"# torch {torch.__version__}, {os.cpu_count()} CPUs, default threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start", flush=True)
    peak = {n: peak_gflops(n) for n in (1, 2)}
    print(f"# float32 2048^2 matmul: {peak[1]:.1f} GFLOP/s (1 thread), {peak[2]:.1f} GFLOP/s (2 threads)", flush=True)
    rows = []
    for key, r in workloads:
        row = bench_workload(params, args.params, key, r, repeats)
        rows.append(row)
        print(f"# {key} R={r}: batched {row.batched_s:.3f}s (1 thread {row.batched_1t_s:.3f}s), naive {row.naive_s:.2f}s, "
              f"naive x2 {row.naive_x2_s:.2f}s, load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"# load average at end {os.getloadavg()[0]:.2f}")
    print(table(rows, peak))
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "repeats": repeats, "torch": torch.__version__,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
