"""Params sections for optimizers: the hyper-parameters each optimizer reads, drawn per run or fixed, and the
learning-rate schedule. Imports nothing heavy, so that validating params never imports torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from gfm.base.errors import shorten
from gfm.base.schema import spec
from gfm.core.optimizers import HYPERS, OPTIMIZER_NAMES, SPECS, HyperSpec

# The names come from the registry (gfm.core.optimizers.SPECS, torch-free to import); Literal of a tuple is the
# Literal of its items.
OptimizerName = Literal[OPTIMIZER_NAMES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Range:
    """A hyper-parameter drawn per run, uniformly in [low, high] (log-uniformly if ``log``)."""

    low: float
    high: float
    log: bool = False

    def _check(self):
        out = []
        if self.high < self.low:
            out.append(("high", f"got {shorten(self.high)}; expected a value >= low ({shorten(self.low)})"))
        if self.log and self.low <= 0:
            out.append(("low", f"got {self.low!r}; a log range needs low > 0"))
        return out


Hyper = float | Range


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, as a multiplier of the base lr at optimizer step k (0-based)."""

    kind: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = spec(50, ge=1, doc="step: multiply by gamma every step_size steps")
    gamma: float = spec(0.5, gt=0, le=1)
    min_ratio: float = spec(0.0, ge=0, le=1, doc="cosine: floor as a fraction of the base lr")


# How many (run, param) state arrays each optimizer carries and records (the store size estimate's input).
OPTIMIZER_STATE_ARRAYS: dict[str, int] = {n: len(s.state) for n, s in SPECS.items()}

# Which hyper-parameters each optimizer reads; any other key is a mistake worth reporting.
OPTIMIZER_KEYS: dict[str, frozenset[str]] = {n: s.params_keys for n, s in SPECS.items()}


class _OptimizerRules:
    """The checks and look-ups of :class:`OptimizerConfig` (its fields come from the registry)."""

    @classmethod
    def _dispatch(cls, data, path, problems):
        name = data.get("name")
        if isinstance(name, str) and name in OPTIMIZER_KEYS:  # a list here must be a problem, not a crash
            allowed = OPTIMIZER_KEYS[name] | {"name", "schedule"}
            for key in data:
                if key not in allowed and key in {f.name for f in dataclasses.fields(cls)}:
                    problems.append(f"{path}.{key}: not used by optimizer {name!r}; "
                                    f"it reads {', '.join(sorted(allowed - {'name'}))}")
        return cls

    def hyper(self) -> dict[str, Hyper]:
        """The hyper-parameters this optimizer reads, by name."""
        return {k: getattr(self, k) for k in sorted(OPTIMIZER_KEYS[self.name])}


def _hyper_field(name: str, h: HyperSpec) -> tuple:
    return name, Hyper if h.per_run else float, spec(h.default, ge=h.ge, gt=h.gt, lt=h.lt)


# One field per hyper-parameter of the registry (gfm.core.optimizers.HYPERS), so that an optimizer reading a new one
# is declared in gfm.core.optimizers alone; to_dict and stores list them in this order.
OptimizerConfig = dataclasses.make_dataclass(
    "OptimizerConfig",
    [("name", OptimizerName),
     ("lr", Hyper | None, spec(None, ge=0, doc="required, except for a recorded store (whose runs carry their own)")),
     *(_hyper_field(k, h) for k, h in HYPERS.items()),
     ("schedule", ScheduleConfig, dataclasses.field(default_factory=ScheduleConfig))],
    bases=(_OptimizerRules,), frozen=True,
    namespace={"__module__": __name__, "__doc__": """An optimizer and its hyper-parameters (PyTorch conventions:
    heavy-ball or Nesterov momentum, Adam with bias correction and L2 weight decay, AdamW with decoupled weight
    decay, RMSprop with smoothing ``alpha``; update rules in gfm.core.optimizers). Each hyper-parameter is a number
    or a per-run Range; which ones an optimizer reads, and their defaults and ranges, are gfm.core.optimizers'."""})
