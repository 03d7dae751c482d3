"""The trajectory store (docs/architecture.md §2): plain Zarr v3, one per (task, optimizer).

Layout (R runs, T recorded steps, P parameters)::

    weights         (run, step, param) float32   step 0 = initialisation
    loss            (run, step)        float32   full training-set loss at each recorded step
    lr              (run, step)        float32   learning rate in force for the update leaving that step
    state/<name>    (run, step, param) float32   optimizer state after the updates up to that step
    final/weights   (run, param)       float32   = weights[:, -1], so "final step of all runs" reads R x P
    final/loss      (run,)             float32
    runs/<field>    (run,)             per-run seed, dataset seed, index, hyper-parameters, ``diverged``
    eval/x, eval/y  (run, sample, ...) optional held-out evaluation data of recorded and imported runs
                                       (:mod:`gfm.store.eval_data`)

Every array is chunked so that each file belongs to exactly one block of ``shard_runs`` runs: a block is
the unit of generation and of durability (a killed writer redoes only unfinished blocks). ``weights`` and
``state/*`` are sharded (one file per block); the inner chunks (``chunk_runs`` x ``chunk_steps`` x P) are the
unit of reading, so "first k steps of all runs" touches only the first ceil(k / chunk_steps) chunk rows.

A store is written under ``<path>.partial`` and renamed into place only when complete; the root attributes
carry ``schema_version``, ``complete``, the generating config, the parameter layout, package versions, the
ownership marker of :mod:`gfm.artifacts.outputs` (``gfm_output``) and the completeness record ``chunks`` (the chunk
files each array holds, :func:`gfm.artifacts.zarr_files.chunk_counts`). Every chunk of the arrays that are not sharded
(``loss``, ``lr``, ``final/*``, ``runs/*``) is written even when it equals the fill value, which zarr skips by
default: a per-run field's fill is 0, so a chunk file that went missing would read as "not diverged", a weight
decay of 0, run index 0. With every chunk written and counted, readers refuse a store whose files disagree with
the record (:mod:`gfm.store.check`). The sharded ``weights`` and ``state/*`` are written as before (their fill
is NaN and record 0 of every run is data, so every shard is written); their shard files are counted too.

This module holds what every writer shares: the schema version, the codec, the rule that every chunk is
written, and the evaluation arrays. The writers: :mod:`gfm.store.writer` (a store of a known size, block by block:
generate, import, record_runs) and :mod:`gfm.store.one_run` (a recorded run of unknown length, and appending it
to a store), both with the writer's lock of :mod:`gfm.store.durable`; :mod:`gfm.store.reader` reads,
:mod:`gfm.store.check` checks, and :mod:`gfm.artifacts.zarr_files` tells a store's own files from foreign ones.
"""

from __future__ import annotations

import math

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gfm.config import StoreLayoutConfig

__all__ = ["SCHEMA_VERSION", "ALL_CHUNKS", "compressor", "all_chunks", "create_eval_arrays", "eval_chunk_runs"]

SCHEMA_VERSION = 1


def compressor(chunks: StoreLayoutConfig) -> BloscCodec:
    """The Blosc codec of every array of a store, from the params section ``store:``."""
    return BloscCodec(cname=chunks.cname, clevel=chunks.clevel, shuffle=chunks.shuffle)


ALL_CHUNKS = {"write_empty_chunks": True}  # a chunk equal to the fill value is written too (module docstring)


def all_chunks(arr: zarr.Array) -> zarr.Array:
    """``arr`` writing every chunk it is given, even one equal to its fill value (module docstring). A sharded
    array is returned as it is: written this way its shards would also hold their all-NaN inner chunks, which
    would change the bytes of every store's weights."""
    return arr if arr.shards is not None else arr.with_config(ALL_CHUNKS)


def create_eval_arrays(g: zarr.Group, *, n_runs: int, x_shape: tuple[int, ...], y_dtype: str, run_chunk: int,
                       chunks: StoreLayoutConfig | None = None) -> None:
    """Empty ``eval/x`` (run, sample, *input_shape) float32 and ``eval/y`` (run, sample) ``y_dtype`` in ``g``
    (held-out evaluation data, :mod:`gfm.store.eval_data`), ``run_chunk`` runs a chunk, every chunk written."""
    comp = compressor(chunks or StoreLayoutConfig())
    dims = ("run", "sample", *(f"input_{i}" for i in range(len(x_shape) - 1)))
    g.create_array("eval/x", shape=(n_runs, *x_shape), dtype="float32", chunks=(run_chunk, *x_shape),
                   compressors=comp, fill_value=np.nan, dimension_names=dims, config=ALL_CHUNKS)
    g.create_array("eval/y", shape=(n_runs, x_shape[0]), dtype=y_dtype, chunks=(run_chunk, x_shape[0]),
                   compressors=comp, fill_value=0, dimension_names=("run", "sample"), config=ALL_CHUNKS)


_EVAL_CHUNK_BYTES = 8 << 20  # most bytes of eval/x in one chunk (whole runs, at least one)


def eval_chunk_runs(sample_shape: tuple[int, ...], block: int) -> int:
    """Runs per chunk of ``eval/x`` (one run's inputs shaped ``sample_shape``): the most whole runs within
    :data:`_EVAL_CHUNK_BYTES` that divide a block of the store (so that no chunk belongs to two blocks), at
    least one."""
    per_run = max(1, math.prod(sample_shape) * 4)
    return max(d for d in range(1, block + 1) if block % d == 0 and (d == 1 or d * per_run <= _EVAL_CHUNK_BYTES))
