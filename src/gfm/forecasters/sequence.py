"""Sequence baselines: an LSTM and a Transformer encoder over the observed prefix (docs/architecture.md §4).

Formulation: per parameter ("coordinate"), shared weights. Each scalar weight of each run is one sequence
of K + 1 steps (records 0..K); its features per step are the weight, its displacement from the last
observed value and its last step, each divided by one global train-set scale, plus two run-level features
(normalised time t_k and the standardised log learning rate). The network reads the whole sequence and
outputs, in one shot, the displacement ``(w_h - w_K) / s_h`` at every horizon h ("direct multi-output"),
trained with MSE and early-stopped on the validation runs.

Why this and not one sequence over the flat weight vector: the per-parameter model is what the GFM
prototype measured as the strongest baseline (docs/methods.md §8.4: per-parameter LSTM, direct multi-output),
it works unchanged for 1 or 10^5 parameters, and a store of N runs gives it N * P training sequences
instead of N. It cannot see how parameters of one unit move together; GFM's joint field can.

Usage (params.yaml)::

    models:
      lstm: {kind: lstm, hidden: 32, layers: 1}
      transformer: {kind: transformer, d_model: 16, heads: 2, layers: 1}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gfm.base.schema import spec
from gfm.forecasters.base import SizeEstimate, Trajectories, count_indexed, known_sizes, register, tensor_dim
from gfm.forecasters.features import SEQUENCE_FEATURES, sequence_features
from gfm.forecasters.fitting import DirectForecaster, FitOptions

__all__ = ["LSTMForecaster", "TransformerForecaster", "LSTMConfig", "TransformerConfig"]


@dataclass(frozen=True)
class LSTMConfig(FitOptions):
    """LSTM over each parameter's prefix; the last hidden state feeds a linear head (one output per horizon)."""

    hidden: int = spec(32, ge=1)
    layers: int = spec(1, ge=1)


@dataclass(frozen=True)
class TransformerConfig(FitOptions):
    """Pre-norm Transformer encoder over each parameter's prefix (learned positions, no dropout: dropout
    would draw from torch's global RNG and break run-to-run determinism); the last token feeds the head."""

    d_model: int = spec(16, ge=1)
    heads: int = spec(2, ge=1)
    layers: int = spec(1, ge=1)
    ff: int = spec(32, ge=1, doc="feed-forward width")

    def _check(self):
        if self.d_model % self.heads:
            return [("heads", f"got {self.heads}; expected a divisor of d_model ({self.d_model})")]
        return []


def lstm_size(n_in: int, cfg: LSTMConfig, length: int, n_out: int) -> SizeEstimate:
    """An LSTM of ``cfg.layers`` layers over sequences of ``length`` steps and a linear head: each layer's four
    gates (input and hidden weights, two biases); per step and layer about 8 floats per unit (gates, cell,
    hidden) are kept for the backward pass."""
    h = cfg.hidden
    params = 4 * h * (n_in + h + 2) + (cfg.layers - 1) * 4 * h * (2 * h + 2) + h * n_out + n_out
    return SizeEstimate(params, cfg.batch_size * length * cfg.layers * h * 8)


class LSTMNet(nn.Module):
    def __init__(self, n_in: int, hidden: int, layers: int, n_out: int):
        super().__init__()
        self.rnn = nn.LSTM(n_in, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, K+1, features) -> (rows, horizons)."""
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class _TransformerNet(nn.Module):
    def __init__(self, n_in: int, length: int, cfg: TransformerConfig, n_out: int):
        super().__init__()
        self.embed = nn.Linear(n_in, cfg.d_model)
        self.position = nn.Parameter(torch.zeros(1, length, cfg.d_model))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ff, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, K+1, features) -> (rows, horizons)."""
        h = self.encoder(self.embed(x) + self.position)
        return self.head(self.norm(h[:, -1]))


class _SequenceForecaster(DirectForecaster):
    min_prefix = 2  # a step feature needs two records

    def _inputs(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        return (sequence_features(prefix, self.extra["scales"]),)


@register
class LSTMForecaster(_SequenceForecaster):
    """Per-parameter LSTM, direct multi-horizon output (see the module docstring)."""

    name = "lstm"
    Config = LSTMConfig

    def _build(self) -> nn.Module:
        return LSTMNet(len(SEQUENCE_FEATURES), self.config.hidden, self.config.layers, len(self.horizons))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        return lstm_size(len(SEQUENCE_FEATURES), self.config, self.prefix_end + 1, len(self.horizons))

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return known_sizes(hidden=tensor_dim(shapes, "head.weight", 1),
                           layers=count_indexed(shapes, r"rnn\.weight_ih_l(\d+)"))


@register
class TransformerForecaster(_SequenceForecaster):
    """Per-parameter Transformer encoder, direct multi-horizon output (see the module docstring)."""

    name = "transformer"
    Config = TransformerConfig

    def _build(self) -> nn.Module:
        return _TransformerNet(len(SEQUENCE_FEATURES), self.prefix_end + 1, self.config, len(self.horizons))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        # per layer: q, k, v and output projections, the feed-forward pair, two layer norms; activations per
        # token and layer: the projections and norms (~12 d), the feed-forward (2 ff) and each head's scores
        c, length, n_in, n_out = self.config, self.prefix_end + 1, len(SEQUENCE_FEATURES), len(self.horizons)
        d = c.d_model
        layer = 4 * d * d + 2 * d * c.ff + c.ff + 9 * d
        params = n_in * d + d + length * d + c.layers * layer + 2 * d + d * n_out + n_out
        acts = c.batch_size * length * c.layers * (12 * d + 2 * c.ff + 2 * c.heads * length)
        return SizeEstimate(params, acts)

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return known_sizes(d_model=tensor_dim(shapes, "embed.weight", 0),
                           ff=tensor_dim(shapes, "encoder.layers.0.linear1.weight", 0),
                           layers=count_indexed(shapes, r"encoder\.layers\.(\d+)\..+"))
