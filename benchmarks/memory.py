"""Bounded memory (RELIABILITY.md item 8): generate a trajectory store larger than 4 GB, then split, train,
forecast and evaluate on it, each stage a separate `gfm` process measured with ``/usr/bin/time -v``.

Usage::

    python -m benchmarks.memory                       # ~6 GB store under /tmp/gfm-membench, deleted afterwards
    python -m benchmarks.memory --runs 20 --keep      # a quick small run, files kept

Prints a Markdown table (stage, peak RSS, wall time) and writes ``memory.json`` next to the store. The
store's size is reported both on disk and uncompressed (run x record x param x 4 bytes per float32 array).
Peak RSS is bounded by the block sizes, not by the store: generation holds one block of ``shard_runs`` runs;
the closed-form models train by streaming blocks of runs (``train_fit.STREAM_BYTES``); forecasting reads the
prefixes of one write block at a time; ``gfm check`` reads at most ``check.READ_BYTES`` at once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

LIMIT_BYTES = 2 << 30
STORE = "wide-momentum"


def study(runs_per_dataset: int) -> dict:
    """A single wide-MLP store trained with momentum (weights + momentum buffer recorded): P = 64*64 + 64 +
    64 + 1 = 4225 parameters, 101 records per run, 2 x 3.4 MB per run uncompressed."""
    return {
        "seed": 0, "device": "cpu",
        "generate": {"dataset_seeds": [1, 2, 3, 4, 5], "progress": False},
        # a write block of 64 runs is 2 arrays x 64 x 101 x 4225 x 4 B = 218 MB: the generator's working set
        "store": {"chunk_runs": 8, "chunk_steps": 32, "shard_runs": 64, "cname": "zstd", "clevel": 1,
                  "shuffle": "shuffle"},
        "split": {"train": 0.5, "val": 0.25, "test": 0.25},
        "tasks": {"wide": {"kind": "mlp_regression", "dim": 64, "hidden": [64], "n_samples": 64, "batch_size": 0,
                           "runs_per_dataset": runs_per_dataset, "steps": 100, "record_every": 1}},
        "stores": {STORE: {"task": "wide", "optimizer": {"name": "momentum", "lr": 0.02, "momentum": 0.9}}},
        "forecast": {"prefix_end": 20, "horizons": [40, 60, 80, 100]},
        "train": {"seed": 0, "models": ["last_value", "linear"]},
        "models": {"last_value": {"kind": "last_value"}, "linear": {"kind": "linear", "window": 5}},
        "evaluate": {"trajectory_params": 4},
        "report": {"title": "memory benchmark", "target_task": "wide"},
    }


def measure(name: str, args: list[str], cwd: Path) -> dict:
    """Run one `gfm` command under /usr/bin/time -v; its peak RSS, wall time and exit status."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "gfm", *args], cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0 or rss is None:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"stage": name, "peak_rss_bytes": int(rss.group(1)) * 1024, "wall_s": round(wall, 1)}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/gfm-membench")
    ap.add_argument("--runs", type=int, default=360, help="runs per dataset seed (5 seeds)")
    ap.add_argument("--keep", action="store_true", help="keep the store and outputs")
    ap.add_argument("--reuse", action="store_true", help="keep a store left by --keep (same --runs); skip generate")
    args = ap.parse_args(argv)
    root = Path(args.out)
    p = ["--params", "params.yaml"]
    st, sp = "wide/momentum.zarr", "wide/momentum.json"
    reuse = args.reuse and (root / st / "zarr.json").is_file()
    if reuse:
        for child in root.iterdir():  # everything but the store is made again
            if child.name != "wide":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    else:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(study(args.runs), sort_keys=False))
    rows = [] if reuse else [measure("generate", ["generate", *p, "--store", STORE, "--out", st, "--quiet"], root)]
    rows.append(measure("split", ["split", *p, "--in", st, "--out", sp], root))
    for model in ("last_value", "linear"):
        rows.append(measure(f"train {model}", ["train", *p, "--store", STORE, "--model", model, "--split", sp,
                                                "--in", st, "--out", f"models/{model}", "--quiet", "--threads", "2"],
                            root))
    rows.append(measure("forecast", ["forecast", *p, "--store", STORE, "--in", st, "--split", sp, "--models",
                                     "models", "--out", "forecasts"], root))
    rows.append(measure("evaluate", ["evaluate", *p, "--store", STORE, "--in", st, "--split", sp, "--forecasts",
                                     "forecasts", "--metrics", "metrics.json", "--plots", "plots"], root))
    rows.append(measure("check (store)", ["check", st], root))
    meta = json.loads((root / st / "zarr.json").read_text())["attributes"]
    R, T, P = meta["n_runs"], meta["n_records"], meta["n_params"]
    result = {"runs": R, "records": T, "params": P, "store_bytes_on_disk": du(root / st),
              "store_bytes_uncompressed": R * T * P * 4 * (1 + len(meta["state_names"])), "cpus": os.cpu_count(), "stages": rows,
              "limit_bytes": LIMIT_BYTES, "all_under_limit": all(r["peak_rss_bytes"] < LIMIT_BYTES for r in rows)}
    (root / "memory.json").write_text(json.dumps(result, indent=1) + "\n")
    gb = 1 << 30
    print(f"store: {R} runs x {T} records x {P} params; {result['store_bytes_on_disk'] / gb:.2f} GiB on disk, "
          f"{result['store_bytes_uncompressed'] / gb:.2f} GiB uncompressed (weights + state, float32)")
    print("| stage | peak RSS | wall |\n|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['peak_rss_bytes'] / gb:.2f} GiB | {r['wall_s']} s |")
    print(f"every stage under {LIMIT_BYTES / gb:.0f} GiB: {result['all_under_limit']}")
    if not args.keep:
        shutil.rmtree(root)
    return 0 if result["all_under_limit"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
