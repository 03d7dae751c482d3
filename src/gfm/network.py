"""What a store knows about the network its runs trained: the activation between layers and the loss.

A recorded layout names tensors and shapes only: a Tanh MLP and a ReLU MLP have the same one. A forecaster or a
metric that rebuilds the network's function (gfm_function's surrogate, evaluate's downstream loss) needs the
activation and the loss too, so recorded and imported stores carry them in the root attribute ``network``
(``{"activation": <name or null>, "loss": <name or null>}``, null = not known), and generated stores take them
from their task kind (every generated MLP uses ReLU). A consumer that needs a value the store does not know
refuses the store; it never assumes one.

Torch-free: ``gfm validate`` and the stage CLIs read it before torch is imported; :func:`activation_fn` imports
torch when it is called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ACTIVATIONS", "LOSSES", "Network", "network_of", "activation_fn", "network_problem"]

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
