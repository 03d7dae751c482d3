"""``lstm_z``: the per-parameter LSTM given gfm_function's run code z, the ablation that separates the encoder
from the field.

``gfm_function`` brings two things the per-parameter LSTM lacks: a run encoder (the code z of the run's target
function, inferred from the whole prefix's recovered gradients) and a field that couples every parameter
through the network's function while it integrates. ``lstm_z`` gives the LSTM the first and not the second:
it fits the same encoder (a ``gfm_function`` with the same options, under the same budget), infers z for each
run, standardises it over the training runs and appends it to every step of every parameter's input
sequence. If ``lstm_z`` closes the gap to ``gfm_function``, the gain came from the encoder; if it stays near
``lstm``, it came from the field.

The encoder's fit is this model's first phase; its learned tensors are saved beside the LSTM's (prefixed
``enc_``) and its fitted values under ``extra["encoder"]`` (the activation it was fitted with among them). The
encoder rebuilds the network's function, so ``lstm_z`` refuses what ``gfm_function`` refuses: a store that
does not record its activation, and runs of another activation than the one it was fitted on
(``StoreNotSupported``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gfm.base.schema import spec
from gfm.forecasters.base import (
    ForecasterError,
    SizeEstimate,
    Trajectories,
    known_sizes,
    register,
    tensor_dim,
)
from gfm.forecasters.features import SEQUENCE_FEATURES, sequence_features
from gfm.forecasters.function_field import FunctionFieldConfig, FunctionFieldGFM
from gfm.forecasters.gfm_features import recover_gradient
from gfm.forecasters.sequence import LSTMConfig, LSTMForecaster, LSTMNet, lstm_size

__all__ = ["LSTMZConfig", "LSTMZForecaster"]

_ENC = "enc_"


@dataclass(frozen=True)
class LSTMZConfig(LSTMConfig):
    """The LSTM's options plus its run encoder's (gfm_function's probes, basis and learning rate)."""

    probes: int = spec(32, ge=1, doc="the encoder's probe inputs (as gfm_function)")
    basis: int = spec(2, ge=1, doc="dimension of the run code z (as gfm_function)")
    encoder_lr: float = spec(0.02, gt=0, doc="AdamW learning rate of the encoder (gfm_function's lr)")


@register
class LSTMZForecaster(LSTMForecaster):
    """Per-parameter LSTM whose every input step also carries the run's code z (module docstring)."""

    name = "lstm_z"
    Config = LSTMZConfig
    neural = False  # its encoder is CPU work (gfm_function), and the LSTM is small: one device for both

    def __init__(self, config=None, *, prefix_end: int, horizons):
        super().__init__(config, prefix_end=prefix_end, horizons=horizons)
        self.encoder: FunctionFieldGFM | None = None
        self._z_stats: tuple[list[float], list[float]] | None = None

    def _encoder_config(self) -> FunctionFieldConfig:
        c = self.config
        return FunctionFieldConfig(probes=c.probes, basis=c.basis, lr=c.encoder_lr, steps=c.steps,
                                   eval_every=c.eval_every, patience=c.patience, grad_clip=c.grad_clip,
                                   samples=0)

    def states_needed(self) -> tuple[str, ...]:
        return self.encoder.states_needed() if self.encoder is not None else ()

    def hyper_needed(self) -> tuple[str, ...]:
        return self.encoder.hyper_needed() if self.encoder is not None else ()

    def fixed_n_params(self) -> int | None:
        return None

    def _build(self) -> nn.Module:
        return LSTMNet(len(SEQUENCE_FEATURES) + self.config.basis, self.config.hidden, self.config.layers,
                        len(self.horizons))

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        lstm = lstm_size(len(SEQUENCE_FEATURES) + self.config.basis, self.config, self.prefix_end + 1,
                         len(self.horizons))
        encoder = FunctionFieldGFM(self._encoder_config(), prefix_end=self.prefix_end,
                                   horizons=self.horizons).size_estimate(n_params, optimizer)
        return SizeEstimate(lstm.params + encoder.params, max(lstm.activations, encoder.activations))

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        return {**super().sizes_from_tensors(shapes),
                **known_sizes(probes=tensor_dim(shapes, _ENC + "x", 0), basis=tensor_dim(shapes, _ENC + "basis", 2))}

    def _codes(self, prefix: Trajectories) -> torch.Tensor:
        """z (N, M) of each run, from records 0..K (the encoder's own inference, as at its forecast time)."""
        if self.encoder is None:
            raise ForecasterError("lstm_z: not fitted (call fit or load a saved model first)")
        field, K = self.encoder._field_for(prefix), self.prefix_end
        with torch.enable_grad():
            z = field.infer_code(prefix.weights.float()[:, :K], recover_gradient(prefix).float()[:, :K])
        return z.detach()

    def _inputs(self, prefix: Trajectories) -> tuple[torch.Tensor, ...]:
        x = sequence_features(prefix, self.extra["scales"])                     # (N * P, K + 1, F)
        z = self._codes(prefix.to(torch.device("cpu")))
        if self._z_stats is None:  # first call of a fit: the training runs set the standardisation
            self._z_stats = (z.mean(0).tolist(), z.std(0).clamp_min(1e-12).tolist() if len(z) > 1 else [1.0] * z.shape[1])
        mean, std = (torch.tensor(v) for v in self._z_stats)
        z = ((z - mean) / std).to(x.dtype).to(x.device)
        n, p = prefix.n_runs, prefix.n_params
        per_row = z[:, None, :].expand(n, p, -1).reshape(n * p, 1, -1).expand(-1, x.shape[1], -1)
        return (torch.cat([x, per_row], -1),)

    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        self.encoder = FunctionFieldGFM(self._encoder_config(), prefix_end=self.prefix_end, horizons=self.horizons)
        self.encoder.fit(train, val, rng=rng)
        self._z_stats = None
        log = super().fit(train, val, rng=rng)
        self.extra["encoder"] = self.encoder.extra
        self.extra["z_mean"], self.extra["z_std"] = self._z_stats
        return log

    def fitted_schema(self) -> dict:
        from gfm.forecasters.fitted import NUMBER, POSITIVE, ListOf

        encoder = FunctionFieldGFM(self._encoder_config(), prefix_end=self.prefix_end, horizons=self.horizons)
        return {**super().fitted_schema(), "encoder": encoder.fitted_schema(),
                "z_mean": ListOf(NUMBER, length=self.config.basis), "z_std": ListOf(POSITIVE, length=self.config.basis)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().state_tensors()
        if self.encoder is None:
            raise ForecasterError("lstm_z: nothing to save before fit")
        return {**tensors, **{_ENC + k: v for k, v in self.encoder.state_tensors().items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        own = {k: v for k, v in tensors.items() if not k.startswith(_ENC)}
        enc = {k[len(_ENC):]: v for k, v in tensors.items() if k.startswith(_ENC)}
        if "encoder" not in self.extra or not enc:
            raise ForecasterError("lstm_z: the saved model has no encoder (extra.encoder and enc_* tensors)")
        self.encoder = FunctionFieldGFM(self._encoder_config(), prefix_end=self.prefix_end, horizons=self.horizons)
        self.encoder.extra = dict(self.extra["encoder"])
        self.encoder.load_state_tensors(enc)
        self._z_stats = (list(self.extra["z_mean"]), list(self.extra["z_std"]))
        super().load_state_tensors(own)
