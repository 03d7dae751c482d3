"""Writing a trajectory store of a known size, block by block (``gfm generate``, ``gfm import``,
``gfm.record_runs``): :func:`create_trajectory_store` creates (or resumes) it under ``<path>.partial``, and
:class:`StoreWriter` writes each block, marks it durable and renames the finished store into place.

The store's arrays, and what every writer shares: :mod:`gfm.store.arrays`. The writer's lock and the flushes:
:mod:`gfm.store.durable`. A recorded run of unknown length: :mod:`gfm.store.one_run`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from gfm.artifacts.outputs import TRAJECTORY_STORE, claim_output, marked, replace_output
from gfm.artifacts.zarr_files import DONE_DIR, LOCK_FILE, chunk_counts, foreign_files_on_disk, partial_path
from gfm.config import StoreLayoutConfig
from gfm.core.layout import ParamSpec
from gfm.store.arrays import ALL_CHUNKS, SCHEMA_VERSION, all_chunks, compressor
from gfm.store.durable import claim_partial, empty_dir, fsync_dir, fsync_tree, lock_writer

__all__ = ["StoreWriter", "create_trajectory_store"]


def _finish_hook(stage: str, writer: StoreWriter) -> None:
    """No-op; tests replace it to act inside :meth:`StoreWriter.finish` (``"flagged"``: the store is flagged
    complete and flushed, not yet renamed; ``"renamed"``: renamed, the lock still held)."""


@dataclass
class StoreWriter:
    """Writes a store block by block under its ``.partial`` path; :meth:`finish` renames it into place."""

    path: Path
    group: zarr.Group
    n_runs: int
    block_runs: int
    lock_fd: int | None = None

    @property
    def tmp(self) -> Path:
        return partial_path(self.path)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_runs / self.block_runs)

    def block_range(self, b: int) -> range:
        return range(b * self.block_runs, min((b + 1) * self.block_runs, self.n_runs))

    def done_blocks(self) -> set[int]:
        if self.group.attrs.get("complete") is True:  # killed inside finish(): every block is written
            return set(range(self.n_blocks))
        d = self.tmp / DONE_DIR
        return {int(p.stem) for p in d.glob("*.done")} if d.is_dir() else set()

    def write_block(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        """Write block ``b`` (every array's rows for runs ``block_range(b)``), then mark it durable."""
        self.write_rows(self.block_range(b).start, arrays)
        self.mark_done(b)

    def write_rows(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write every array's rows from run ``start`` on: a whole block, or a part of one when a block is too
        large to hold in memory at once (gfm import); :meth:`mark_done` then marks the block durable."""
        for name, value in arrays.items():
            all_chunks(self.group[name])[start : start + len(value)] = value

    def mark_done(self, b: int) -> None:
        """Flush the written block ``b`` to disk and mark it durable (a resumed writer skips it)."""
        fsync_tree(self.tmp)
        marker_dir = self.tmp / DONE_DIR
        marker_dir.mkdir(exist_ok=True)
        (marker_dir / f"{b:06d}.done").touch()
        fsync_tree(marker_dir)

    def finish(self, verify: Callable[[Path], object] | None = None) -> Path:
        """Mark complete, drop the block markers and rename ``.partial`` into place (atomic on one fs).

        ``verify`` (gfm import: ``gfm check``'s rules) is called with the flagged ``.partial`` store before
        the rename; it refuses by raising, which unflags the store and leaves it where it is.

        The writer's lock is held until the store is in place: a POSIX lock belongs to the open file, and the
        rename moves the lock file along with the store, so a second writer started at any moment before the
        rename is refused (it can neither reuse this flagged store nor remove what the rename puts in place),
        and one started after it finds no partial store and starts a new one. The lock file is removed from
        the finished store only after the rename; a writer killed in between leaves an empty ``.writer.lock``
        in it, which :func:`foreign_files_on_disk` counts as the store's own.
        """
        missing = set(range(self.n_blocks)) - self.done_blocks()
        if missing:
            raise RuntimeError(f"cannot finish {self.path}: blocks {sorted(missing)} were not written")
        # the record before the flag: a store flagged complete always says what complete means
        self.group.attrs["chunks"] = chunk_counts(self.tmp)
        self.group.attrs["complete"] = True
        shutil.rmtree(self.tmp / DONE_DIR, ignore_errors=True)
        if verify is not None:
            try:
                verify(self.tmp)
            except BaseException:
                self.group.attrs["complete"] = False
                raise
        fsync_tree(self.tmp)
        _finish_hook("flagged", self)
        # an old store at the path is removed only if it is a trajectory store (gfm.artifacts.outputs); anything else
        # there is refused and the flagged partial store is kept, so a re-run after moving it away only renames
        replace_output(self.tmp, self.path, TRAJECTORY_STORE, keep_tmp_on_refusal=True)
        fsync_dir(self.path.parent)
        _finish_hook("renamed", self)
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        fsync_dir(self.path)
        self.release()
        return self.path

    def release(self) -> None:
        """Drop the writer's lock (closing its descriptor); :meth:`finish` does it once the store is in place."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def create_trajectory_store(path: str | Path, *, n_runs: int, n_records: int, layout: tuple[ParamSpec, ...],
                            state_names: tuple[str, ...], run_fields: dict[str, np.dtype],
                            chunks: StoreLayoutConfig, attrs: dict[str, Any],
                            resume: bool = True) -> StoreWriter:
    """Create (or resume) a store under ``<path>.partial``.

    Resuming keeps the finished blocks of an earlier, interrupted writer, but only if its attributes equal
    ``attrs`` (same config, same layout); anything else is wiped and started over.
    """
    path = claim_output(path, TRAJECTORY_STORE)  # a store (to be replaced) or nothing: refused before any write
    tmp = partial_path(path)
    claim_partial(tmp)
    n_params = layout[-1].offset + layout[-1].size
    block = min(chunks.shard_runs, n_runs)
    attrs = marked(TRAJECTORY_STORE, {
        **attrs, "schema_version": SCHEMA_VERSION, "complete": False,
        "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in layout],
        "n_runs": n_runs, "n_records": n_records, "n_params": n_params, "block_runs": block})
    attrs = json.loads(json.dumps(attrs))  # normalise tuples etc. exactly as zarr will store them
    lock = lock_writer(tmp, path)
    try:
        return _open_writer(path, tmp, lock, n_runs=n_runs, n_records=n_records, n_params=n_params, block=block,
                            state_names=state_names, run_fields=run_fields, chunks=chunks, attrs=attrs,
                            resume=resume)
    except BaseException:
        os.close(lock)
        raise


def _open_writer(path: Path, tmp: Path, lock: int, *, n_runs: int, n_records: int, n_params: int, block: int,
                 state_names: tuple[str, ...], run_fields: dict[str, np.dtype], chunks: StoreLayoutConfig,
                 attrs: dict[str, Any], resume: bool) -> StoreWriter:
    if resume and (tmp / "zarr.json").is_file():
        try:
            group = zarr.open_group(tmp, mode="r+")
            # "complete" and "chunks": a writer killed inside finish(), between the record and the rename
            kept = {k: v for k, v in group.attrs.items() if k != "chunks"}
            if {**kept, "complete": False} == attrs:
                # A writer killed inside zarr's own write of a chunk leaves its temporary file (`*.partial`)
                # beside the chunk; any such file would be renamed into the finished store. Only the store's
                # own files are kept, so a resumed store is byte-identical to an uninterrupted one.
                for f in foreign_files_on_disk(tmp):
                    f.unlink()
                return StoreWriter(path, group, n_runs, block, lock)
        except Exception:  # noqa: BLE001 - any unreadable leftover is simply rebuilt
            pass
    empty_dir(tmp, keep=LOCK_FILE)  # not rmtree: the lock file must stay the one we hold
    group = zarr.open_group(tmp, mode="a", zarr_format=3)
    comp = compressor(chunks)
    step_chunk = min(chunks.chunk_steps, n_records)
    padded_steps = math.ceil(n_records / step_chunk) * step_chunk
    run_chunk = math.gcd(chunks.chunk_runs, block)  # a shard must hold whole chunks (12 runs, chunks of 8 -> 4)
    for name in ("weights", *(f"state/{s}" for s in state_names)):
        group.create_array(name, shape=(n_runs, n_records, n_params), dtype="float32",
                           chunks=(run_chunk, step_chunk, n_params), shards=(block, padded_steps, n_params),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step", "param"))
    for name in ("loss", "lr"):
        group.create_array(name, shape=(n_runs, n_records), dtype="float32", chunks=(block, n_records),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step"), config=ALL_CHUNKS)
    group.create_array("final/weights", shape=(n_runs, n_params), dtype="float32", chunks=(block, n_params),
                       compressors=comp, fill_value=np.nan, dimension_names=("run", "param"), config=ALL_CHUNKS)
    group.create_array("final/loss", shape=(n_runs,), dtype="float32", chunks=(block,), compressors=comp,
                       fill_value=np.nan, dimension_names=("run",), config=ALL_CHUNKS)
    for name, dtype in run_fields.items():
        group.create_array(f"runs/{name}", shape=(n_runs,), dtype=dtype, chunks=(block,), compressors=comp,
                           fill_value=0, dimension_names=("run",), config=ALL_CHUNKS)
    group.attrs.update(attrs)
    return StoreWriter(path, group, n_runs, block, lock)
