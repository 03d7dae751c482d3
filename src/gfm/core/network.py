"""What a store knows about the network its runs trained: the activation between layers and the loss.

A recorded layout names tensors and shapes only: a Tanh MLP and a ReLU MLP have the same one. A forecaster or a
metric that rebuilds the network's function (gfm_function's surrogate, evaluate's downstream loss) needs the
activation and the loss too, so recorded and imported stores carry them in the root attribute ``network``
(``{"activation": <name or null>, "loss": <name or null>}``, null = not known), and generated stores take them
from their task kind (every generated MLP uses ReLU). A consumer that needs a value the store does not know
refuses the store; it never assumes one.

Torch-free: ``gfm validate`` and the stage CLIs read it before torch is imported; :func:`activation_fn` and
:func:`read_activation` import torch when they are called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIVATIONS", "LOSSES", "Network", "network_of", "activation_fn", "network_problem", "read_activation"]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "silu", "elu", "softplus", "leaky_relu", "identity")
"""Activations a store may name: torch.nn's module of the same name with its default options
(``identity`` = no activation between layers, e.g. least squares' single layer)."""

LOSSES = ("mse", "cross_entropy", "least_squares")
"""Losses a store may name: ``mse`` = mean over samples of (f(x) - y)^2 (one output), ``cross_entropy`` = mean
over samples of softmax cross-entropy on integer class labels, ``least_squares`` = 0.5 x the sum over samples of
(x.w - y)^2 (LFD-2's least-squares tasks)."""

# generated stores: what each task kind builds (gfm.tasks); cifar10 is a CNN whose activation is ReLU too
_TASK_KIND_NETWORK = {
    "least_squares": ("identity", "least_squares"),
    "mlp_regression": ("relu", "mse"),
    "mlp_classification": ("relu", "cross_entropy"),
    "digits": ("relu", "cross_entropy"),
    "cifar10": ("relu", "cross_entropy"),
}


@dataclass(frozen=True)
class Network:
    """The activation and loss of a store's network; None where the store does not know it."""

    activation: str | None
    loss: str | None

    def as_attr(self) -> dict[str, str | None]:
        return {"activation": self.activation, "loss": self.loss}


def network_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid ``network`` attribute, or None when it is."""
    if not isinstance(value, Mapping) or set(value) != {"activation", "loss"}:
        return "expected {activation: <name or null>, loss: <name or null>}"
    if value["activation"] is not None and value["activation"] not in ACTIVATIONS:
        return f"activation {value['activation']!r:.40}; expected one of {', '.join(ACTIVATIONS)} or null"
    if value["loss"] is not None and value["loss"] not in LOSSES:
        return f"loss {value['loss']!r:.40}; expected one of {', '.join(LOSSES)} or null"
    return None


def network_of(attrs: Mapping[str, Any]) -> Network:
    """The network of a store from its root attributes: its ``network`` attribute where it has one (recorded
    and imported stores), else its task kind's (generated stores); ``Network(None, None)`` when neither says.

    Raises:
        ValueError: a ``network`` attribute that is not valid (:func:`network_problem`).
    """
    if "network" in attrs:
        value = attrs["network"]
        problem = network_problem(value)
        if problem:
            raise ValueError(f"store attribute 'network': {problem}")
        return Network(value["activation"], value["loss"])
    task = attrs.get("task")
    kind = task.get("kind") if isinstance(task, Mapping) else None
    return Network(*_TASK_KIND_NETWORK.get(kind, (None, None)))


def activation_fn(name: str) -> Callable:
    """The elementwise function of activation ``name`` (torch's functional form, default options)."""
    import torch
    from torch.nn import functional as F

    table = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu, "silu": F.silu,
             "elu": F.elu, "softplus": F.softplus, "leaky_relu": F.leaky_relu, "identity": lambda h: h}
    if name not in table:
        raise ValueError(f"activation {name!r:.40}; expected one of {', '.join(ACTIVATIONS)}")
    return table[name]


def _activation_name(m: Any) -> str | None:
    """The name of a stateless activation module with torch's default options, else None: a non-default slope,
    alpha, beta or tanh-approximation computes another function than :func:`activation_fn`'s, and a subclass
    (``type(m) is``, not ``isinstance``) may override ``forward``."""
    from torch import nn

    kind = type(m)
    if kind is nn.GELU:
        return "gelu" if m.approximate == "none" else None
    if kind is nn.ELU:
        return "elu" if float(m.alpha) == 1.0 else None
    if kind is nn.Softplus:
        return "softplus" if float(m.beta) == 1.0 and float(m.threshold) == 20.0 else None
    if kind is nn.LeakyReLU:
        return "leaky_relu" if float(m.negative_slope) == 0.01 else None
    plain = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Identity: "identity"}
    return plain.get(kind)


def _hooked(m: Any) -> bool:
    """A forward hook or pre-hook can change what a module computes: such a module is not read."""
    return bool(m._forward_hooks or m._forward_pre_hooks)


def _leaves(module: Any) -> list | None:
    """The modules an ``nn.Sequential`` applies in order, nested Sequentials opened; None when ``module`` (or a
    nested one) is not exactly ``nn.Sequential`` without hooks (any other container has its own forward)."""
    from torch import nn

    if type(module) is not nn.Sequential or _hooked(module):
        return None
    out = []
    for child in module:
        if type(child) is nn.Sequential:
            inner = _leaves(child)
            if inner is None:
                return None
            out += inner
        else:
            out.append(child)
    return out


def read_activation(module: Any) -> str | None:
    """The activation of ``module`` where its code says it exactly, else None (not known).

    Read: an ``nn.Linear`` alone (``identity``), or an ``nn.Sequential`` (nested ones opened, an optional leading
    ``nn.Flatten()`` with default dims) of ``nn.Linear`` layers with exactly one activation module between each
    two, all of one kind (:func:`_activation_name`). Anything else (a custom ``forward``, mixed activations, an
    activation after the last layer, dropout, normalisation, hooks, non-default options) is not read: the
    function a module computes cannot be told from its parameters, and a wrong guess is what this attribute
    exists to prevent.
    """
    from torch import nn

    if type(module) is nn.Linear:
        return None if _hooked(module) else "identity"
    leaves = _leaves(module)
    if not leaves:
        return None
    first = leaves[0]
    if type(first) is nn.Flatten and first.start_dim == 1 and first.end_dim == -1 and not _hooked(first):
        leaves = leaves[1:]
    if len(leaves) % 2 == 0 or any(type(m) is not nn.Linear or _hooked(m) for m in leaves[0::2]):
        return None
    names = {None if _hooked(m) else _activation_name(m) for m in leaves[1::2]}
    if not names:
        return "identity"
    return names.pop() if len(names) == 1 and None not in names else None
