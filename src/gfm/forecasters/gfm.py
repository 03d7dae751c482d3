"""Gradient Flow Matching forecasters: ``gfm`` (optimizer-aware) and ``gfm_plain`` (the ablation).

Training (conditional flow matching, docs/methods.md §1.2): draw a training run, a time t = (k + omega) dt in the
forecast window (t_K <= t < 1, dt = record_every / steps) and the point x_t on the run's piecewise-linear
path (gfm.flow.path); regress the field's velocity on the path's u_t = (w_{k+1} - w_k) / dt, in units of
the global velocity scale V. The field is conditioned on the run's prefix context (gfm_features) so that a
field fitted on training runs transfers to unseen runs. Optionally (``unroll`` > 0) a multi-step loss
integrates the field for ``unroll`` recorded steps from a true point and penalises the distance to the true
trajectory, in units of S_x: the rollout drift that one-step matching cannot see.

Forecasting: integrate dx/dt = v(x, t | context) with torchdiffeq (gfm.flow.solver) from (w_K, t_K) to each
horizon; Euler at the recording step by default.

Velocity heads:

* ``gfm_plain``: v = V * B tanh(o / B), the network's bounded output is the velocity.
* ``gfm`` with ``structure: rule`` (the paper's optimizer-aware field): the bounded output is a gradient
  surrogate g = G * B tanh(o / B) and the velocity is the optimizer's own rule (gfm.flow.field docstring:
  sgd, momentum, nesterov, rmsprop, adam and adamw with bias correction), carrying the optimizer state as
  extra ODE state started from the logged state at the prefix end. ``target`` picks the loss: ``velocity``
  (match u_t), ``gradient`` (match the logged gradient, recoverable from the logged state:
  gfm_features.recover_gradient) or ``both``.
* ``gfm`` with ``structure: state_input``: the plain head, with the logged optimizer state at the prefix end
  as extra per-parameter inputs (the safe optimizer-aware variant: no division by a learned sqrt(v)).

The learning rate alpha(t) past the prefix end is taken to stay at its last logged value (a forecaster sees
only the prefix); schedules beyond the prefix are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from gfm.base.schema import spec
from gfm.core.optimizers import HYPER_NAMES, STATE_NAMES
from gfm.flow import (
    CoordinateField,
    JointField,
    PiecewiseLinearPath,
    optimizer_velocity,
    sample,
    sample_segments,
)
from gfm.flow.solver import SOLVERS
from gfm.forecasters.base import (
    Forecaster,
    ForecasterError,
    SizeEstimate,
    Trajectories,
    count_indexed,
    known_sizes,
    register,
    tensor_dim,
)
from gfm.forecasters.fitting import FitOptions, best_val_loss, fit_module, seeded, validation
from gfm.forecasters.gfm_features import (
    RUN_HYPER,
    Context,
    Scales,
    build_context,
    dynamic_features,
    fit_scales,
    n_state_features,
    record_dt,
    recover_gradient,
    state_features,
)

__all__ = ["GFM", "GFMPlain", "PlainConfig", "GFMConfig"]

Solver = Literal["euler", "midpoint", "rk4", "dopri5", "bosh3"]
assert set(SOLVERS) == {"euler", "midpoint", "rk4", "dopri5", "bosh3"}, "keep Solver in step with flow.SOLVERS"


@dataclass(frozen=True)
class PlainConfig(FitOptions):
    """Options shared by ``gfm`` and ``gfm_plain`` (the budget and the rest of the optimiser's options are
    every learned model's: :class:`~gfm.forecasters.fitting.FitOptions`)."""

    field: Literal["coordinate", "joint"] = spec("coordinate", doc="weight-shared per-parameter field, or one MLP over the flat vector")
    width: int = spec(64, ge=1, doc="hidden width of the field MLP")
    depth: int = spec(2, ge=1, doc="hidden layers of the field MLP")
    run_context: Literal["none", "prefix", "state"] = spec(
        "prefix", doc="coordinate field: pool an embedding over the run's parameters (prefix features, or "
                      "prefix + current state) and feed it to every parameter")
    pool_width: int = spec(16, ge=1, doc="width of the pooled run embedding")
    velocity_windows: list[int] = spec((1, 5, 10, 20), nonempty=True, ge=1, doc="spans (records) of the prefix-velocity features")
    anchors: bool = spec(True, doc="w_K, w_0 and w_K - w_0 as features")
    bound: float = spec(5.0, gt=0, doc="output bound B, in units of the global velocity (or gradient) scale")
    sigma: float = spec(0.0, ge=0, doc="Gaussian path width, in units of the displacement scale S_x")
    t_sampling: Literal["uniform", "grid"] = spec("uniform", doc="t ~ U(window), or only recorded times")
    window: Literal["forecast", "all"] = spec("forecast", doc="train on t >= t_K only, or on the whole run")
    unroll: int = spec(0, ge=0, doc="recorded steps of the multi-step rollout loss (0 = pure flow matching)")
    unroll_weight: float = spec(1.0, ge=0, doc="weight of the rollout loss")
    unroll_batch: int = spec(32, ge=1, doc="rollouts per iteration")
    solver: Solver = spec("euler", doc="ODE method for forecasting")
    steps_per_record: int = spec(1, ge=1, doc="fixed-step solvers: steps per recorded interval")
    rtol: float = spec(1e-5, gt=0, doc="adaptive solvers' relative tolerance")
    atol: float = spec(1e-7, gt=0, doc="adaptive solvers' absolute tolerance")
    batch_size: int = spec(256, ge=1, doc="(run, t) samples per iteration")
    param_sample: int = spec(0, ge=0, doc="coordinate field: parameters drawn per iteration (0 = all); bounds the "
                                          "cost of an iteration on large networks")
    lr: float = spec(2e-3, gt=0, doc="Adam learning rate of the field")


@dataclass(frozen=True)
class GFMConfig(PlainConfig):
    """``gfm``: the plain options plus the optimizer structure."""

    structure: Literal["rule", "state_input"] = spec(
        "rule", doc="rule: the net outputs a gradient surrogate and the optimizer's rule makes the velocity; "
                    "state_input: the plain head with the logged optimizer state as input")
    target: Literal["velocity", "gradient", "both"] = spec(
        "velocity", doc="rule: match the path velocity, the logged gradient, or both")
    state_features: bool = spec(True, doc="rule: the evolving optimizer state as field input")


def _snap(n: torch.Tensor) -> torch.Tensor:
    """Round update indices that float time put a hair off an integer (Euler on the grid is then exact)."""
    r = torch.round(n)
    return torch.where((n - r).abs() < 1e-3, r, n)


def _columns(ctx: Context, cols: torch.Tensor | None) -> Context:
    """The context restricted to parameters ``cols`` (all when None)."""
    if cols is None:
        return ctx
    return Context(ctx.w_K[:, cols], ctx.static[:, cols], ctx.run_feats, ctx.hp,
                   {k: v[:, cols] for k, v in ctx.states_K.items()}, ctx.lr, ctx.t_K)


class _Dynamics:
    """The ODE right-hand side for a batch of runs: features -> field -> velocity.

    Time inside the solver is relative (s = 0 at each row's start ``t0``), so rows starting at different
    records integrate together (multi-step training).
    """

    def __init__(self, fc: _GFMBase, ctx: Context, t0: torch.Tensor):
        self.fc, self.ctx, self.t0 = fc, ctx, t0  # t0: (batch, 1)
        self.sc: Scales = fc.scales
        e = fc.extra
        self.opt, self.m, self.dt = e["optimizer"], float(e["steps"]), float(e["dt"])
        self.rule = fc.structure == "rule"
        self.state_names = STATE_NAMES[self.opt] if self.rule else ()

    def evaluate(self, x: torch.Tensor, states: dict[str, torch.Tensor], s: torch.Tensor | float):
        """Velocity (and state velocity and surrogate gradient for the rule) at relative time ``s``."""
        cfg, ctx = self.fc.config, self.ctx
        t_abs = self.t0 + s
        dyn = dynamic_features(x, t_abs, ctx, self.sc)
        if self.rule and cfg.state_features:
            dyn += state_features(self.opt, states, ctx.hp, t_abs * self.m, self.m, self.sc)
        feats = torch.cat([ctx.static, torch.stack(dyn, -1)], -1)
        pool = None
        if cfg.run_context == "prefix":
            pool = ctx.static
        elif cfg.run_context == "state":
            pool = feats
        out = self.fc.module(feats, ctx.run_feats, pool)[..., 0]  # (batch, param)
        if not self.rule:
            return out * self.sc.v, {}, None
        g = out * self.sc.g
        j = torch.clamp((t_abs / self.dt + 1e-6).floor().long(), 0, ctx.lr.shape[1] - 1)  # (batch, 1)
        hp = dict(ctx.hp, lr=torch.gather(ctx.lr, 1, j))
        v, ds = optimizer_velocity(self.opt, x, g, states, hp, n=_snap(t_abs * self.m + 1), m=self.m)
        return v, ds, g

    def __call__(self, y, s):
        if not self.rule:
            return self.evaluate(y, {}, s)[0]
        x, *st = y
        v, ds, _ = self.evaluate(x, dict(zip(self.state_names, st)), s)
        return (v, *(ds[n] for n in self.state_names))

    def initial(self, x: torch.Tensor, states: dict[str, torch.Tensor]):
        return (x, *(states[n] for n in self.state_names)) if self.rule else x


class _GFMBase(Forecaster):
    """Shared machinery; subclasses fix the velocity head via ``structure``."""

    min_prefix = 2

    @property
    def structure(self) -> str:
        return getattr(self.config, "structure", "none")

    @property
    def scales(self) -> Scales:
        return Scales.from_json(self.extra["scales"])

    # --- module ------------------------------------------------------------------------------------------
    def _new_field(self) -> JointField | CoordinateField:
        e, cfg = self.extra, self.config
        zero = self.structure != "rule"
        if cfg.field == "joint":
            return JointField(e["n_params"], e["n_features"], e["n_run"], width=cfg.width, depth=cfg.depth,
                              limit=cfg.bound, zero_init=zero)
        n_pool = {"none": 0, "prefix": e["n_static"], "state": e["n_features"]}[cfg.run_context]
        return CoordinateField(e["n_features"], e["n_run"], width=cfg.width, depth=cfg.depth, n_pool=n_pool,
                               pool_width=cfg.pool_width, limit=cfg.bound, zero_init=zero)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.module = self._new_field()
        super().load_state_tensors(tensors)

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        """The field's MLP (the joint field's also a skip map from every input to every output) on the feature
        counts :meth:`fit` computes; one training batch runs ``batch_size`` samples (and ``unroll_batch``
        rollouts of ``unroll`` steps) over every parameter (``param_sample`` of them, coordinate field)."""
        cfg = self.config
        n_opt = n_state_features(optimizer)
        n_static = (3 if cfg.anchors else 0) + len(cfg.velocity_windows) + (n_opt if self.structure == "state_input" else 0)
        n_feat = n_static + 3 + (n_opt if self.structure == "rule" and getattr(cfg, "state_features", False) else 0)
        n_run = len(set(RUN_HYPER) & set(HYPER_NAMES.get(optimizer, ())))  # the stores' run fields fit_scales keeps
        w, depth = cfg.width, cfg.depth

        def mlp(n_in: int, n_out: int) -> int:  # depth hidden layers, then the output layer
            return n_in * w + w + (depth - 1) * (w * w + w) + w * n_out + n_out

        if cfg.field == "joint":
            n_in = n_params * n_feat + n_run
            params = mlp(n_in, n_params) + n_in * n_params  # + the skip map
            per_sample = n_in + 2 * w * depth + n_params
        else:
            n_pool = {"none": 0, "prefix": n_static, "state": n_feat}[cfg.run_context]
            pool = n_pool * cfg.pool_width + 2 * cfg.pool_width + cfg.pool_width ** 2 if n_pool else 0
            n_in = n_feat + n_run + (cfg.pool_width if n_pool else 0)
            params = pool + mlp(n_in, 1)
            cols = min(cfg.param_sample, n_params) if cfg.param_sample else n_params
            per_sample = cols * (n_in + 2 * w * depth)
        return SizeEstimate(params, (cfg.batch_size + cfg.unroll_batch * cfg.unroll) * per_sample)

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        # BoundedMLP: Linear, SiLU, ..., Linear: depth hidden layers are depth + 1 weights at net.0, net.2, ...
        return known_sizes(width=tensor_dim(shapes, "mlp.net.0.weight", 0),
                           depth=max(count_indexed(shapes, r"mlp\.net\.(\d+)\.weight") - 1, 0),
                           pool_width=tensor_dim(shapes, "pool.0.weight", 0))

    def _reads_optimizer(self) -> bool:
        return self.structure in ("rule", "state_input")

    def states_needed(self) -> tuple[str, ...]:
        return tuple(STATE_NAMES.get(self.extra.get("optimizer"), ())) if self._reads_optimizer() else ()

    def hyper_needed(self) -> tuple[str, ...]:
        run_features = tuple(self.extra.get("scales", {}).get("hyper_mean", {}))
        if not self._reads_optimizer():
            return run_features
        rule = (*HYPER_NAMES.get(self.extra.get("optimizer"), ()), "eps")
        return tuple(dict.fromkeys((*run_features, *rule)))

    def fixed_n_params(self) -> int | None:
        return int(self.extra["n_params"]) if self.config.field == "joint" and "n_params" in self.extra else None

    def fitted_schema(self) -> dict:
        from gfm.forecasters.fitted import COUNT, NON_NEGATIVE_INT, NUMBER, OPTIMIZER, POSITIVE, Maybe

        return {"optimizer": OPTIMIZER, "steps": COUNT, "record_every": COUNT, "dt": POSITIVE, "n_params": COUNT,
                "n_static": NON_NEGATIVE_INT, "n_features": COUNT, "scales": Scales.schema(),
                "n_run": NON_NEGATIVE_INT, "best_val_loss": Maybe(NUMBER)}

    def fitted_relations(self, extra: dict) -> list[str]:
        out = []
        if not math.isclose(extra["dt"], extra["record_every"] / extra["steps"], rel_tol=1e-9):
            out.append(f"extra.dt is {extra['dt']!r}; record_every / steps is {extra['record_every'] / extra['steps']!r}")
        if extra["n_run"] != len(extra["scales"]["hyper_mean"]):
            out.append(f"extra.n_run is {extra['n_run']}; scales.hyper_mean holds {len(extra['scales']['hyper_mean'])}")
        return out

    def _context(self, traj: Trajectories) -> Context:
        cfg = self.config
        return build_context(traj, self.prefix_end, self.scales, velocity_windows=tuple(cfg.velocity_windows),
                             anchors=cfg.anchors, state_input=self.structure == "state_input")

    # --- training ----------------------------------------------------------------------------------------
    def _check(self, traj: Trajectories, what: str) -> None:
        if traj.n_records < self.horizons[-1] + 1:
            raise ForecasterError(f"{self.name}: {what} runs have {traj.n_records} records; the fitted horizons "
                                  f"need {self.horizons[-1] + 1}")
        if self.structure == "rule" and getattr(self.config, "target", "velocity") != "velocity" and traj.record_every != 1:
            raise ForecasterError(f"{self.name}: target {self.config.target!r} needs every step recorded "
                                  f"(record_every = 1); got {traj.record_every}")

    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        """Flow-matching (plus optional rollout) training; the best validation rollout's weights are kept."""
        cfg, K = self.config, self.prefix_end
        self._check(train, "training")
        if val.n_runs:
            self._check(val, "validation")
        n_static = (3 if cfg.anchors else 0) + len(cfg.velocity_windows)
        if self.structure == "state_input":
            n_static += n_state_features(train.optimizer)
        n_dyn = 3 + (n_state_features(train.optimizer) if self.structure == "rule" and cfg.state_features else 0)
        scales = fit_scales(train, K)
        self.extra = {"optimizer": train.optimizer, "steps": train.steps, "record_every": train.record_every,
                      "dt": record_dt(train), "n_params": train.n_params, "n_static": n_static,
                      "n_features": n_static + n_dyn, "scales": scales.to_json(),
                      "n_run": len(scales.hyper_mean)}
        dev = train.weights.device
        self.module = seeded(self._new_field, rng).to(dev)
        ctx = self._context(train)
        ctx.lr = train.lr  # training knows the whole lr schedule of its runs
        W, T = train.weights, train.n_records
        first = K if cfg.window == "forecast" else 0
        path = PiecewiseLinearPath(record_dt(train), sigma=cfg.sigma)
        rule = self.structure == "rule"
        target = getattr(cfg, "target", "velocity")
        g_true = recover_gradient(train) if rule and target != "velocity" else None

        def step_loss(_step: int) -> torch.Tensor:
            runs = torch.randint(0, train.n_runs, (cfg.batch_size,), generator=rng).to(dev)
            k, om = sample_segments(cfg.batch_size, first, T - 2, mode=cfg.t_sampling, generator=rng)
            k, om = k.to(dev), om.to(dev)
            cols = None
            if cfg.field == "coordinate" and 0 < cfg.param_sample < train.n_params:
                # a random subset of coordinates: the per-parameter field does not care, the pooled run context
                # becomes a subsample mean
                cols = torch.randperm(train.n_params, generator=rng)[: cfg.param_sample].to(dev)
            Wc = W if cols is None else W[:, :, cols]
            ps = path.sample(Wc, k, om, runs=runs, generator=rng, scale=scales.x)
            dyn = _Dynamics(self, _columns(ctx.rows(runs), cols), ps.t.unsqueeze(1))
            states = {n: path.interpolate(train.states[n][runs, k], train.states[n][runs, k + 1], om)
                      for n in dyn.state_names}
            if cols is not None:
                states = {n: v[:, cols] for n, v in states.items()}
            v, _, g = dyn.evaluate(ps.x_t, states, 0.0)
            loss = torch.zeros(())
            if target in ("velocity", "both"):
                loss = loss + ((v - ps.dx_t) / scales.v).pow(2).mean()
            if g_true is not None:
                gt = g_true[runs, k] if cols is None else g_true[runs, k][:, cols]
                loss = loss + ((g - gt) / scales.g).pow(2).mean()
            if cfg.unroll:
                loss = loss + cfg.unroll_weight * self._unroll_loss(train, ctx, first, rng)
            return loss

        log = fit_module(self.module, step_loss, validation(self, val), cfg, on_epoch=self.on_epoch)
        self.extra["best_val_loss"] = best_val_loss(log)
        return log

    def _unroll_loss(self, train: Trajectories, ctx: Context, first: int, rng: torch.Generator) -> torch.Tensor:
        cfg, sc = self.config, self.scales
        U = min(cfg.unroll, train.n_records - 1 - first)
        dev = train.weights.device
        runs = torch.randint(0, train.n_runs, (cfg.unroll_batch,), generator=rng).to(dev)
        k0 = torch.randint(first, train.n_records - U, (cfg.unroll_batch,), generator=rng).to(dev)
        dt = record_dt(train)
        dyn = _Dynamics(self, ctx.rows(runs), (k0.float() * dt).unsqueeze(1))
        y0 = dyn.initial(train.weights[runs, k0], {n: train.states[n][runs, k0] for n in dyn.state_names})
        grid = torch.arange(U + 1, dtype=torch.float32, device=dev) * dt
        xs = sample(dyn, y0, time_grid=grid, method="euler", step_size=dt)
        xs = xs[0] if isinstance(xs, tuple) else xs  # (U + 1, batch, param)
        idx = k0.unsqueeze(0) + torch.arange(U + 1, device=dev).unsqueeze(1)  # (U + 1, batch)
        truth = train.weights[runs.unsqueeze(0), idx]
        return ((xs[1:] - truth[1:]) / sc.x).pow(2).mean()

    # --- forecasting -------------------------------------------------------------------------------------
    def _rollout(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        cfg, K = self.config, self.prefix_end
        dt = float(self.extra["dt"])
        if prefix.optimizer != self.extra["optimizer"] and self.structure != "none":
            raise ForecasterError(f"{self.name}: fitted on {self.extra['optimizer']} runs, got {prefix.optimizer} runs")
        ctx = self._context(prefix)
        dev = prefix.weights.device
        if self.module is not None:
            self.module.to(dev)
        dyn = _Dynamics(self, ctx, torch.full((prefix.n_runs, 1), K * dt, device=dev))
        y0 = dyn.initial(ctx.w_K, ctx.states_K)
        grid = torch.tensor([0.0] + [(h - K) * dt for h in horizons], dtype=torch.float32, device=dev)
        step = dt / cfg.steps_per_record
        xs = sample(dyn, y0, time_grid=grid, method=cfg.solver, step_size=step, rtol=cfg.rtol, atol=cfg.atol)
        xs = xs[0] if isinstance(xs, tuple) else xs  # (1 + horizon, run, param)
        return xs[1:].transpose(0, 1)

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        if self.module is None:
            raise ForecasterError(f"{self.name}: not fitted")
        return self._rollout(prefix, horizons)


@register
class GFMPlain(_GFMBase):
    """``gfm_plain``: the field outputs the velocity directly (no optimizer structure)."""

    name = "gfm_plain"
    Config = PlainConfig


@register
class GFM(_GFMBase):
    """``gfm``: optimizer-aware Gradient Flow Matching (``structure``: rule | state_input)."""

    name = "gfm"
    Config = GFMConfig
