"""The network side of ``gfm_function`` (:mod:`gfm.forecasters.function_field` says why the field is built this
way): an MLP read from a store's layout, its function computed from flat weights with the store's activation
between layers, and the learned part of the field (:class:`FunctionField`: probes, their weights, the target
basis and the ridge strength), whose gradient surrogate and prefix least squares the forecaster trains and
integrates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gfm.base.errors import shorten
from gfm.core.network import ACTIVATIONS, activation_fn
from gfm.forecasters.base import ForecasterError, StoreNotSupported, Trajectories

__all__ = ["MLPShape", "mlp_shape", "run_activation", "fitted_activation", "mlp_apply", "FunctionField"]


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
    """The activation of the runs' network as their store records it (:func:`gfm.core.network.network_of`); None
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


def fitted_activation(runs: Trajectories) -> str:
    """The activation of the runs a model is fitted on: fitting rebuilds the network's function, so it must be
    recorded, never assumed.

    Raises:
        StoreNotSupported: the runs do not say (or their store does not know) their activation.
    """
    activation = run_activation(runs)
    if activation is None:
        raise StoreNotSupported(_UNKNOWN_ACTIVATION)
    return activation


def mlp_apply(shape: MLPShape, w: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """f_w(x) for stacked flat weights ``w`` (..., D) at inputs ``x`` (P, in): (..., P, out), with
    ``activation`` (a name of :data:`gfm.core.network.ACTIVATIONS`) between layers and none after the last, as
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
