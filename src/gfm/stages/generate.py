"""Stage ``generate``: train many small networks at once and record their trajectories into a Zarr store.

All runs of a block are one stacked model: weights are a single (run, param) tensor, the forward pass is
batched matmuls (``torch.baddbmm``), the loss is the sum of per-run losses (so each run's gradient is its
own), and the optimizer step is the element-wise rule of :mod:`gfm.core.optimizers` with per-run
hyper-parameters. SGD, momentum, Adam and RMSprop are element-wise, so this is exactly R independent runs
(``tests/test_generate.py`` checks it against R plain ``nn.Module`` + ``torch.optim`` loops).

Usage::

    gfm generate --params params.yaml --store mlp_regression-sgd --out data/trajectories/mlp_regression/sgd.zarr
    python -m gfm generate ...                       # the same
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from gfm._version import __version__
from gfm.base.errors import GFMError
from gfm.config import OptimizerConfig, Params, TaskConfig, to_dict
from gfm.core.optimizers import STATE_NAMES, init_state, lr_multipliers, update
from gfm.recording.declare import intake
from gfm.stages.runs import RunSetup, batch_schedule, run_ids, setup_run
from gfm.store.writer import create_trajectory_store
from gfm.tasks import Task, make_task

__all__ = ["simulate", "run", "resolve_device", "GenerateSummary"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        # a machine fact the user can fix (params or node): a one-line CLI error, not a traceback
        raise GFMError("device: cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    return torch.device(device)


def _stack_hyper(setups: list[RunSetup], device: torch.device) -> dict[str, torch.Tensor]:
    names = setups[0].hyper.keys()
    # (run, 1): broadcasts against (run, param)
    return {k: torch.tensor([s.hyper[k] for s in setups], dtype=torch.float32, device=device).unsqueeze(1)
            for k in names}


@torch.no_grad()
def simulate(task: Task, opt: OptimizerConfig, setups: list[RunSetup], *, device: torch.device,
             progress: tqdm | None = None) -> dict[str, np.ndarray]:
    """Train the runs of ``setups`` as one stacked model and return their records.

    The inner loop is written for tiny networks, where per-operation overhead, not arithmetic, is the cost
    (BENCHMARKS.md): the MLP gradient is computed by hand (:meth:`Task.loss_and_grad`, no autograd graph),
    each epoch's shuffled data is gathered once so that every minibatch is a view, learning rates for every
    step are computed before the loop, and records are written into preallocated buffers.

    Returns:
        ``weights`` (run, record, param), ``loss`` (run, record), ``lr`` (run, record),
        ``state/<name>`` (run, record, param) and ``diverged`` (run,) as numpy arrays.
    """
    cfg: TaskConfig = task.cfg
    R, P, T, every = len(setups), task.n_params, cfg.n_records, cfg.record_every
    x = torch.stack([s.x for s in setups]).to(device)  # (run, sample, in)
    y = torch.stack([s.y for s in setups]).to(device)  # (run, sample)
    N = x.shape[1]
    theta = torch.stack([s.w0 for s in setups]).to(device)  # (run, param)
    hp = _stack_hyper(setups, device)
    base_lr = hp["lr"]
    # lr in force for the update leaving step k, k = 0..steps: (run, steps + 1); the same products as
    # computing base_lr * mult inside the loop, done once
    lrs = torch.cat([base_lr * m for m in lr_multipliers(opt.schedule, cfg.steps)], dim=1)
    state = init_state(opt.name, theta)
    schedule = batch_schedule(cfg)
    if schedule:
        # row of (run r, sample i) in the flattened (run * sample) data, per epoch: (epoch, run * sample)
        orders = torch.stack([s.orders for s in setups]).to(device)  # (run, epoch, sample)
        rows = (orders + N * torch.arange(R, device=device).view(R, 1, 1)).transpose(0, 1).reshape(-1, R * N)
        x_rows, y_rows = x.reshape(R * N, -1), y.reshape(R * N)

    rec_w = torch.empty(R, T, P, dtype=torch.float32, device=device)
    rec_s = {n: torch.empty(R, T, P, dtype=torch.float32, device=device) for n in STATE_NAMES[opt.name]}
    rec_loss = torch.empty(R, T, dtype=torch.float32, device=device)

    def record(j: int, loss: torch.Tensor) -> None:
        rec_w[:, j] = theta
        for n, s in state.items():
            rec_s[n][:, j] = s
        rec_loss[:, j] = loss

    epoch_now = -1
    for k in range(cfg.steps):
        recorded = k % every == 0
        if not schedule:  # full batch: the training loss is the recorded loss
            loss, grad = task.loss_and_grad(theta, x, y)  # (run,), (run, param)
        elif recorded:  # one forward pass over all samples gives the recorded loss and the minibatch gradient
            epoch, start, stop = schedule[k]
            batch_rows = rows[epoch].view(R, N)[:, start:stop].reshape(-1)  # (run * batch,)
            loss, grad = task.full_loss_and_batch_grad(theta, x, y, batch_rows)
        else:
            epoch, start, stop = schedule[k]
            if epoch != epoch_now:  # one gather per epoch; each minibatch is then a slice of it
                x_ep = x_rows.index_select(0, rows[epoch]).view(R, N, -1)
                y_ep = y_rows.index_select(0, rows[epoch]).view(R, N)
                epoch_now = epoch
            _, grad = task.loss_and_grad(theta, x_ep[:, start:stop], y_ep[:, start:stop])
        if recorded:
            record(k // every, loss)
        hp["lr"] = lrs[:, k : k + 1]
        theta, state = update(opt.name, theta, grad, state, hp, k + 1)
        if progress is not None:
            progress.update(1)
    record(T - 1, task.loss(theta, x, y))

    finite_w = torch.isfinite(rec_w).flatten(1).all(1)
    finite_l = torch.isfinite(rec_loss).all(1)
    out = {"weights": rec_w, "loss": rec_loss, "lr": lrs[:, ::every].contiguous(),
           **{f"state/{n}": v for n, v in rec_s.items()}}
    result = {k: v.cpu().numpy() for k, v in out.items()}
    result["diverged"] = (~(finite_w & finite_l)).cpu().numpy()
    return result


@dataclass
class GenerateSummary:
    store: str
    n_runs: int
    n_diverged: int
    blocks_run: int
    blocks_reused: int
    seconds: float
    device: str


def store_attrs(params: Params, key: str) -> dict:
    """Root attributes of a store: everything that determines its contents (and nothing machine-specific
    beyond package versions), so that a resumed writer can check it is finishing the same store."""
    spec, task_cfg = params.lookup_store(key)
    return {
        "store": key,
        "seed": params.seed,
        "dataset_seeds": list(params.generate.dataset_seeds),
        "runs_per_dataset": task_cfg.runs_per_dataset,
        "task_name": spec.task,
        "task": to_dict(task_cfg),
        "optimizer": to_dict(spec.optimizer),
        "state_names": list(STATE_NAMES[spec.optimizer.name]),
        "store_layout": to_dict(params.store),
        "versions": {"gfm": __version__, "torch": torch.__version__.split("+")[0],
                     "zarr": __import__("zarr").__version__, "numpy": np.__version__},
    }


def run(params: Params, key: str, *, out: Path, progress: bool | None = None) -> GenerateSummary:
    """Generate store ``key`` of ``params`` into ``out`` (resuming finished blocks of an interrupted run)."""
    t0 = time.perf_counter()
    spec, task_cfg = params.lookup_store(key)
    if task_cfg.kind == "recorded":  # a declared store: taken in, not generated (gfm.config.declared)
        done = intake(params, key, out=Path(out))
        n_div = int(zarr.open_array(Path(out) / "runs" / "diverged", mode="r")[:].sum())
        return GenerateSummary(key, done["runs"], n_div, 0, 0, time.perf_counter() - t0, "declared")
    task = make_task(task_cfg)
    opt = spec.optimizer
    device = resolve_device(params.device)
    runs = run_ids(params.generate.dataset_seeds, task_cfg.runs_per_dataset)
    run_fields = {"dataset_seed": np.dtype("int64"), "index": np.dtype("int64"), "lr_scale": np.dtype("float64"),
                  "diverged": np.dtype("bool"), **{h: np.dtype("float64") for h in [*opt.hyper(), "eps"]}}
    writer = create_trajectory_store(
        out, n_runs=len(runs), n_records=task_cfg.n_records, layout=task.layout,
        state_names=STATE_NAMES[opt.name], run_fields=run_fields, chunks=params.store,
        attrs=store_attrs(params, key))
    done = writer.done_blocks()
    show = params.generate.progress if progress is None else progress
    todo = [b for b in range(writer.n_blocks) if b not in done]
    bar = tqdm(total=len(todo) * task_cfg.steps, desc=key, unit="step", file=sys.stderr, disable=not show,
               mininterval=0.5)
    for b in todo:
        rows = writer.block_range(b)
        setups = [setup_run(task, opt, params.seed, runs[r], task_name=spec.task) for r in rows]
        rec = simulate(task, opt, setups, device=device, progress=bar)
        arrays = {
            "weights": rec["weights"], "loss": rec["loss"], "lr": rec["lr"],
            **{k: v for k, v in rec.items() if k.startswith("state/")},
            "final/weights": rec["weights"][:, -1], "final/loss": rec["loss"][:, -1],
            "runs/dataset_seed": np.array([s.run.dataset_seed for s in setups], dtype=np.int64),
            "runs/index": np.array([s.run.index for s in setups], dtype=np.int64),
            "runs/lr_scale": np.array([s.lr_scale for s in setups], dtype=np.float64),
            "runs/diverged": rec["diverged"],
            **{f"runs/{h}": np.array([s.hyper[h] for s in setups], dtype=np.float64) for h in [*opt.hyper(), "eps"]},
        }
        writer.write_block(b, arrays)
    bar.close()
    n_div = int(writer.group["runs/diverged"][:].sum())
    writer.finish()
    return GenerateSummary(key, len(runs), n_div, len(todo), len(done), time.perf_counter() - t0, str(device))
