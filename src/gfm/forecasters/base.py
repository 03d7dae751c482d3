"""One interface for every forecaster (docs/architecture.md §4), a registry, and pickle-free save/load
(the files: :mod:`gfm.forecasters.model_files`).

Usage::

    fc = make_forecaster("linear", {}, prefix_end=20, horizons=[40, 60, 200])
    fc.fit(train, val, rng=torch.Generator().manual_seed(0))      # Trajectories of whole runs
    pred = fc.forecast(test.prefix(20), horizons=[40, 60, 200])    # (run, horizon, param)
    save_model(fc, "data/models/mlp_regression/sgd/linear")        # weights.safetensors + config.json
    fc2 = read_model("data/models/mlp_regression/sgd/linear")      # both in gfm.forecasters.model_files

Step indices (``prefix_end``, ``horizons``) count *recorded* steps: index j is optimizer step
j * record_every. A forecaster is built for one prefix length and one set of horizons (sequence models learn
exactly that mapping); ``forecast`` accepts any subset of the fitted horizons and refuses a prefix shorter
than it needs.

Saved models hold only ``config.json`` and ``weights.safetensors``: a model pulled from a shared DVC remote
cannot run code.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from gfm.base.errors import GFMError, shorten

__all__ = [
    "Trajectories", "Forecaster", "FORECASTERS", "register", "make_forecaster",
    "ForecasterError", "StoreNotSupported", "ModelFileError", "SizeEstimate",
]


class ForecasterError(GFMError, ValueError):
    """Bad forecaster name, config or input (e.g. a prefix shorter than the model needs)."""


class StoreNotSupported(ForecasterError):
    """This forecaster cannot forecast this store (its layout, activation or loss is one the forecaster cannot
    rebuild or was not made for). Raised by ``fit`` or ``forecast``; the stages record it as the model's refusal
    of the store, with this message as the one-line reason, and go on with the other models."""


class ModelFileError(GFMError, ValueError):
    """A saved model directory is missing, malformed or unsafe."""


def integers(values: Any, name: str) -> tuple[int, ...]:
    """``values`` (an integer or a sequence of them) as ints; refuses 1.7, True, "3" rather than rounding."""
    if isinstance(values, np.ndarray | torch.Tensor):
        items = values.reshape(-1).tolist()  # Python numbers: an integer array gives ints, a float one floats
    else:
        items = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else [values]
    bad = [v for v in items if isinstance(v, bool | np.bool_) or not isinstance(v, int | np.integer)]
    if bad:
        raise ForecasterError(f"{name}: got {shorten(bad[0], 40)}; expected integers (record indices or run "
                              "positions are never rounded)")
    return tuple(int(v) for v in items)


@dataclass
class Trajectories:
    """Recorded trajectories of N runs, as torch tensors (float32).

    Attributes:
        weights: (run, record, param).
        lr: (run, record) learning rate in force for the update leaving each record.
        states: optimizer state arrays by name, each (run, record, param) (may be empty).
        hyper: per-run hyper-parameters by name, each (run,) (``lr`` already includes the task's lr_scale).
        optimizer: a name of ``gfm.core.optimizers.STATE_NAMES`` (``sgd``, ``momentum``, ``adam``, ...).
        record_every: optimizer steps between records.
        steps: total optimizer steps of a full run (m); record j is at time t = j * record_every / steps.
        run_ids: (run,) positions of these runs in their store (for bookkeeping).
        layout: the tensors of the flat parameter vector (the store's layout), when known.
        network: the store's activation and loss (:class:`gfm.core.network.Network`, whose fields may be None: the
            store does not know); None when the runs do not come from a store and nothing says.
    """

    weights: torch.Tensor
    lr: torch.Tensor
    optimizer: str
    record_every: int
    steps: int
    states: dict[str, torch.Tensor] = field(default_factory=dict)
    hyper: dict[str, torch.Tensor] = field(default_factory=dict)
    run_ids: np.ndarray | None = None
    layout: tuple[Any, ...] | None = None  # gfm.core.layout.ParamSpec, in flat-vector order
    network: Any = None  # gfm.core.network.Network

    @property
    def n_runs(self) -> int:
        return self.weights.shape[0]

    @property
    def n_records(self) -> int:
        return self.weights.shape[1]

    @property
    def n_params(self) -> int:
        return self.weights.shape[2]

    def prefix(self, k: int) -> Trajectories:
        """Records 0..k (inclusive) only: what a forecaster may see at test time."""
        if not 0 <= k < self.n_records:
            raise ForecasterError(f"prefix end {k} outside the recorded steps 0..{self.n_records - 1}")
        return dataclasses.replace(
            self, weights=self.weights[:, : k + 1], lr=self.lr[:, : k + 1],
            states={n: s[:, : k + 1] for n, s in self.states.items()})

    def nonfinite_runs(self, k: int) -> np.ndarray:
        """Positions of the runs whose records 0..k (weights, lr, optimizer state) hold NaN or Inf: what a
        forecaster reads from a prefix ending at k."""
        arrays = [self.weights[:, : k + 1], self.lr[:, : k + 1], *(s[:, : k + 1] for s in self.states.values())]
        bad = torch.zeros(self.n_runs, dtype=torch.bool)
        for a in arrays:
            bad |= ~torch.isfinite(a.reshape(a.shape[0], -1)).all(dim=1).cpu()
        return np.flatnonzero(bad.numpy())

    def select(self, runs: np.ndarray | Sequence[int]) -> Trajectories:
        """A subset of runs."""
        idx = torch.as_tensor(np.asarray(runs, dtype=np.int64))
        return dataclasses.replace(
            self, weights=self.weights[idx], lr=self.lr[idx], states={n: s[idx] for n, s in self.states.items()},
            hyper={n: h[idx] for n, h in self.hyper.items()},
            run_ids=None if self.run_ids is None else self.run_ids[np.asarray(runs)])

    def to(self, device: torch.device | str) -> Trajectories:
        return dataclasses.replace(
            self, weights=self.weights.to(device), lr=self.lr.to(device),
            states={n: s.to(device) for n, s in self.states.items()},
            hyper={n: h.to(device) for n, h in self.hyper.items()})

    @classmethod
    def from_store(cls, store: Any, runs: Sequence[int] | np.ndarray, *, records: int | None = None) -> Trajectories:
        """Read runs ``runs`` (store positions) of a :class:`~gfm.store.reader.TrajectoryStore`, optionally only the
        first ``records`` records (a prefix read touches only the first chunk rows)."""
        from gfm.core.network import network_of
        from gfm.store.reader import read_runs

        runs = np.asarray(runs, dtype=np.int64)
        stop = store.n_records if records is None else records

        def read(arr):
            return torch.from_numpy(read_runs(arr, runs, stop))

        return cls(
            weights=read(store.weights), lr=read(store.lr), optimizer=store.optimizer["name"],
            record_every=store.record_every, steps=int(store.attrs["task"]["steps"]),
            states={n: read(store.state(n)) for n in store.state_names},
            hyper={n: torch.from_numpy(v[runs].astype(np.float32)) for n, v in store.hyper.items()},
            run_ids=runs, layout=store.layout, network=network_of(store.attrs))


@dataclass(frozen=True)
class SizeEstimate:
    """What training one forecaster costs, from its options and the network it forecasts: an order-of-magnitude
    estimate (float32; the layers' own sizes exactly, activations roughly), which ``gfm validate`` compares
    with ``limits.max_model_params`` and ``limits.max_model_bytes`` before anything is built."""

    params: int        # learned numbers of the model
    activations: int   # floats one training batch keeps for the backward pass

    @property
    def train_bytes(self) -> int:
        """Weights, gradients and AdamW's two moments (4 copies of the parameters) plus one batch's activations."""
        return 4 * (4 * self.params + self.activations)


class Forecaster:
    """Base class. Subclasses define ``Config`` (a frozen dataclass), ``fit`` and ``_forecast``, and list
    their learned tensors in ``state_tensors`` / ``load_state_tensors`` (an ``nn.Module`` does this for free
    via :attr:`module`).

    ``min_prefix`` is the number of records (0..k) the model needs to see. ``neural`` (a literal: Snakemake
    reads it from the source) marks models big enough to want a GPU (the train stage gives them ``device``'s
    accelerator, Snakemake a ``gpu`` resource); closed-form and tiny models set it False and run on CPU.
    ``on_epoch``, when set (the train stage sets it for progress bars), is called with each epoch's log row.
    ``closed_form`` marks models whose ``fit`` learns nothing from the runs (it only checks them): the train
    stage then streams the store block by block instead of reading the train runs into memory.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = dataclasses.make_dataclass("EmptyConfig", [], frozen=True)
    min_prefix: int = 1
    neural: ClassVar[bool] = True
    closed_form: ClassVar[bool] = False

    def __init__(self, config: Any = None, *, prefix_end: int, horizons: Sequence[int]):
        self.config = config if config is not None else self.Config()
        self.prefix_end = int(prefix_end)
        self.horizons = tuple(int(h) for h in horizons)
        if not self.horizons or any(h <= self.prefix_end for h in self.horizons):
            raise ForecasterError(f"horizons {list(self.horizons)} must be non-empty and after the prefix end "
                                  f"{self.prefix_end}")
        self.module: torch.nn.Module | None = None
        self.extra: dict[str, Any] = {}  # small JSON-able fitted values (normalisation constants, ...)
        self.on_epoch: Callable[[dict[str, float]], None] | None = None

    # --- to implement ----------------------------------------------------------------------------------
    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        """Learn from whole training runs; use ``val`` only for model selection / early stopping.

        Returns:
            One dict per epoch (e.g. ``{"epoch": 3, "train_loss": ..., "val_loss": ...}``); empty if nothing
            is trained.
        """
        return []

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.module is None else {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def size_estimate(self, n_params: int, optimizer: str) -> SizeEstimate:
        """Parameters and training activations of this model fitted on runs of a network of ``n_params``
        parameters trained by ``optimizer`` (see :class:`SizeEstimate`). Closed-form models learn nothing."""
        return SizeEstimate(0, 0)

    def sizes_from_tensors(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
        """The config options that size this model's tensors (option name -> value), read from saved tensor
        shapes alone. :func:`read_model` compares them with the saved config before it builds anything,
        so that a config edited to a huge size is refused without allocating it. Width options whose tensor is
        missing are left out (the load then names the missing tensor); counts (layers) are always given."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.module is not None:
            self.module.load_state_dict(tensors, strict=True)
        elif tensors:
            raise ModelFileError(f"{self.name}: unexpected tensors {sorted(tensors)[:5]}")

    # --- what a run must carry (checked by gfm.forecasters.trained before forecasting) ----------------
    def states_needed(self) -> tuple[str, ...]:
        """Optimizer state arrays (``Trajectories.states``) this fitted model reads from a prefix."""
        return ()

    def hyper_needed(self) -> tuple[str, ...]:
        """Per-run hyper-parameters (``Trajectories.hyper``) this fitted model reads from a prefix."""
        return ()

    def fixed_n_params(self) -> int | None:
        """The parameter count this fitted model can only forecast (None: any network size)."""
        return None

    def fitted_schema(self) -> dict:
        """What :attr:`extra` holds once fitted (a schema of :mod:`gfm.forecasters.fitted`), checked when a
        saved model is loaded; nothing for a model that fits no values."""
        return {}

    def fitted_relations(self, extra: dict) -> list[str]:
        """What is wrong between fitted values that each fit :meth:`fitted_schema` (one line each; empty: they
        agree): values derived from others, which a damaged file could contradict without raising anywhere."""
        return []

    # --- front door ------------------------------------------------------------------------------------
    @torch.no_grad()
    def forecast(self, prefix: Trajectories, *, horizons: Sequence[int]) -> torch.Tensor:
        """Weights at each horizon.

        Args:
            prefix: trajectories whose records 0..prefix_end are known (later records are ignored).
            horizons: record indices, a subset of the fitted horizons.

        Returns:
            (run, len(horizons), param) float32.

        Raises:
            ForecasterError: prefix too short or a horizon the model was not fitted for.
        """
        horizons = integers(horizons, "horizons")
        if not horizons:
            raise ForecasterError(f"{self.name}: horizons: got none; expected some of the fitted {list(self.horizons)}")
        if prefix.n_records < self.prefix_end + 1:
            raise ForecasterError(f"{self.name}: needs records 0..{self.prefix_end} "
                                  f"({self.prefix_end + 1} records); the prefix has {prefix.n_records}")
        unknown = [h for h in horizons if h not in self.horizons]
        if unknown:
            raise ForecasterError(f"{self.name}: horizons {unknown} were not fitted; fitted: {list(self.horizons)}")
        if self.module is not None:
            self.module.eval()
        # _forecast always gets distinct horizons in increasing order (what an ODE solver's time grid needs);
        # the caller's order and repeats are restored here.
        ordered = tuple(sorted(set(horizons)))
        out = self._forecast(prefix.prefix(self.prefix_end), ordered)
        assert out.shape == (prefix.n_runs, len(ordered), prefix.n_params), f"{self.name}: bad shape {tuple(out.shape)}"
        if ordered != horizons:
            out = out[:, [ordered.index(h) for h in horizons]]
        return out.float()

    # --- sampled forecasts (gfm.metrics.uncertainty scores them) ----------------------------------------------
    def n_samples(self) -> int:
        """Draws per run :meth:`sample_final` gives by default (0: this fitted model forecasts points only)."""
        return 0

    def _sample_final(self, prefix: Trajectories, horizon: int, n: int, seed: int) -> torch.Tensor:
        raise ForecasterError(f"{self.name}: this fitted model forecasts points, not samples")

    @torch.no_grad()
    def sample_final(self, prefix: Trajectories, *, horizon: int, n: int, seed: int) -> torch.Tensor:
        """``n`` draws from the predictive distribution of each run's weights at ``horizon``: (run, n, param)
        float32. A run's draws depend only on ``seed`` and its run id, not on which runs share the call."""
        if prefix.n_records < self.prefix_end + 1:
            raise ForecasterError(f"{self.name}: needs records 0..{self.prefix_end}; the prefix has {prefix.n_records}")
        if int(horizon) not in self.horizons or n < 1:
            raise ForecasterError(f"{self.name}: horizon {horizon} / draws {n}: expected a fitted horizon "
                                  f"{list(self.horizons)} and at least one draw")
        if self.module is not None:
            self.module.eval()
        out = self._sample_final(prefix.prefix(self.prefix_end), int(horizon), int(n), int(seed))
        assert out.shape == (prefix.n_runs, n, prefix.n_params), f"{self.name}: bad shape {tuple(out.shape)}"
        return out.float()


def tensor_dim(shapes: dict[str, tuple[int, ...]], name: str, axis: int) -> int | None:
    """Axis ``axis`` of saved tensor ``name``, None when there is no such tensor or axis."""
    shape = shapes.get(name)
    return shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None


def count_indexed(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    """How many distinct indices the tensor names matching ``pattern`` hold (a regular expression whose one
    group is the index, e.g. ``r"rnn\\.weight_ih_l(\\d+)"``): the layers a saved model has."""
    rx = re.compile(pattern)
    return len({m.group(1) for name in shapes if (m := rx.fullmatch(name))})


def known_sizes(**found: int | None) -> dict[str, int]:
    """The options of ``found`` whose size the tensors tell (None: the tensor is missing)."""
    return {option: value for option, value in found.items() if value is not None}


FORECASTERS: dict[str, type[Forecaster]] = {}


def register(cls: type[Forecaster]) -> type[Forecaster]:
    """Class decorator: add a forecaster to the registry under ``cls.name``."""
    if not cls.name or cls.name in FORECASTERS:
        raise ValueError(f"forecaster name {cls.name!r} missing or registered twice")
    FORECASTERS[cls.name] = cls
    return cls


def _lookup(kind: str) -> type[Forecaster]:
    import gfm.forecasters  # noqa: F401  (fills the registry)

    if not isinstance(kind, str) or kind not in FORECASTERS:
        raise ForecasterError(f"unknown forecaster {kind!r}; expected one of {', '.join(sorted(FORECASTERS))}")
    return FORECASTERS[kind]


def make_forecaster(kind: str, config: dict[str, Any] | Any = None, *, prefix_end: int,
                    horizons: Sequence[int]) -> Forecaster:
    """Build a registered forecaster from a name and a plain config mapping (validated)."""
    from gfm.base.schema import build

    cls = _lookup(kind)
    if config is None or isinstance(config, dict):
        problems: list[str] = []
        cfg = build(cls.Config, dict(config or {}), kind, problems)
        if problems:
            raise ForecasterError("; ".join(problems))
    else:
        cfg = config
    return cls(cfg, prefix_end=prefix_end, horizons=horizons)
