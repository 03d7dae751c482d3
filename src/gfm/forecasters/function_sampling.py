"""Sampled forecasts of ``gfm_function``: draws of the final weights, with a spread calibrated on validation runs.

GFM is a generative model of a run's path, so it can say how sure it is by sampling. In ``gfm_function`` the
one per-run unknown is the target-function code z, fitted to the prefix's recovered gradients by ridge least
squares; that fit has a Gaussian posterior N(z_hat, s^2 (A + lambda I)^-1)
(:meth:`FunctionField.code_posterior`). A draw takes z = z_hat + tau * L eps (L the posterior's Cholesky
factor, eps standard normal) and replays the optimizer map from w_K exactly as the point forecast does, so each
draw is a whole forecast path of the model.

Why the factor tau: the posterior alone is overconfident. Its s^2 measures how well the prefix's gradients are
fitted, not how wrong the field is about the landscape beyond the prefix (on mlp_regression validation runs the
90% interval of the bare posterior holds the truth for ~20% of the weights). tau is chosen per fit on the
validation runs so that the central ``coverage`` interval of the draws holds the true final weights at that
rate, as temperature scaling calibrates a classifier; test runs are never read.

Calibration without a grid of S-draw replays: over the range of tau that matters the final weights move almost
linearly with z (the draws' spread grows in proportion to tau up to tau ~ 100 on mlp_regression), so w_H(z) is
linearised by central differences along the posterior's M axes (2M + 1 batched replays of the validation runs,
at a step equal to the current estimate of tau, twice), S draws per run are taken from the linearised map with
the same S as forecasting uses (an S-draw interval covers less than the distribution's own quantiles: about
0.85 instead of 0.9 for S = 32), and coverage(tau) = target is solved by bisection on log tau over those small
arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gfm.forecasters.gfm_features import recover_gradient
from gfm.metrics.uncertainty import covered

__all__ = ["calibrate", "sample_final", "run_draws"]

_TAU_RANGE = (1e-3, 1e4)   # bisection bounds of the spread factor, in posterior standard deviations
_FIRST_STEP = 10.0          # first finite-difference step (posterior sds); the second uses the first estimate


def run_draws(run_ids: np.ndarray, n: int, m: int, seed: int) -> torch.Tensor:
    """Standard-normal draws (n, run, m), each run's from its own stream [seed, run id]: a run's draws do not
    depend on which runs share the call (block sizes, test-set order)."""
    eps = np.stack([np.random.default_rng([int(seed), int(r)]).standard_normal((n, m)) for r in run_ids], 1)
    return torch.from_numpy(eps).float()


def _posterior(field, prefix, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        return field.code_posterior(prefix.weights.float()[:, :K], recover_gradient(prefix).float()[:, :K])


def _codes(z: torch.Tensor, chol: torch.Tensor, eps: torch.Tensor, tau: float) -> torch.Tensor:
    """z_hat + tau L eps for eps (..., N, M): (..., N, M)."""
    return z + tau * (chol @ eps.unsqueeze(-1)).squeeze(-1)


def sample_final(fc, field, prefix, horizon: int, n: int, seed: int) -> torch.Tensor:
    """``n`` draws of each run's weights at ``horizon``: (run, n, param)."""
    z, chol = _posterior(field, prefix, fc.prefix_end)
    run_ids = prefix.run_ids if prefix.run_ids is not None else np.arange(prefix.n_runs)
    eps = run_draws(np.asarray(run_ids), n, z.shape[-1], seed)
    w = fc._replay(field, prefix, _codes(z, chol, eps, float(fc.extra["spread"])), (horizon,))  # (n, N, 1, D)
    return w[..., 0, :].transpose(0, 1)


def _linearised(fc, field, prefix, z, chol, horizon: int, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """w_H at z_hat (N, D) and its central-difference slopes along the posterior axes, per unit tau (N, D, M)."""
    M = z.shape[-1]
    axes = torch.eye(M)
    eps = torch.cat([torch.zeros(1, M), axes, -axes])[:, None, :].expand(-1, z.shape[0], -1)  # (2M+1, N, M)
    w = fc._replay(field, prefix, _codes(z, chol, eps, step), (horizon,))[..., 0, :]        # (2M+1, N, D)
    slopes = (w[1 : M + 1] - w[M + 1 :]) / (2 * step)                                          # (M, N, D)
    return w[0], slopes.permute(1, 2, 0)


def _bisect(coverage_at, target: float) -> float:
    lo, hi = (math.log(t) for t in _TAU_RANGE)
    if coverage_at(math.exp(hi)) < target:
        return math.exp(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if coverage_at(math.exp(mid)) < target:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def calibrate(fc, field, val, rng: torch.Generator) -> dict:
    """Choose the spread factor tau on the validation runs ``val`` (module docstring); returns the fitted values
    kept in the model's ``extra``: ``spread`` and ``calibration`` (the linearised validation coverage reached)."""
    cfg, K, horizon = fc.config, fc.prefix_end, fc.horizons[-1]
    prefix = val.prefix(K)
    truth = val.weights[:, horizon].double().numpy()
    with torch.no_grad():
        z, chol = _posterior(field, prefix, K)
        eps = torch.randn(val.n_runs, cfg.samples, z.shape[-1], generator=rng, dtype=torch.float64)
        tau, steps = _FIRST_STEP, []
        for _ in range(2):
            steps.append(tau)
            centre, slopes = _linearised(fc, field, prefix, z, chol, horizon, tau)
            centre, moves = centre.double().numpy(), (slopes.double() @ eps.transpose(1, 2)).numpy()  # (N, D, S)

            def coverage_at(t: float, centre=centre, moves=moves) -> float:
                draws = centre[:, :, None] + t * moves
                return float(covered(draws, truth, cfg.coverage, axis=2).mean())

            tau = _bisect(coverage_at, cfg.coverage)
    return {"spread": tau, "calibration": {"target": cfg.coverage, "linearised_val_coverage": coverage_at(tau),
                                           "val_runs": int(val.n_runs), "samples": cfg.samples,
                                           "steps": [round(s, 6) for s in steps]}}
