"""A run held as arrays instead of a store, made into :class:`~gfm.forecasters.base.Trajectories` for a trained
model (``gfm.prefix_from_arrays``), and a parameter layout from a module or a list of shapes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from gfm.core.layout import ParamSpec, layout_from_shapes
from gfm.core.network import Network, read_activation
from gfm.core.optimizers import HYPER_DEFAULTS, HYPER_NAMES, STATE_NAMES
from gfm.forecasters.base import ForecasterError, Trajectories

__all__ = ["prefix_from_arrays", "layout_of"]


def layout_of(layout: Any, n_params: int | None = None) -> tuple[ParamSpec, ...]:
    """A parameter layout from a ``torch.nn.Module`` (``named_parameters`` order, as ``gfm.record`` writes),
    a sequence of ``(name, shape)`` pairs or of :class:`~gfm.core.layout.ParamSpec`.

    Raises:
        ForecasterError: anything else, or sizes that do not add up to ``n_params``.
    """
    if isinstance(layout, torch.nn.Module):
        specs = layout_from_shapes([(n, tuple(p.shape)) for n, p in layout.named_parameters()])
    elif isinstance(layout, Sequence) and not isinstance(layout, str) and all(isinstance(s, ParamSpec) for s in layout):
        specs = tuple(layout)
    elif (isinstance(layout, Sequence) and not isinstance(layout, str)
          and all(isinstance(s, Sequence) and len(s) == 2 and isinstance(s[0], str) for s in layout)):
        try:
            specs = layout_from_shapes([(n, tuple(int(d) for d in shape)) for n, shape in layout])
        except (TypeError, ValueError):
            raise ForecasterError(f"layout: shapes must be sequences of integers; got {layout!r:.120}") from None
    else:
        raise ForecasterError(f"layout: got {type(layout).__name__}; expected a torch.nn.Module or a list of "
                              "(name, shape) pairs")
    bad = next((s for s in specs if any(int(d) < 1 for d in s.shape)), None)
    if bad is not None:  # a store's layout holds positive sizes only (gfm check); a negative one would slice garbage
        raise ForecasterError(f"layout: tensor {bad.name!r} has shape {list(bad.shape)}; expected positive sizes")
    total = sum(s.size for s in specs)
    if n_params is not None and total != n_params:
        raise ForecasterError(f"layout: its tensors hold {total} parameters; the weights have {n_params}")
    return specs


def _per_run(value: Any, name: str, n_runs: int, n_records: int | None) -> torch.Tensor:
    """A number, a (run,) array or, with ``n_records``, a (record,) or (run, record) array as float32 tensor
    of shape (run,) or (run, record)."""
    a = np.asarray(value, dtype=np.float64)
    want = (n_runs,) if n_records is None else (n_runs, n_records)
    if a.ndim == 0:
        a = np.broadcast_to(a, want)
    elif n_records is not None and a.shape == (n_records,):
        a = np.broadcast_to(a, want)
    if a.shape != want:
        forms = "a number or (run,)" if n_records is None else f"a number, ({n_records},) or {want}"
        raise ForecasterError(f"{name}: got shape {a.shape}; expected {forms}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ForecasterError(f"{name}: expected finite values >= 0")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def prefix_from_arrays(weights: Any, *, optimizer: str, lr: Any, hyper: Mapping[str, Any] | None = None,
                       states: Mapping[str, Any] | None = None, record_every: int = 1,
                       layout: Any = None) -> Trajectories:
    """A run (or several) held as arrays, in the form a forecaster reads.

    Args:
        weights: (record, param) for one run or (run, record, param): the flat parameter vector at records
            0, 1, ... (record j after j * record_every optimizer steps; record 0 = the initial weights).
        optimizer: the update rule's name, a key of ``gfm.core.optimizers.STATE_NAMES`` (``sgd``, ``momentum``,
            ``nesterov``, ``adam``, ``adamw``, ``rmsprop``).
        lr: learning rate of the update leaving each record: a number, (record,) or (run, record).
        hyper: the other hyper-parameters (a number or one per run); missing ones take PyTorch's defaults
            (``gfm.core.optimizers.HYPER_DEFAULTS``), ``lr`` defaults to the lr at record 0.
        states: optimizer state arrays by name (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``,
            ``square_avg``), shaped like ``weights``: what ``torch.optim`` holds after each record's updates.
        record_every: optimizer steps between records.
        layout: a ``torch.nn.Module`` or a list of ``(name, shape)``: lets the forecast be checked against the
            model's training layout and loaded back into a network. A module whose code says its activation
            (:func:`gfm.core.network.read_activation`) also lets a model that rebuilds the network (``gfm_function``)
            refuse a run of another activation; otherwise the run is taken as one of the fitted network.

    Returns:
        :class:`~gfm.forecasters.base.Trajectories` (``steps`` is the recorded length; forecasting puts the
        run on the model's time axis).

    Raises:
        ForecasterError: unknown optimizer, hyper-parameter or state name, or arrays of the wrong shape.
    """
    if optimizer not in STATE_NAMES:
        raise ForecasterError(f"optimizer: got {optimizer!r}; expected one of {', '.join(sorted(STATE_NAMES))}")
    if not isinstance(record_every, int) or isinstance(record_every, bool) or record_every < 1:
        raise ForecasterError(f"record_every: got {record_every!r}; expected an integer >= 1")
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or 0 in w.shape:
        raise ForecasterError(f"weights: got shape {np.shape(weights)}; expected (record, param) or "
                              "(run, record, param), none of them empty")
    R, T, P = w.shape
    lr_t = _per_run(lr, "lr", R, T)
    allowed = (*HYPER_NAMES[optimizer], "eps")
    unknown = sorted(set(hyper or {}) - set(allowed))
    if unknown:
        raise ForecasterError(f"hyper: {unknown[0]!r} is not a hyper-parameter of {optimizer}; it reads "
                              f"{', '.join(allowed)}")
    given = {"lr": lr_t[:, 0].numpy(), **dict(hyper or {})}
    hp = {k: _per_run(given.get(k, HYPER_DEFAULTS.get(k)), f"hyper[{k!r}]", R, None) for k in allowed}
    state_t = {}
    for name, arr in (states or {}).items():
        if name not in STATE_NAMES[optimizer]:
            raise ForecasterError(f"states: {name!r} is not state of {optimizer} (it keeps "
                                  f"{list(STATE_NAMES[optimizer]) or 'none'})")
        a = np.asarray(arr, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a
        if a.shape != w.shape:
            raise ForecasterError(f"states[{name!r}]: got shape {np.shape(arr)}; expected the weights' shape "
                                  f"{np.shape(weights)}")
        state_t[name] = torch.from_numpy(a.copy())
    specs = None if layout is None else layout_of(layout, P)
    activation = read_activation(layout) if isinstance(layout, torch.nn.Module) else None
    return Trajectories(weights=torch.from_numpy(w.copy()), lr=lr_t, optimizer=optimizer,
                        record_every=record_every, steps=(T - 1) * record_every, states=state_t, hyper=hp,
                        layout=specs, network=None if activation is None else Network(activation, None))
