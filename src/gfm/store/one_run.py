"""One run at a time (:mod:`gfm.recording.recorder`): a one-run trajectory store that grows as its run is recorded, and
appending a finished one to a store of earlier runs.

A recorded run does not know its length in advance: its arrays grow along the step axis, one chunk of
``chunk_steps`` records per write, and a finished one-run store is then renamed into place or appended to a
store of earlier runs. Chunks hold one run each (no shards), with the codec of the ``store:`` defaults. The
arrays are those of every store (:mod:`gfm.store.arrays`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gfm.artifacts.outputs import TRAJECTORY_STORE, marked, replace_output
from gfm.artifacts.zarr_files import LOCK_FILE, chunk_counts
from gfm.config import StoreLayoutConfig
from gfm.store.arrays import ALL_CHUNKS, all_chunks, compressor, create_eval_arrays
from gfm.store.durable import claim_partial, empty_dir

__all__ = ["create_run_group", "add_eval_arrays", "finish_run_group", "append_run"]


def create_run_group(tmp: Path, *, n_params: int, state_names: tuple[str, ...], chunk_steps: int,
                     chunks: StoreLayoutConfig | None = None) -> zarr.Group:
    """An empty one-run store at ``tmp``, marked as a trajectory store from its first write (a writer's
    leftover there is replaced; anything else is refused). The writer's lock file there (:func:`gfm.store.durable.lock_partial`)
    is kept: it must stay the file the caller holds."""
    if tmp.exists() or tmp.is_symlink():
        claim_partial(tmp)  # a writer's leftover, or refused untouched
        empty_dir(tmp, keep=LOCK_FILE)
    # mode "a" on the emptied directory: zarr's mode "w" would remove the whole directory, lock file included
    g = zarr.open_group(tmp, mode="a", zarr_format=3)
    g.attrs.update(marked(TRAJECTORY_STORE, {}))
    comp = compressor(chunks or StoreLayoutConfig())
    P, C = n_params, chunk_steps
    for name in ("weights", *(f"state/{s}" for s in state_names)):
        g.create_array(name, shape=(1, 0, P), dtype="float32", chunks=(1, C, P), compressors=comp,
                       fill_value=np.nan, dimension_names=("run", "step", "param"))
    for name in ("loss", "lr"):
        g.create_array(name, shape=(1, 0), dtype="float32", chunks=(1, C), compressors=comp,
                       fill_value=np.nan, dimension_names=("run", "step"), config=ALL_CHUNKS)
    return g


def add_eval_arrays(g: zarr.Group, x: np.ndarray, y: np.ndarray, chunks: StoreLayoutConfig | None = None) -> None:
    """Put one run's held-out evaluation data (:mod:`gfm.store.eval_data`, already validated) into the one-run store
    ``g``: ``eval/x`` (1, sample, *input_shape) and ``eval/y`` (1, sample), one chunk per run."""
    create_eval_arrays(g, n_runs=1, x_shape=x.shape, y_dtype=str(y.dtype), run_chunk=1, chunks=chunks)
    all_chunks(g["eval/x"])[0] = x
    all_chunks(g["eval/y"])[0] = y


def finish_run_group(g: zarr.Group, tmp: Path, path: Path, *, loss: np.ndarray, fields: dict[str, np.ndarray],
                     attrs: dict[str, Any], chunks: StoreLayoutConfig | None = None) -> None:
    """Complete the one-run store ``g`` at ``tmp`` (final weights and loss, per-run fields, ``attrs``) and
    rename it to ``path``, replacing only a trajectory store there (gfm.artifacts.outputs)."""
    comp = compressor(chunks or StoreLayoutConfig())
    T, P = g["weights"].shape[1:]
    g.create_array("final/weights", data=g["weights"][:, T - 1], chunks=(1, P), compressors=comp,
                   dimension_names=("run", "param"), config=ALL_CHUNKS)
    g.create_array("final/loss", data=loss[None, -1], chunks=(1,), compressors=comp, dimension_names=("run",),
                   config=ALL_CHUNKS)
    for k, v in fields.items():
        g.create_array(f"runs/{k}", data=v, chunks=(1,), compressors=comp, dimension_names=("run",),
                       config=ALL_CHUNKS)
    attrs = json.loads(json.dumps(attrs))
    complete = attrs.pop("complete", None)  # the record before the flag, as StoreWriter.finish
    g.attrs.update({**attrs, "chunks": chunk_counts(tmp)})
    if complete is not None:
        g.attrs["complete"] = complete
    replace_output(tmp, path, TRAJECTORY_STORE, keep_tmp_on_refusal=True)


def append_run(main: zarr.Group, g: zarr.Group, *, loss: np.ndarray, fields: dict[str, np.ndarray],
               dataset_seeds: list[int], chunk_steps: int) -> None:
    """Add the one-run store ``g`` as the last run of the finished store ``main`` (same layout, optimizer state,
    number of records and evaluation data shapes: the caller checks). ``main`` is flagged incomplete while it
    grows."""
    R, T, P = int(main.attrs["n_runs"]), *g["weights"].shape[1:]
    main.attrs["complete"] = False  # readers refuse the store while it grows
    for name in ("weights", *(f"state/{s}" for s in main.attrs["state_names"])):
        arr = all_chunks(main[name])
        arr.resize((R + 1, T, P))
        for s in range(0, T, chunk_steps):  # bounded memory: one chunk of one run at a time
            arr[R, s : s + chunk_steps] = g[name][0, s : s + chunk_steps]
    for name in ("loss", "lr"):
        arr = all_chunks(main[name])
        arr.resize((R + 1, T))
        arr[R] = g[name][0]
    arr = all_chunks(main["final/weights"])
    arr.resize((R + 1, P))
    arr[R] = g["weights"][0, T - 1]
    arr = all_chunks(main["final/loss"])
    arr.resize((R + 1,))
    arr[R] = loss[-1]
    for k, v in fields.items():
        arr = all_chunks(main[f"runs/{k}"])
        arr.resize((R + 1,))
        arr[R] = v[0]
    if "eval" in g:  # held-out evaluation data (gfm.store.eval_data): the caller checked both stores hold it alike
        for name in ("eval/x", "eval/y"):
            arr = all_chunks(main[name])
            arr.resize((R + 1, *arr.shape[1:]))
            arr[R] = g[name][0]
    main.attrs.update({"n_runs": R + 1, "dataset_seeds": dataset_seeds})
    # the record of the grown store (its files counted, not those of the store it grew from), then the flag
    main.attrs.update({"chunks": chunk_counts(main.store.root), "complete": True})
