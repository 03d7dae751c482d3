"""Per-run randomness and setup, shared by the stacked generator and the per-run reference loop.

A run is identified by (base seed, task, dataset seed, index within the dataset). Everything random about it
(its data, initial weights, minibatch order and sampled hyper-parameters) comes from its own streams, spawned
from ``SeedSequence([seed, dataset_seed, index, task_key(task)])``, where :func:`task_key` is a stable 32-bit
hash of the task *name* (its key in params ``tasks:``; sha256, not Python's salted ``hash()``).

* A run's trajectory does not depend on how many runs are trained beside it or in which block: blocks can be
  redone after a crash and give the same bytes.
* Different tasks draw from disjoint streams. The generalisation targets (``mlp_regression_x05``, ``_w20``, ...)
  differ from their source task by one setting; without the task in the entropy, target run i would see the
  same data and minibatch order as source run i -- possibly one of the source forecaster's training runs --
  and for an init-scale target its initial weights would be an exact scaled copy (test leakage;
  tests/test_leakage.py checks it is gone).
* The stores of *one* task under different optimizers keep sharing data, initial weights and batch order (the
  optimizer is deliberately not in the entropy): optimizers are compared on paired runs.

Renaming a task therefore changes its runs (as changing the base seed does); its stores must be regenerated.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from gfm.config import OptimizerConfig, Range, TaskConfig
from gfm.tasks import Task

__all__ = ["RunId", "RunSetup", "run_ids", "setup_run", "sample_hyper", "epoch_orders", "batch_schedule", "task_key"]


@dataclass(frozen=True)
class RunId:
    dataset_seed: int
    index: int


@dataclass
class RunSetup:
    """Everything one run needs before its first step."""

    run: RunId
    x: torch.Tensor  # (sample, in)
    y: torch.Tensor  # (sample,)
    w0: torch.Tensor  # (param,)
    hyper: dict[str, float]  # sampled hyper-parameters (lr already multiplied by the task's lr_scale)
    lr_scale: float
    orders: torch.Tensor  # (epoch, sample) int64 minibatch order


def run_ids(dataset_seeds: tuple[int, ...] | list[int], runs_per_dataset: int) -> list[RunId]:
    """All runs of a store, dataset-major: run r is (dataset_seeds[r // n], r % n)."""
    return [RunId(int(d), i) for d in dataset_seeds for i in range(runs_per_dataset)]


def task_key(task_name: str) -> int:
    """Stable 32-bit key of a task name (first 4 bytes of its sha256, little-endian): the same on every
    machine and Python process, unlike ``hash()``."""
    if not isinstance(task_name, str) or not task_name:
        raise ValueError(f"task_name: got {task_name!r}; expected the task's key in params `tasks:`")
    return int.from_bytes(hashlib.sha256(task_name.encode()).digest()[:4], "little")


# Children of a run's SeedSequence, by purpose (spawn keys 0..3; a new purpose takes the next number so the
# others keep their bytes).
_DATA, _INIT, _BATCH, _HYPER = range(4)


def _streams(seed: int, task_name: str, run: RunId) -> list[int]:
    """Four independent 63-bit seeds of one run: data, init, batch order, hyper-parameters."""
    ss = np.random.SeedSequence([seed, run.dataset_seed, run.index, task_key(task_name)])
    return [int(c.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1)) for c in ss.spawn(4)]


def sample_hyper(opt: OptimizerConfig, rng: np.random.Generator) -> dict[str, float]:
    """Draw this run's hyper-parameters: fixed numbers pass through, Ranges are sampled (in sorted key order)."""
    out = {}
    for name, value in opt.hyper().items():
        if isinstance(value, Range):
            if value.log:
                out[name] = float(math.exp(rng.uniform(math.log(value.low), math.log(value.high))))
            else:
                out[name] = float(rng.uniform(value.low, value.high))
        else:
            out[name] = float(value)
    out["eps"] = float(opt.eps)
    return out


def n_epochs(task_cfg: TaskConfig) -> int:
    n, b = task_cfg.n_samples, task_cfg.batch_size
    if b == 0:
        return 0
    per_epoch = math.ceil(n / b)
    return math.ceil(task_cfg.steps / per_epoch)


def epoch_orders(gen: torch.Generator, epochs: int, n: int) -> torch.Tensor:
    """Random minibatch order of each epoch, (epoch, sample): one permutation per epoch."""
    if epochs == 0:
        return torch.empty(0, n, dtype=torch.int64)
    return torch.argsort(torch.rand(epochs, n, generator=gen), dim=1)


def batch_schedule(task_cfg: TaskConfig) -> list[tuple[int, int, int]]:
    """(epoch, start, stop) of the minibatch used at each optimizer step (like a DataLoader with shuffle and
    drop_last=False: the last batch of an epoch may be smaller). Empty list for full-batch tasks."""
    n, b = task_cfg.n_samples, task_cfg.batch_size
    if b == 0:
        return []
    out, epoch, pos = [], 0, 0
    for _ in range(task_cfg.steps):
        stop = min(pos + b, n)
        out.append((epoch, pos, stop))
        pos = stop
        if pos >= n:
            epoch, pos = epoch + 1, 0
    return out


def setup_run(task: Task, opt: OptimizerConfig, seed: int, run: RunId, *, task_name: str) -> RunSetup:
    """Data, initial weights, hyper-parameters and batch order of one run (CPU, deterministic).

    ``task_name`` is the task's key in params ``tasks:`` (a store's ``spec.task``): it selects the task's own
    streams (module docstring), so it is required.
    """
    streams = _streams(seed, task_name, run)
    s_data, s_init, s_batch, s_hyper = (streams[i] for i in (_DATA, _INIT, _BATCH, _HYPER))
    x, y = task.sample_data(torch.Generator().manual_seed(s_data))
    w0 = task.init_weights(torch.Generator().manual_seed(s_init))
    hyper = sample_hyper(opt, np.random.default_rng(s_hyper))
    scale = task.lr_scale(x, y)
    hyper["lr"] *= scale
    orders = epoch_orders(torch.Generator().manual_seed(s_batch), n_epochs(task.cfg), task.cfg.n_samples)
    return RunSetup(run, x, y, w0, hyper, scale, orders)
