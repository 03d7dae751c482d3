"""The network of a declared store, rebuilt from what the store records, to score weights on the run's own data.

A recorded or imported store holds the layout (tensor names and shapes), the activation and loss when its
recorder knew them (gfm.core.network) and, when the user passed it, each run's held-out evaluation data (``eval/x``,
``eval/y``). Evaluate's downstream metrics (the loss and accuracy the forecast weights reach) are computed with
this network on that data, and are not computed at all where a piece is missing: :func:`recorded_task` says
which piece, and evaluate reports the metrics as absent with that reason. Nothing is assumed: a layout that
is not a chain of Linear layers with biases, an unknown activation or an unknown loss is a reason.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from gfm.core.network import activation_fn, network_of
from gfm.tasks.base import ParamSpec, Task

__all__ = ["RecordedTask", "recorded_task", "mlp_chain_problem"]


def mlp_chain_problem(layout: tuple[ParamSpec, ...]) -> str | None:
    """Why ``layout`` is not ``Linear -> act -> ... -> Linear`` (each an (out, in) weight then its (out,) bias,
    each layer's input the previous layer's output), or None when it is."""
    if not layout or len(layout) % 2:
        return "the layout is not pairs of (out, in) weights and (out,) biases"
    prev = None
    for w, b in zip(layout[0::2], layout[1::2]):
        if len(w.shape) != 2 or tuple(b.shape) != (w.shape[0],):
            return f"{w.name} {list(w.shape)} / {b.name} {list(b.shape)} is not a Linear layer's weight and bias"
        if prev is not None and w.shape[1] != prev:
            return f"{w.name} takes {w.shape[1]} inputs; the layer before gives {prev}"
        prev = w.shape[0]
    return None


class RecordedTask(Task):
    """A recorded MLP: the layout's Linear layers with the recorded activation between them, and its loss."""

    def __init__(self, layout: tuple[ParamSpec, ...], activation: str, loss: str):
        # no TaskConfig: a recorded task is rebuilt from its store, never generated
        self.layout, self.activation, self.loss_kind = layout, activation, loss
        self.classification = loss == "cross_entropy"
        self._act = activation_fn(activation)

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        R, h = theta.shape[0], x.reshape(x.shape[0], x.shape[1], -1)
        for n, (w, b) in enumerate(zip(self.layout[0::2], self.layout[1::2])):
            if n:
                h = self._act(h)
            W = theta[:, w.offset : w.offset + w.size].view(R, *w.shape)
            h = torch.baddbmm(theta[:, b.offset : b.offset + b.size].view(R, 1, b.size), h, W.transpose(1, 2))
        return h

    def loss_from_output(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "cross_entropy":
            R, B, K = out.shape
            return F.cross_entropy(out.reshape(R * B, K), y.reshape(R * B).long(), reduction="none").view(R, B).mean(1)
        diff = out.squeeze(-1) - y
        return 0.5 * diff.pow(2).sum(1) if self.loss_kind == "least_squares" else diff.pow(2).mean(1)


def recorded_task(attrs: dict, layout: tuple[ParamSpec, ...], has_eval: bool) -> tuple[RecordedTask | None, str]:
    """The rebuilt network of a declared store, or ``(None, reason)`` when downstream metrics cannot be computed
    on the run's own data (the reason is one line, shown in the report)."""
    if not has_eval:
        return None, ("the store holds no held-out evaluation data (record it with gfm.record(..., "
                      "eval_data=(x, y)))")
    try:
        net = network_of(attrs)
    except ValueError as exc:
        return None, str(exc)
    if net.activation is None:
        return None, "the store does not record its network's activation (gfm.record(..., activation=...))"
    if net.loss is None:
        return None, "the store does not record its loss (gfm.record(..., loss=...))"
    problem = mlp_chain_problem(layout)
    if problem:
        return None, f"the network cannot be rebuilt from its layout ({problem})"
    if net.loss != "cross_entropy" and layout[-2].shape[0] != 1:
        return None, f"loss {net.loss} with {layout[-2].shape[0]} outputs; it is defined for one output"
    return RecordedTask(layout, net.activation, net.loss), ""
