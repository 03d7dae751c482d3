"""Vector-field networks for GFM and the optimizer-aware velocity (docs/methods.md §1.3).

Two field shapes read the same per-parameter features (built by ``gfm.forecasters.gfm_features``):

* :class:`CoordinateField` — one weight-shared MLP applied to every parameter, (batch, param, F) ->
  (batch, param, 1). Memory does not depend on the network being forecast, and a field trained on one
  size runs on any other. Optional *run context*: a DeepSets pooling (mean over the run's parameters of a
  small embedding) fed back to every parameter, so a coordinate sees a summary of its whole run.
* :class:`JointField` — one MLP over the whole flat vector (batch, param * F) -> (batch, param), with a
  linear skip path (a linear field is then learned exactly); for small networks of a fixed size.

Both end in a bounded output o -> B tanh(o / B): an MLP with SiLU extrapolates linearly, and an unbounded
field fed back into its own input through the ODE exploded in the prototype (docs/methods.md §8.2).

Optimizer-aware velocity. The network's output is a gradient surrogate g; the velocity comes from the
optimizer's own update rule :func:`gfm.core.optimizers.update` (m = optimizer steps per unit time, n = t m + 1
the 1-based index of the update starting at t, lr = alpha(t))::

    (w', s') = update(opt, w, g, s, hp, n)
    dw/dt    = m (w' - w)            ds/dt = m (s' - s)

which for each optimizer reads (PyTorch conventions; s is the ODE's extra state, started from the logged
state at the prefix end):

    sgd:      dw/dt = -m alpha g
    momentum: db/dt = m ((mu - 1) b + g);            dw/dt = -m alpha (mu b + g)
    nesterov: db/dt = m ((mu - 1) b + g);            dw/dt = -m alpha (g + mu (mu b + g))
    rmsprop:  ds/dt = m (1 - rho)(g^2 - s);          dw/dt = -m alpha g / (sqrt(rho s + (1 - rho) g^2) + eps)
    adam:     dM/dt = m (1 - b1)(g - M);  dV/dt = m (1 - b2)(g^2 - V);
              dw/dt = -m alpha M' / (1 - b1^n) / (sqrt(V' / (1 - b2^n)) + eps),  M' = M + (1 - b1)(g - M),
              V' = b2 V + (1 - b2) g^2
    adamw:    adam's dM/dt and dV/dt;  dw/dt = -m alpha (lambda w + M' / (1 - b1^n) / (sqrt(V' / (1 - b2^n)) + eps))
              (decoupled weight decay lambda: the surrogate g carries no decay term)

The velocity uses the *updated* state (M', V', b' = mu b + g), the discrete-consistent form: one Euler
step of size 1/m from (w_k, s_k) with g = the true gradient lands exactly on the optimizer's (w_{k+1},
s_{k+1}) (tests/test_flow.py checks it).
"""

from __future__ import annotations

import torch
from torch import nn

from gfm.core.optimizers import update

__all__ = ["BoundedMLP", "CoordinateField", "JointField", "optimizer_velocity", "bound"]


def bound(o: torch.Tensor, limit: float) -> torch.Tensor:
    """Smooth clamp to (-limit, limit): limit * tanh(o / limit); identity near 0."""
    return limit * torch.tanh(o / limit)


class BoundedMLP(nn.Module):
    """MLP ``n_in -> width x depth (SiLU) -> n_out``.

    Args:
        n_in: input features.
        n_out: outputs.
        width: hidden width.
        depth: hidden layers (>= 1).
        skip: add a linear map from the input to the output (learns linear parts exactly).
        zero_init: start at output 0 (the last-value field for a velocity head). A gradient head must not:
            with g = 0 and a zero second moment, Adam's/RMSprop's sqrt(v') has an infinite derivative and
            the first backward pass is NaN, so it starts at a small random output instead.
    """

    def __init__(self, n_in: int, n_out: int, *, width: int, depth: int, skip: bool = False,
                 zero_init: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        d = n_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.SiLU()]
            d = width
        layers.append(nn.Linear(d, n_out))
        self.net = nn.Sequential(*layers)
        self.skip = nn.Linear(n_in, n_out, bias=False) if skip else None
        # start near the zero field: a random field's early rollouts blow up the first validation scores
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
        else:
            nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.zeros_(self.net[-1].bias)
        if self.skip is not None:
            nn.init.zeros_(self.skip.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., n_in) -> (..., n_out)."""
        out = self.net(x)
        return out if self.skip is None else out + self.skip(x)


class CoordinateField(nn.Module):
    """Weight-shared per-parameter field with optional run context.

    Args:
        n_features: per-parameter features F.
        n_run_features: run-level features (hyper-parameters), broadcast to every parameter.
        width: hidden width.
        depth: hidden layers.
        n_pool: features pooled over the run's parameters (0 = no run context).
        pool_width: width of the pooled embedding.
        n_out: outputs per parameter.
        limit: output bound B.
        zero_init: start at output 0 (see :class:`BoundedMLP`).
    """

    def __init__(self, n_features: int, n_run_features: int, *, width: int, depth: int, n_pool: int = 0,
                 pool_width: int = 16, n_out: int = 1, limit: float = 5.0, zero_init: bool = True):
        super().__init__()
        self.limit = float(limit)
        self.pool = None
        if n_pool:
            self.pool = nn.Sequential(nn.Linear(n_pool, pool_width), nn.SiLU(), nn.Linear(pool_width, pool_width))
        n_in = n_features + n_run_features + (pool_width if n_pool else 0)
        self.mlp = BoundedMLP(n_in, n_out, width=width, depth=depth, zero_init=zero_init)

    def forward(self, feats: torch.Tensor, run_feats: torch.Tensor, pool_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Field output per parameter.

        Args:
            feats: (batch, param, F).
            run_feats: (batch, R).
            pool_feats: (batch, param, n_pool) features whose per-run mean embedding is the run context.

        Returns:
            (batch, param, n_out), bounded to (-limit, limit).
        """
        b, p, _ = feats.shape
        parts = [feats, run_feats.unsqueeze(1).expand(b, p, run_feats.shape[-1])]
        if self.pool is not None:
            assert pool_feats is not None, "this field was built with run context; pass pool_feats"
            ctx = self.pool(pool_feats).mean(1, keepdim=True)  # (batch, 1, pool_width)
            parts.append(ctx.expand(b, p, ctx.shape[-1]))
        return bound(self.mlp(torch.cat(parts, -1)), self.limit)


class JointField(nn.Module):
    """One MLP over the whole flat vector of a fixed-size network.

    Args:
        n_params: parameters P of the forecast network.
        n_features: per-parameter features F (flattened to P * F inputs).
        n_run_features: run-level features.
        width: hidden width.
        depth: hidden layers.
        n_out: outputs per parameter.
        limit: output bound B.
        zero_init: start at output 0 (see :class:`BoundedMLP`).
    """

    def __init__(self, n_params: int, n_features: int, n_run_features: int, *, width: int, depth: int,
                 n_out: int = 1, limit: float = 5.0, zero_init: bool = True):
        super().__init__()
        self.n_params, self.n_out, self.limit = n_params, n_out, float(limit)
        self.mlp = BoundedMLP(n_params * n_features + n_run_features, n_params * n_out, width=width, depth=depth,
                              skip=True, zero_init=zero_init)

    def forward(self, feats: torch.Tensor, run_feats: torch.Tensor, pool_feats: torch.Tensor | None = None) -> torch.Tensor:
        """Field output per parameter.

        Args:
            feats: (batch, param, F) with param == n_params.
            run_feats: (batch, R).
            pool_feats: unused (the joint field already sees every parameter).

        Returns:
            (batch, param, n_out), bounded to (-limit, limit).

        Raises:
            ValueError: a network of another size than the one this field was built for.
        """
        b, p, _ = feats.shape
        if p != self.n_params:
            raise ValueError(f"joint field built for {self.n_params} parameters, got {p}; use field: coordinate "
                             "to forecast networks of other sizes")
        out = self.mlp(torch.cat([feats.reshape(b, -1), run_feats], -1))
        return bound(out.view(b, p, self.n_out), self.limit)


def optimizer_velocity(name: str, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
                       hp: dict[str, torch.Tensor], *, n: torch.Tensor | float, m: float
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Velocity of weights and optimizer state assembled by the optimizer's own rule.

    Args:
        name: an optimizer of :data:`gfm.core.optimizers.STATE_NAMES`.
        w: (..., param) current weights.
        g: (..., param) gradient surrogate at ``w``.
        state: optimizer state at the current time, each (..., param).
        hp: hyper-parameters broadcasting against ``w`` (``lr`` = alpha(t)).
        n: 1-based update index t * m + 1 (Adam's bias correction).
        m: optimizer steps per unit time.

    Returns:
        ``(dw/dt, {name: ds/dt})``, shaped like ``w`` and ``state``.
    """
    w_new, s_new = update(name, w, g, state, hp, n)
    return m * (w_new - w), {k: m * (s_new[k] - state[k]) for k in state}
