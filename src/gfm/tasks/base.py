"""What every task provides: a parameter layout, per-run data and initial weights, and a batched loss.

A task's network is represented two ways that must agree (a test checks it):
* stacked: one flat tensor ``theta`` (run, param) for all R runs, used by the generator;
* single: a plain ``nn.Module`` whose ``state_dict`` keys and shapes are the layout's names and shapes, used
  for loading recorded or forecast weights back into a network (``load_into``) and as the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gfm.config import InitConfig, TaskConfig

__all__ = ["ParamSpec", "Task", "mlp_layout", "mlp_forward", "mlp_module", "init_weights"]


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of the network inside the flat parameter vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def fan_in(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else self.shape[0]


def layout_from_shapes(named_shapes: list[tuple[str, tuple[int, ...]]]) -> tuple[ParamSpec, ...]:
    out, offset = [], 0
    for name, shape in named_shapes:
        out.append(ParamSpec(name, tuple(shape), offset))
        offset += math.prod(shape)
    return tuple(out)


def mlp_layout(dims: list[int], *, bias: bool = True) -> tuple[ParamSpec, ...]:
    """Layout of ``nn.Sequential(Linear, ReLU, Linear, ...)`` with layer sizes ``dims`` (state_dict order)."""
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes.append((f"{2 * i}.weight", (d_out, d_in)))
        if bias:
            shapes.append((f"{2 * i}.bias", (d_out,)))
    return layout_from_shapes(shapes)


def mlp_module(dims: list[int], *, bias: bool = True) -> nn.Module:
    """The single-run network matching :func:`mlp_layout`."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(d_in, d_out, bias=bias))
    return nn.Sequential(*layers)


def mlp_forward(theta: torch.Tensor, x: torch.Tensor, layout: tuple[ParamSpec, ...]) -> torch.Tensor:
    """Stacked forward pass.

    Args:
        theta: (run, param) flat weights.
        x: (run, batch, in).
        layout: from :func:`mlp_layout`.

    Returns:
        (run, batch, out).
    """
    R = theta.shape[0]
    h = x
    specs = list(layout)
    i = 0
    first = True
    while i < len(specs):
        w_spec = specs[i]
        W = theta[:, w_spec.offset : w_spec.offset + w_spec.size].view(R, *w_spec.shape)  # (run, out, in)
        has_bias = i + 1 < len(specs) and specs[i + 1].name.endswith(".bias") and len(specs[i + 1].shape) == 1
        if not first:
            h = torch.relu(h)
        if has_bias:
            b_spec = specs[i + 1]
            b = theta[:, b_spec.offset : b_spec.offset + b_spec.size].view(R, 1, b_spec.size)
            h = torch.baddbmm(b, h, W.transpose(1, 2))
            i += 2
        else:
            h = torch.bmm(h, W.transpose(1, 2))
            i += 1
        first = False
    return h


def init_weights(layout: tuple[ParamSpec, ...], cfg: InitConfig, gen: torch.Generator) -> torch.Tensor:
    """Initial flat weights of one run, drawn tensor by tensor in layout order from ``gen``.

    ``default`` is nn.Linear's own init: kaiming_uniform(a=sqrt(5)) for weights = U(±1/sqrt(fan_in)), and
    U(±1/sqrt(fan_in)) for biases (fan_in of the layer's weight).
    """
    parts = []
    fan_in = None
    for spec in layout:
        if len(spec.shape) > 1 or fan_in is None:
            fan_in = spec.fan_in
        if cfg.dist == "default":
            bound = 1.0 / math.sqrt(fan_in)
            t = (torch.rand(spec.shape, generator=gen) * 2 - 1) * bound
        elif cfg.dist == "uniform":
            bound = math.sqrt(3.0 / fan_in)
            t = (torch.rand(spec.shape, generator=gen) * 2 - 1) * bound
        elif cfg.dist == "normal":
            t = torch.randn(spec.shape, generator=gen) / math.sqrt(fan_in)
        elif cfg.dist == "unit_uniform":
            t = torch.rand(spec.shape, generator=gen)
        else:  # pragma: no cover - validated in config
            raise ValueError(f"unknown init {cfg.dist!r}")
        parts.append((t * cfg.scale).reshape(-1))
    return torch.cat(parts)


class Task:
    """Base class. Subclasses set ``layout`` and implement the data sampler, forward and loss."""

    cfg: TaskConfig
    layout: tuple[ParamSpec, ...]
    classification: bool = False

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    @property
    def n_params(self) -> int:
        last = self.layout[-1]
        return last.offset + last.size

    # --- per run -------------------------------------------------------------------------------------
    def sample_data(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training data of one run: x (sample, in) float32 and y (sample,) float32 or int64."""
        raise NotImplementedError

    def init_weights(self, gen: torch.Generator) -> torch.Tensor:
        """Initial flat weights (param,) of one run."""
        return init_weights(self.layout, self.cfg.init, gen)

    def lr_scale(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Per-run factor on the learning rate (1 unless the task's protocol says otherwise)."""
        return 1.0

    def build_module(self) -> nn.Module:
        """A fresh single-run network whose state_dict matches ``layout``."""
        raise NotImplementedError

    # --- stacked -------------------------------------------------------------------------------------
    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(run, param), (run, batch, in) -> (run, batch, out)."""
        return mlp_forward(theta, x, self.layout)

    def loss_from_output(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-run loss (run,) from outputs (run, batch, out) and targets (run, batch)."""
        if self.classification:
            R, B, K = out.shape
            return F.cross_entropy(out.reshape(R * B, K), y.reshape(R * B), reduction="none").view(R, B).mean(1)
        return (out.squeeze(-1) - y).pow(2).mean(1)

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-run training loss (run,)."""
        return self.loss_from_output(self.forward(theta, x), y)

    def accuracy(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Per-run accuracy (run,) for classification tasks, else None."""
        if not self.classification:
            return None
        return (self.forward(theta, x).argmax(-1) == y).float().mean(1)

    def module_loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of a single-run module on (sample, in) data: the same formula as :meth:`loss`."""
        return self.loss_from_output(module(x).unsqueeze(0), y.unsqueeze(0))[0]
