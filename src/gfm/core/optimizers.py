"""The optimizers, written once (docs/architecture.md §3): one registry, :data:`SPECS`, holds per optimizer its
hyper-parameters, its state, its update rule, the rule's inverse (the gradient from logged weights and state)
and, where the weights alone determine it, the state's reconstruction. Config, the generator, the recorder,
the importer, the store check and GFM's features all read it; nothing else lists optimizers.

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

Importing this module imports neither torch nor numpy (the rules only use the operators of the arrays they
are given), so validating params reads the registry without paying for either.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gfm.config import ScheduleConfig

__all__ = ["OptimizerSpec", "SPECS", "OPTIMIZER_NAMES", "STATE_NAMES", "HYPER_NAMES", "HyperSpec", "HYPERS",
           "HYPER_DEFAULTS", "spec_of", "init_state", "update", "recover_gradient", "adam_moments",
           "momentum_buffer_from_weights", "lr_multiplier", "lr_multipliers"]

Tensor = Any  # torch.Tensor in the rules; the arithmetic is the operators', so numpy arrays would do as well

@dataclass(frozen=True)
class HyperSpec:
    """A hyper-parameter some optimizer's rule reads, lr aside (which every rule reads and has no default): its
    default and its range (``ge``/``gt``, ``lt``; config checks them). ``per_run`` ones may also be drawn per
    run from a ``{low, high, log}`` range; the others are one number (eps: stores hold it always)."""

    default: float
    ge: float | None = 0
    gt: float | None = None
    lt: float | None = None
    per_run: bool = True


# Every hyper-parameter but lr, in the order params and stores list them: config.OptimizerConfig has one field
# each, so an optimizer whose rule reads a new one adds it here.
HYPERS: dict[str, HyperSpec] = {
    "momentum": HyperSpec(0.9, lt=1),
    "beta1": HyperSpec(0.9, lt=1),
    "beta2": HyperSpec(0.999, lt=1),
    "alpha": HyperSpec(0.99, lt=1),
    "eps": HyperSpec(1e-8, ge=None, gt=0, per_run=False),
    "weight_decay": HyperSpec(0.0),
}

# Values of hyper-parameters a caller may leave out (config.OptimizerConfig's defaults; lr has none).
HYPER_DEFAULTS: dict[str, float] = {k: h.default for k, h in HYPERS.items()}


def _sgd(w: Tensor, g: Tensor, state: dict, hp: dict, n) -> tuple[Tensor, dict]:
    return w - hp["lr"] * g, {}


def _momentum(w: Tensor, g: Tensor, state: dict, hp: dict, n) -> tuple[Tensor, dict]:
    b = hp["momentum"] * state["momentum_buffer"] + g
    return w - hp["lr"] * b, {"momentum_buffer": b}


def _nesterov(w: Tensor, g: Tensor, state: dict, hp: dict, n) -> tuple[Tensor, dict]:
    b = hp["momentum"] * state["momentum_buffer"] + g
    return w - hp["lr"] * (g + hp["momentum"] * b), {"momentum_buffer": b}


def _rmsprop(w: Tensor, g: Tensor, state: dict, hp: dict, n) -> tuple[Tensor, dict]:
    alpha = hp["alpha"]
    s = alpha * state["square_avg"] + (1 - alpha) * g * g
    return w - hp["lr"] * g / (s.sqrt() + hp["eps"]), {"square_avg": s}


def _adam(w: Tensor, g: Tensor, state: dict, hp: dict, n) -> tuple[Tensor, dict]:
    b1, b2 = hp["beta1"], hp["beta2"]
    m = state["exp_avg"] + (1 - b1) * (g - state["exp_avg"])
    v = b2 * state["exp_avg_sq"] + (1 - b2) * g * g
    bc1 = 1 - b1**n
    bc2_sqrt = (1 - b2**n) ** 0.5
    return w - (hp["lr"] / bc1) * m / (v.sqrt() / bc2_sqrt + hp["eps"]), {"exp_avg": m, "exp_avg_sq": v}


# The inverses: the gradient g_k of the update leaving record k, from dw_k = w_k - w_{k+1}, the lr over the
# span (lr_k times record_every), the logged states (run, record, param) and the hyper-parameters.
def _sgd_grad(dw: Tensor, lr: Tensor, states: dict, hp: dict) -> Tensor:
    return dw / lr


def _buffer_grad(dw: Tensor, lr: Tensor, states: dict, hp: dict) -> Tensor:
    b = states["momentum_buffer"]
    return b[:, 1:] - hp["momentum"] * b[:, :-1]


def _rmsprop_grad(dw: Tensor, lr: Tensor, states: dict, hp: dict) -> Tensor:
    s = states["square_avg"]
    return dw * (s[:, 1:].sqrt() + hp["eps"]) / lr


def _adam_grad(dw: Tensor, lr: Tensor, states: dict, hp: dict) -> Tensor:
    m = states["exp_avg"]
    return m[:, :-1] + (m[:, 1:] - m[:, :-1]) / (1 - hp["beta1"])


def momentum_buffer_from_weights(w: np.ndarray, lr: np.ndarray, optimizer: str, mu: np.ndarray | None) -> np.ndarray:
    """The momentum buffer after each step of runs recorded at every step, from their weights alone.

    Each update moves w by lr_{k-1} times the step, so step_k = (w_{k-1} - w_k) / lr_{k-1}; for heavy-ball
    momentum the step is the buffer b_k, for Nesterov it is g_k + mu b_k = (1 + mu) b_k - mu b_{k-1}, solved
    forward from b_0 = 0 (the recursion damps round-off by mu / (1 + mu) < 1 per step).

    Args:
        w: (run, step, param) weights.
        lr: (run, step) learning rate of the update leaving each step.
        optimizer: ``momentum`` or ``nesterov``.
        mu: (run,) momentum (not read for ``momentum``).

    Returns:
        (run, step, param) float32 buffers; b_0 = 0.
    """
    import numpy as np

    buf = np.zeros_like(w, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = (w[:, :-1] - w[:, 1:]) / lr[:, :-1, None]
    if optimizer == "momentum":
        buf[:, 1:] = step
        return buf
    mu = np.asarray(mu, dtype=np.float64)[:, None]
    for k in range(1, w.shape[1]):
        buf[:, k] = (step[:, k - 1] + mu * buf[:, k - 1]) / (1 + mu)
    return buf


def _buffer_from_weights(name: str) -> Callable:
    return lambda w, lr, hyper: {"momentum_buffer": momentum_buffer_from_weights(w, lr, name, hyper.get("momentum"))}


# The state as GFM's field reads it (gfm.forecasters.gfm_features.state_features): one feature per state array,
# on the scale of a velocity (scales.v) or of a gradient (scales.g); m is optimizer steps per unit time.
def _no_features(states: dict, hp: dict, n_done, m: float, scales) -> list:
    return []


def _buffer_features(states: dict, hp: dict, n_done, m: float, scales) -> list:
    return [hp["lr"] * states["momentum_buffer"] * m / scales.v]   # the buffer's velocity lr b m / V


def _square_avg_features(states: dict, hp: dict, n_done, m: float, scales) -> list:
    return [states["square_avg"].clamp_min(0).sqrt() / scales.g]   # sqrt(s) / G


def _adam_features(states: dict, hp: dict, n_done, m: float, scales) -> list:
    """The bias-corrected step lr Mhat / (sqrt(Vhat) + eps) m / V and sqrt(Vhat) / G."""
    import torch

    mhat, vhat = adam_moments(states, hp, torch.as_tensor(n_done).clamp_min(1.0))
    return [hp["lr"] * mhat / (vhat + hp["eps"]) * m / scales.v, vhat / scales.g]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer's facts.

    Attributes:
        name: the params and store name.
        hyper: the per-run hyper-parameters a store holds (``runs/<name>``), eps aside: stores hold eps always.
        reads_eps: whether the rule reads eps (params accept ``eps`` only then).
        state: the state carried between steps, torch.optim's names (so gfm.record copies them); also the
            store's ``state/*`` arrays.
        step: the update without weight decay, ``(w, g, state, hp, n) -> (w_new, state_new)``.
        grad: the update's inverse, ``(dw, lr, states, hp) -> g`` (see :func:`recover_gradient`).
        state_from_weights: ``(w, lr, hyper) -> {state name: array}`` where the weights of a run recorded at
            every step determine the state (momentum buffers); None where they do not.
        decoupled_weight_decay: weight decay shrinks the weights instead of adding weight_decay * w to g.
        state_features: ``(states, hp, n_done, m, scales) -> [tensor]``, the state as GFM's field reads it,
            one feature per state array (see :func:`_buffer_features`).
    """

    name: str
    hyper: tuple[str, ...]
    reads_eps: bool
    state: tuple[str, ...]
    step: Callable
    grad: Callable
    state_from_weights: Callable | None = None
    decoupled_weight_decay: bool = False
    state_features: Callable = _no_features

    @property
    def params_keys(self) -> frozenset[str]:
        """The hyper-parameters a params file may set for this optimizer."""
        return frozenset({*self.hyper, *(("eps",) if self.reads_eps else ())})


_ADAM_STATE = ("exp_avg", "exp_avg_sq")
SPECS: dict[str, OptimizerSpec] = {s.name: s for s in (
    OptimizerSpec("sgd", ("lr", "weight_decay"), False, (), _sgd, _sgd_grad),
    OptimizerSpec("momentum", ("lr", "momentum", "weight_decay"), False, ("momentum_buffer",), _momentum,
                  _buffer_grad, _buffer_from_weights("momentum"), state_features=_buffer_features),
    OptimizerSpec("nesterov", ("lr", "momentum", "weight_decay"), False, ("momentum_buffer",), _nesterov,
                  _buffer_grad, _buffer_from_weights("nesterov"), state_features=_buffer_features),
    OptimizerSpec("adam", ("beta1", "beta2", "lr", "weight_decay"), True, _ADAM_STATE, _adam, _adam_grad,
                  state_features=_adam_features),
    OptimizerSpec("adamw", ("beta1", "beta2", "lr", "weight_decay"), True, _ADAM_STATE, _adam, _adam_grad,
                  decoupled_weight_decay=True, state_features=_adam_features),
    OptimizerSpec("rmsprop", ("alpha", "lr", "weight_decay"), True, ("square_avg",), _rmsprop, _rmsprop_grad,
                  state_features=_square_avg_features),
)}

# Views of the registry, by optimizer name (the names other modules import).
OPTIMIZER_NAMES: tuple[str, ...] = tuple(SPECS)
STATE_NAMES: dict[str, tuple[str, ...]] = {n: s.state for n, s in SPECS.items()}
HYPER_NAMES: dict[str, tuple[str, ...]] = {n: s.hyper for n, s in SPECS.items()}


def spec_of(name: str) -> OptimizerSpec:
    """The spec of optimizer ``name``.

    Raises:
        ValueError: unknown optimizer name.
    """
    if name not in SPECS:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(SPECS)}")
    return SPECS[name]


def init_state(name: str, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Zero state for optimizer ``name`` shaped like ``w``.

    Raises:
        ValueError: unknown optimizer name.
    """
    import torch

    return {s: torch.zeros_like(w) for s in spec_of(name).state}


def update(name: str, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
           hp: dict[str, torch.Tensor | float], n: int | torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step.

    Args:
        name: a key of :data:`SPECS` (``sgd``, ``momentum``, ``nesterov``, ``rmsprop``, ``adam``, ``adamw``).
        w: weights, (..., param).
        g: gradient (or GFM's gradient surrogate) at ``w``, same shape.
        state: optimizer state before the step (see :data:`STATE_NAMES`).
        hp: hyper-parameters; ``lr`` is the learning rate in force for this step (schedule applied).
        n: 1-based index of this update (Adam's bias correction); a tensor is allowed for continuous time.

    Returns:
        ``(w_new, state_new)``.
    """
    spec = spec_of(name)
    wd = hp.get("weight_decay", 0.0)
    if not (isinstance(wd, float) and wd == 0.0):
        if spec.decoupled_weight_decay:
            w = w * (1 - hp["lr"] * wd)  # torch.optim.AdamW: param.mul_(1 - lr * weight_decay) before the step
        else:
            g = g + wd * w
    return spec.step(w, g, state, hp, n)


def recover_gradient(name: str, w: torch.Tensor, states: dict[str, torch.Tensor], hp: dict[str, torch.Tensor],
                     lr: torch.Tensor) -> torch.Tensor:
    """The gradient each logged update used, from the logged weights and state (the inverse of :func:`update`).

    sgd: (w_k - w_{k+1}) / lr_k;  momentum, nesterov: b_{k+1} - mu b_k;  adam, adamw: M_k + (M_{k+1} - M_k) /
    (1 - beta1); rmsprop: (w_k - w_{k+1}) (sqrt(s_{k+1}) + eps) / lr_k; minus weight_decay * w_k (the rule adds
    it back) except with decoupled weight decay, which never enters the gradient. Exact when records are one
    step apart; with coarser records it is the mean gradient of the recorded span, roughly.

    Args:
        name: optimizer name.
        w: (run, record, param) weights.
        states: the logged state, each (run, record, param).
        hp: hyper-parameters, each (run, 1, 1).
        lr: (run, record - 1, 1) learning rate times steps per record, of the span leaving each record.

    Returns:
        (run, record - 1, param).

    Raises:
        ValueError: unknown optimizer name.
    """
    spec = spec_of(name)
    g = spec.grad(w[:, :-1] - w[:, 1:], lr, states, hp)
    if "weight_decay" in hp and not spec.decoupled_weight_decay:
        g = g - hp["weight_decay"] * w[:, :-1]
    return g


def adam_moments(states: dict[str, torch.Tensor], hp: dict[str, torch.Tensor],
                 n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam's bias-corrected moments after ``n`` updates: (M / (1 - beta1^n), sqrt(V / (1 - beta2^n)))."""
    mhat = states["exp_avg"] / (1 - hp["beta1"] ** n)
    vhat = (states["exp_avg_sq"].clamp_min(0) / (1 - hp["beta2"] ** n)).sqrt()
    return mhat, vhat


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
