"""Record many runs of a training loop into one trajectory store, at a cost linear in the number of runs.

Usage::

    import gfm

    with gfm.record_runs("recorded/my_net.zarr") as runs:
        for r in range(48):
            model, opt = make()
            with runs.record(model, opt, dataset_seed=r % 2, loss="mse", eval_data=(xv, yv)) as rec:
                for x, y in loader:
                    ...; opt.step()
                    rec.step(loss)
    # the store is at the path only now, after the outer block has exited cleanly

Why: ``gfm.record(..., mode="a")`` grows a finished store by one run, durably: it links every file of the store
into a staged copy, adds the run, flushes the copy and swaps it in. Each append costs time in the size of the
store, so appending N runs costs more than N times one run (BENCHMARKS.md, "Recording many runs").
``record_runs`` writes each run once, as its own one-run store, and the store once, at the end.

* ``runs.record(model, optimizer, ...)`` takes the keywords of :func:`gfm.record` except ``path``, ``mode``
  and ``overwrite``, and returns a :class:`gfm.recording.recorder.Recorder` (every check it makes on entry is
  ``gfm.record``'s) that writes its run as a one-run store into the work directory ``<path>.runs.partial/`` as
  ``<n>.zarr``, ``n`` counting the calls of ``runs.record`` from 0 ("run n" in messages).
* Runs of one store must agree on what the first finished run recorded: parameter layout, optimizer and its
  state, ``every``, number of records, network (``activation=``, ``loss=``), evaluation data (present or not,
  x shape and y dtype) and per-run fields. A run that differs is refused with a :class:`RecordError` naming
  the run and what differs: on entry to its block for what is known before training, else when its block
  ends, when its directory is removed. The runs recorded so far are kept: catch the error to record more.
* When the outer block exits cleanly, the finished runs, in the order of the ``runs.record`` calls, are written
  into one store at ``path`` in the generated chunk layout (``chunks``: ``chunk_runs`` runs per chunk,
  ``shard_runs`` per block; a store of fewer runs than ``shard_runs`` is one block, chunked by the largest
  divisor of its run count up to ``chunk_runs``, as ``gfm import`` does), a bounded part of a block at a time,
  checked with ``gfm check``'s rules before it is renamed into place (:mod:`gfm.recording.runset_write`). The work
  directory is then removed.
* The store's attributes are those of the first run's store (task name, module, network, versions...), with
  ``source: gfm.record_runs``, the dataset seeds of all runs, each optimizer hyper-parameter's value where
  every run has the same and ``"per run"`` where they differ (``runs/<name>`` holds each run's, as in ``gfm
  import``), and ``loss_source`` the runs' own when they agree, else their values joined by ``", "``.
  ``runs/index`` is a run's position among the runs of its dataset seed.

Failures: an exception in the outer block, or in writing the store, puts nothing at ``path`` (a store that was
there stays as it was). The work directory stays, each finished run in it a readable one-run store
(``gfm.open_trajectories``). A later ``record_runs`` of the same path refuses to start while it is there
unless given ``overwrite=True``, which removes it and starts over (recorded runs are not resumed).

Ownership and concurrency: ``path`` may hold only a trajectory store, replaced only with ``overwrite=True``
(gfm.artifacts.outputs). The store's writer lock (the ``.writer.lock`` in ``<path>.partial``, held by ``gfm generate``
and ``gfm.record`` too) is held from the start of the outer block to its end, so a second writer of the same
store, in another process or in this one, is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from gfm.artifacts.outputs import TRAJECTORY_STORE, claim_output, open_temp_dir, remove_output
from gfm.artifacts.zarr_files import LOCK_FILE, partial_path
from gfm.base.errors import StoreLockedError, shorten
from gfm.config import StoreLayoutConfig
from gfm.core.layout import ParamSpec
from gfm.recording.capture import RecordError
from gfm.recording.recorder import Recorder
from gfm.recording.runset_write import (
    Run,
    fitted_layout,
    stacked_fields,
    store_attrs,
    verify_store,
    write_blocks,
)
from gfm.store.durable import HELD, lock_key, lock_partial, remove_partial
from gfm.store.writer import create_trajectory_store

__all__ = ["record_runs", "RunSet", "WORK_SUFFIX"]

WORK_SUFFIX = ".runs.partial"  # <path><suffix>/<n>.zarr: the runs recorded so far
# what runs of one store must agree on (a signature's keys), in the words a refusal uses
_STATE, _EVAL, _RECORDS = "optimizer state", "evaluation data (eval_data=: x shape, y dtype)", "number of records"
class _RunRecorder(Recorder):
    """A :class:`Recorder` of one run of a :class:`RunSet`: once its one-run store is finished, the set checks
    it against the runs before it and keeps it or removes it."""

    def __init__(self, runset: RunSet, n: int, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._runset, self._n = runset, n

    def finish(self, final_loss: float | torch.Tensor | None = None) -> Path:
        if self._closed:
            return self.path
        path = super().finish(final_loss)
        self._runset._accept(self._n, path)
        return path


def _signature(attrs: Mapping[str, Any], eval_data: Any, *, records: int | None = None,
               fields: list[str] | None = None) -> dict[str, Any]:
    """What every run of one store must agree on, keyed by the words a refusal uses. ``records`` and
    ``fields`` are left out before the run is recorded (not known yet)."""
    sig = {"parameter layout": attrs["layout"], "optimizer": attrs["optimizer"]["name"],
           _STATE: attrs["state_names"], "recording interval (every=)": attrs["task"]["record_every"],
           "network (activation=, loss=)": attrs["network"], _EVAL: eval_data}
    if records is not None:
        sig[_RECORDS] = records
    if fields is not None:
        sig["per-run fields"] = fields
    return sig


def _eval_of(shape: tuple[int, ...], dtype: Any) -> list:
    """Evaluation data as a signature holds it: x (sample, *input_shape) and y's dtype."""
    return [list(shape), str(np.dtype(dtype))]


def _layout_config(chunks: Any) -> StoreLayoutConfig:
    """``chunks`` (a StoreLayoutConfig, a mapping of its fields, or None) checked as params' ``store:`` is."""
    from gfm.base.schema import build

    if chunks is None:
        return StoreLayoutConfig()
    if isinstance(chunks, StoreLayoutConfig):
        chunks = dataclasses.asdict(chunks)
    problems: list[str] = []
    built = build(StoreLayoutConfig, chunks, "chunks", problems) if isinstance(chunks, Mapping) else None
    if built is None or problems:
        raise RecordError(problems[0] if problems else f"chunks={shorten(chunks)}; expected a "
                          "gfm.config.StoreLayoutConfig (params' store: section) or None")
    return built


class RunSet:
    """Records runs into one store; made by :func:`record_runs`, used as a context manager."""

    def __init__(self, path: str | Path, *, chunks: StoreLayoutConfig | None = None, overwrite: bool = False):
        if not isinstance(overwrite, bool):
            raise RecordError(f"overwrite={shorten(overwrite)}; expected True or False")
        self.path = claim_output(path, TRAJECTORY_STORE)  # only ever replaces a trajectory store
        if (self.path.exists() or self.path.is_symlink()) and not overwrite:
            raise RecordError(f"{self.path} exists; pass overwrite=True to replace it once the runs are recorded")
        self.chunks, self.overwrite = _layout_config(chunks), overwrite
        self.work = self.path.with_name(self.path.name + WORK_SUFFIX)
        self._key = lock_key(self.path)
        self._lock: int | None = None
        self._open = self._used = False
        self._handed = False  # the lock handed to the store's writer (which may drop it): see _drop_lock_dir
        self._calls = 0
        self._runs: dict[int, Run] = {}
        self._first: tuple[int, dict[str, Any], tuple[ParamSpec, ...]] | None = None  # n, signature, layout

    @property
    def n_runs(self) -> int:
        """Runs recorded and kept so far."""
        return len(self._runs)

    # --- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> RunSet:
        if self._used:
            raise RecordError(f"{self.path}: a record_runs is used in one `with` block; call gfm.record_runs again")
        self._used = True
        if self._key in HELD:
            raise StoreLockedError(f"{self.path}: another recorder of this process is writing this store (it holds "
                                   f"{partial_path(self.path) / LOCK_FILE}); finish its `with` block first")
        self._lock = lock_partial(self.path)  # refused while another process writes this store
        HELD.add(self._key)
        try:
            self._open_work()
        except BaseException:
            self._drop_lock_dir()
            self._release()
            raise
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._open = False
        try:
            if exc_type is None:
                self._write()
        finally:
            # on an exception: nothing at the path, the work directory kept (module docstring)
            if not self._handed:
                self._drop_lock_dir()
            self._release()

    def _open_work(self) -> None:
        """An empty work directory, marked as ours; a leftover of an interrupted set only with ``overwrite``."""
        if self.work.is_dir() and not self.overwrite \
                and TRAJECTORY_STORE.marked_as(self.work) == TRAJECTORY_STORE.name:
            held = sum(1 for p in self.work.glob("*.zarr"))
            raise RecordError(f"{self.work}: holds {held} runs of an interrupted record_runs of {self.path}; pass "
                              "overwrite=True to discard them and start over, or remove it")
        open_temp_dir(self.path, TRAJECTORY_STORE, suffix=WORK_SUFFIX)  # anything not ours there is refused

    def _drop_lock_dir(self) -> None:
        """Remove ``<path>.partial`` if it holds nothing but the lock file this set made there, while the lock
        is still held (once the store's writer has released it, another writer may own the directory)."""
        tmp = partial_path(self.path)
        try:
            if {p.name for p in tmp.iterdir()} == {LOCK_FILE}:
                remove_partial(tmp)
        except OSError:
            pass

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
            HELD.discard(self._key)

    # --- runs ------------------------------------------------------------------------------------------
    def record(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 1,
               dataset_seed: int = 0, evaluate: Callable[[], Any] | None = None, chunk_steps: int = 32,
               name: str = "recorded", activation: str | None = None, loss: str | None = None,
               eval_data: Any = None) -> Recorder:
        """Record one run of ``model`` under ``optimizer`` into this set: :func:`gfm.record`'s arguments
        without ``path``, ``mode`` and ``overwrite``. Use the result in a ``with`` block and call
        ``rec.step(loss)`` after each optimizer step.

        Raises:
            RecordError: what ``gfm.record`` refuses, a call outside the ``with gfm.record_runs(...)`` block, or
                a run that cannot join the runs recorded so far (known before training: layout, optimizer,
                ``every``, network, evaluation data; the number of records is checked when its block ends).
        """
        if not self._open:
            raise RecordError(f"{self.path}: runs.record() outside its `with gfm.record_runs(...)` block")
        n = self._calls
        rec = _RunRecorder(self, n, self.work / f"{n}.zarr", model, optimizer, every=every, mode="w",
                           overwrite=True, dataset_seed=dataset_seed, evaluate=evaluate, chunk_steps=chunk_steps,
                           name=name, activation=activation, loss=loss, eval_data=eval_data)
        self._calls += 1
        attrs = json.loads(json.dumps(rec.store_attrs(1)))  # the attributes its store will have, but its length
        seen = None if rec.eval is None else _eval_of(rec.eval[0].shape, rec.eval[1].dtype)
        self._check(n, _signature(attrs, seen), "refused before it was recorded")
        return rec

    def _accept(self, n: int, path: Path) -> None:
        """Keep the finished run ``n`` (a one-run store at ``path``), or remove it and refuse it."""
        g = zarr.open_group(path, mode="r")
        attrs = dict(g.attrs)
        seen = _eval_of(g["eval/x"].shape[1:], g["eval/y"].dtype) if "eval" in g else None
        fields = {name: arr[:] for name, arr in g["runs"].arrays()}
        sig = _signature(attrs, seen, records=int(attrs["n_records"]), fields=sorted(fields))
        try:
            self._check(n, sig, "dropped")
        except RecordError:
            remove_output(path, TRAJECTORY_STORE)
            raise
        self._runs[n] = Run(path, attrs, fields)
        if self._first is None:
            layout = tuple(ParamSpec(s["name"], tuple(s["shape"]), s["offset"]) for s in attrs["layout"])
            self._first = (n, sig, layout)

    def _check(self, n: int, sig: dict[str, Any], fate: str) -> None:
        if self._first is None:
            return
        first, want, _ = self._first
        for key, value in sig.items():
            if key in want and want[key] != value:
                raise RecordError(f"{self.path}: run {n} differs from run {first} in its {key}: "
                                  f"{shorten(value, 120)}, not {shorten(want[key], 120)}; the runs of one store must "
                                  f"match, so this run is {fate}; the runs recorded so far are kept")

    # --- the store -------------------------------------------------------------------------------------
    def _write(self) -> None:
        """Write the kept runs into one store at the path, checked before it is put in place; then remove the
        work directory. On failure nothing is at the path and the work directory stays."""
        if not self._runs:
            shutil.rmtree(self.work, ignore_errors=True)
            raise RecordError(f"{self.path}: no run was recorded (record each with `with runs.record(model, "
                              "optimizer) as rec:`); nothing was written")
        if (self.path.exists() or self.path.is_symlink()) and not self.overwrite:
            raise RecordError(f"{self.path} appeared while the runs were recorded; pass overwrite=True to replace "
                              f"it (the runs are kept in {self.work} until a new record_runs of the path)")
        runs = [self._runs[n] for n in sorted(self._runs)]
        _, sig, layout = self._first
        chunks = fitted_layout(self.chunks, len(runs))
        state_names = tuple(sig[_STATE])
        fields = stacked_fields(runs)
        self._handed = True
        writer = create_trajectory_store(
            self.path, n_runs=len(runs), n_records=sig[_RECORDS], layout=layout, state_names=state_names,
            run_fields={k: v.dtype for k, v in fields.items()}, chunks=chunks, attrs=store_attrs(runs, fields),
            resume=False)
        try:
            write_blocks(writer, runs, fields, state_names, sig[_EVAL], chunks)
            writer.finish(verify=lambda tmp: verify_store(tmp, self.path))
        except BaseException:
            writer.release()
            shutil.rmtree(writer.tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.work)


def record_runs(path: str | Path, *, chunks: StoreLayoutConfig | None = None, overwrite: bool = False) -> RunSet:
    """Record many runs of a training loop into one trajectory store at ``path``, written once when the ``with``
    block exits cleanly (module docstring).

    Args:
        path: the ``.zarr`` store to write.
        chunks: the store's chunk layout, a :class:`gfm.config.StoreLayoutConfig` (params' ``store:``;
            default: its defaults, ``chunk_runs`` 8, ``shard_runs`` 256) or a mapping of its fields.
        overwrite: replace a trajectory store at ``path``, and discard the runs an interrupted ``record_runs``
            of the path left in ``<path>.runs.partial``.

    Returns:
        A :class:`RunSet`; use it in a ``with`` block and record each run with ``runs.record(model, optimizer,
        ...)`` (the keywords of :func:`gfm.record` except ``path``, ``mode``, ``overwrite``).

    Raises:
        RecordError: an existing store without ``overwrite``, a bad ``chunks``, a leftover work directory
            without ``overwrite``, no run recorded.
        gfm.artifacts.outputs.OutputError: something that is not a trajectory store at ``path`` (left untouched).
        gfm.base.errors.StoreLockedError: another writer of the store, in this process or another.
    """
    return RunSet(path, chunks=chunks, overwrite=overwrite)
