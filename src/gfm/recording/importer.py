"""``gfm import``: trajectories recorded elsewhere (NumPy arrays) -> a normal trajectory store.

Usage::

    gfm import runs.npz data/imported/runs.zarr                    # metadata from runs.meta.yaml (or .json)
    gfm import weights.npy out.zarr --meta meta.json --params params.yaml   # chunking from params' `store:`

Input:

* ``.npy``: the weights alone, shaped (run, step, param) (memory-mapped, streamed block by block);
* ``.npz``: ``weights`` (run, step, param) and optionally ``loss`` (run, step), ``lr`` (run, step),
  ``state_<name>`` (run, step, param) for the optimizer's state (``momentum_buffer``, ``exp_avg``,
  ``exp_avg_sq``, ``square_avg``), ``dataset_seed`` (run,) and held-out evaluation data ``eval_x`` (run,
  sample, *input_shape) floats with ``eval_y`` (run, sample) float targets or integer class labels (both or
  neither; stored as ``eval/x``, ``eval/y``, :mod:`gfm.store.eval_data`), each in C order (what ``np.savez`` writes for
  an ordinary array). Only each array's header is read up front; the data is streamed out of the archive
  as the store is written, a part of a block of runs at a time (at most
  :data:`~gfm.recording.import_source.PART_BYTES` of weights and state), so memory holds a part, whatever the arrays
  expand to.

Step s of the arrays is optimizer step ``s * record_every``; step 0 is the initialisation.

Metadata (YAML, safe loader, or JSON)::

    optimizer: {name: momentum, lr: 0.01, momentum: 0.9}   # sgd | momentum | nesterov | adam | adamw | rmsprop; a hyper-parameter
                                                            # is a number or a list with one value per run
    record_every: 1            # optional (1)
    steps: 200                 # optional ((n_step - 1) * record_every); must equal it
    layout:                    # optional: the tensors of the flat vector, in order (default one tensor
      - {name: 0.weight, shape: [10, 1]}                   # "weights" of shape [param]); load_into uses it
      - {name: 0.bias, shape: [10]}
    dataset_seed: 0            # optional: one seed for all runs, or a list (overridden by the npz array)
    name: imported             # optional: the store's task name (key <name>-<optimizer>)
    missing_state: error       # optional: error | zeros, when the optimizer has state and the npz lacks it
    activation: tanh           # optional: the activation between the layers (gfm.core.network.ACTIVATIONS), null
    loss: mse                  # optional: the training loss (mse | cross_entropy | least_squares), null

``activation`` and ``loss`` go into the store's root attribute ``network`` (absent = null = not known): a
forecaster that rebuilds the network's function (``gfm_function``) refuses a store whose activation is not
known rather than assume one. A ``.npy`` source carries no evaluation data.

Missing pieces are filled the way the rest of the pipeline expects, and said so in the store's attributes:
``lr`` = the run's ``lr`` at every step; a missing momentum buffer is reconstructed exactly from the weights
when ``record_every`` is 1 (momentum: w_k = w_{k-1} - lr_{k-1} b_k; nesterov: w_k = w_{k-1} - lr_{k-1}
((1 + mu) b_k - mu b_{k-1}) from b_0 = 0, the start of training); other missing state is an error unless
``missing_state: zeros``; a missing ``loss`` is NaN (``loss_source: none``), and then ``diverged`` only looks
at the weights (and state).

Why NaN for a loss that was not recorded: any number would be a lie that evaluate would score as a training
loss; NaN cannot be mistaken for one, and the attribute ``loss_source: none`` tells readers (and ``gfm
check``, which accepts NaN loss only under that attribute, and then requires it to be NaN everywhere) that
no loss exists. The forecasters never read the loss.

Hostile inputs: the source is opened only if it is a regular file; an array header naming an object dtype is
refused, never unpickled; every array's dtype, shape and byte size are checked before a value is read, and
the metadata file is read bounded in size and nesting depth (``gfm.artifacts.inputs``). What ``gfm check`` would refuse
in the store (a layout of negative, zero or non-integer sizes, tensor names it does not accept or that repeat,
a non-integer ``steps``) is refused before anything is written; the written store is then checked with
``gfm check``'s own rules before it is flagged complete and put in place, and removed if it fails.

The metadata is read by :mod:`gfm.recording.import_meta`, the source arrays by :mod:`gfm.recording.import_source`; this module
writes the store.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gfm._version import __version__
from gfm.base.errors import shorten
from gfm.config import StoreLayoutConfig
from gfm.core.optimizers import HYPER_NAMES, SPECS, STATE_NAMES
from gfm.recording.import_meta import (
    INT64_MAX,
    ImportMeta,
    TrajectoryImportError,
    default_meta_path,
    load_meta_file,
    read_meta,
)
from gfm.recording.import_source import (
    SourceArray,
    check_arrays,
    check_eval,
    check_lr,
    open_source,
    part_runs,
    source_seeds,
)
from gfm.store.eval_data import value_problem
from gfm.tasks.base import ParamSpec

__all__ = ["import_trajectories"]


def import_trajectories(src: str | Path, dest: str | Path, *, meta: str | Path | dict | None = None,
                        chunks: StoreLayoutConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the trajectories of ``src`` as a trajectory store at ``dest``.

    Args:
        src: a ``.npy`` (weights) or ``.npz`` file, see the module docstring.
        dest: the ``.zarr`` store to create.
        meta: metadata file path or mapping (default: ``<src stem>.meta.yaml|.yml|.json`` beside ``src``).
        chunks: Zarr chunking (default: ``StoreLayoutConfig()``, the defaults of params' ``store:``).
        overwrite: replace an existing store at ``dest``.

    Returns:
        A summary: runs, records, params, optimizer, what was filled in, seconds.

    Raises:
        TrajectoryImportError: unreadable source, bad shapes or metadata, an existing ``dest``, or a written
            store that ``gfm check`` would refuse (then nothing is put at ``dest``).
    """
    t0 = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise TrajectoryImportError(f"{dest} exists; pass --overwrite to replace it")
    arrays, archive = open_source(src)
    try:
        summary = _import(src, dest, arrays, meta, chunks)
    finally:
        for a in arrays.values():
            a.close()
        if archive is not None:
            archive.close()
    return {**summary, "seconds": round(time.perf_counter() - t0, 3)}


def _write_eval(src: Path, writer: Any, arrays: dict[str, SourceArray], rows: range, chunk_runs: int) -> None:
    """Copy the evaluation data of the runs ``rows`` into the store, a chunk of runs at a time, refusing
    non-finite inputs or targets and negative labels as they stream past."""
    x_src, y_src = arrays["eval/x"], arrays["eval/y"]
    for start in range(rows.start, rows.stop, chunk_runs):
        stop = min(start + chunk_runs, rows.stop)
        with np.errstate(over="ignore"):  # past float32's range becomes Inf, refused below
            x = np.asarray(x_src.rows(start, stop), dtype=np.float32)
            y_raw = y_src.rows(start, stop)
            if y_raw.dtype.kind in "iu" and y_raw.size and (int(y_raw.min()) < 0 or int(y_raw.max()) > INT64_MAX):
                raise TrajectoryImportError(f"{src}: eval_y: runs {start}..{stop - 1} hold class labels below 0 or "
                                            "past 2**63 - 1")
            y = np.asarray(y_raw, dtype=np.float32 if y_raw.dtype.kind == "f" else np.int64)
        problem = value_problem(x, y)
        if problem:
            raise TrajectoryImportError(f"{src}: eval data of runs {start}..{stop - 1}: {problem}")
        writer.write_rows(start, {"eval/x": x, "eval/y": y})


def _import(src: Path, dest: Path, arrays: dict[str, SourceArray], meta: str | Path | dict | None,
            chunks: StoreLayoutConfig | None) -> dict[str, Any]:
    from gfm.store.arrays import create_eval_arrays, eval_chunk_runs
    from gfm.store.writer import create_trajectory_store

    if "weights" not in arrays:
        raise TrajectoryImportError(f"{src}: no 'weights' array")
    W = arrays["weights"]
    if W.ndim != 3 or W.shape[1] < 2 or 0 in W.shape or W.dtype.kind != "f":
        raise TrajectoryImportError(f"{src}: weights: got {shorten(str(W.dtype), quote=False)} shape {W.shape}; expected floats "
                                    "shaped (run, step, param) with at least 2 steps")
    R, T, P = W.shape
    if isinstance(meta, dict):
        meta_data, meta_src = meta, "meta"
    else:
        meta_path = Path(meta) if meta is not None else default_meta_path(src)
        if meta_path is None:
            raise TrajectoryImportError(f"{src}: no metadata file; write {src.stem}.meta.yaml beside it or pass --meta")
        meta_data, meta_src = load_meta_file(meta_path), str(meta_path)
    m = read_meta(meta_data, n_runs=R, n_steps=T, n_params=P, source=meta_src)
    check_arrays(src, arrays, R, T)
    check_eval(src, arrays, R, m.network.loss)
    given_seeds = source_seeds(src, arrays, R)
    if "lr" in arrays:
        check_lr(src, arrays["lr"], R, T)
    seeds = given_seeds if given_seeds is not None else m.dataset_seed
    state_names = STATE_NAMES[m.optimizer]
    unexpected = sorted(k for k in arrays if k.startswith("state/") and k[6:] not in state_names)
    if unexpected:
        raise TrajectoryImportError(f"{src}: {unexpected[0]} is not state of {m.optimizer} (it keeps {list(state_names) or 'none'})")
    filled: dict[str, str] = {}
    for s in state_names:
        key = f"state/{s}"
        if key in arrays:
            if arrays[key].shape != W.shape:
                raise TrajectoryImportError(f"{src}: state_{s}: got shape {arrays[key].shape}; expected {W.shape}")
        elif SPECS[m.optimizer].state_from_weights is not None and m.record_every == 1:  # momentum, nesterov
            filled[key] = "reconstructed from the weights (record_every 1)"
        elif m.missing_state == "zeros":
            filled[key] = "zeros (missing_state: zeros)"
        else:
            raise TrajectoryImportError(f"{src}: no state_{s} array: the {m.optimizer} state cannot be recovered from the "
                               "weights; add it to the npz, or set `missing_state: zeros` in the metadata (an "
                               "optimizer-aware forecaster will then start from zero state)")
    if "lr" not in arrays:
        filled["lr"] = "the run's lr at every step"
    if "loss" not in arrays:
        filled["loss"] = "NaN (no loss given)"

    chunks = chunks or StoreLayoutConfig()
    if R < chunks.shard_runs and R % min(chunks.chunk_runs, R):
        # store.py makes a store of fewer runs than shard_runs one shard of R runs, which zarr can only split
        # into inner chunks of a divisor of R: take the largest divisor <= chunk_runs
        chunk_runs = max(d for d in range(1, min(chunks.chunk_runs, R) + 1) if R % d == 0)
        chunks = dataclasses.replace(chunks, chunk_runs=chunk_runs, shard_runs=R)
    hyper_names = [*HYPER_NAMES[m.optimizer], "eps"]
    run_fields = {"dataset_seed": np.dtype("int64"), "index": np.dtype("int64"), "lr_scale": np.dtype("float64"),
                  "diverged": np.dtype("bool"), **{h: np.dtype("float64") for h in hyper_names}}
    index = np.zeros(R, dtype=np.int64)  # position of each run among the runs of its dataset seed
    for d in np.unique(seeds):
        index[seeds == d] = np.arange(int((seeds == d).sum()))
    attrs = {
        "store": f"{m.name}-{m.optimizer}", "task_name": m.name, "seed": None,
        "dataset_seeds": sorted(int(d) for d in np.unique(seeds)),
        "task": {"kind": "imported", "steps": m.steps, "record_every": m.record_every},
        "optimizer": {"name": m.optimizer, **{h: (float(m.hyper[h][0]) if np.all(m.hyper[h] == m.hyper[h][0])
                                                  else "per run") for h in hyper_names},
                      "schedule": {"kind": "imported"}},
        "state_names": list(state_names), "source": f"gfm import {src.name}", "filled": filled,
        "loss_source": "none" if "loss" not in arrays else "imported", "network": m.network.as_attr(),
        "versions": {"gfm": __version__, "numpy": np.__version__, "zarr": __import__("zarr").__version__},
    }
    _refuse_what_check_refuses(src, attrs, m.layout, R, T, P)
    writer = create_trajectory_store(dest, n_runs=R, n_records=T, layout=m.layout, state_names=state_names,
                                     run_fields=run_fields, chunks=chunks, attrs=attrs, resume=False)
    part = part_runs(T, P, len(state_names), chunks.chunk_runs)
    has_eval = "eval/x" in arrays
    try:
        if has_eval:
            eval_runs = eval_chunk_runs(arrays["eval/x"].shape[1:], writer.block_runs)
            create_eval_arrays(writer.group, n_runs=R, x_shape=arrays["eval/x"].shape[1:], run_chunk=eval_runs,
                               y_dtype="float32" if arrays["eval/y"].dtype.kind == "f" else "int64", chunks=chunks)
        for b in range(writer.n_blocks):
            rows = writer.block_range(b)
            for start in range(rows.start, rows.stop, part):
                sub = range(start, min(start + part, rows.stop))
                writer.write_rows(start, _block(arrays, m, filled, seeds, index, sub, T))
            if has_eval:
                _write_eval(src, writer, arrays, rows, eval_runs)
            writer.mark_done(b)
        n_diverged = int(writer.group["runs/diverged"][:].sum())
        writer.finish(verify=lambda tmp: _verify(tmp, dest))
    except BaseException as exc:
        # what this import wrote is of no use to anyone (an import never resumes): gone, lock released
        writer.release()
        shutil.rmtree(writer.tmp, ignore_errors=True)
        if isinstance(exc, (OSError, EOFError, zipfile.BadZipFile, zlib.error)):  # the archive, past its headers
            raise TrajectoryImportError(f"{src}: not a readable NumPy file ({type(exc).__name__}: "
                                        f"{shorten(str(exc), 160, quote=False)})") from None
        raise
    return {"store": str(dest), "runs": R, "records": T, "params": P, "optimizer": m.optimizer,
            "diverged": n_diverged, "filled": filled, "network": m.network.as_attr(),
            "eval_samples": int(arrays["eval/x"].shape[1]) if has_eval else 0}


def _block(arrays: dict[str, SourceArray], m: ImportMeta, filled: dict[str, str], seeds: np.ndarray,
           index: np.ndarray, rows: range, T: int) -> dict[str, np.ndarray]:
    """Every array's values for the runs ``rows``: read from the source, or filled in as ``filled`` says."""
    state_names = STATE_NAMES[m.optimizer]
    hyper_names = [*HYPER_NAMES[m.optimizer], "eps"]
    sl = slice(rows.start, rows.stop)
    w = np.asarray(arrays["weights"].rows(rows.start, rows.stop), dtype=np.float32)  # (block, step, param)
    lr = (np.asarray(arrays["lr"].rows(rows.start, rows.stop), dtype=np.float32) if "lr" in arrays
          else np.repeat(m.hyper["lr"][sl, None], T, axis=1).astype(np.float32))
    loss = (np.asarray(arrays["loss"].rows(rows.start, rows.stop), dtype=np.float32) if "loss" in arrays
            else np.full((len(rows), T), np.nan, dtype=np.float32))
    block = {"weights": w, "loss": loss, "lr": lr, "final/weights": w[:, -1], "final/loss": loss[:, -1]}
    rebuilt = {}
    if any(v.startswith("reconstructed") for v in filled.values()):
        rebuilt = SPECS[m.optimizer].state_from_weights(w, lr, {h: m.hyper[h][sl] for h in hyper_names})
    for s in state_names:
        key = f"state/{s}"
        if key in arrays:
            block[key] = np.asarray(arrays[key].rows(rows.start, rows.stop), dtype=np.float32)
        elif key in filled and filled[key].startswith("reconstructed"):
            block[key] = rebuilt[s]
        else:
            block[key] = np.zeros_like(w)
    finite = np.isfinite(w).reshape(len(rows), -1).all(1)
    if "loss" in arrays:
        finite &= np.isfinite(loss).all(1)
    for s in state_names:  # a run whose state is not finite cannot be forecast from: flag it like check does
        finite &= np.isfinite(block[f"state/{s}"]).reshape(len(rows), -1).all(1)
    block.update({"runs/dataset_seed": seeds[sl], "runs/index": index[sl], "runs/lr_scale": np.ones(len(rows)),
                  "runs/diverged": ~finite, **{f"runs/{h}": m.hyper[h][sl] for h in hyper_names}})
    return block


def _refuse_what_check_refuses(src: Path, attrs: dict[str, Any], layout: tuple[ParamSpec, ...], R: int, T: int,
                               P: int) -> None:
    """The attributes the store will have, through ``gfm check``'s rules for them, before anything is written
    (read_meta refuses each case with a more precise message first; this keeps the two from drifting)."""
    from gfm.store.check import attr_problems

    planned = {**attrs, "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in layout],
               "n_runs": R, "n_records": T, "n_params": P, "block_runs": 1}
    problems = attr_problems(json.loads(json.dumps(planned)))
    if problems:
        raise TrajectoryImportError(f"{src}: gfm check would refuse the store: {problems[0]}")


def _verify(tmp: Path, dest: Path) -> None:
    """``gfm check`` of the written store, before it is put in place (every chunk decoded, a bounded block of
    runs at a time)."""
    from gfm.store.scan import check_problem

    problem = check_problem(tmp)
    if problem:
        raise TrajectoryImportError(f"{dest}: the written store fails gfm check ({problem}); nothing was put in place")
