"""What every task provides: a parameter layout, per-run data and initial weights, and a batched loss.

A task's network is represented two ways that must agree (a test checks it):
* stacked: one flat tensor ``theta`` (run, param) for all R runs, used by the generator;
* single: a plain ``nn.Module`` whose ``state_dict`` keys and shapes are the layout's names and shapes, used
  for loading recorded or forecast weights back into a network (``load_into``) and as the test oracle.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gfm.config import InitConfig, TaskConfig
from gfm.core.layout import ParamSpec, layout_from_shapes

__all__ = ["ParamSpec", "Task", "layout_from_shapes", "mlp_layout", "mlp_forward", "mlp_forward_cached",
           "mlp_backward", "mlp_module", "init_weights"]


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


def _mlp_layers(layout: tuple[ParamSpec, ...]) -> list[tuple[ParamSpec, ParamSpec | None]]:
    """(weight, bias or None) of each Linear layer of an :func:`mlp_layout`, in order."""
    layers, i = [], 0
    while i < len(layout):
        has_bias = i + 1 < len(layout) and layout[i + 1].name.endswith(".bias") and len(layout[i + 1].shape) == 1
        layers.append((layout[i], layout[i + 1] if has_bias else None))
        i += 2 if has_bias else 1
    return layers


def _view(theta: torch.Tensor, spec: ParamSpec) -> torch.Tensor:
    return theta[:, spec.offset : spec.offset + spec.size].view(theta.shape[0], *spec.shape)


def mlp_forward_cached(theta: torch.Tensor, x: torch.Tensor,
                       layout: tuple[ParamSpec, ...]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Stacked forward pass that also returns what :func:`mlp_backward` needs.

    Args:
        theta: (run, param) flat weights.
        x: (run, batch, in).
        layout: from :func:`mlp_layout`.

    Returns:
        ``(out, inputs)``: out (run, batch, out) and the input of every Linear layer (the first is ``x``, the
        others are ReLU outputs, each (run, batch, width)).
    """
    R = theta.shape[0]
    h, inputs = x, []
    for n, (w_spec, b_spec) in enumerate(_mlp_layers(layout)):
        if n:
            h = torch.relu(h)
        inputs.append(h)
        W = _view(theta, w_spec)  # (run, out, in)
        if b_spec is not None:
            h = torch.baddbmm(theta[:, b_spec.offset : b_spec.offset + b_spec.size].view(R, 1, b_spec.size),
                              h, W.transpose(1, 2))
        else:
            h = torch.bmm(h, W.transpose(1, 2))
    return h, inputs


def mlp_forward(theta: torch.Tensor, x: torch.Tensor, layout: tuple[ParamSpec, ...]) -> torch.Tensor:
    """Stacked forward pass.

    Args:
        theta: (run, param) flat weights.
        x: (run, batch, in).
        layout: from :func:`mlp_layout`.

    Returns:
        (run, batch, out).
    """
    return mlp_forward_cached(theta, x, layout)[0]


def mlp_backward(theta: torch.Tensor, inputs: list[torch.Tensor], d_out: torch.Tensor,
                 layout: tuple[ParamSpec, ...]) -> torch.Tensor:
    """Gradient of a loss with respect to the flat weights, by hand (two bmm per layer, no autograd graph).

    For tiny networks autograd's bookkeeping costs more than the arithmetic, so the generator uses this.
    It is the textbook backward of ``Linear -> ReLU -> ... -> Linear``: for layer ``h_out = h_in W^T + b``,
    dW = d_out^T h_in, db = sum over batch of d_out, d_in = d_out W, then the ReLU mask of ``h_in``.

    Args:
        theta: (run, param) flat weights the forward pass used.
        inputs: the per-layer inputs from :func:`mlp_forward_cached`, each (run, batch, width).
        d_out: dLoss/dOutput, (run, batch, out).
        layout: from :func:`mlp_layout`.

    Returns:
        (run, param) gradient, in the layout's order.
    """
    R = theta.shape[0]
    layers = _mlp_layers(layout)
    parts: list[torch.Tensor] = []  # per-tensor gradients, last layer first
    delta = d_out
    for n in range(len(layers) - 1, -1, -1):
        w_spec, b_spec = layers[n]
        h_in = inputs[n]
        if b_spec is not None:
            parts.append(delta.sum(1))  # (run, out)
        parts.append(torch.bmm(delta.transpose(1, 2), h_in).view(R, -1))  # dW (run, out * in)
        if n:
            # h_in = relu(pre): the ReLU passes the gradient where its output is positive. threshold_backward
            # is autograd's own ReLU backward and one fused kernel (masking with a bool tensor is several times
            # slower: BENCHMARKS.md, "Changes to the generator")
            delta = torch.ops.aten.threshold_backward(torch.bmm(delta, _view(theta, w_spec)), h_in, 0.0)
    # one concatenation in layout order (bmm into strided slices of a flat buffer falls back to a slow
    # per-run loop in PyTorch 2.x)
    grad = torch.cat(parts[::-1], dim=1)
    assert grad.shape == theta.shape, f"gradient shape {tuple(grad.shape)} != weights {tuple(theta.shape)}"
    return grad


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

    @property
    def manual_backward(self) -> bool:
        """True when this task is the stock stacked MLP with the stock loss, whose gradient
        :meth:`loss_and_grad` computes by hand; a task overriding ``forward``/``loss`` gets autograd."""
        cls = type(self)
        return (cls.forward is Task.forward and cls.loss_from_output is Task.loss_from_output
                and cls.loss is Task.loss)

    def loss_grad_from_output(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock loss and its gradient with respect to the outputs.

        Args:
            out: (run, batch, out) network outputs.
            y: (run, batch) targets (class indices for classification).

        Returns:
            ``(loss (run,), dLoss/dout (run, batch, out))``; the loss is :meth:`loss_from_output`'s.
        """
        B = out.shape[1]
        if self.classification:
            logp = torch.log_softmax(out, dim=-1)  # (run, batch, class)
            loss = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
            d_out = logp.exp_()  # softmax - onehot, over the batch mean
            d_out.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(d_out[..., :1], -1.0)).div_(B)
            return loss, d_out
        diff = out.squeeze(-1) - y  # (run, batch)
        return diff.square().mean(1), (diff * (2.0 / B)).unsqueeze(-1)

    def loss_and_grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run loss and its gradient with respect to each run's own weights.

        Args:
            theta: (run, param) flat weights.
            x: (run, batch, in).
            y: (run, batch).

        Returns:
            ``(loss (run,), grad (run, param))``, both detached.
        """
        if self.manual_backward:
            out, inputs = mlp_forward_cached(theta, x, self.layout)
            loss, d_out = self.loss_grad_from_output(out, y)
            return loss, mlp_backward(theta, inputs, d_out, self.layout)
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            loss = self.loss(theta, x, y)  # runs are independent, so d(sum)/d(theta_r) = d(loss_r)/d(theta_r)
            (grad,) = torch.autograd.grad(loss.sum(), theta)
        return loss.detach(), grad

    def full_loss_and_batch_grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on all samples and gradient on a minibatch, at the same weights.

        A recorded minibatch step needs both. For the stock MLP one forward pass over all samples serves
        both: the minibatch's activations are rows of it, gathered for the backward pass, which saves the
        minibatch forward pass.

        Args:
            theta: (run, param) flat weights.
            x: (run, sample, in) all samples.
            y: (run, sample).
            rows: (run * batch,) minibatch rows as indices into the flattened (run * sample) data, run-major.

        Returns:
            ``(full loss (run,), minibatch gradient (run, param))``, both detached.
        """
        R, N = x.shape[:2]
        B = rows.numel() // R

        def gather(t: torch.Tensor) -> torch.Tensor:  # (run, sample, ...) -> (run, batch, ...)
            return t.reshape(R * N, *t.shape[2:]).index_select(0, rows).view(R, B, *t.shape[2:])

        if not self.manual_backward:
            with torch.no_grad():
                full = self.loss(theta, x, y)
            return full, self.loss_and_grad(theta, gather(x), gather(y))[1]
        out, inputs = mlp_forward_cached(theta, x, self.layout)
        full = self.loss_from_output(out, y)
        _, d_out = self.loss_grad_from_output(gather(out), gather(y))
        return full, mlp_backward(theta, [gather(h) for h in inputs], d_out, self.layout)

    def accuracy(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Per-run accuracy (run,) for classification tasks, else None."""
        if not self.classification:
            return None
        return (self.forward(theta, x).argmax(-1) == y).float().mean(1)

    def module_loss(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of a single-run module on (sample, in) data: the same formula as :meth:`loss`."""
        return self.loss_from_output(module(x).unsqueeze(0), y.unsqueeze(0))[0]
