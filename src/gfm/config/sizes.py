"""What generating one store costs in memory and disk, estimated from the params alone (checked against
``limits:`` before anything runs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from gfm.config.optimizer import OPTIMIZER_STATE_ARRAYS
from gfm.config.tasks import TaskConfig


@dataclass(frozen=True)
class StoreEstimate:
    """What generating one store costs (uncompressed float32), from the params alone."""

    runs: int            # runs of the store (dataset seeds x runs_per_dataset)
    block_runs: int      # runs of one write block: min(store.shard_runs, runs)
    records: int         # recorded points per run
    params: int          # parameters per run
    arrays: int          # (run, record, param) arrays: weights + the optimizer's state arrays
    record_bytes: int    # one block's recorded arrays
    work_bytes: int      # one block's data, batch orders, activations and live weights/state
    store_bytes: int     # the whole store's recorded arrays
    total_steps: int     # runs x steps

    @property
    def block_bytes(self) -> int:
        return self.record_bytes + self.work_bytes


def estimate_store(task: TaskConfig, optimizer: str, n_seeds: int, shard_runs: int) -> StoreEstimate:
    """Memory of one generation block (gfm.stages.generate.simulate: records preallocated as (run, record, param)
    float32 for the weights and each optimizer state array, the runs' data and its per-epoch gather, the int64
    batch orders, a forward pass over every sample) and the size of the whole store. Python integers: no
    overflow whatever the params say."""
    runs = n_seeds * task.runs_per_dataset
    block = min(shard_runs, runs)
    T, P, S = task.n_records, task.n_params(), OPTIMIZER_STATE_ARRAYS[optimizer]
    N, B = task.n_samples, task.batch_size
    epochs = math.ceil(task.steps / math.ceil(N / B)) if B else 0
    data = 3 * N * (task.input_width() + 1) * 4            # x, y; the flat view and one epoch's gather
    orders = 2 * epochs * N * 8                            # epoch orders and their row indices (int64)
    acts = 2 * N * task.activation_width() * 4             # forward cache + backward, all samples
    live = (3 + S) * P * 4 + 2 * (task.steps + 1) * 4      # weights, gradient, update, state; lr and loss rows
    per_run_records = T * P * 4 * (1 + S) + 2 * T * 4      # + loss and lr per record
    return StoreEstimate(runs=runs, block_runs=block, records=T, params=P, arrays=1 + S,
                         record_bytes=block * per_run_records, work_bytes=block * (data + orders + acts + live),
                         store_bytes=runs * per_run_records, total_steps=runs * task.steps)
