"""The naive way: one plain ``nn.Module`` + ``torch.optim`` loop per run.

It is the baseline the stacked generator is timed against (``benchmarks/generation.py``, "naive") and its
oracle in the tests (``tests/test_generate.py``: same seeds, same data, same minibatch order, max abs weight
difference <= 1e-5 after 200 steps). Not part of the package: benchmarks and tests (both run from the
repository root) import it as ``benchmarks.reference``.
"""

from __future__ import annotations

import numpy as np
import torch

from gfm.config import OptimizerConfig
from gfm.core.optimizers import lr_multipliers
from gfm.stages.runs import RunSetup, batch_schedule
from gfm.tasks import Task

__all__ = ["torch_optimizer", "train_reference", "flat_params"]


def torch_optimizer(name: str, params, hyper: dict[str, float]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer equivalent to :func:`gfm.core.optimizers.update` for ``name``."""
    wd = hyper.get("weight_decay", 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=hyper["lr"], weight_decay=wd)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=hyper["lr"], momentum=hyper["momentum"], weight_decay=wd,
                               nesterov=name == "nesterov")
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=hyper["lr"], betas=(hyper["beta1"], hyper["beta2"]), eps=hyper["eps"], weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=hyper["lr"], alpha=hyper["alpha"], eps=hyper["eps"], weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; expected one of adam, adamw, momentum, nesterov, rmsprop, sgd")


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    """Parameters in state_dict order as one flat vector (the store's layout)."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def train_reference(task: Task, opt: OptimizerConfig, setup: RunSetup) -> dict[str, np.ndarray]:
    """Train one run the plain way and record it like the generator does.

    Returns:
        ``weights`` (record, param) and ``loss`` (record,) (full training-set loss at each recorded step).
    """
    cfg = task.cfg
    module = task.build_module()
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(setup.w0[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    optim = torch_optimizer(opt.name, module.parameters(), setup.hyper)
    mults = lr_multipliers(opt.schedule, cfg.steps)
    schedule = batch_schedule(cfg)
    weights, losses = [], []

    def record():
        weights.append(flat_params(module).clone())
        with torch.no_grad():
            losses.append(float(task.module_loss(module, setup.x, setup.y)))

    for k in range(cfg.steps):
        if k % cfg.record_every == 0:
            record()
        if schedule:
            epoch, start, stop = schedule[k]
            idx = setup.orders[epoch, start:stop]
            xb, yb = setup.x[idx], setup.y[idx]
        else:
            xb, yb = setup.x, setup.y
        for group in optim.param_groups:
            group["lr"] = setup.hyper["lr"] * mults[k]
        optim.zero_grad(set_to_none=True)
        task.module_loss(module, xb, yb).backward()
        optim.step()
    record()
    return {"weights": torch.stack(weights).numpy(), "loss": np.array(losses, dtype=np.float32)}
