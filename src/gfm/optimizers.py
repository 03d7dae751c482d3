"""The optimizer rules, written once (docs/architecture.md §3).

Pure functions over stacked tensors: ``w`` and ``g`` are (..., param) and every hyper-parameter is a tensor
that broadcasts against them (e.g. (run, 1) for per-run values). ``update`` returns the new weights and the
new state and never mutates its inputs, so the trajectory generator and GFM's optimizer-aware field share
the exact same arithmetic. The order of operations follows ``torch.optim`` (PyTorch 2.x, single-tensor path)
so a stacked run reproduces R independent ``torch.optim`` runs to float32 round-off.

With step count n = 1, 2, ... (the update that takes w_{n-1} to w_n) and g = grad + weight_decay * w (L2
weight decay folded into the gradient, as ``torch.optim`` does for every optimizer but AdamW):

* ``sgd``:      w <- w - lr * g
* ``momentum``: b <- mu * b + g;                      w <- w - lr * b          (heavy ball, dampening 0)
* ``nesterov``: b <- mu * b + g;                      w <- w - lr * (g + mu * b)   (``SGD(nesterov=True)``)
* ``rmsprop``:  s <- alpha * s + (1 - alpha) * g^2;   w <- w - lr * g / (sqrt(s) + eps)
* ``adam``:     M <- M + (1 - beta1) (g - M);  V <- beta2 V + (1 - beta2) g^2;
                w <- w - lr / (1 - beta1^n) * M / (sqrt(V) / sqrt(1 - beta2^n) + eps)
* ``adamw``:    decoupled weight decay (``torch.optim.AdamW``): g = grad (no decay term), the weights shrink
                first, w <- w * (1 - lr * weight_decay), then the ``adam`` update.
"""

from __future__ import annotations

import math

import torch

from gfm.config import ScheduleConfig

__all__ = ["STATE_NAMES", "HYPER_NAMES", "HYPER_DEFAULTS", "DECOUPLED_WEIGHT_DECAY", "init_state", "update",
           "lr_multiplier", "lr_multipliers"]

# Optimizer state carried between steps, by optimizer; also the names of the store's state/* arrays (the
# names torch.optim gives them, so gfm.record copies them). config.OPTIMIZER_STATE_ARRAYS counts them.
STATE_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": (),
    "momentum": ("momentum_buffer",),
    "nesterov": ("momentum_buffer",),
    "rmsprop": ("square_avg",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
}

# The per-run hyper-parameters a store holds for each optimizer (runs/<name>; eps is always written too).
# config._OPTIMIZER_KEYS lists the same names plus eps where the rule reads it (a test checks they agree).
HYPER_NAMES: dict[str, tuple[str, ...]] = {
    "sgd": ("lr", "weight_decay"),
    "momentum": ("lr", "momentum", "weight_decay"),
    "nesterov": ("lr", "momentum", "weight_decay"),
    "adam": ("beta1", "beta2", "lr", "weight_decay"),
    "adamw": ("beta1", "beta2", "lr", "weight_decay"),
    "rmsprop": ("alpha", "lr", "weight_decay"),
}

# Values of hyper-parameters a caller may leave out (config.OptimizerConfig's defaults; lr has none).
HYPER_DEFAULTS: dict[str, float] = {"momentum": 0.9, "beta1": 0.9, "beta2": 0.999, "alpha": 0.99, "eps": 1e-8,
                                    "weight_decay": 0.0}

# Optimizers whose weight decay shrinks the weights instead of adding weight_decay * w to the gradient.
DECOUPLED_WEIGHT_DECAY = frozenset({"adamw"})


def init_state(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero state for optimizer ``name`` shaped like ``w``.

    Raises:
        ValueError: unknown optimizer name.
    """
    if name not in STATE_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(STATE_NAMES)}")
    return {s: torch.zeros_like(w) for s in STATE_NAMES[name]}


def update(name: str, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
           hp: dict[str, torch.Tensor | float], n: int | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step.

    Args:
        name: a key of :data:`STATE_NAMES` (``sgd``, ``momentum``, ``nesterov``, ``rmsprop``, ``adam``,
            ``adamw``).
        w: weights, (..., param).
        g: gradient (or GFM's gradient surrogate) at ``w``, same shape.
        state: optimizer state before the step (see :data:`STATE_NAMES`).
        hp: hyper-parameters; ``lr`` is the learning rate in force for this step (schedule applied).
        n: 1-based index of this update (Adam's bias correction); a tensor is allowed for continuous time.

    Returns:
        ``(w_new, state_new)``.
    """
    if name not in STATE_NAMES:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(STATE_NAMES)}")
    lr = hp["lr"]
    wd = hp.get("weight_decay", 0.0)
    if not (isinstance(wd, float) and wd == 0.0):
        if name in DECOUPLED_WEIGHT_DECAY:
            w = w * (1 - lr * wd)  # torch.optim.AdamW: param.mul_(1 - lr * weight_decay) before the Adam step
        else:
            g = g + wd * w
    if name == "sgd":
        return w - lr * g, {}
    if name in ("momentum", "nesterov"):
        b = hp["momentum"] * state["momentum_buffer"] + g
        step = b if name == "momentum" else g + hp["momentum"] * b
        return w - lr * step, {"momentum_buffer": b}
    if name == "rmsprop":
        alpha = hp["alpha"]
        s = alpha * state["square_avg"] + (1 - alpha) * g * g
        return w - lr * g / (s.sqrt() + hp["eps"]), {"square_avg": s}
    if name in ("adam", "adamw"):
        b1, b2 = hp["beta1"], hp["beta2"]
        m = state["exp_avg"] + (1 - b1) * (g - state["exp_avg"])
        v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
        bc1 = 1 - b1**n
        bc2_sqrt = (1 - b2**n) ** 0.5
        return w - (lr / bc1) * m / (v.sqrt() / bc2_sqrt + hp["eps"]), {"exp_avg": m, "exp_avg_sq": v}
    raise AssertionError(f"STATE_NAMES lists {name!r} but update has no rule for it")


def lr_multiplier(schedule: ScheduleConfig, k: int, total_steps: int) -> float:
    """Schedule factor for the update that starts at step ``k`` (0-based) of ``total_steps``."""
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "step":
        return schedule.gamma ** (k // schedule.step_size)
    if schedule.kind == "cosine":
        frac = min(k, total_steps) / max(total_steps, 1)
        return schedule.min_ratio + (1 - schedule.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {schedule.kind!r}; expected constant, cosine or step")


def lr_multipliers(schedule: ScheduleConfig, total_steps: int) -> list[float]:
    """Schedule factors for k = 0..total_steps (the last one is the lr that would apply next)."""
    return [lr_multiplier(schedule, k, total_steps) for k in range(total_steps + 1)]
