"""``gfm_function``: GFM with a function-space gradient field, for MLP layouts.

Why: a per-parameter field (``gfm`` with ``field: coordinate``) sees each weight's own history plus a pooled
context, which is the per-parameter LSTM's information, and ties it. What decides where an MLP's weights go
is the loss landscape, and for a network trained on a loss of its outputs the landscape is shared by all
parameters through the network's *function*. This field is built from that structure:

    g(w | h) = grad_w  sum_p c_p * || f_w(x_p) - h_p ||^2

a gradient surrogate, where f_w is the network computed from the flat weights, the store's layout (linear
layers) and the store's activation between them (attribute ``network``, :mod:`gfm.core.network`), x_p are P learned
probe inputs with learned weights c_p, and h_p is the run's
*target function* at the probes. The optimizer's own rule (``gfm.core.optimizers.update``: SGD, momentum,
Nesterov, Adam, AdamW, RMSprop, with the logged state at the prefix end) turns g into the update, as in the
paper's optimizer-aware field. Because g is a gradient through the network, the field couples every
parameter through the current function at each step, is equivariant to permutations of hidden units and
applies to any width (the layout gives the shapes).

The run encoder is closed form. The target function is h = B z, a learned basis B (P x out x M) with
per-run coefficients z inferred from the prefix alone: each logged update k < K used a gradient g_k that
the logged state makes recoverable (``gfm_features.recover_gradient``), and g(w_k | B z) is linear in z, so
z is the ridge least-squares solution of g(w_k | B z) = g_k over the prefix. Training (conditional flow
matching on the rule head's gradient target) fits the probes, their weights, the basis and the ridge
strength on the training runs: each minibatch infers z from each run's own prefix, exactly as at forecast
time, then matches the surrogate to the recovered gradient at random recorded steps of the whole run.

The activation is part of the field: the same weights of a Tanh and of a ReLU network are different functions
with different gradients. A store that does not record its activation is refused (``StoreNotSupported``), never
forecast as if it were ReLU; the fitted model keeps the activation it was fitted with and refuses runs of
another. A model saved before models kept it was fitted with ReLU, the only activation it had.

Forecasting integrates the optimizer map from w_K step by step (the flow of a discrete optimizer is its own
update; no ODE discretisation is involved), with the learning rate held at its last logged value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gfm.base.errors import shorten
from gfm.base.schema import spec
from gfm.core import optimizers as opt_rules
from gfm.core.network import ACTIVATIONS
from gfm.forecasters.base import (
    Forecaster,
    ForecasterError,
    SizeEstimate,
    StoreNotSupported,
    Trajectories,
    known_sizes,
    register,
    tensor_dim,
)
from gfm.forecasters.fitting import FitOptions, best_val_loss, fit_module, validation
from gfm.forecasters.function_net import (
    FunctionField,
    MLPShape,
    fitted_activation,
    mlp_apply,
    mlp_shape,
    run_activation,
)
from gfm.forecasters.function_sampling import calibrate, sample_final
from gfm.forecasters.gfm_features import recover_gradient

__all__ = ["FunctionFieldConfig", "FunctionFieldGFM"]

_SECOND_MOMENTS = ("exp_avg_sq", "square_avg")  # optimizer states under a square root in the update


@dataclass(frozen=True)
class FunctionFieldConfig(FitOptions):
    """Options of ``gfm_function`` (the budget keys come from ``train.budget``)."""

    probes: int = spec(32, ge=1, doc="probe inputs x_p at which the network's function is compared")
    basis: int = spec(2, ge=1, doc="dimension M of the per-run target-function code z")
    ridge: float = spec(1e-3, gt=0, doc="initial ridge strength of the prefix least squares (relative)")
    batch_size: int = spec(16, ge=1, doc="training runs per update")
    points: int = spec(8, ge=1, doc="recorded steps per run and update at which the gradient is matched")
    lr: float = spec(0.02, gt=0, doc="AdamW learning rate of the probes, weights, basis and ridge")
    unroll: int = spec(0, ge=0, doc="records of a rollout loss through the optimizer map, started at random "
                                    "records of the forecast window (0 = gradient matching only)")
    unroll_sigma: float = spec(0.0, ge=0, doc="noise injected into each rollout's start, in units of the run's "
                                              "weight change over the rollout")
    samples: int = spec(32, ge=0, doc="draws of the final weights per run (0: point forecasts only)")
    coverage: float = spec(0.9, gt=0, lt=1, doc="central-interval coverage of the final weights that the draws' "
                                                "spread is calibrated to on the validation runs")


@register
class FunctionFieldGFM(Forecaster):
    """GFM whose gradient surrogate is a function-space loss at learned probes (module docstring)."""

    name = "gfm_function"
    Config = FunctionFieldConfig
    min_prefix = 2
    neural = False  # a few hundred learned numbers and networks of tens of parameters: CPU work

    def states_needed(self) -> tuple[str, ...]:
        return opt_rules.STATE_NAMES.get(self.extra.get("optimizer", ""), ())

    def hyper_needed(self) -> tuple[str, ...]:
        spec = opt_rules.SPECS.get(self.extra.get("optimizer", ""))
        if spec is None:
            return ()
        return tuple(n for n in spec.hyper if n != "lr") + (("eps",) if spec.reads_eps else ())

    # --- building -------------------------------------------------------------------------------------
    def _build(self, shape: MLPShape, probes: torch.Tensor, basis: torch.Tensor) -> None:
        self.module = FunctionField(shape, probes, basis, self.config.ridge, activation=self._activation())

    def _activation(self) -> str:
        """The activation this model was fitted with (a model saved before models kept it: ReLU, the only one
        gfm_function had then)."""
        return self.extra.get("activation") or "relu"

    def _init_parts(self, train: Trajectories, shape: MLPShape, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Probes: standard-normal quantiles for one input (the tasks standardise their inputs), random
        normal vectors otherwise. Basis: the top principal directions of the training runs' final functions at
        the probes (uncentred), scaled by their singular values: the directions along which runs' targets
        differ, learned from the training runs alone."""
        P, M = self.config.probes, self.config.basis
        if shape.n_in == 1:
            q = torch.linspace(0, 1, P + 2, dtype=torch.float64)[1:-1]
            probes = (math.sqrt(2) * torch.special.erfinv(2 * q - 1)).float()[:, None]
        else:
            probes = torch.randn(P, shape.n_in, generator=rng)
        with torch.no_grad():
            final = mlp_apply(shape, train.weights[:, -1].float().cpu(), probes, self._activation())
            final = final.reshape(train.n_runs, -1)
            _, s, vh = torch.linalg.svd(final, full_matrices=False)
        k = min(M, vh.shape[0])
        basis = torch.zeros(P * shape.n_out, M)
        basis[:, :k] = vh[:k].T * (s[:k] / math.sqrt(train.n_runs))
        return probes, basis.reshape(P, shape.n_out, M)

    # --- training -------------------------------------------------------------------------------------
    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        cfg, K = self.config, self.prefix_end
        shape = mlp_shape(train.layout)
        activation = fitted_activation(train)
        if shape.n_params != train.n_params:
            raise ForecasterError(f"gfm_function: the layout has {shape.n_params} parameters, the runs {train.n_params}")
        if train.optimizer not in opt_rules.STATE_NAMES:
            raise ForecasterError(f"gfm_function: unknown optimizer {train.optimizer!r}")
        self.extra = {"optimizer": train.optimizer, "record_every": train.record_every, "steps": train.steps,
                      "layers": [list(layer) for layer in shape.layers], "n_params": train.n_params,
                      "activation": activation}
        probes, basis = self._init_parts(train, shape, rng)
        self._build(shape, probes, basis)
        g_all = recover_gradient(train).float()                          # (N, T-1, D)
        W = train.weights.float()
        g_scale = float(g_all.pow(2).mean().clamp_min(1e-30))
        n_batch = min(cfg.batch_size, train.n_runs)

        def step_loss(_step: int) -> torch.Tensor:
            runs = torch.randperm(train.n_runs, generator=rng)[:n_batch]
            z = self.module.infer_code(W[runs, :K], g_all[runs, :K], create_graph=True)
            ks = torch.randint(0, g_all.shape[1], (n_batch, cfg.points), generator=rng)
            idx = ks[..., None].expand(-1, -1, W.shape[-1])
            wk, gk = W[runs].gather(1, idx), g_all[runs].gather(1, idx)
            pred = self.module.surrogate(wk, z[:, None].expand(-1, cfg.points, -1), create_graph=True)
            loss = (pred - gk).pow(2).mean() / g_scale
            if cfg.unroll:
                loss = loss + self._rollout_loss(train, runs, z, rng)
            return loss

        log = fit_module(self.module, step_loss, validation(self, val), cfg, on_epoch=self.on_epoch)
        self.extra["best_val_loss"] = best_val_loss(log)
        if cfg.samples and val.n_runs:
            self.extra.update(calibrate(self, self.module, val, rng))
        return log

    def _rollout_loss(self, train: Trajectories, runs: torch.Tensor, z: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Train on what is measured: replay ``unroll`` records from true (optionally noised) points of the forecast
        window, differentiating through every optimizer step, and score the end against the recorded weights in
        units of the run's own change over that window (discretise-then-optimise)."""
        cfg, every, optimizer = self.config, train.record_every, train.optimizer
        u = min(cfg.unroll, train.n_records - 1 - self.prefix_end)
        k = torch.randint(self.prefix_end, train.n_records - u, (len(runs),), generator=rng)
        w0, w_end = train.weights[runs, k].float(), train.weights[runs, k + u].float()
        scale = (w_end - w0).pow(2).mean(-1, keepdim=True).clamp_min(1e-30)
        w = w0 + cfg.unroll_sigma * scale.sqrt() * torch.randn(w0.shape, generator=rng) if cfg.unroll_sigma else w0
        # second moments floored at 1e-30: where a weight's is exactly 0 (a dead unit) d sqrt(v) is inf and its
        # product with a zero gradient NaN; the floor (sqrt = 1e-15 beside eps = 1e-8) is below float32 resolution
        state = {n: train.states[n][runs, k].float().clamp_min(1e-30) if n in _SECOND_MOMENTS
                 else train.states[n][runs, k].float() for n in opt_rules.STATE_NAMES[optimizer]}
        hp = {n: v[runs].float()[:, None] for n, v in train.hyper.items()}
        for j in range(u):
            hp["lr"] = train.lr[runs, k + j].float()[:, None]
            for s in range(every):
                g = self.module.surrogate(w, z, create_graph=True)
                w, state = opt_rules.update(optimizer, w, g, state, hp, ((k + j) * every + s + 1)[:, None].float())
        return ((w - w_end).pow(2) / scale).mean()

    # --- forecasting ----------------------------------------------------------------------------------
    def fitted_schema(self) -> dict:
        from gfm.forecasters.fitted import COUNT, MAPPING, NUMBER, OPTIMIZER, POSITIVE, ListOf, Maybe, Value

        activation = Value(lambda x: x in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}")
        return {"optimizer": OPTIMIZER, "record_every": COUNT, "steps": COUNT, "n_params": COUNT,
                "layers": ListOf(ListOf(COUNT, length=2), min_length=1), "best_val_loss": Maybe(NUMBER),
                "spread": Maybe(POSITIVE), "calibration": Maybe(MAPPING), "activation": Maybe(activation)}

    def fitted_relations(self, extra: dict) -> list[str]:
        if "activation" in extra and extra["activation"] is None:  # absent: saved before (ReLU); null: never
            return [f"extra.activation is null; expected one of {', '.join(ACTIVATIONS)}"]
        layers = extra["layers"]
        if any(layers[i][1] != layers[i - 1][0] for i in range(1, len(layers))):
            return [f"extra.layers {shorten(layers, 60)}: each layer must take the previous layer's outputs"]
        n = MLPShape(tuple(tuple(layer) for layer in layers)).n_params
        return [] if n == extra["n_params"] else [f"extra.n_params is {extra['n_params']}; extra.layers hold {n}"]

    def _shape(self) -> MLPShape:
        return MLPShape(tuple(tuple(layer) for layer in self.extra["layers"]))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        # probes, their weights and the basis (a few outputs each); a batch differentiates the network at every
        # probe for each run and matched record (or rollout step): about two copies of its weights per probe
        c = self.config
        params = c.probes * (2 + 2 * c.basis) + 1
        return SizeEstimate(params, c.batch_size * max(c.points, c.unroll) * 2 * (n_params + c.probes * (c.basis + 2)))

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return known_sizes(probes=tensor_dim(shapes, "x", 0), basis=tensor_dim(shapes, "basis", 2))

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        shape = self._shape()
        P, out, M = tensors["basis"].shape
        self._build(shape, torch.zeros(P, shape.n_in), torch.zeros(P, out, M))
        self.module.load_state_dict(tensors, strict=True)

    def _field_for(self, prefix: Trajectories) -> FunctionField:
        """The fitted field on the prefix's network (another width of the same family: the field is defined on
        any MLP, so the learned probes, weights, basis and ridge carry over)."""
        if prefix.optimizer != self.extra["optimizer"]:
            raise ForecasterError(f"gfm_function: trained on {self.extra['optimizer']} runs, got {prefix.optimizer}")
        activation = run_activation(prefix)  # None: the run does not say; it is taken as the fitted network,
        if activation is not None and activation != self._activation():  # as a run without a layout is
            raise StoreNotSupported(f"gfm_function: fitted on networks with {self._activation()} between layers; "
                                    f"the run's network uses {activation}")
        if prefix.n_params != self.extra["n_params"] and prefix.layout is None:
            raise ForecasterError(f"gfm_function: {prefix.n_params} parameters and no layout to read the network from")
        shape = mlp_shape(prefix.layout) if prefix.layout is not None else self._shape()
        if shape == self.module.shape:
            return self.module
        mine = self.module.shape
        if (shape.n_in, shape.n_out) != (mine.n_in, mine.n_out):  # probes are points of the input space, the
            # basis spans outputs: both are learned for one input and one output size
            raise ForecasterError(f"gfm_function: fitted on networks of {mine.n_in} inputs and {mine.n_out} "
                                  f"outputs; the run's network has {shape.n_in} and {shape.n_out}. This model can "
                                  "forecast other hidden widths and depths, not another input or output size")
        field = FunctionField(shape, self.module.x.detach(), self.module.basis.detach(), 1.0,
                              activation=self.module.activation)
        field.load_state_dict(self.module.state_dict(), strict=True)
        return field

    def _replay(self, field: FunctionField, prefix: Trajectories, z: torch.Tensor, horizons: tuple[int, ...]) -> torch.Tensor:
        """Integrate the optimizer map from w_K with codes ``z`` (..., N, M): weights (..., N, H, D) at ``horizons``.
        Leading dimensions of ``z`` (samples) are carried through as a batch."""
        K, every, optimizer = self.prefix_end, prefix.record_every, prefix.optimizer
        lead = z.shape[:-1]
        w = prefix.weights[:, K].float().expand(*lead, -1).clone()
        state = {n: prefix.states[n][:, K].float().expand(*lead, -1).clone() for n in opt_rules.STATE_NAMES[optimizer]}
        hp = {n: v.float()[:, None] for n, v in prefix.hyper.items()}
        hp["lr"] = prefix.lr[:, K].float()[:, None]   # the last logged rate holds past the prefix
        out, n_step = [], K * every
        with torch.enable_grad():
            for record in range(K + 1, horizons[-1] + 1):
                for _ in range(every):
                    g = field.surrogate(w, z).detach()
                    n_step += 1
                    w, state = opt_rules.update(optimizer, w, g, state, hp, n_step)
                    w, state = w.detach(), {k: v.detach() for k, v in state.items()}
                if record in horizons:
                    out.append(w)
        return torch.stack(out, -2)

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        field, K = self._field_for(prefix), self.prefix_end
        with torch.enable_grad():
            z = field.infer_code(prefix.weights.float()[:, :K], recover_gradient(prefix).float()[:, :K]).detach()
        return self._replay(field, prefix, z, horizons)

    # --- sampling (gfm.forecasters.function_sampling) -------------------------------------------------
    def n_samples(self) -> int:
        return self.config.samples if self.extra.get("spread") is not None else 0

    def _sample_final(self, prefix: Trajectories, horizon: int, n: int, seed: int) -> torch.Tensor:
        return sample_final(self, self._field_for(prefix), prefix, horizon, n, seed)
