"""Stage ``generate``: train many small networks at once and record their trajectories into a Zarr store.

All runs of a block are one stacked model: weights are a single (run, param) tensor, the forward pass is
batched matmuls (``torch.baddbmm``), the loss is the sum of per-run losses (so each run's gradient is its
own), and the optimizer step is the element-wise rule of :mod:`gfm.optimizers` with per-run
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
from tqdm import tqdm

from gfm import __version__
from gfm.config import OptimizerConfig, Params, TaskConfig, to_dict
from gfm.optimizers import STATE_NAMES, init_state, lr_multipliers, update
from gfm.runs import RunSetup, batch_schedule, run_ids, setup_run
from gfm.store import create_trajectory_store
from gfm.tasks import Task, make_task

__all__ = ["simulate", "run", "resolve_device", "GenerateSummary"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    return torch.device(device)


def _stack_hyper(setups: list[RunSetup], device: torch.device) -> dict[str, torch.Tensor]:
    names = setups[0].hyper.keys()
    # (run, 1): broadcasts against (run, param)
    return {k: torch.tensor([s.hyper[k] for s in setups], dtype=torch.float32, device=device).unsqueeze(1)
            for k in names}


@torch.no_grad()
def _full_loss(task: Task, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return task.loss(theta, x, y)


def simulate(task: Task, opt: OptimizerConfig, setups: list[RunSetup], *, device: torch.device,
             progress: tqdm | None = None) -> dict[str, np.ndarray]:
    """Train the runs of ``setups`` as one stacked model and return their records.

    Returns:
        ``weights`` (run, record, param), ``loss`` (run, record), ``lr`` (run, record),
        ``state/<name>`` (run, record, param) and ``diverged`` (run,) as numpy arrays.
    """
    cfg: TaskConfig = task.cfg
    R, P, T = len(setups), task.n_params, cfg.n_records
    x = torch.stack([s.x for s in setups]).to(device)  # (run, sample, in)
    y = torch.stack([s.y for s in setups]).to(device)  # (run, sample)
    theta = torch.stack([s.w0 for s in setups]).to(device)  # (run, param)
    hp = _stack_hyper(setups, device)
    base_lr = hp["lr"]
    mults = lr_multipliers(opt.schedule, cfg.steps)
    state = init_state(opt.name, theta)
    schedule = batch_schedule(cfg)
    orders = torch.stack([s.orders for s in setups]).to(device) if schedule else None  # (run, epoch, sample)
    run_index = torch.arange(R, device=device).unsqueeze(1)

    rec_w = torch.empty(R, T, P, dtype=torch.float32, device=device)
    rec_s = {n: torch.empty(R, T, P, dtype=torch.float32, device=device) for n in STATE_NAMES[opt.name]}
    rec_loss = torch.empty(R, T, dtype=torch.float32, device=device)
    rec_lr = torch.empty(R, T, dtype=torch.float32, device=device)

    def record(j: int, k: int, loss: torch.Tensor) -> None:
        rec_w[:, j] = theta
        for n, s in state.items():
            rec_s[n][:, j] = s
        rec_loss[:, j] = loss
        rec_lr[:, j] = (base_lr * mults[k]).squeeze(1)

    for k in range(cfg.steps):
        theta.requires_grad_(True)
        if schedule:
            epoch, start, stop = schedule[k]
            idx = orders[:, epoch, start:stop]  # (run, batch)
            xb, yb = x[run_index, idx], y[run_index, idx]
        else:
            xb, yb = x, y
        with torch.enable_grad():
            loss = task.loss(theta, xb, yb)  # (run,)
            (grad,) = torch.autograd.grad(loss.sum(), theta)
        theta = theta.detach()
        if k % cfg.record_every == 0:
            record(k // cfg.record_every, k, loss.detach() if not schedule else _full_loss(task, theta, x, y))
        hp["lr"] = base_lr * mults[k]
        theta, state = update(opt.name, theta, grad, state, hp, k + 1)
        if progress is not None:
            progress.update(1)
    record(T - 1, cfg.steps, _full_loss(task, theta, x, y))
    hp["lr"] = base_lr

    finite_w = torch.isfinite(rec_w).flatten(1).all(1)
    finite_l = torch.isfinite(rec_loss).all(1)
    out = {"weights": rec_w, "loss": rec_loss, "lr": rec_lr, **{f"state/{n}": v for n, v in rec_s.items()}}
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
        setups = [setup_run(task, opt, params.seed, runs[r]) for r in rows]
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
