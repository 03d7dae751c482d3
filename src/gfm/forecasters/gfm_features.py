"""Context features for GFM's field: what a field trained on some runs needs to transfer to unseen runs.

Per parameter, from the observed prefix w_0..w_K (docs/methods.md §8.1: prefix velocities decide
everything; anchors help)::

    static  = [w_K / S_w, w_0 / S_w, (w_K - w_0) / S_x,                           anchors
               vel_h / V for h in velocity_windows,  vel_h = (w_K - w_{K-h}) / (h dt)   prefix velocities
               optimizer state at K (state_input only, see :func:`state_features`)]
    dynamic = [(x - w_K) / S_x, t, (t - t_K) / (1 - t_K), evolving optimizer state (rule)]
    run     = standardised optimizer hyper-parameters (log lr, momentum, betas, alpha, weight decay)

Scales are global, fitted once on the training runs (one number each: per-parameter scaling was neutral or
worse in the prototype): S_w the weights' std over the prefix, S_x the std of w_j - w_K and V the std of
the velocity over the forecast window, G the std of the recovered gradient.

The logged optimizer state makes the true (minibatch) gradient of every update recoverable
(:func:`recover_gradient`), which gives GFM a gradient-matching target besides velocity matching.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from gfm.core import optimizers
from gfm.forecasters.base import ForecasterError, Trajectories

__all__ = ["Scales", "Context", "fit_scales", "recover_gradient", "build_context", "dynamic_features",
           "state_features", "n_state_features", "RUN_HYPER", "record_dt"]

# Hyper-parameters that become run features when present (eps is fixed and tiny: left out).
RUN_HYPER = ("lr", *(k for k in optimizers.HYPER_DEFAULTS if k != "eps"))


def record_dt(traj: Trajectories) -> float:
    """Time between two records: record_every / steps."""
    return traj.record_every / traj.steps


def n_state_features(optimizer: str) -> int:
    """Number of optimizer-state features :func:`state_features` returns.

    Raises:
        ForecasterError: an optimizer GFM has no state features for.
    """
    if optimizer not in optimizers.SPECS:
        raise ForecasterError(f"GFM has no optimizer-state features for {optimizer!r}; expected one of "
                              f"{', '.join(sorted(optimizers.SPECS))}")
    return len(optimizers.SPECS[optimizer].state)  # one feature per state array (state_features)


@dataclass
class Scales:
    """Global normalisation constants fitted on the training runs (JSON-able: saved in ``extra``)."""

    w: float
    x: float
    v: float
    g: float
    hyper_mean: dict[str, float]
    hyper_std: dict[str, float]

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def schema() -> dict:
        """What :meth:`to_json` gives, as a schema of :mod:`gfm.forecasters.fitted` (scales are positive:
        a degenerate one is fitted as 1)."""
        from gfm.forecasters.fitted import NON_NEGATIVE, NUMBER, POSITIVE, MapOf

        return {"w": POSITIVE, "x": POSITIVE, "v": POSITIVE, "g": POSITIVE, "hyper_mean": MapOf(NUMBER),
                "hyper_std": MapOf(NON_NEGATIVE)}

    @classmethod
    def from_json(cls, d: dict) -> Scales:
        return cls(**d)


def recover_gradient(traj: Trajectories) -> torch.Tensor:
    """The gradient each logged update used, recovered from the weights and the logged state by the inverse of
    the optimizer's rule (:func:`gfm.core.optimizers.recover_gradient`). Exact when record_every = 1; with coarser
    records it is the mean gradient of the recorded span, roughly.

    Args:
        traj: trajectories with their states.

    Returns:
        (run, record - 1, param): gradient of the update leaving records 0..T-2.
    """
    if traj.optimizer not in optimizers.SPECS:
        raise ForecasterError(f"unknown optimizer {traj.optimizer!r}; expected one of "
                              f"{', '.join(sorted(optimizers.SPECS))}")
    hp = {k: v.view(-1, 1, 1) for k, v in traj.hyper.items()}
    lr = traj.lr[:, :-1].unsqueeze(-1) * traj.record_every  # per-record span
    return optimizers.recover_gradient(traj.optimizer, traj.weights, traj.states, hp, lr)


def _std(x: torch.Tensor) -> float:
    s = float(x.double().std())
    return s if math.isfinite(s) and s > 0 else 1.0


def fit_scales(train: Trajectories, prefix_end: int) -> Scales:
    """Global scales from the training runs (prefix for S_w; forecast window for S_x, V and G)."""
    w = train.weights
    dt = record_dt(train)
    win = w[:, prefix_end:]
    hyper_mean, hyper_std = {}, {}
    for k in RUN_HYPER:
        if k in train.hyper:
            h = train.hyper[k].double()
            h = h.clamp_min(1e-12).log() if k == "lr" else h
            hyper_mean[k] = float(h.mean())
            hyper_std[k] = float(h.std()) if len(h) > 1 and float(h.std()) > 1e-12 else 0.0
    return Scales(
        w=_std(w[:, : prefix_end + 1]), x=_std(win - w[:, prefix_end : prefix_end + 1]),
        v=_std((win[:, 1:] - win[:, :-1]) / dt), g=_std(recover_gradient(train)[:, prefix_end:]),
        hyper_mean=hyper_mean, hyper_std=hyper_std)


def state_features(optimizer: str, states: dict[str, torch.Tensor], hp: dict[str, torch.Tensor],
                   n_done: torch.Tensor | float, m: float, scales: Scales) -> list[torch.Tensor]:
    """Optimizer state as velocity- or gradient-scale features.

    Each optimizer's spec says how (``state_features`` in gfm.core.optimizers): momentum, nesterov: the buffer's
    velocity lr b m / V; adam, adamw: the bias-corrected step lr Mhat / (sqrt(Vhat) + eps) m / V and
    sqrt(Vhat) / G; rmsprop: sqrt(s) / G.

    Args:
        optimizer: optimizer name.
        states: state tensors, each (batch, param).
        hp: hyper-parameters, each (batch, 1).
        n_done: updates done so far (bias correction), scalar or (batch, 1).
        m: optimizer steps per unit time.
        scales: global scales.

    Returns:
        :func:`n_state_features` tensors, each (batch, param).
    """
    spec = optimizers.SPECS.get(optimizer)
    return [] if spec is None else spec.state_features(states, hp, n_done, m, scales)


@dataclass
class Context:
    """Per-run context from the prefix 0..K; every tensor's first axis is the run.

    Attributes:
        w_K: (run, param) weights at the prefix end.
        static: (run, param, F_static) per-parameter prefix features.
        run_feats: (run, F_run) standardised hyper-parameters.
        hp: hyper-parameters, each (run, 1).
        states_K: optimizer state at the prefix end, each (run, param).
        lr: (run, record) logged learning rates (the prefix's at forecast time; the lr past the last one is
            taken to stay constant).
        t_K: time of the prefix end.
    """

    w_K: torch.Tensor
    static: torch.Tensor
    run_feats: torch.Tensor
    hp: dict[str, torch.Tensor]
    states_K: dict[str, torch.Tensor]
    lr: torch.Tensor
    t_K: float

    def rows(self, idx: torch.Tensor) -> Context:
        """The context of runs ``idx`` (rows may repeat)."""
        return Context(self.w_K[idx], self.static[idx], self.run_feats[idx], {k: v[idx] for k, v in self.hp.items()},
                       {k: v[idx] for k, v in self.states_K.items()}, self.lr[idx], self.t_K)


def build_context(traj: Trajectories, prefix_end: int, scales: Scales, *, velocity_windows: tuple[int, ...],
                  anchors: bool, state_input: bool) -> Context:
    """Context of every run of ``traj`` from its records 0..prefix_end (later records are not read).

    Args:
        traj: trajectories with at least ``prefix_end + 1`` records.
        prefix_end: K.
        scales: global scales.
        velocity_windows: spans h (records) of the prefix velocities; clipped to K.
        anchors: include w_K, w_0 and w_K - w_0.
        state_input: include the optimizer state at K as static features.

    Returns:
        The :class:`Context`.
    """
    K = prefix_end
    w = traj.weights[:, : K + 1]
    dt = record_dt(traj)
    m = float(traj.steps)
    w_K, w_0 = w[:, K], w[:, 0]
    feats = [w_K / scales.w, w_0 / scales.w, (w_K - w_0) / scales.x] if anchors else []
    for h in velocity_windows:
        h = max(1, min(int(h), K))
        feats.append((w_K - w[:, K - h]) / (h * dt) / scales.v)
    hp = {k: v.view(-1, 1).to(w.dtype) for k, v in traj.hyper.items()}
    states_K = {k: v[:, K] for k, v in traj.states.items()}
    if state_input:
        feats += state_features(traj.optimizer, states_K, hp, float(K * traj.record_every), m, scales)
    run = []
    for k in RUN_HYPER:
        if k in scales.hyper_mean:
            h = traj.hyper[k].double()
            h = h.clamp_min(1e-12).log() if k == "lr" else h
            sd = scales.hyper_std[k]
            run.append(((h - scales.hyper_mean[k]) / sd if sd > 0 else torch.zeros_like(h)).float().to(w.device))
    run_feats = torch.stack(run, -1) if run else torch.zeros(w.shape[0], 0, device=w.device)
    return Context(w_K=w_K, static=torch.stack(feats, -1), run_feats=run_feats, hp=hp, states_K=states_K,
                   lr=traj.lr[:, : K + 1] if traj.lr.shape[1] > K else traj.lr, t_K=K * dt)


def dynamic_features(x: torch.Tensor, t_abs: torch.Tensor, ctx: Context, scales: Scales) -> list[torch.Tensor]:
    """Features of the current point of the rollout.

    Args:
        x: (batch, param) current weights.
        t_abs: (batch, 1) current time.
        ctx: the batch's context (rows aligned with ``x``).
        scales: global scales.

    Returns:
        Three (batch, param) tensors: displacement since the prefix end, t, and the fraction of the remaining
        run elapsed.
    """
    rest = max(1.0 - ctx.t_K, 1e-6)
    return [(x - ctx.w_K) / scales.x, t_abs.expand_as(x), ((t_abs - ctx.t_K) / rest).expand_as(x)]
