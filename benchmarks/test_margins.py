"""How far each training test's threshold sits from what it measures, over training seeds and thread counts.

The tests that train assert an improvement factor through ``tests/margins.py:at_least`` (first / best training
loss, a baseline's error / the model's). This runs those tests once per (``GFM_TEST_SEED``, ``GFM_TEST_THREADS``)
pair, collects every factor they measured, and prints per check the worst and best factor, the required one
and their ratio (the margin). A margin under 2 means the threshold sits where round-off on another CPU can
reach it. Usage::

    python -m benchmarks.test_margins --seeds 0 1 2 3 --threads 1 2 [--tests <pytest node ids or files>]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests whose assertions go through margins.at_least.
TESTS = ["tests/test_forecasters_contract.py::test_overfits_a_single_tiny_trajectory",
         "tests/test_gfm.py::test_velocity_heads_overfit_a_single_tiny_adam_trajectory",
         "tests/test_gfm.py::test_rule_head_overfits_a_single_tiny_gradient_descent_trajectory",
         "tests/test_classical.py::test_learned_baselines_beat_last_value_on_held_out_geometric_runs",
         "tests/test_sequence.py::test_sequence_models_beat_last_value_on_held_out_geometric_runs",
         "tests/test_function_field.py::test_fit_beats_last_value_on_validation_runs_and_round_trips",
         "tests/test_function_field.py::test_overfits_one_trajectory",
         "tests/test_record.py::test_user_loop_runs_train_a_gfm_that_forecasts_a_held_out_run"]


def measure(seeds: list[int], threads: list[int], tests: list[str], log: Path | None = None) -> list[dict]:
    """Run ``tests`` per (seed, threads) and return every factor they logged (kept in ``log`` when given)."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = log or Path(tmp) / "margins.jsonl"
        for n in threads:
            for seed in seeds:
                env = {**os.environ, "GFM_TEST_SEED": str(seed), "GFM_TEST_THREADS": str(n),
                       "GFM_MARGINS_LOG": str(log)}
                proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                                      cwd=ROOT, env=env, capture_output=True, text=True)
                print(f"seed {seed} threads {n}: {proc.stdout.strip().splitlines()[-1]}", flush=True)
        if log.exists():
            rows = [json.loads(line) for line in log.read_text().splitlines()]
    return rows


def table(rows: list[dict]) -> str:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by[r["name"]].append(r)
    out = ["| check | required | worst | best | margin (worst / required) | (seed, threads) of the worst |",
           "|---|---|---|---|---|---|"]
    for name in sorted(by):
        rs = by[name]
        worst = min(rs, key=lambda r: r["factor"])
        best = max(r["factor"] for r in rs)
        out.append(f"| `{name}` | {worst['required']:g}x | {worst['factor']:.3g}x | {best:.3g}x | "
                   f"{worst['factor'] / worst['required']:.2f} | ({worst['seed']}, {worst['threads']}) |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tests", nargs="+", default=TESTS)
    ap.add_argument("--log", type=Path, help="keep the measured factors here (JSON lines; appended to)")
    ap.add_argument("--table-only", action="store_true", help="only tabulate an existing --log")
    args = ap.parse_args(argv)
    if args.table_only:
        print(table([json.loads(line) for line in args.log.read_text().splitlines()]))
        return
    print(table(measure(args.seeds, args.threads, args.tests, args.log)))


if __name__ == "__main__":
    main()
