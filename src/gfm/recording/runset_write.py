"""The store :func:`gfm.record_runs` writes once its runs are recorded: the finished one-run stores in the work
directory, in the order of the ``runs.record`` calls, written into one store in the generated chunk layout, a
bounded part of a block at a time (:func:`write_blocks`), with the attributes the runs together say
(:func:`store_attrs`), checked with ``gfm check``'s rules before it is put in place (:func:`verify_store`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gfm.config import StoreLayoutConfig
from gfm.recording.capture import RecordError
from gfm.store.arrays import create_eval_arrays, eval_chunk_runs
from gfm.store.scan import check_problem

__all__ = ["Run", "fitted_layout", "stacked_fields", "store_attrs", "write_blocks", "verify_store"]

_PART_BYTES = 256 << 20  # weights, state and evaluation data read and written at once by the final write
# root attributes that create_trajectory_store writes itself
_STORE_OWN = {"schema_version", "complete", "layout", "n_runs", "n_records", "n_params", "block_runs", "chunks",
              "gfm_output"}


@dataclass(frozen=True)
class Run:
    """A finished run in the work directory and what the store needs of it beyond its arrays."""

    path: Path
    attrs: dict[str, Any]
    fields: dict[str, np.ndarray]  # runs/<name>, one value each


def fitted_layout(chunks: StoreLayoutConfig, n_runs: int) -> StoreLayoutConfig:
    """The layout of a store of ``n_runs`` runs: fewer runs than ``shard_runs`` make one block, which zarr can
    only split into chunks of a divisor of its run count, so take the largest one up to ``chunk_runs`` (where
    store.py would take the greatest common divisor: 1 run per chunk for 3 runs and ``chunk_runs`` 4)."""
    if n_runs < chunks.shard_runs:
        runs = max(d for d in range(1, min(chunks.chunk_runs, n_runs) + 1) if n_runs % d == 0)
        return dataclasses.replace(chunks, chunk_runs=runs, shard_runs=n_runs)
    return chunks


def stacked_fields(runs: list[Run]) -> dict[str, np.ndarray]:
    """Every run's per-run fields, ``index`` renumbered: a run's position among the runs of its dataset seed."""
    fields = {name: np.concatenate([r.fields[name] for r in runs]) for name in runs[0].fields}
    seeds = fields["dataset_seed"]
    index = np.zeros(len(runs), dtype=np.int64)
    for d in np.unique(seeds):
        index[seeds == d] = np.arange(int((seeds == d).sum()))
    fields["index"] = index
    return fields


def store_attrs(runs: list[Run], fields: dict[str, np.ndarray]) -> dict[str, Any]:
    """The store's root attributes: the first run's, with what the runs together say (module docstring)."""
    attrs = {k: v for k, v in runs[0].attrs.items() if k not in _STORE_OWN}
    opt = dict(attrs["optimizer"])
    for key in opt.keys() - {"name", "schedule"}:
        values = fields[key]
        opt[key] = float(values[0]) if (values == values[0]).all() else "per run"
    sources = sorted({str(r.attrs.get("loss_source")) for r in runs})
    attrs.update({"source": "gfm.record_runs", "optimizer": opt, "loss_source": ", ".join(sources),
                  "dataset_seeds": sorted(int(d) for d in np.unique(fields["dataset_seed"]))})
    return attrs


def write_blocks(writer: Any, runs: list[Run], fields: dict[str, np.ndarray], state_names: tuple[str, ...],
                  eval_data: list | None, chunks: StoreLayoutConfig) -> None:
    """Every run's arrays into the store, a bounded part of a block (whole chunks of runs) at a time."""
    g0 = zarr.open_group(runs[0].path, mode="r")
    T, P = g0["weights"].shape[1:]
    per_run = T * P * 4 * (1 + len(state_names))
    names = ["weights", "loss", "lr", *(f"state/{s}" for s in state_names), "final/weights", "final/loss"]
    if eval_data is not None:
        x_shape, y_dtype = tuple(eval_data[0]), eval_data[1]
        per_run += 4 * int(np.prod(x_shape)) + 8 * x_shape[0]
        create_eval_arrays(writer.group, n_runs=len(runs), x_shape=x_shape, y_dtype=y_dtype, chunks=chunks,
                           run_chunk=eval_chunk_runs(x_shape, writer.block_runs))
        names += ["eval/x", "eval/y"]
    part = max(1, _PART_BYTES // (per_run * chunks.chunk_runs)) * chunks.chunk_runs
    for b in range(writer.n_blocks):
        rows = writer.block_range(b)
        for start in range(rows.start, rows.stop, part):
            stop = min(start + part, rows.stop)
            arrays = _read_runs(runs[start:stop], names)
            arrays.update({f"runs/{k}": v[start:stop] for k, v in fields.items()})
            writer.write_rows(start, arrays)
        writer.mark_done(b)


def _read_runs(runs: list[Run], names: list[str]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the one-run stores ``runs``, stacked along the run axis."""
    out: dict[str, np.ndarray] = {}
    for j, run in enumerate(runs):
        g = zarr.open_group(run.path, mode="r")
        for name in names:
            row = g[name][0]
            if name not in out:
                out[name] = np.empty((len(runs), *np.shape(row)), dtype=g[name].dtype)
            out[name][j] = row
    return out


def verify_store(tmp: Path, path: Path) -> None:
    """``gfm check`` of the written store before it is put in place."""
    problem = check_problem(tmp)
    if problem:
        raise RecordError(f"{path}: the written store fails gfm check ({problem}); nothing was put in place")
