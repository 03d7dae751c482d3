"""Zarr store benchmark: write and read throughput, compression and file count on real trajectories.

It generates one real store of ``params.yaml`` (untimed), reads it into memory, then times:

* write: every block written the way ``gfm generate`` writes it (:func:`gfm.store.writer.create_trajectory_store`,
  ``write_block`` with its fsync, ``finish``), from the in-memory arrays, so only the store is measured;
* the three reads of docs/architecture.md §2 on the finished store: "first k steps of all runs" (``prefix``, k =
  ``forecast.prefix_end``), "one whole run" (``weights`` and every ``state/*`` of one run) and "final step of
  all runs" (``final``); plus the final step read from the big ``weights`` array, to show why ``final/`` exists.

Throughput is uncompressed bytes delivered per second (MB = 1e6 bytes), median of ``--repeats``. Reads hit the
OS page cache (the store was just written; dropping caches needs root), so they measure decompression and
Zarr overhead, not the disk.

Usage::

    python -m benchmarks.store_io                                 # mlp_regression-adam, 1000 runs
    python -m benchmarks.store_io --store digits-adam --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

from gfm.config import load_params
from gfm.core.optimizers import STATE_NAMES
from gfm.stages import generate
from gfm.store.reader import open_trajectories
from gfm.store.writer import create_trajectory_store
from gfm.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


def array_paths(group: zarr.Group, prefix: str = "") -> list[str]:
    """Every array of a group, recursively, as paths relative to it."""
    out = [f"{prefix}{name}" for name, _ in group.arrays()]
    for name, sub in group.groups():
        out += array_paths(sub, f"{prefix}{name}/")
    return sorted(out)


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    size = files = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            size += os.path.getsize(os.path.join(dirpath, n))
            files += 1
    return size, files


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def nbytes(result: object) -> int:
    if isinstance(result, tuple | list):
        return sum(nbytes(r) for r in result)
    return int(np.asarray(result).nbytes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.store_io", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--store", default="mlp_regression-adam", help="store key of params.yaml")
    ap.add_argument("--repeats", type=int, default=5, help="timings per measurement; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats: got {args.repeats}; expected at least 1")
    params = load_params(args.params)
    if args.store not in params.stores:
        ap.error(f"--store: got {args.store!r}; expected one of {sorted(params.stores)}")
    spec, task_cfg = params.lookup_store(args.store)
    task = make_task(task_cfg)
    work = Path(tempfile.mkdtemp(prefix="gfm-store-io-", dir=args.workdir))
    try:
        src = work / "source.zarr"
        t0 = time.perf_counter()
        generate.run(params, args.store, out=src, progress=False)
        gen_s = time.perf_counter() - t0
        group = zarr.open_group(src, mode="r")
        data = {name: group[name][:] for name in array_paths(group)}
        raw = sum(a.nbytes for a in data.values())
        run_fields = {name.split("/", 1)[1]: a.dtype for name, a in data.items() if name.startswith("runs/")}

        def write(i: int) -> Path:
            out = work / f"write{i}.zarr"
            writer = create_trajectory_store(
                out, n_runs=len(data["loss"]), n_records=task_cfg.n_records, layout=task.layout,
                state_names=STATE_NAMES[spec.optimizer.name], run_fields=run_fields, chunks=params.store,
                attrs=generate.store_attrs(params, args.store), resume=False)
            for b in range(writer.n_blocks):
                rows = writer.block_range(b)
                writer.write_block(b, {name: a[rows.start : rows.stop] for name, a in data.items()})
            return writer.finish()

        write_times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            out = write(i)
            write_times.append(time.perf_counter() - t0)
            if i:  # keep one copy to read from
                shutil.rmtree(out)
        store_path = work / "write0.zarr"
        disk, files = disk_usage(store_path)
        per_array = {}
        for name in ("weights", *(f"state/{s}" for s in STATE_NAMES[spec.optimizer.name]), "loss", "final/weights"):
            size, n = disk_usage(store_path / name)
            per_array[name] = {"raw_bytes": int(data[name].nbytes), "disk_bytes": size, "files": n,
                               "ratio": data[name].nbytes / size}

        store = open_trajectories(store_path)
        k = params.forecast.prefix_end
        mid = store.n_runs // 2
        reads = {
            f"first {k + 1} steps of all runs (prefix({k}))": lambda: store.prefix(k),
            "one whole run (weights + state)": lambda: [store.weights[mid], *(store.state(s)[mid] for s in store.state_names)],
            "final step of all runs (final())": lambda: store.final(),
            "final step of all runs from weights[:, -1]": lambda: store.weights[:, -1],
        }
        read_rows = []
        for label, fn in reads.items():
            fn()  # first touch: zarr metadata, page cache
            s, result = median_time(fn, args.repeats)
            read_rows.append({"read": label, "bytes": nbytes(result), "seconds": s, "mb_s": nbytes(result) / s / 1e6})

        w = statistics.median(write_times)
        report = {
            "store": args.store, "runs": store.n_runs, "records": store.n_records, "params": store.n_params,
            "layout": {"chunk_runs": params.store.chunk_runs, "chunk_steps": params.store.chunk_steps,
                       "shard_runs": params.store.shard_runs, "codec": f"blosc {params.store.cname} "
                       f"clevel {params.store.clevel} {params.store.shuffle}"},
            "generate_run_seconds": gen_s, "raw_bytes": raw, "disk_bytes": disk, "files": files,
            "compression_ratio": raw / disk, "write_seconds": w, "write_mb_s": raw / w / 1e6, "per_array": per_array,
            "reads": read_rows, "repeats": args.repeats, "load_average": os.getloadavg()[0],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"# {report['store']}: {report['runs']} runs x {report['records']} records x {report['params']} params; "
          f"{report['layout']}; gfm generate took {gen_s:.1f}s; load average {report['load_average']:.2f}")
    print(f"# {files} files, {raw / 1e6:.1f} MB raw -> {disk / 1e6:.1f} MB on disk (ratio {raw / disk:.2f})")
    print("| measurement | MB (uncompressed) | seconds (median) | MB/s |")
    print("|---|---|---|---|")
    print(f"| write whole store (incl. fsync per block) | {raw / 1e6:.2f} | {w:.3f} | {raw / w / 1e6:.0f} |")
    for r in read_rows:
        print(f"| read: {r['read']} | {r['bytes'] / 1e6:.3f} | {r['seconds']:.4f} | {r['mb_s']:.0f} |")
    print("\n| array | raw MB | on disk MB | ratio | files |")
    print("|---|---|---|---|---|")
    for name, a in per_array.items():
        print(f"| {name} | {a['raw_bytes'] / 1e6:.2f} | {a['disk_bytes'] / 1e6:.2f} | {a['ratio']:.2f} | {a['files']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
