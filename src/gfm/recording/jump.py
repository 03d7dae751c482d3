"""Jump ahead in your own PyTorch training loop: every ``every`` optimizer steps, forecast where the weights are
going with a fitted forecaster and jump there when the loss on held-out data is not worse (the ``accelerate``
stage's verify/rollback rule, for a loop you write yourself).

Usage::

    import gfm

    fc = gfm.load_forecaster("data/models/my_net/sgd/gfm_function/0", store="runs/my_net.zarr")
    with gfm.jump_ahead(model, opt, fc, every=20, horizons=[40], holdout_loss=val_loss) as jumper:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            jumper.step()                     # after opt.step(); returns the steps a jump skipped (0: none)
    print(jumper.stats)                       # attempts, accepted, rejected, steps jumped, seconds spent

``val_loss`` is a zero-argument callable returning the loss on data the run never trains on, e.g.
``lambda: float(loss_fn(model(xv), yv))``. It is called under ``torch.no_grad()``; it should evaluate the
model deterministically (``model.eval()`` where the network has dropout or batch norm).

What happens, per run:

1. A window of the last ``prefix_end + 1`` records (the forecaster's prefix) is kept, one record every
   ``record_every`` optimizer steps, the first when :func:`jump_ahead` is called: the weights flattened in
   ``named_parameters`` order, the optimizer's state under gfm's names and ``param_groups[0]["lr"]``, exactly
   as :func:`gfm.record` writes them (the same functions do it). The window is relabelled as records
   0..prefix_end: a forecaster fitted on runs that start at initialisation is asked about a run as if it had
   started at the window's first record (exact for a time-homogeneous rule such as SGD or momentum at a
   constant lr, an approximation otherwise), as the ``accelerate`` stage does.
2. Every ``every`` steps, once the window is full, the forecaster predicts the weights at each of
   ``horizons`` (record indices of the forecaster, after ``prefix_end``). Each candidate is loaded into the
   model and scored with ``holdout_loss()``; the lowest is taken if it is not above the loss of the current
   weights. Otherwise the attempt is rolled back: the weights are restored bit for bit, the optimizer is not
   touched, and torch's random state and the modules' train/eval modes are as they were, so the run goes on
   exactly as without the attempt (only the wall-clock differs).
3. After a jump the window restarts at the jump target (``prefix_end`` more records before the next attempt),
   and the optimizer state is kept (``state_after_jump="keep"``: the recent momentum is still a good
   direction near the forecast) or zeroed (``"reset"``: every state tensor, Adam's step count included, so its
   bias correction restarts).

The learning-rate schedule: a forecaster holds the last logged lr past its prefix (it does not know the
schedule). This helper does not touch the user's scheduler. A jump of ``h - prefix_end`` records skips
``(h - prefix_end) * record_every`` optimizer steps that a scheduler counting ``scheduler.step()`` calls never
sees; where the schedule is a function of the step (cosine, step decay), advance it by what
:meth:`JumpAhead.step` returns (``for _ in range(jumper.step()): scheduler.step()``), so that it follows the
run's virtual step (:attr:`JumpAhead.virtual_steps`, optimizer steps plus steps jumped over), as the
``accelerate`` stage's schedule does.

What the forecaster must fit, checked when :func:`jump_ahead` is called: a model loaded with
:func:`gfm.load_forecaster` (a ``TrainedForecaster``) is checked as for a forecast of a recorded run
(optimizer, ``record_every``, parameter layout, the state and hyper-parameters it reads; closed-form models
such as ``linear`` learn nothing from their runs and are exempt from the first three). A bare fitted
:class:`~gfm.forecasters.base.Forecaster` is checked against what it saved of its training runs (optimizer,
``record_every``, parameter count); one that is not closed form and does not know the length of its training
runs (the time axis of its forecasts) is refused: load it with ``gfm.load_forecaster(..., store=)``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gfm.base.errors import GFMError, shorten
from gfm.core.layout import layout_from_shapes
from gfm.core.network import Network, read_activation
from gfm.core.optimizers import STATE_NAMES
from gfm.forecasters import Forecaster, ForecasterError, TrainedForecaster, Trajectories
from gfm.forecasters.base import integers
from gfm.recording.capture import RecordError, flat_state, flat_tensors, optimizer_spec, owned_parameters

__all__ = ["jump_ahead", "JumpAhead", "JumpStats", "JumpError", "STATE_AFTER_JUMP"]

STATE_AFTER_JUMP = ("keep", "reset")


class JumpError(GFMError, ValueError):
    """The model, optimizer, forecaster or a setting cannot jump ahead as asked (the message names which)."""


@dataclass
class JumpStats:
    """What the jumps did and cost. Seconds are wall-clock inside :meth:`JumpAhead.step`: recording the window,
    forecasting, and the held-out checks (current weights and every candidate)."""

    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    jumped_steps: int = 0  # optimizer steps skipped by accepted jumps
    window_seconds: float = 0.0
    forecast_seconds: float = 0.0
    holdout_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """All the time the helper took from the training loop."""
        return self.window_seconds + self.forecast_seconds + self.holdout_seconds

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "seconds": self.seconds}


@dataclass(frozen=True)
class _Record:
    """One record of the window, in the form a store holds it (float32, flat)."""

    weights: torch.Tensor
    lr: float
    states: dict[str, torch.Tensor]


def _count(value: Any, name: str) -> int:
    """``value`` as an int >= 1; a bool, a float or anything else is refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise JumpError(f"{name}={shorten(value)}; expected an integer >= 1 (optimizer steps)")
    return int(value)


def _fitted_facts(forecaster: Forecaster | TrainedForecaster) -> dict[str, Any]:
    """What the forecaster knows of its training runs (optimizer, record_every, steps, n_params); a key is
    missing where it does not know."""
    if isinstance(forecaster, TrainedForecaster):
        t = forecaster.trained_on
        facts = {"optimizer": t.optimizer, "record_every": t.record_every, "steps": t.steps, "n_params": t.n_params}
    else:
        facts = {k: forecaster.extra.get(k) for k in ("optimizer", "record_every", "steps", "n_params")}
    return {k: v for k, v in facts.items() if v is not None}


def _inner(forecaster: Any) -> Forecaster:
    """The :class:`Forecaster` that forecasts (a TrainedForecaster wraps one)."""
    if isinstance(forecaster, TrainedForecaster):
        return forecaster.forecaster
    if isinstance(forecaster, Forecaster):
        return forecaster
    raise JumpError(f"forecaster: got {type(forecaster).__name__}; expected a fitted forecaster "
                    "(gfm.load_forecaster(...), or gfm.forecasters.make_forecaster(...) after .fit)")


class JumpAhead:
    """Jump attempts for one training loop; made by :func:`jump_ahead` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, forecaster: Any, *, every: int,
                 horizons: Sequence[int], holdout_loss: Callable[[], Any], record_every: int | None = None,
                 state_after_jump: str = "keep"):
        if state_after_jump not in STATE_AFTER_JUMP:
            raise JumpError(f"state_after_jump={shorten(state_after_jump)}; expected 'keep' (the optimizer state "
                            "stays) or 'reset' (zeroed after a jump)")
        if not callable(holdout_loss):
            raise JumpError(f"holdout_loss: got {type(holdout_loss).__name__}; expected a zero-argument callable "
                            "returning the loss on data the run never trains on")
        self.inner = _inner(forecaster)
        try:
            self.opt_name, self.hyper = optimizer_spec(optimizer)
            self.params = owned_parameters(model, optimizer)
        except RecordError as exc:
            raise JumpError(f"optimizer: {exc}") from None
        if not self.params:
            raise JumpError("model: it has no parameters to jump")
        self.model, self.optimizer, self.holdout_loss = model, optimizer, holdout_loss
        self.state_after_jump = state_after_jump
        self.layout = layout_from_shapes([(n, tuple(p.shape)) for n, p in model.named_parameters()])
        activation = read_activation(model)  # lets gfm_function refuse another activation; None: not said
        self.network = None if activation is None else Network(activation, None)
        facts = _fitted_facts(forecaster)
        self.record_every = self._record_every(record_every, facts)
        self.every = _count(every, "every")
        if self.every % self.record_every:
            raise JumpError(f"every={self.every}; expected a multiple of record_every ({self.record_every}): an "
                            "attempt needs a record at the step it is made")
        self.horizons = self._horizons(horizons)
        self.time_steps = self._time_steps(facts)
        self.stats = JumpStats()
        self.steps = 0  # optimizer steps seen
        self._window: deque[_Record] = deque(maxlen=self.inner.prefix_end + 1)
        self._closed = False
        self._take_record()
        self._check_fit(forecaster, facts)

    # --- settings ------------------------------------------------------------------------------------
    def _record_every(self, given: Any, facts: dict[str, Any]) -> int:
        known = facts.get("record_every")
        if given is None:
            return int(known or 1)
        value = _count(given, "record_every")
        if known is not None and value != known:
            raise JumpError(f"record_every={value}; the forecaster was fitted on runs recorded every {known} "
                            "steps (its prefix and horizons count those records): leave record_every out")
        return value

    def _horizons(self, horizons: Any) -> tuple[int, ...]:
        fitted = list(self.inner.horizons)
        try:
            hs = integers(horizons, "horizons")
        except ForecasterError:
            raise JumpError(f"horizons={shorten(horizons)}; expected record indices among the forecaster's fitted "
                            f"{fitted}") from None
        missing = [h for h in hs if h not in fitted]
        if not hs or missing:
            raise JumpError(f"horizons={shorten(horizons)}: {missing or 'none given'}; the forecaster was fitted "
                            f"for {fitted} (record indices after its prefix end {self.inner.prefix_end})")
        return hs

    def _time_steps(self, facts: dict[str, Any]) -> int:
        """The ``steps`` of the prefix: the training runs' length, on which the forecaster's time axis is
        built. A closed-form model has no time axis; the window's own length stands in."""
        if "steps" in facts:
            return int(facts["steps"])
        if self.inner.closed_form:
            return self.inner.prefix_end * self.record_every
        raise JumpError(f"forecaster: this {self.inner.name} model does not know the length of the runs it was "
                        "fitted on (the time axis of its forecasts); save it and load it with "
                        "gfm.load_forecaster(model_dir, store=the store it was fitted on)")

    def _check_fit(self, forecaster: Any, facts: dict[str, Any]) -> None:
        """Refuse a forecaster of another optimizer or network, with every mismatch named."""
        probe = self._prefix(list(self._window))
        if isinstance(forecaster, TrainedForecaster):
            problems = forecaster.mismatches(probe)
        else:
            problems = []
            if not self.inner.closed_form and facts.get("optimizer") not in (None, self.opt_name):
                problems.append(f"optimizer: the run uses {self.opt_name}, the model was fitted on "
                                f"{facts['optimizer']} runs")
            n_params = self.inner.fixed_n_params() or (None if self.inner.closed_form else facts.get("n_params"))
            if n_params is not None and n_params != probe.n_params:
                problems.append(f"parameters: the model has {probe.n_params}, the forecaster's training runs "
                                f"{n_params}")
        if problems:
            raise JumpError(f"forecaster: {self.inner.name} does not fit this model and optimizer: "
                            + "; ".join(problems))

    # --- the loop ------------------------------------------------------------------------------------
    def __enter__(self) -> JumpAhead:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._closed = True

    @property
    def virtual_steps(self) -> int:
        """Optimizer steps taken plus the steps jumped over: the step a plain run would be at."""
        return self.steps + self.stats.jumped_steps

    def step(self) -> int:
        """Count one optimizer step; call it right after ``optimizer.step()``.

        Returns:
            The optimizer steps an accepted jump skipped at this call (0: no attempt, or rolled back).

        Raises:
            JumpError: ``holdout_loss()`` is not a finite number at the current weights (nothing to compare
                with), or the block has ended.
        """
        if self._closed:
            raise JumpError("JumpAhead.step() after its `with` block ended")
        self.steps += 1
        if self.steps % self.record_every:
            return 0
        self._take_record()
        if self.steps % self.every or len(self._window) < self.inner.prefix_end + 1:
            return 0
        return self._attempt()

    @torch.no_grad()
    def _take_record(self) -> None:
        t0 = time.perf_counter()
        states = {s: torch.from_numpy(flat_state(self.optimizer, self.params, s)) for s in STATE_NAMES[self.opt_name]}
        self._window.append(_Record(torch.from_numpy(flat_tensors(self.params)),
                                    float(self.optimizer.param_groups[0]["lr"]), states))
        self.stats.window_seconds += time.perf_counter() - t0

    def _prefix(self, records: list[_Record]) -> Trajectories:
        """The window as one run of records 0..len - 1, in the form a forecaster reads."""
        return Trajectories(
            weights=torch.stack([r.weights for r in records])[None], lr=torch.tensor([[r.lr for r in records]]),
            optimizer=self.opt_name, record_every=self.record_every, steps=self.time_steps,
            states={s: torch.stack([r.states[s] for r in records])[None] for s in STATE_NAMES[self.opt_name]},
            hyper={k: torch.tensor([v], dtype=torch.float32) for k, v in self.hyper.items()},
            layout=self.layout, network=self.network)

    def _attempt(self) -> int:
        """Forecast, check each candidate on held-out data, jump or roll back (module docstring, 2 and 3)."""
        self.stats.attempts += 1
        devices = sorted({p.device.index or 0 for p in self.params if p.device.type == "cuda"})
        modes = [(m, m.training) for m in self.model.modules()]
        saved = [p.detach().clone() for p in self.params]
        # a rolled-back attempt must leave the run as it was: torch's random state too (a forecaster or the
        # user's holdout_loss may draw from it, and the loop's next minibatch would then differ)
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            best, accepted, pred = 0, False, None  # an error in holdout_loss or the forecaster: the run as it was
            try:
                best, accepted, pred = self._choose()
            finally:
                if accepted:
                    self._load(pred[best])
                else:
                    for p, s in zip(self.params, saved):
                        p.copy_(s)
                for m, training in modes:
                    m.training = training
        if not accepted:
            self.stats.rejected += 1
            return 0
        if self.state_after_jump == "reset":
            self._reset_state()
        gain = (self.horizons[best] - self.inner.prefix_end) * self.record_every
        self.stats.accepted += 1
        self.stats.jumped_steps += gain
        self._window.clear()  # the jump target starts the next window
        self._take_record()
        return gain

    def _choose(self) -> tuple[int, bool, torch.Tensor]:
        """The best candidate's position, whether its held-out loss is not above the current weights', and the
        candidates (horizon, param). Leaves a candidate in the model; the caller puts back the one it keeps."""
        now = self._holdout()
        if not math.isfinite(now):
            raise JumpError(f"holdout_loss() returned {now} at the current weights (step {self.steps}); "
                            "expected a finite number to compare the forecasts with")
        t0 = time.perf_counter()
        pred = self.inner.forecast(self._prefix(list(self._window)), horizons=self.horizons)[0]
        self.stats.forecast_seconds += time.perf_counter() - t0
        losses = []
        for candidate in pred:
            if not bool(torch.isfinite(candidate).all()):  # a diverged forecast is never loaded
                losses.append(math.inf)
                continue
            self._load(candidate)
            loss = self._holdout()
            losses.append(loss if math.isfinite(loss) else math.inf)
        best = int(np.argmin(losses))
        return best, losses[best] <= now, pred

    def _holdout(self) -> float:
        t0 = time.perf_counter()
        value = self.holdout_loss()
        self.stats.holdout_seconds += time.perf_counter() - t0
        try:
            return float(value.detach() if isinstance(value, torch.Tensor) else value)
        except (TypeError, ValueError):
            raise JumpError(f"holdout_loss() returned {shorten(value)}; expected a number") from None

    def _load(self, flat: torch.Tensor) -> None:
        """Put a flat weight vector (record layout) into the model's parameters."""
        for spec, p in zip(self.layout, self.params):
            p.copy_(flat[spec.offset : spec.offset + spec.size].view(p.shape))

    def _reset_state(self) -> None:
        """Zero every tensor of the torch optimizer's state (Adam's ``step`` included: its bias correction
        restarts, as the ``accelerate`` stage restarts its update count)."""
        for p in self.params:
            state = self.optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    value.zero_()
                elif isinstance(value, (int, float)):
                    state[key] = type(value)(0)


def jump_ahead(model: torch.nn.Module, optimizer: torch.optim.Optimizer, forecaster: Any, *, every: int,
               horizons: Sequence[int], holdout_loss: Callable[[], Any], record_every: int | None = None,
               state_after_jump: str = "keep") -> JumpAhead:
    """Jump ahead in a training loop of ``model`` under ``optimizer`` with a fitted ``forecaster``.

    Args:
        model: the network; every parameter is forecast, in ``named_parameters`` order.
        optimizer: a ``torch.optim`` SGD, Adam, AdamW or RMSprop over the model's parameters (as
            :func:`gfm.record`), the optimizer the forecaster's training runs used.
        forecaster: a fitted forecaster: ``gfm.load_forecaster(...)`` or a
            :class:`~gfm.forecasters.base.Forecaster` after ``fit`` (``gfm.forecasters.make_forecaster``).
        every: optimizer steps between jump attempts, a multiple of ``record_every``.
        horizons: candidate targets, record indices among the forecaster's fitted horizons (a jump to ``h``
            skips ``(h - prefix_end) * record_every`` optimizer steps).
        holdout_loss: zero-argument callable returning the loss on held-out data (a number or a 0-d tensor).
        record_every: optimizer steps between the window's records (default: the forecaster's training runs'
            ``record_every`` where it knows it, else 1).
        state_after_jump: ``keep`` or ``reset`` (zero) the optimizer state after an accepted jump.

    Returns:
        A :class:`JumpAhead`; call ``jumper.step()`` after each ``optimizer.step()``, in a ``with`` block or
        not. Record 0 of its window is the weights now.

    Raises:
        JumpError: any argument that cannot work, named (module docstring).
    """
    return JumpAhead(model, optimizer, forecaster, every=every, horizons=horizons, holdout_loss=holdout_loss,
                     record_every=record_every, state_after_jump=state_after_jump)
