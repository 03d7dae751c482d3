"""Record any PyTorch training loop into a trajectory store (the format of ``gfm generate``, store.py).

Usage::

    import gfm

    model, opt = MyNet(), torch.optim.SGD(MyNet.parameters(), lr=0.05, momentum=0.9)
    with gfm.record("runs/mynet.zarr", model, opt, every=1) as rec:     # record 0 = the weights right now
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            rec.step(loss)                                              # after opt.step() (and scheduler.step())
    # more runs of the same loop into the same store (one store of many runs is what a forecaster trains on):
    with gfm.record("runs/mynet.zarr", model2, opt2, mode="a", dataset_seed=0) as rec: ...
    # each append costs time in the size of the store; for many runs, gfm.record_runs (gfm.recording.runset) writes
    # the store once, at a cost linear in the runs

What is recorded, per run (R runs, T records, P parameters; record j is after j * ``every`` optimizer steps):

* ``weights`` (run, record, param): every parameter of ``model`` (``named_parameters`` order, which is the
  ``state_dict`` order of the parameters) flattened into one vector; the layout (name, shape, offset) goes into
  the root attributes so :meth:`~gfm.store.reader.TrajectoryStore.load_into` can put any record back. Buffers (e.g.
  BatchNorm running statistics) are not parameters and are not recorded.
* ``state/<name>``: the optimizer's own state after the updates up to that record (``momentum_buffer``,
  ``exp_avg``/``exp_avg_sq``, ``square_avg``), zeros where torch has not created it yet.
* ``lr``: ``param_groups[0]["lr"]`` when the record is taken, i.e. the lr of the update leaving it.
* ``network`` (root attribute): ``{"activation": ..., "loss": ...}`` (:mod:`gfm.core.network`), what a forecaster
  that rebuilds the network's function (``gfm_function``) and evaluate's downstream loss need and the layout
  does not say (a Tanh MLP has the layout of a ReLU one). The activation is read from ``model`` where its code
  says it exactly (:func:`gfm.core.network.read_activation`: an ``nn.Sequential`` of ``nn.Linear`` layers with one
  kind of default-option activation module between them), else taken from ``activation=``; a given activation
  that contradicts the one read is refused. The loss is never read from a module: ``loss=`` or null (not
  known). A consumer that needs a value the store leaves null refuses the store instead of assuming one.
* ``eval/x``, ``eval/y`` with ``eval_data=(x, y)``: the run's held-out evaluation data (:mod:`gfm.store.eval_data`),
  x (sample, *input_shape) as float32 and y (sample,) as float32 targets or int64 class labels.
* ``loss``: with ``evaluate`` (a zero-argument callable returning a number, e.g. the full training-set loss),
  its value at each record, which is what generated stores hold. Without it, the loss passed to the ``step``
  that leaves the record (the minibatch loss at the recorded weights), and for the last record the
  ``final_loss`` given to :meth:`Recorder.finish` or else the last step's loss (attribute ``loss_source``
  says which).

Supported optimizers are the ones whose update rule ``gfm.core.optimizers`` knows, stored under that rule's name:
``torch.optim.SGD`` as ``sgd`` (no momentum), ``momentum`` (heavy ball) or ``nesterov`` (``nesterov=True``),
always without dampening; ``Adam`` as ``adam`` and ``AdamW`` (or ``Adam(decoupled_weight_decay=True)``) as
``adamw``, neither with AMSGrad; ``RMSprop`` as ``rmsprop`` (not centred, no momentum); with the same
hyper-parameters in every param group. Anything else is refused, because an optimizer-aware forecaster would
otherwise integrate the wrong rule.

Durability: records are buffered and written ``chunk_steps`` at a time, one whole chunk per write, into
``<path>.partial``; the store is renamed into place only when the ``with`` block exits cleanly. An exception
inside the block leaves the ``.partial`` store (readable by zarr, refused by ``open_trajectories``). Appending
(``mode="a"``) records the new run into ``<path>.partial`` too, then builds the grown store beside the old one
(``<path>.append.partial``: the old store's files hard-linked, the new run added) and swaps the two in one
step, so a reader, or a recorder killed at any moment, finds the old store whole or the grown one, never a
store that is half of each. Where the file system cannot swap two directories in one step (not Linux, NFS),
the old store is renamed to ``<path>.previous.partial`` for the instant between two renames, and the next
recorder of the path puts it back if the second rename never happened.

Concurrency: a recorder holds ``gfm generate``'s writer lock (the ``.writer.lock`` in ``<path>.partial``) from
the start of its ``with`` block to the end, in both modes, so a second writer of the same store, in another
process or in this one, is refused instead of emptying the first one's ``.partial``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from gfm._version import __version__
from gfm.artifacts.outputs import TRAJECTORY_STORE, claim_output
from gfm.artifacts.zarr_files import LOCK_FILE, partial_path
from gfm.base.errors import StoreLockedError, shorten
from gfm.core.optimizers import HYPER_NAMES, STATE_NAMES
from gfm.recording.append import check_joinable, finish_append, restore_previous
from gfm.recording.capture import (
    RecordError,
    flat_state,
    flat_tensors,
    network_spec,
    optimizer_spec,
    owned_parameters,
)
from gfm.store.arrays import SCHEMA_VERSION, all_chunks
from gfm.store.durable import HELD, lock_key, lock_partial, remove_partial
from gfm.store.eval_data import eval_arrays
from gfm.store.one_run import add_eval_arrays, create_run_group, finish_run_group
from gfm.tasks.base import ParamSpec, layout_from_shapes

__all__ = ["record", "Recorder", "HYPER_NAMES"]

# HYPER_NAMES (gfm.core.optimizers) is re-exported here: the per-run hyper-parameters a store holds, by optimizer.


def _integer(value: Any, name: str, low: int) -> int:
    """``value`` as a Python int: an int or a NumPy integer from ``low`` to 2**63 - 1; a bool, a float or
    anything else is refused (``every=2.5`` has no meaning, and ``True`` is an accident)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not low <= value <= np.iinfo(np.int64).max:
        raise RecordError(f"{name}={shorten(value)}; expected an integer from {low} to 2**63 - 1 (a Python or "
                          "NumPy integer, not a bool or a float)")
    return int(value)


class Recorder:
    """Records one run of a training loop; made by :func:`record`, used as a context manager."""

    def __init__(self, path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                 every: int = 1, mode: str = "w", dataset_seed: int = 0, evaluate: Callable[[], Any] | None = None,
                 chunk_steps: int = 32, name: str = "recorded", overwrite: bool = False,
                 activation: str | None = None, loss: str | None = None, eval_data: Any = None):
        if mode not in ("w", "a"):
            raise RecordError(f"mode {mode!r}; expected 'w' (new store) or 'a' (add a run to an existing store)")
        every, chunk_steps = _integer(every, "every", 1), _integer(chunk_steps, "chunk_steps", 1)
        dataset_seed = _integer(dataset_seed, "dataset_seed", 0)
        self.path = Path(path)
        self.previous = self.path.with_name(f"{self.path.name}.previous.partial")  # see the module docstring
        if mode == "w" and self.path.exists() and not overwrite:
            raise RecordError(f"{self.path} exists; pass overwrite=True to replace it or mode='a' to add a run")
        if mode == "w":  # only ever replaces a trajectory store (gfm.artifacts.outputs), whatever ``overwrite`` says
            claim_output(self.path, TRAJECTORY_STORE)
        if mode == "a" and not self.path.exists() and not self.previous.exists():
            raise RecordError(f"{self.path}: no store to add a run to (mode='a'); record the first run with mode='w'")
        self.model, self.optimizer, self.every, self.mode = model, optimizer, every, mode
        self.dataset_seed, self.evaluate, self.chunk_steps, self.name = int(dataset_seed), evaluate, chunk_steps, name
        self.opt_name, self.hyper = optimizer_spec(optimizer)
        self.network = network_spec(model, activation, loss)
        # validated and copied now: a bad argument is refused before the training loop, not after it
        self.eval = None if eval_data is None else eval_arrays(eval_data, self.network.loss, RecordError)
        self.params = owned_parameters(model, optimizer)
        self.layout: tuple[ParamSpec, ...] = layout_from_shapes(
            [(n, tuple(p.shape)) for n, p in model.named_parameters()])
        if not self.layout:
            raise RecordError("the model has no parameters")
        if optimizer.state:
            warnings.warn("the optimizer already has state: record 0 is not the start of its training (Adam's "
                          "bias correction and the time axis assume it is)", stacklevel=3)
        self.n_params = self.layout[-1].offset + self.layout[-1].size
        self.state_names = STATE_NAMES[self.opt_name]
        self.tmp = partial_path(self.path)  # the run being recorded, and the writer's lock, in both modes
        self._lock: int | None = None
        self._lock_key = lock_key(self.path)
        self.steps = 0  # optimizer steps seen
        self.n_written = 0  # records flushed to zarr
        self._buf: dict[str, list] = {"weights": [], "lr": [], **{f"state/{s}": [] for s in self.state_names}}
        self._loss: list[float] = []  # one per record; NaN until known
        self._last_step_loss = math.nan
        self._loss_source = "evaluate" if evaluate is not None else "step"
        self._group: zarr.Group | None = None
        self._finite = True  # all recorded weights finite so far (checked as they are flushed)
        self._closed = False

    # --- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        self._open()
        self._take_record()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finish()
        finally:
            # on an exception the .partial store is left as it is: never renamed, so never taken for
            # finished; the lock goes, so that a retry (in this process too) can start over
            self._release()

    # --- recording -------------------------------------------------------------------------------------
    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """Count one optimizer step; call it right after ``optimizer.step()``.

        Args:
            loss: the loss this step back-propagated (at the weights before the step). Stored for the record
                the step leaves unless ``evaluate`` was given.
        """
        if self._group is None or self._closed:
            raise RecordError("Recorder.step() outside its `with` block")
        value = math.nan if loss is None else float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if self.steps % self.every == 0 and self.evaluate is None:
            self._loss[-1] = value  # the update leaving the last record: its loss is the record's loss
        self._last_step_loss = value
        self.steps += 1
        if self.steps % self.every == 0:
            self._take_record()

    @torch.no_grad()
    def _take_record(self) -> None:
        self._buf["weights"].append(flat_tensors(self.params))
        self._buf["lr"].append(float(self.optimizer.param_groups[0]["lr"]))
        for s in self.state_names:
            self._buf[f"state/{s}"].append(flat_state(self.optimizer, self.params, s))
        self._loss.append(float(self.evaluate()) if self.evaluate is not None else math.nan)
        if len(self._buf["weights"]) == self.chunk_steps:
            self._flush()

    def _open(self) -> None:
        if self._lock_key in HELD:
            raise StoreLockedError(f"{self.path}: another recorder of this process is writing this store (it holds "
                                   f"{self.tmp / LOCK_FILE}); finish its `with` block first")
        self._lock = lock_partial(self.path)  # refused while another process writes this store
        HELD.add(self._lock_key)
        try:
            if self.mode == "a":
                restore_previous(self.path, self.previous)
                try:
                    check_joinable(self)
                except RecordError:  # refused before anything was recorded: no .partial left behind
                    remove_partial(self.tmp)
                    raise
            self._group = create_run_group(self.tmp, n_params=self.n_params, state_names=self.state_names,
                                           chunk_steps=self.chunk_steps)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
            HELD.discard(self._lock_key)

    def _flush(self) -> None:
        """Append the buffered records: one whole chunk per array (the last one may be partial)."""
        n = len(self._buf["weights"])
        if n == 0:
            return
        g, start = self._group, self.n_written
        for name, rows in self._buf.items():
            arr = all_chunks(g[name])  # an all-NaN chunk (a diverged run) is written and counted too
            if name == "lr":
                arr.resize((1, start + n))
                arr[0, start : start + n] = np.asarray(rows, dtype=np.float32)
            else:
                block = np.stack(rows)  # (record, param)
                if name == "weights":
                    self._finite &= bool(np.isfinite(block).all())
                arr.resize((1, start + n, self.n_params))
                arr[0, start : start + n] = block
            rows.clear()
        self.n_written += n

    def finish(self, final_loss: float | torch.Tensor | None = None) -> Path:
        """Write the last records and put the store (or the new run) in place.

        Args:
            final_loss: the loss at the last recorded weights, when no ``evaluate`` was given (default: the
                last step's loss).

        Returns:
            The store path.
        """
        if self._closed:
            return self.path
        if self._group is None:
            raise RecordError("Recorder.finish() before the recording started (use `with gfm.record(...)`)")
        if self.steps == 0:
            raise RecordError("no optimizer step was recorded (call rec.step() after every optimizer.step())")
        dropped = self.steps % self.every
        if dropped:
            warnings.warn(f"{self.steps} steps is not a multiple of every={self.every}: the last {dropped} steps "
                          "are not in the store", stacklevel=2)
        if self.evaluate is None:
            if final_loss is not None:
                self._loss[-1] = float(final_loss.detach() if isinstance(final_loss, torch.Tensor) else final_loss)
                self._loss_source = "step+final_loss"
            elif math.isnan(self._loss[-1]):
                self._loss[-1] = self._last_step_loss
                self._loss_source = "step+last_step_loss"
        self._flush()
        g = self._group
        T = self.n_written
        loss = np.asarray(self._loss[:T], dtype=np.float32)
        arr = all_chunks(g["loss"])
        arr.resize((1, T))
        arr[0, :] = loss
        if self.eval is not None:
            add_eval_arrays(g, *self.eval)
        self._closed = True
        try:
            if self.mode == "w":
                self._finish_new(g, T, loss)
            else:
                finish_append(self, g, T, loss)
        finally:
            self._release()
        return self.path

    # --- store assembly --------------------------------------------------------------------------------
    def store_attrs(self, T: int) -> dict[str, Any]:
        steps = (T - 1) * self.every
        return {
            "store": f"{self.name}-{self.opt_name}", "task_name": self.name, "seed": None,
            "task": {"kind": "recorded", "steps": steps, "record_every": self.every,
                     "module": f"{type(self.model).__module__}.{type(self.model).__qualname__}"},
            "optimizer": {"name": self.opt_name, **{k: self.hyper[k] for k in (*HYPER_NAMES[self.opt_name], "eps")},
                          "schedule": {"kind": "recorded"}},
            "state_names": list(self.state_names), "loss_source": self._loss_source,
            "network": self.network.as_attr(),
            "source": "gfm.record", "schema_version": SCHEMA_VERSION, "complete": False,
            "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in self.layout],
            "n_records": T, "n_params": self.n_params, "block_runs": 1,
            "versions": {"gfm": __version__, "torch": torch.__version__.split("+")[0], "zarr": zarr.__version__,
                         "numpy": np.__version__},
        }

    def run_fields(self, loss: np.ndarray, index: int) -> dict[str, np.ndarray]:
        w_ok = self._finite
        return {"dataset_seed": np.array([self.dataset_seed], np.int64), "index": np.array([index], np.int64),
                "lr_scale": np.array([1.0]), "diverged": np.array([not (w_ok and np.isfinite(loss).all())]),
                **{k: np.array([self.hyper[k]]) for k in (*HYPER_NAMES[self.opt_name], "eps")}}

    def _finish_new(self, g: zarr.Group, T: int, loss: np.ndarray) -> None:
        attrs = self.store_attrs(T)
        attrs.update({"n_runs": 1, "dataset_seeds": [self.dataset_seed], "complete": True})
        finish_run_group(g, self.tmp, self.path, loss=loss, fields=self.run_fields(loss, 0), attrs=attrs)
        # the lock file moved into place with the store (held until now, as gfm generate's): not part of it
        (self.path / LOCK_FILE).unlink(missing_ok=True)


def record(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, every: int = 1,
           mode: str = "w", dataset_seed: int = 0, evaluate: Callable[[], Any] | None = None,
           chunk_steps: int = 32, name: str = "recorded", overwrite: bool = False, activation: str | None = None,
           loss: str | None = None, eval_data: Any = None) -> Recorder:
    """Record a training loop of ``model`` under ``optimizer`` into the trajectory store at ``path``.

    Args:
        path: the ``.zarr`` store to write (``mode="w"``) or to add this run to (``mode="a"``).
        model: the network; every parameter is recorded, in ``named_parameters`` order.
        optimizer: a ``torch.optim`` SGD, Adam, AdamW or RMSprop over the model's parameters (see module
            docstring).
        every: record every ``every`` optimizer steps (record 0 = the weights when the block is entered).
        mode: ``w`` a new store of one run; ``a`` add a run to a finished store with the same layout,
            optimizer, ``every`` and number of records.
        dataset_seed: groups runs for ``gfm split`` (runs of one dataset seed are split into train/val/test).
        evaluate: optional zero-argument callable returning the loss to store at each record.
        chunk_steps: records per chunk, the unit in which records are written.
        name: the store's task name (its key becomes ``<name>-<optimizer>``).
        overwrite: with ``mode="w"``, replace an existing store.
        activation: the activation between the model's layers, a name of :data:`gfm.core.network.ACTIVATIONS`;
            needed where the module's code does not say it (see :func:`network_spec`), refused where it says
            another one. Stored, with ``loss``, in the root attribute ``network`` (null: not known).
        loss: the training loss, a name of :data:`gfm.core.network.LOSSES` (``mse``, ``cross_entropy``,
            ``least_squares``), or None (not known).
        eval_data: ``(x, y)`` held-out evaluation data of this run (tensors or arrays): x (sample,
            *input_shape) floats, y (sample,) float targets or integer class labels. Every run of a store has
            it, with the same shapes, or none does.

    Returns:
        A :class:`Recorder`; use it in a ``with`` block and call ``rec.step(loss)`` after each optimizer step.

    Raises:
        RecordError: unsupported optimizer, optimizer parameters outside the model, existing store (without
            ``overwrite``), a bad or contradicted activation or loss, bad evaluation data, or a run that does not
            match the store it is added to (layout, optimizer, network, evaluation data).
    """
    return Recorder(path, model, optimizer, every=every, mode=mode, dataset_seed=dataset_seed, evaluate=evaluate,
                    chunk_steps=chunk_steps, name=name, overwrite=overwrite, activation=activation, loss=loss,
                    eval_data=eval_data)
