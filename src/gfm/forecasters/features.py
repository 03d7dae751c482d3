"""Per-parameter ("coordinate") views of trajectories and their global normalisation.

Every learned baseline here (LSTM, Transformer, LFD-2, Introspection, WNN) is a per-parameter model: one
network with shared weights maps the history of *one* scalar weight to that weight's future. A batch of N
runs with P parameters becomes N * P rows (run-major: row ``n * P + p`` is parameter p of run n).

Normalisation is global: one train-set scale per quantity (weights, displacements, steps, each horizon's
displacement), never per parameter. The GFM prototype found per-parameter scaling neutral or harmful
(docs/methods.md §8.3), and a single scale keeps a row's magnitude informative.
The scales are small JSON floats kept in the forecaster's ``extra`` so a saved model is self-contained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from gfm.forecasters.base import Trajectories

__all__ = [
    "to_rows", "from_rows", "fit_scales", "scales_schema", "time_grid", "sequence_features", "residual_targets",
    "decode_residual", "SEQUENCE_FEATURES",
]

# Columns of :func:`sequence_features`, in order (documented once, used by the sequence models' input size).
SEQUENCE_FEATURES = ("weight", "displacement", "step", "time", "log_lr")
_TINY = 1e-12


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """(run, record, param) -> (run * param, record)."""
    n, t, p = x.shape
    return x.permute(0, 2, 1).reshape(n * p, t)


def from_rows(y: torch.Tensor, n_runs: int) -> torch.Tensor:
    """(run * param, k) -> (run, k, param); the inverse of :func:`to_rows`."""
    rows, k = y.shape
    return y.reshape(n_runs, rows // n_runs, k).permute(0, 2, 1)


def _rms(x: torch.Tensor) -> float:
    value = float(x.double().pow(2).mean().sqrt()) if x.numel() else 0.0
    # A quantity that is identically zero on the train set (e.g. a frozen parameter) gets scale 1 so that
    # dividing by it is the identity rather than a blow-up.
    return value if math.isfinite(value) and value > _TINY else 1.0


def fit_scales(train: Trajectories, prefix_end: int, horizons: Sequence[int]) -> dict[str, object]:
    """Global train-set scales.

    Args:
        train: whole training runs (records up to at least ``max(horizons)``).
        prefix_end: last observed record K.
        horizons: record indices the model predicts.

    Returns:
        ``{"weight": rms(w_k), "displacement": rms(w_k - w_K), "step": rms(w_k - w_{k-1}) over the prefix,
        "horizon": [rms(w_h - w_K) for h], "log_lr_mean", "log_lr_std"}`` (plain floats, JSON-able).
    """
    k = prefix_end
    w = train.weights[:, : k + 1]  # (run, K+1, param)
    last = w[:, -1:]
    log_lr = torch.log(train.lr[:, : k + 1].double().clamp_min(1e-30))
    std = float(log_lr.std()) if log_lr.numel() > 1 else 0.0
    return {
        "weight": _rms(w),
        "displacement": _rms(w - last),
        "step": _rms(w[:, 1:] - w[:, :-1]),
        "horizon": [_rms(train.weights[:, h] - train.weights[:, k]) for h in horizons],
        "log_lr_mean": float(log_lr.mean()),
        # constant lr across the store: the feature is then identically 0, not 0/0
        "log_lr_std": std if std > 1e-6 else 1.0,
    }


def scales_schema(n_horizons: int) -> dict:
    """What :func:`fit_scales` returns, as a schema of :mod:`gfm.forecasters.fitted`: every scale is positive
    (an identically zero quantity gets scale 1), one per horizon."""
    from gfm.forecasters.fitted import NUMBER, POSITIVE, ListOf

    return {"weight": POSITIVE, "displacement": POSITIVE, "step": POSITIVE,
            "horizon": ListOf(POSITIVE, length=n_horizons), "log_lr_mean": NUMBER, "log_lr_std": POSITIVE}


def time_grid(prefix: Trajectories) -> torch.Tensor:
    """Normalised time t_k = k * record_every / steps of each observed record: (record,)."""
    k = torch.arange(prefix.n_records, dtype=torch.float32, device=prefix.weights.device)
    return k * prefix.record_every / prefix.steps


def sequence_features(prefix: Trajectories, scales: dict) -> torch.Tensor:
    """Per-parameter input sequences for the sequence models.

    Args:
        prefix: observed records 0..K of N runs (P parameters each).
        scales: from :func:`fit_scales`.

    Returns:
        (N * P, K + 1, 5): per record k, ``w_k / s_w``, ``(w_k - w_K) / s_x``, ``(w_k - w_{k-1}) / s_v``
        (0 at k = 0), ``t_k``, and the standardised log learning rate of the run (the last two are the
        run-level "global" features, repeated for each parameter).
    """
    w = prefix.weights  # (N, K+1, P)
    n, t, p = w.shape
    step = torch.zeros_like(w)
    step[:, 1:] = w[:, 1:] - w[:, :-1]
    per_param = torch.stack([w / scales["weight"], (w - w[:, -1:]) / scales["displacement"],
                             step / scales["step"]], dim=-1)  # (N, K+1, P, 3)
    log_lr = (torch.log(prefix.lr.clamp_min(1e-30)) - scales["log_lr_mean"]) / scales["log_lr_std"]  # (N, K+1)
    tt = time_grid(prefix).expand(n, t)
    per_run = torch.stack([tt, log_lr.to(w.dtype)], dim=-1).unsqueeze(2).expand(n, t, p, 2)
    x = torch.cat([per_param, per_run], dim=-1)  # (N, K+1, P, 5)
    return x.permute(0, 2, 1, 3).reshape(n * p, t, len(SEQUENCE_FEATURES))


def residual_targets(traj: Trajectories, prefix_end: int, horizons: Sequence[int], scales: dict) -> torch.Tensor:
    """Training targets ``(w_h - w_K) / s_h`` for every horizon: (N * P, H)."""
    last = traj.weights[:, prefix_end : prefix_end + 1]  # (N, 1, P)
    disp = traj.weights[:, list(horizons)] - last  # (N, H, P)
    s = torch.tensor(scales["horizon"], dtype=disp.dtype, device=disp.device).view(1, -1, 1)
    return to_rows(disp / s)


def decode_residual(out: torch.Tensor, prefix: Trajectories, columns: Sequence[int], scales: dict) -> torch.Tensor:
    """Model outputs (N * P, H_fitted) -> weights (N, len(columns), P) = w_K + s_h * out_h."""
    s = torch.tensor([scales["horizon"][c] for c in columns], dtype=out.dtype, device=out.device).view(1, -1, 1)
    disp = from_rows(out[:, list(columns)], prefix.n_runs) * s
    return prefix.weights[:, -1:].to(out.dtype) + disp
