"""Conditional probability path along a recorded trajectory (docs/methods.md §1.1).

A recorded run w_0, ..., w_T lives on the time grid t_j = j * record_every / steps, so a full run spans
t in [0, 1] and one optimizer step lasts 1/m (m = ``steps``). Conditioned on the run, the path is the
piecewise-linear interpolant, optionally widened by a Gaussian of constant width sigma::

    k     = segment with t_k <= t < t_{k+1},      omega = (t - t_k) / (t_{k+1} - t_k)
    mu_t  = (1 - omega) w_k + omega w_{k+1}
    x_t   = mu_t + sigma * eps,                   eps ~ N(0, I)
    u_t   = d mu_t / dt = (w_{k+1} - w_k) / (t_{k+1} - t_k)     (= m (w_{k+1} - w_k) when record_every = 1)

A constant sigma does not move the conditional target (d sigma / dt = 0), so the Gaussian path only
smooths the inputs the field sees. Optimizer state (momentum buffer, moments) follows the same interpolant
when the field carries it as extra ODE state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["PathSample", "PiecewiseLinearPath", "sample_segments", "T_SAMPLING"]

T_SAMPLING = ("uniform", "grid")


@dataclass(frozen=True)
class PathSample:
    """One batch drawn from the conditional path.

    Attributes:
        x_0: (batch, param) the record opening the segment, w_k.
        x_1: (batch, param) the record closing it, w_{k+1}.
        t: (batch,) time of the sample.
        x_t: (batch, param) the point on the (widened) path.
        dx_t: (batch, param) the conditional target velocity u_t.
        k: (batch,) segment index (the record opening it).
        omega: (batch,) position inside the segment, in [0, 1).
    """

    x_0: torch.Tensor
    x_1: torch.Tensor
    t: torch.Tensor
    x_t: torch.Tensor
    dx_t: torch.Tensor
    k: torch.Tensor
    omega: torch.Tensor


class PiecewiseLinearPath:
    """Piecewise-linear interpolant through the records of a run, with optional constant width ``sigma``.

    Args:
        dt: time between two records, record_every / steps.
        sigma: Gaussian width (same units as the weights it is applied to); 0 = deterministic path.

    Raises:
        ValueError: ``dt`` not positive or ``sigma`` negative.
    """

    def __init__(self, dt: float, *, sigma: float = 0.0):
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt!r}")
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {sigma!r}")
        self.dt = float(dt)
        self.sigma = float(sigma)

    def interpolate(self, w_k: torch.Tensor, w_k1: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
        """mu_t = (1 - omega) w_k + omega w_{k+1}; ``omega`` (batch,) broadcasts over the last axis."""
        om = omega.unsqueeze(-1)
        return w_k + om * (w_k1 - w_k)

    def velocity(self, w_k: torch.Tensor, w_k1: torch.Tensor) -> torch.Tensor:
        """u_t = (w_{k+1} - w_k) / dt, constant inside a segment."""
        return (w_k1 - w_k) / self.dt

    def sample(self, weights: torch.Tensor, k: torch.Tensor, omega: torch.Tensor, *,
               runs: torch.Tensor | None = None, generator: torch.Generator | None = None,
               scale: torch.Tensor | float = 1.0) -> PathSample:
        """Draw x_t and u_t on segments ``k`` of runs ``weights[runs]``.

        Args:
            weights: (run, record, param) trajectories.
            k: (batch,) int64 segment index, 0 <= k < record - 1.
            omega: (batch,) position inside the segment.
            runs: (batch,) which run each sample follows (default: run i for sample i).
            generator: randomness for the Gaussian width.
            scale: multiplies sigma (e.g. a global displacement scale), scalar or broadcastable to x_t.

        Returns:
            The :class:`PathSample`.
        """
        rows = torch.arange(weights.shape[0], device=weights.device) if runs is None else runs
        x_0, x_1 = weights[rows, k], weights[rows, k + 1]
        x_t = self.interpolate(x_0, x_1, omega)
        if self.sigma > 0:
            # drawn on the generator's device (CPU), then moved: one seed gives the same path on any device
            eps = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype).to(x_t.device)
            x_t = x_t + self.sigma * scale * eps
        t = (k.to(x_t.dtype) + omega) * self.dt
        return PathSample(x_0=x_0, x_1=x_1, t=t, x_t=x_t, dx_t=self.velocity(x_0, x_1), k=k, omega=omega)


def sample_segments(n: int, first: int, last: int, *, mode: Literal["uniform", "grid"] = "uniform",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw segment indices and in-segment positions for ``n`` samples.

    ``uniform`` draws t uniformly on [t_first, t_last + dt) (so k uniform, omega ~ U[0, 1)); ``grid`` puts
    every sample on a record (omega = 0), i.e. one-step regression on the recorded points.

    Args:
        n: number of samples.
        first: first segment index (inclusive).
        last: last segment index (inclusive).
        mode: ``uniform`` or ``grid``.
        generator: randomness.

    Returns:
        ``(k, omega)``: (n,) int64 and (n,) float32.

    Raises:
        ValueError: unknown mode or an empty range.
    """
    if mode not in T_SAMPLING:
        raise ValueError(f"unknown time sampling {mode!r}; expected one of {', '.join(T_SAMPLING)}")
    if last < first:
        raise ValueError(f"empty segment range [{first}, {last}]")
    k = torch.randint(first, last + 1, (n,), generator=generator)
    omega = torch.rand(n, generator=generator) if mode == "uniform" else torch.zeros(n)
    return k, omega
