"""Classical baselines (docs/architecture.md §4, docs/methods.md §3-5). All are per-parameter; none uses a GPU.

Closed form (nothing to train; ``fit`` only checks its inputs):

- ``last_value``: w_h = w_K. The reference row of every table.
- ``linear``: extrapolate the last slope, w_h = w_K + (h - K) (w_K - w_{K-window}) / window.
- ``exp_fit``: per-parameter geometric-decay fit w(k) = w_inf + c r^k to the observed window by least
  squares; r is searched on a grid in [0, r_max] (denser near 1), (w_inf, c) are solved in closed form for
  each r, and the r with the smallest residual wins. r < 1 keeps every forecast bounded.

Learned (small per-parameter networks, early-stopped on the validation runs, see :mod:`.fitting`):

- ``lfd2``: LFD-2's 1-layer linear "farcaster" (docs/methods.md §3) from (w_0, w_K) to every future record
  K+1..max(horizons), trained with L1 plus the first-order-optimality regulariser
  ``beta * relu(sum |w^_L - w^_{L-1}| - sum |w_1 - w_0|)`` (sums over the rows of a batch; values in
  units of the global weight scale).
- ``introspection``: Introspection's per-weight MLP (docs/methods.md §4) on the weight at steps K, 0.7K, 0.4K
  and 0, one output per horizon (the original trains one net per target step 2t; here the heads share the
  hidden layer). It predicts the displacement from w_K (scaled globally), not the raw weight, so that a
  zero output is the last-value forecast.
- ``wnn``: WNN's two-stream nowcaster (docs/methods.md §5): 5 history values spaced ``stride`` records apart
  ending at K, normalised per parameter by subtracting the oldest value and dividing by twice their range;
  stream 1 sees the 5 values, stream 2 their 4 differences; each stream is Dense(64) -> WNN's
  "exponential activation" block -> Dense(32) -> LeakyReLU; the concatenation gives one bounded output per
  horizon, ``bound * tanh(o)``, the displacement from w_K in range units. Departures from the original,
  for farcasting 180 records ahead instead of nowcasting one period: the output is scaled by ``bound``
  (targets clipped to it), the range is floored at ``range_floor`` times the global displacement scale
  (a parameter that did not move would otherwise divide by ~0), and the L1 penalties are replaced by
  ``weight_decay``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gfm.base.schema import spec
from gfm.forecasters.base import (
    Forecaster,
    ForecasterError,
    SizeEstimate,
    Trajectories,
    known_sizes,
    register,
    tensor_dim,
)
from gfm.forecasters.features import from_rows, to_rows
from gfm.forecasters.fitting import DirectForecaster, FitOptions

__all__ = [
    "LastValueForecaster", "LinearForecaster", "ExpFitForecaster", "LFD2Forecaster",
    "IntrospectionForecaster", "WNNForecaster",
]


class _ClosedForm(Forecaster):
    neural = False
    closed_form = True

    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        if train.n_records < self.prefix_end + 1:
            raise ForecasterError(f"{self.name}: train runs have {train.n_records} records; need {self.prefix_end + 1}")
        return []


@register
class LastValueForecaster(_ClosedForm):
    """w_h = w_K for every horizon."""

    name = "last_value"

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        return prefix.weights[:, -1:].expand(-1, len(horizons), -1).clone()


@dataclass(frozen=True)
class LinearConfig:
    """Slope over the last ``window`` records (1 = the last step)."""

    window: int = spec(1, ge=1)


@register
class LinearForecaster(_ClosedForm):
    """w_h = w_K + (h - K) * slope, slope = (w_K - w_{K-window}) / window."""

    name = "linear"
    Config = LinearConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        if self.config.window > self.prefix_end:
            raise ForecasterError(f"linear: window {self.config.window} needs records K-{self.config.window}..K; "
                                  f"prefix_end is {self.prefix_end}")

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        w, k, win = prefix.weights, self.prefix_end, self.config.window
        slope = (w[:, k] - w[:, k - win]) / win  # (run, param)
        ahead = torch.tensor([h - k for h in horizons], dtype=w.dtype).view(1, -1, 1)
        return w[:, k : k + 1] + ahead * slope.unsqueeze(1)


@dataclass(frozen=True)
class ExpFitConfig:
    """Geometric-decay fit over the last ``window`` records (0 = all of 0..K)."""

    window: int = spec(0, ge=0)
    r_max: float = spec(0.999, ge=0, lt=1, doc="largest decay ratio tried (r = 1 would be a constant)")
    grid: int = spec(256, ge=2, doc="candidate ratios, spaced evenly in log(1 - r)")


@register
class ExpFitForecaster(_ClosedForm):
    """Per-parameter least-squares fit of w(k) = w_inf + c r^k; forecasts w_inf + c r^h."""

    name = "exp_fit"
    Config = ExpFitConfig

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        if self.config.window == 1 or self.config.window > self.prefix_end + 1:
            raise ForecasterError(f"exp_fit: window {self.config.window} must be 0 (all) or 2..{self.prefix_end + 1}")

    def ratios(self) -> torch.Tensor:
        """Candidate r: 0 .. r_max, dense near 1. (grid,) float64."""
        one_minus = torch.logspace(0.0, float(torch.log10(torch.tensor(1.0 - self.config.r_max))),
                                   self.config.grid, dtype=torch.float64)
        return 1.0 - one_minus

    def fit_rows(self, y: torch.Tensor, k0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fit rows ``y`` (rows, T) observed at records k0..k0+T-1.

        Returns:
            (w_inf, c, r), each (rows,) float64, with w(k) = w_inf + c r^(k - k0).
        """
        y = y.double()
        r = self.ratios()  # (G,)
        t = torch.arange(y.shape[1], dtype=torch.float64)
        phi = r.unsqueeze(1) ** t  # (G, T); 0**0 = 1
        phi_c = phi - phi.mean(1, keepdim=True)
        y_c = y - y.mean(1, keepdim=True)
        var_phi = (phi_c**2).sum(1)  # (G,), > 0 for every r < 1 and T >= 2
        cov = y_c @ phi_c.T  # (rows, G)
        sse = (y_c**2).sum(1, keepdim=True) - cov**2 / var_phi
        best = sse.argmin(1)  # (rows,)
        c = cov.gather(1, best.unsqueeze(1)).squeeze(1) / var_phi[best]
        w_inf = y.mean(1) - c * phi.mean(1)[best]
        return w_inf, c, r[best]

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        k = self.prefix_end
        win = self.config.window or k + 1
        k0 = k + 1 - win
        w_inf, c, r = self.fit_rows(to_rows(prefix.weights[:, k0 : k + 1]), k0)
        ahead = torch.tensor([h - k0 for h in horizons], dtype=torch.float64)
        out = w_inf.unsqueeze(1) + c.unsqueeze(1) * r.unsqueeze(1) ** ahead  # (rows, H)
        return from_rows(out, prefix.n_runs).float()


# --- learned per-parameter baselines -------------------------------------------------------------------


@dataclass(frozen=True)
class LFD2Config(FitOptions):
    """LFD-2: linear (w_0, w_K) -> w_{K+1..max horizon}; L1 (or MSE) + beta * optimality regulariser."""

    loss: Literal["l1", "mse"] = "l1"
    beta: float = spec(1e-6, ge=0, doc="weight of the first-order-optimality regulariser")


@register
class LFD2Forecaster(DirectForecaster):
    """LFD-2's 1-layer linear farcaster (see the module docstring)."""

    name = "lfd2"
    Config = LFD2Config
    neural = False

    def _build(self) -> nn.Module:
        return nn.Linear(2, max(self.horizons) - self.prefix_end)

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        n_out = max(self.horizons) - self.prefix_end
        return SizeEstimate(3 * n_out, self.config.batch_size * 2 * n_out)

    def _inputs(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        w = prefix.weights
        return (to_rows(w[:, [0, self.prefix_end]]) / self.extra["scales"]["weight"],)

    def _aux(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        w = prefix.weights
        return (to_rows(w[:, 1:2] - w[:, 0:1]).squeeze(1) / self.extra["scales"]["weight"],)

    def _targets(self, traj: Trajectories) -> torch.Tensor:
        future = traj.weights[:, self.prefix_end + 1 : max(self.horizons) + 1]
        return to_rows(future) / self.extra["scales"]["weight"]

    def _decode(self, out: torch.Tensor, prefix: Trajectories, columns) -> torch.Tensor:
        idx = [self.horizons[c] - self.prefix_end - 1 for c in columns]
        return from_rows(out[:, idx], prefix.n_runs) * self.extra["scales"]["weight"]

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, aux: tuple[torch.Tensor, ...]) -> torch.Tensor:
        err = (pred - target).abs().mean() if self.config.loss == "l1" else ((pred - target) ** 2).mean()
        if self.config.beta == 0 or pred.shape[1] < 2:
            return err
        late = (pred[:, -1] - pred[:, -2]).abs().sum()
        early = aux[0].abs().sum()
        return err + self.config.beta * torch.relu(late - early)


@dataclass(frozen=True)
class IntrospectionConfig(FitOptions):
    """Introspection: MLP 4 -> hidden (ReLU) -> one output per horizon."""

    hidden: int = spec(40, ge=1)


class _MLP(nn.Module):
    # named layers, not nn.Sequential: saved tensor names must be identifiers ("hidden.weight", not "0.weight")
    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.hidden, self.out = nn.Linear(n_in, hidden), nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


@register
class IntrospectionForecaster(DirectForecaster):
    """Introspection-style per-weight MLP on w at K, 0.7K, 0.4K, 0 (see the module docstring)."""

    name = "introspection"
    Config = IntrospectionConfig
    neural = False

    def steps(self) -> list[int]:
        k = self.prefix_end
        return [k, round(0.7 * k), round(0.4 * k), 0]

    def _build(self) -> nn.Module:
        return _MLP(4, self.config.hidden, len(self.horizons))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        h, n_out = self.config.hidden, len(self.horizons)
        return SizeEstimate(5 * h + h * n_out + n_out, self.config.batch_size * (2 * h + n_out))

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return known_sizes(hidden=tensor_dim(shapes, "hidden.weight", 0))

    def _inputs(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        return (to_rows(prefix.weights[:, self.steps()]) / self.extra["scales"]["weight"],)


@dataclass(frozen=True)
class WNNConfig(FitOptions):
    """WNN: two streams over 5 history values ``stride`` records apart (0 = spread over the prefix)."""

    stride: int = spec(0, ge=0)
    width: int = spec(64, ge=1, doc="first dense layer of each stream")
    bottleneck: int = spec(8, ge=1, doc="width inside the exponential activation block")
    out_width: int = spec(32, ge=1)
    bound: float = spec(4.0, gt=0, doc="output = bound * tanh(o), in units of twice the history range")
    range_floor: float = spec(0.01, gt=0, doc="range floor, as a fraction of the global displacement scale")


class _ExpStream(nn.Module):
    """Dense -> WNN's exponential activation block -> Dense -> LeakyReLU: z = b * exp(f * c) + a, where a,
    b, c are linear maps of relu(Dense(f)) (f = the first dense output)."""

    def __init__(self, n_in: int, cfg: WNNConfig):
        super().__init__()
        self.dense = nn.Linear(n_in, cfg.width)
        self.squeeze = nn.Linear(cfg.width, cfg.bottleneck)
        self.a, self.b, self.c = (nn.Linear(cfg.bottleneck, cfg.width) for _ in range(3))
        self.out = nn.Linear(cfg.width, cfg.out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.dense(x)
        g = torch.relu(self.squeeze(f))
        # exp of an unbounded product overflows on rare rows; 20 is far above any useful gate value
        z = self.b(g) * torch.exp((f * self.c(g)).clamp(max=20.0)) + self.a(g)
        return nn.functional.leaky_relu(self.out(z))


class _WNNNet(nn.Module):
    def __init__(self, cfg: WNNConfig, n_out: int):
        super().__init__()
        self.values, self.diffs = _ExpStream(5, cfg), _ExpStream(4, cfg)
        self.head = nn.Linear(2 * cfg.out_width, n_out)
        self.bound = cfg.bound

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """x1 (rows, 5) normalised history, x2 (rows, 4) its differences -> (rows, horizons) in range units."""
        return self.bound * torch.tanh(self.head(torch.cat([self.values(x1), self.diffs(x2)], dim=1)))


@register
class WNNForecaster(DirectForecaster):
    """WNN-style two-stream per-parameter predictor (see the module docstring)."""

    name = "wnn"
    Config = WNNConfig
    neural = False

    def __init__(self, config=None, **kw):
        super().__init__(config, **kw)
        if 4 * self.stride() > self.prefix_end:
            raise ForecasterError(f"wnn: 5 values {self.stride()} records apart need a prefix of "
                                  f"{4 * self.stride() + 1} records; prefix_end is {self.prefix_end}")

    def stride(self) -> int:
        return self.config.stride or max(1, self.prefix_end // 4)

    def _history(self, prefix: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, 5) raw history, oldest first, and (rows,) its normalising denominator."""
        k, s = self.prefix_end, self.stride()
        v = to_rows(prefix.weights[:, [k - j * s for j in range(4, -1, -1)]])
        floor = self.config.range_floor * self.extra["scales"]["displacement"]
        denom = 2 * (v.max(1).values - v.min(1).values) + floor
        return v, denom

    def _build(self) -> nn.Module:
        return _WNNNet(self.config, len(self.horizons))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        # two _ExpStream (5 and 4 inputs): dense, squeeze, the a/b/c maps and out; about 8 width-sized
        # activations per stream and row (f, its gates, z and their products)
        c, n_out = self.config, len(self.horizons)
        w, b, o = c.width, c.bottleneck, c.out_width

        def stream(n_in: int) -> int:
            return n_in * w + w + w * b + b + 3 * (b * w + w) + w * o + o

        return SizeEstimate(stream(5) + stream(4) + 2 * o * n_out + n_out, c.batch_size * 2 * (8 * w + b + o))

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return known_sizes(width=tensor_dim(shapes, "values.dense.weight", 0),
                           bottleneck=tensor_dim(shapes, "values.squeeze.weight", 0),
                           out_width=tensor_dim(shapes, "values.out.weight", 0))

    def _inputs(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        v, denom = self._history(prefix)
        x1 = (v - v[:, :1]) / denom.unsqueeze(1)
        return x1, x1[:, 1:] - x1[:, :-1]

    def _targets(self, traj: Trajectories) -> torch.Tensor:
        k = self.prefix_end
        _, denom = self._history(traj.prefix(k))
        disp = to_rows(traj.weights[:, list(self.horizons)] - traj.weights[:, k : k + 1])
        return (disp / denom.unsqueeze(1)).clamp(-self.config.bound, self.config.bound)

    def _decode(self, out: torch.Tensor, prefix: Trajectories, columns) -> torch.Tensor:
        _, denom = self._history(prefix)
        disp = out[:, list(columns)] * denom.unsqueeze(1)
        return prefix.weights[:, -1:] + from_rows(disp, prefix.n_runs)
