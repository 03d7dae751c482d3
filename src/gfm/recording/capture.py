"""What a recording reads from a live PyTorch training loop: the optimizer's update rule and hyper-parameters
(:func:`optimizer_spec`), the network's activation and loss (:func:`network_spec`), the parameters in record
order (:func:`owned_parameters`) and the weights and optimizer state flattened as a store holds them
(:func:`flat_tensors`, :func:`flat_state`). :mod:`gfm.recording.recorder` records with them, :mod:`gfm.recording.jump` keeps its
window of a live run in the same form.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gfm.base.errors import GFMError, shorten
from gfm.core.network import ACTIVATIONS, LOSSES, Network, read_activation
from gfm.core.optimizers import HYPER_DEFAULTS

__all__ = ["RecordError", "optimizer_spec", "network_spec", "flat_tensors", "flat_state", "owned_parameters"]


class RecordError(GFMError, ValueError):
    """The model, optimizer or target store cannot be recorded as asked."""


def optimizer_spec(optimizer: torch.optim.Optimizer) -> tuple[str, dict[str, float]]:
    """The store's optimizer name and hyper-parameters for a ``torch.optim`` optimizer.

    Returns:
        ``(name, hyper)``: name in ``sgd | momentum | nesterov | adam | adamw | rmsprop``; hyper holds the keys
        of :data:`HYPER_NAMES` plus ``eps``.

    Raises:
        RecordError: an optimizer (or option) whose update rule gfm.core.optimizers does not implement, or param
            groups with different hyper-parameters.
    """
    kind = type(optimizer)
    groups = optimizer.param_groups

    def same(key: str) -> float:
        values = {float(g[key]) for g in groups}
        if len(values) > 1:
            raise RecordError(f"param groups have different {key!r} ({sorted(values)}); a store holds one value "
                              "per run, so use one param group or equal hyper-parameters")
        return values.pop()

    def refuse(option: str, value: Any) -> None:
        raise RecordError(f"{kind.__name__}({option}={value!r}) is not supported: its update rule is not "
                          f"gfm.core.optimizers'; expected the default for {option}")

    def flag(key: str) -> bool:
        values = {bool(g.get(key, False)) for g in groups}
        if len(values) > 1:
            raise RecordError(f"param groups differ in {key!r}; a store holds one update rule per run")
        return values.pop()

    g0 = groups[0]
    if kind is torch.optim.SGD:
        if float(g0.get("dampening", 0.0)) != 0.0:
            refuse("dampening", g0["dampening"])
        momentum = same("momentum")
        nesterov = flag("nesterov")  # torch itself refuses Nesterov without momentum
        name = "nesterov" if nesterov else "momentum" if momentum > 0 else "sgd"
        hyper = {"lr": same("lr"), "weight_decay": same("weight_decay"), "eps": HYPER_DEFAULTS["eps"]}
        if momentum > 0:
            hyper["momentum"] = momentum
    elif kind in (torch.optim.Adam, torch.optim.AdamW):
        if flag("amsgrad"):
            refuse("amsgrad", True)
        b1 = {float(g["betas"][0]) for g in groups}
        b2 = {float(g["betas"][1]) for g in groups}
        if len(b1) > 1 or len(b2) > 1:
            raise RecordError("param groups have different 'betas'; use one param group or equal betas")
        # AdamW is Adam with decoupled_weight_decay=True in torch >= 2.6 and its own class before
        name = "adamw" if kind is torch.optim.AdamW or flag("decoupled_weight_decay") else "adam"
        hyper = {"lr": same("lr"), "beta1": b1.pop(), "beta2": b2.pop(), "eps": same("eps"),
                 "weight_decay": same("weight_decay")}
    elif kind is torch.optim.RMSprop:
        if g0.get("centered"):
            refuse("centered", True)
        if float(g0.get("momentum", 0.0)) != 0.0:
            refuse("momentum", g0["momentum"])
        name = "rmsprop"
        hyper = {"lr": same("lr"), "alpha": same("alpha"), "eps": same("eps"), "weight_decay": same("weight_decay")}
    else:
        raise RecordError(f"optimizer {kind.__module__}.{kind.__name__} is not supported; expected "
                          "torch.optim.SGD (plain, heavy-ball or Nesterov momentum), torch.optim.Adam, "
                          "torch.optim.AdamW or torch.optim.RMSprop")
    if any(g0.get(flag) for flag in ("maximize",)):
        refuse("maximize", True)
    return name, hyper


def network_spec(model: torch.nn.Module, activation: str | None = None, loss: str | None = None) -> Network:
    """The ``network`` attribute of a recording of ``model``: its activation read from the module where it can
    be (:func:`gfm.core.network.read_activation`), else the one given; the loss as given (None: not known).

    Raises:
        RecordError: a name outside :data:`gfm.core.network.ACTIVATIONS` / :data:`gfm.core.network.LOSSES`, or an
            ``activation`` that contradicts the one the module's code says.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise RecordError(f"activation={shorten(activation)}; expected one of {', '.join(ACTIVATIONS)} (torch.nn's "
                          "module of that name, default options), or None where the model's code says it")
    if loss is not None and loss not in LOSSES:
        raise RecordError(f"loss={shorten(loss)}; expected one of {', '.join(LOSSES)}, or None (not known)")
    read = read_activation(model)
    if read is not None and activation is not None and read != activation:
        raise RecordError(f"activation={activation!r}, but the model ({type(model).__name__}) applies {read} between "
                          "its layers; pass the model's own activation or leave activation= out")
    return Network(read or activation, loss)


def flat_tensors(tensors: list[torch.Tensor]) -> np.ndarray:
    """``tensors`` flattened into one float32 vector, in order: a record's ``weights`` (and each state array)
    as the store holds it. gfm.recording.jump keeps its window in this same form, so a forecaster reads the same numbers
    from a recorded run and from a live one."""
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors]).numpy()


def flat_state(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], name: str) -> np.ndarray:
    """The torch optimizer's state ``name`` (a name of :data:`gfm.core.optimizers.STATE_NAMES`, e.g.
    ``momentum_buffer``) for ``params``, flattened like the weights; zeros where torch has not created it yet
    (before the first step), which is the state the update rules of gfm.core.optimizers start from."""
    parts = [optimizer.state.get(p, {}).get(name) for p in params]
    return flat_tensors([torch.zeros_like(p) if t is None else t for t, p in zip(parts, params)])


def owned_parameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters of ``model`` in ``named_parameters`` order (the order of a record's flat vector).

    Raises:
        RecordError: the optimizer updates tensors that are not parameters of the model: a record would miss
            them, and a forecast loaded into the model would not move them.
    """
    params = [p for _, p in model.named_parameters()]
    ids = {id(p) for p in params}
    stray = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in ids)
    if stray:
        raise RecordError(f"the optimizer updates {stray} tensors that are not parameters of the model; "
                          "record the module that owns every optimized parameter")
    return params
