"""Sampler: integrate a learned field with ``torchdiffeq.odeint`` (never a hand-written integrator).

Usage::

    xs = sample(field, x_init, time_grid=torch.tensor([0.1, 0.2, 1.0]), method="euler", step_size=0.005)
    # xs: (len(time_grid), *x_init.shape); a tuple state (w, buffer, ...) gives a tuple of such tensors

Fixed-step methods integrate on the grid t_0 + i * step_size with the requested times inserted, built
here from integer step counts: torchdiffeq's own grid (``arange * step_size + t_0``) can overshoot the
last time by round-off and add a spurious extra step, which breaks the exact Euler == optimizer identity
that GFM's optimizer-aware field relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["SOLVERS", "FIXED_STEP", "sample"]

FIXED_STEP = ("euler", "midpoint", "rk4")
ADAPTIVE = ("dopri5", "bosh3")
SOLVERS = FIXED_STEP + ADAPTIVE


def _grid(time_grid: torch.Tensor, step_size: float) -> torch.Tensor:
    """Uniform grid t_0 + i * step_size covering [t_0, t_end], with the requested times merged in."""
    time_grid = time_grid.detach().cpu()
    t0, t1 = float(time_grid[0]), float(time_grid[-1])
    n = max(1, math.ceil(round((t1 - t0) / step_size, 9)))  # round(): 19.999999999 steps is 20 steps
    uniform = t0 + torch.arange(n + 1, dtype=torch.float64) * step_size
    req = time_grid.to(torch.float64)
    # a uniform point within round-off (float32 times) of a requested time is dropped: the requested time
    # itself is the grid point, so no spurious tiny step appears next to it
    near = (uniform.unsqueeze(1) - req.unsqueeze(0)).abs().min(1).values < 1e-4 * step_size
    grid = torch.unique(torch.cat([uniform[~near], req]))  # sorted
    return grid[grid <= req[-1]].to(time_grid.dtype)


def sample(field: Callable[..., Any], x_init: torch.Tensor | tuple[torch.Tensor, ...], *,
           time_grid: torch.Tensor, method: str = "euler", step_size: float | None = None,
           rtol: float = 1e-5, atol: float = 1e-7, return_intermediates: bool = True,
           **cond: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Solve dx/dt = field(x, t, **cond) from ``time_grid[0]``.

    Args:
        field: callable ``field(x, t, **cond)`` returning dx/dt shaped like ``x`` (a tuple for a tuple state).
        x_init: initial state at ``time_grid[0]``, a tensor or a tuple of tensors.
        time_grid: (n,) strictly increasing times at which the solution is returned.
        method: one of :data:`SOLVERS`.
        step_size: fixed-step methods: the step (default: the spacing of ``time_grid``, i.e. one step per
            requested interval). Ignored by adaptive methods.
        rtol: adaptive methods' relative tolerance.
        atol: adaptive methods' absolute tolerance.
        return_intermediates: return every time of ``time_grid`` (else only the last).
        **cond: conditioning passed through to ``field``.

    Returns:
        (n, *x.shape) per state tensor (or (*x.shape) when ``return_intermediates`` is False).

    Raises:
        ValueError: unknown method, a non-increasing time grid or a non-positive step size.
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; expected one of {', '.join(SOLVERS)}")
    time_grid = torch.as_tensor(time_grid)
    if time_grid.ndim != 1 or len(time_grid) < 2 or not bool((time_grid[1:] > time_grid[:-1]).all()):
        raise ValueError(f"time_grid must be 1-D, strictly increasing, with >= 2 times; got {time_grid.tolist()}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")

    def rhs(t: torch.Tensor, x: Any) -> Any:
        return field(x, t, **cond)

    options: dict[str, Any] = {}
    if method in FIXED_STEP and step_size is not None:
        grid = _grid(time_grid, step_size)
        options["grid_constructor"] = lambda f, y0, t: grid.to(t)
    # Imported here: torchdiffeq pulls in scipy.integrate, a start-up cost (BENCHMARKS.md, "End to end") that
    # every `gfm` process that never integrates (most train/forecast jobs) would otherwise pay.
    from torchdiffeq import odeint

    out = odeint(rhs, x_init, time_grid, method=method, rtol=rtol, atol=atol, options=options or None)
    if return_intermediates:
        return out
    return tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]
