"""Scores of sampled forecasts: central-interval coverage and the continuous ranked probability score.

A sampled forecast gives, for each forecast quantity (a run's final weight, a run's final training loss), S
draws from the forecaster's predictive distribution. Two questions are asked of them:

* **coverage**: how often the truth lies inside the central ``level`` interval of the draws (the empirical
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles, linear interpolation, as :func:`numpy.quantile`).
  A calibrated forecaster covers the truth at the nominal rate: 90% intervals hold it 90% of the time.
  Coverage alone rewards wide intervals; it is read with the CRPS.
* **CRPS** (Gneiting & Raftery 2007): ``E|X - y| - 1/2 E|X - X'|`` for X, X' independent draws, in the
  quantity's own units. It is the mean absolute error for a point forecast (S = 1 or identical draws) and is
  lower for a sharp, calibrated distribution than for the same point forecast alone; proper, so it cannot be
  gamed by misreporting the spread. The expectation over draws is the empirical one (the 1 / S^2 form),
  computed from sorted draws in O(S log S).

Both are element-wise: the caller averages over parameters, runs and dataset seeds as it averages errors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["central_interval", "covered", "crps"]


def central_interval(samples: np.ndarray, level: float, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (lower, upper) empirical quantiles bounding the central ``level`` share of ``samples`` along ``axis``."""
    if not 0 < level < 1:
        raise ValueError(f"level: got {level}; expected a share in (0, 1)")
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [tail, 1.0 - tail], axis=axis)
    return lo, hi


def covered(samples: np.ndarray, truth: np.ndarray, level: float, axis: int = 1) -> np.ndarray:
    """Whether each truth lies in the central ``level`` interval of its samples (bool, the shape of ``truth``)."""
    lo, hi = central_interval(samples, level, axis)
    truth = np.asarray(truth, dtype=np.float64)
    return (truth >= lo) & (truth <= hi)


def crps(samples: np.ndarray, truth: np.ndarray, axis: int = 1) -> np.ndarray:
    """Empirical CRPS of ``samples`` (draws along ``axis``) against ``truth`` (the shape without that axis)."""
    x = np.sort(np.moveaxis(np.asarray(samples, dtype=np.float64), axis, -1), axis=-1)
    y = np.asarray(truth, dtype=np.float64)[..., None]
    s = x.shape[-1]
    if s == 0:
        raise ValueError("crps: no samples")
    # E|X - X'| over all ordered pairs = (2 / S^2) sum_i (2i - S - 1) x_(i) for sorted x (i = 1..S)
    ranks = 2.0 * np.arange(1, s + 1) - s - 1
    spread = 2.0 * (x * ranks).sum(-1) / s**2
    return np.abs(x - y).mean(-1) - 0.5 * spread
