"""``gfm_function``: GFM with a function-space gradient field, for MLP layouts.

Why: a per-parameter field (``gfm`` with ``field: coordinate``) sees each weight's own history plus a pooled
context, which is the per-parameter LSTM's information, and ties it. What decides where an MLP's weights go
is the loss landscape, and for a network trained on a loss of its outputs the landscape is shared by all
parameters through the network's *function*. This field is built from that structure:

    g(w | h) = grad_w  sum_p c_p * || f_w(x_p) - h_p ||^2

a gradient surrogate, where f_w is the network computed from the flat weights, the store's layout (linear
layers) and the store's activation between them (attribute ``network``, :mod:`gfm.network`), x_p are P learned
probe inputs with learned weights c_p, and h_p is the run's
*target function* at the probes. The optimizer's own rule (``gfm.optimizers.update``: SGD, momentum,
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
import time
from dataclasses import dataclass

import torch
from torch import nn

from gfm import optimizers as opt_rules
from gfm.errors import shorten
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
from gfm.forecasters.fitting import EarlyStopping, FitOptions, make_optimizer, val_scores
from gfm.forecasters.function_sampling import calibrate, sample_final
from gfm.forecasters.gfm_features import recover_gradient
from gfm.network import ACTIVATIONS, activation_fn
from gfm.schema import spec

__all__ = ["FunctionFieldConfig", "FunctionFieldGFM", "MLPShape", "mlp_shape", "mlp_apply", "run_activation"]

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


@dataclass(frozen=True)
class MLPShape:
    """The linear layers of an MLP layout: ((out, in), ...) with a bias after every weight."""

    layers: tuple[tuple[int, int], ...]

    @property
    def n_in(self) -> int:
        return self.layers[0][1]

    @property
    def n_out(self) -> int:
        return self.layers[-1][0]

    @property
    def n_params(self) -> int:
        return sum(o * i + o for o, i in self.layers)


def mlp_shape(layout) -> MLPShape:
    """Read an MLP from a store layout: alternating (out, in) weights and (out,) biases, in order, each
    layer's input the previous layer's output.

    Raises:
        StoreNotSupported: the layout is missing or is not such an MLP (e.g. least squares, a CNN).
    """
    if not layout:
        raise StoreNotSupported("gfm_function: needs the store's parameter layout (an MLP: weight, bias, ...)")
    specs = list(layout)
    shapes = [tuple(s.shape) for s in specs]
    problem = None
    layers: list[tuple[int, int]] = []
    if len(specs) % 2:
        problem = "an odd number of tensors"
    else:
        for i in range(0, len(specs), 2):
            w, b = shapes[i], shapes[i + 1]
            if len(w) != 2 or b != (w[0],):
                problem = f"{specs[i].name} {list(w)} / {specs[i + 1].name} {list(b)} is not a (out, in) weight and its bias"
                break
            if layers and w[1] != layers[-1][0]:
                problem = f"{specs[i].name} takes {w[1]} inputs but the previous layer gives {layers[-1][0]}"
                break
            layers.append((w[0], w[1]))
    if problem:
        raise StoreNotSupported(f"gfm_function: the layout is not an MLP of linear layers with biases ({problem}); "
                              f"this field applies to the mlp_regression, mlp_classification and digits tasks")
    return MLPShape(tuple(layers))


_UNKNOWN_ACTIVATION = ("gfm_function: the store does not record its network's activation; record it with "
                       "gfm.record(..., activation=...)")


def run_activation(runs: Trajectories) -> str | None:
    """The activation of the runs' network as their store records it (:func:`gfm.network.network_of`); None
    when the runs do not say (Trajectories built from arrays, not read from a store).

    Raises:
        StoreNotSupported: the store says it does not know its activation.
    """
    network = runs.network
    if network is None:
        return None
    if network.activation is None:
        raise StoreNotSupported(_UNKNOWN_ACTIVATION)
    return network.activation


def mlp_apply(shape: MLPShape, w: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """f_w(x) for stacked flat weights ``w`` (..., D) at inputs ``x`` (P, in): (..., P, out), with
    ``activation`` (a name of :data:`gfm.network.ACTIVATIONS`) between layers and none after the last, as
    ``nn.Sequential(Linear, act, Linear, ...)`` computes."""
    act = activation_fn(activation)
    lead, h, at = w.shape[:-1], x.expand(*w.shape[:-1], *x.shape), 0
    for n, (o, i) in enumerate(shape.layers):
        weight = w[..., at: at + o * i].reshape(*lead, o, i)
        bias = w[..., at + o * i: at + o * i + o]
        at += o * i + o
        h = h @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
        if n < len(shape.layers) - 1:
            h = act(h)
    return h


class FunctionField(nn.Module):
    """Probes, their weights, the target basis and the ridge strength: every learned part of the field, on the
    network of ``shape`` with ``activation`` between its layers."""

    def __init__(self, shape: MLPShape, probes: torch.Tensor, basis: torch.Tensor, ridge: float, *, activation: str):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ForecasterError(f"gfm_function: activation {shorten(activation)}; expected one of "
                                  f"{', '.join(ACTIVATIONS)}")
        self.shape, self.activation = shape, activation
        self.x = nn.Parameter(probes)                                    # (P, in)
        self.logc = nn.Parameter(torch.full((len(probes),), math.log(math.e - 1)))  # softplus -> 1
        self.basis = nn.Parameter(basis)                                 # (P, out, M)
        self.log_ridge = nn.Parameter(torch.tensor(math.log(ridge)))

    def weights(self) -> torch.Tensor:
        return nn.functional.softplus(self.logc) / len(self.logc)

    def _vjps(self, w: torch.Tensor, cotangents: list[torch.Tensor], create_graph: bool) -> list[torch.Tensor]:
        """grad_w of sum(f_w(x) * cot) for each cotangent (..., P, out), batched over the leading dims."""
        w = w if w.requires_grad else w.detach().requires_grad_(True)
        f = mlp_apply(self.shape, w, self.x, self.activation)
        out = []
        for n, cot in enumerate(cotangents):
            cot = cot(f) if callable(cot) else cot
            last = n == len(cotangents) - 1
            (g,) = torch.autograd.grad(f, w, grad_outputs=cot.expand_as(f), retain_graph=create_graph or not last,
                                       create_graph=create_graph)
            out.append(g)
        return out

    def surrogate(self, w: torch.Tensor, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """g(w | h = B z): (..., D) for weights (..., D) and codes (..., M)."""
        c = self.weights()[:, None]
        h = torch.einsum("pom,...m->...po", self.basis, z)
        return self._vjps(w, [lambda f: 2 * c * (f - h)], create_graph)[0]

    def _normal_equations(self, w: torch.Tensor, g: torch.Tensor, create_graph: bool):
        """The prefix least squares for z: (A + lambda I, b, a, U) with g(w_k | B z) = a_k - U_k z."""
        c = self.weights()[:, None]
        M = self.basis.shape[-1]
        cots = [lambda f: 2 * c * f] + [(2 * c * self.basis[..., m]) for m in range(M)]
        a, *u = self._vjps(w, cots, create_graph)
        U = torch.stack(u, -1)                                            # (N, K, D, M)
        A = (U.transpose(-1, -2) @ U).sum(1)                             # (N, M, M)
        b = (U.transpose(-1, -2) @ (a - g).unsqueeze(-1)).sum(1)         # (N, M, 1)
        scale = A.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-30)[:, None, None]
        eye = torch.eye(M, dtype=A.dtype, device=A.device)
        return A + self.log_ridge.exp() * scale * eye, b, a, U

    def infer_code(self, w: torch.Tensor, g: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The per-run code z from prefix weights ``w`` (N, K, D) and their recovered gradients ``g``.

        g(w_k | B z) = a_k - U_k z with a_k = grad sum c |f|^2 and U_k[:, m] = grad sum 2 c <f, B_m>; z solves
        min_z sum_k |a_k - U_k z - g_k|^2 + lambda |z|^2 (lambda relative to the mean diagonal of sum U^T U).
        """
        A, b, _, _ = self._normal_equations(w, g, create_graph)
        return torch.linalg.solve(A, b).squeeze(-1)

    def code_posterior(self, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z and the Cholesky factor of its Gaussian posterior covariance s^2 (A + lambda I)^-1, where s^2 is the
        mean squared residual of the prefix fit (the ridge regression's own noise estimate)."""
        A, b, a, U = self._normal_equations(w, g, False)
        z = torch.linalg.solve(A, b).squeeze(-1)
        s2 = (a - (U @ z[:, None, :, None]).squeeze(-1) - g).pow(2).mean((1, 2))
        cov = s2[:, None, None] * torch.linalg.inv(A)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        return z.detach(), torch.linalg.cholesky(cov + 1e-12 * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None] * eye
                                                 + 1e-30 * eye).detach()


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
        activation = run_activation(train)
        if activation is None:  # fitting rebuilds the network's function: it must be known, never assumed
            raise StoreNotSupported(_UNKNOWN_ACTIVATION)
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
        opt = make_optimizer(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, steps=cfg.steps)
        stopper = EarlyStopping(self.module, cfg.patience)
        log, running, t0 = [], [], time.perf_counter()
        n_batch = min(cfg.batch_size, train.n_runs)
        for it in range(1, cfg.steps + 1):
            runs = torch.randperm(train.n_runs, generator=rng)[:n_batch]
            z = self.module.infer_code(W[runs, :K], g_all[runs, :K], create_graph=True)
            ks = torch.randint(0, g_all.shape[1], (n_batch, cfg.points), generator=rng)
            idx = ks[..., None].expand(-1, -1, W.shape[-1])
            wk, gk = W[runs].gather(1, idx), g_all[runs].gather(1, idx)
            pred = self.module.surrogate(wk, z[:, None].expand(-1, cfg.points, -1), create_graph=True)
            loss = (pred - gk).pow(2).mean() / g_scale
            if cfg.unroll:
                loss = loss + self._rollout_loss(train, runs, z, rng)
            opt.zero_grad()
            loss.backward()
            norm = nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip)
            if torch.isfinite(norm):
                opt.step()
                running.append(float(loss.detach()))
            else:
                opt.skip()
            if it % cfg.eval_every and it != cfg.steps:
                continue
            row = {"epoch": len(log) + 1, "step": it, "train_loss": sum(running) / max(len(running), 1),
                   "val_loss": math.nan, "val_final_mse": math.nan}
            running, stop = [], False
            if val.n_runs:
                row.update(val_scores(self, val))
                stop = stopper.update(row["val_loss"], it)
            row["best_val_loss"] = stopper.best if math.isfinite(stopper.best) else math.nan
            row["seconds"] = round(time.perf_counter() - t0, 4)
            log.append(row)
            if self.on_epoch is not None:
                self.on_epoch(row)
            if stop:
                break
        stopper.restore()
        self.extra["best_val_loss"] = stopper.best if math.isfinite(stopper.best) else None
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
