"""Forecast a new run with a trained model: the core behind ``gfm.load_forecaster`` and ``gfm.forecast_run``.

Usage::

    import gfm

    fc = gfm.load_forecaster("data/models/mlp_regression/sgd/gfm_state/1")   # or (".../gfm_state", seed=1)
    out = fc.forecast("runs/my_run.zarr")             # a store of gfm.record / gfm generate / gfm import
    out.weights                                       # (run, horizon, param) float32, at records out.horizons
    out.load_into(net, run=0, horizon=200)            # the forecast weights, into the user's own network
    # a run held as arrays instead of a store:
    run = gfm.prefix_from_arrays(w, optimizer="sgd", lr=0.05, layout=net)   # w: (record, param)
    out = gfm.forecast_run("data/models/mlp_regression/sgd/gfm_state/1", run, horizons=[100, 200])

A model of the train stage sees records 0..``prefix_end`` of a run and predicts the weights at its fitted
``horizons`` (record indices; record j is optimizer step j * record_every). Before forecasting, the run is
checked against what the model was fitted on (:class:`TrainedOn`), and every mismatch is named:

* the optimizer (a forecaster fitted on SGD runs has learned SGD's dynamics; the closed-form baselines learn
  nothing from their runs and are exempt from this check and the next two),
* ``record_every`` (horizons count records of the training runs),
* the parameter layout (tensor names and shapes; ``allow_other_layout=True`` forecasts another network, as
  the generalize stage does, except with a model built for one network size such as GFM's joint field),
* the optimizer state and hyper-parameters the model reads (GFM's optimizer-aware heads).

Time: the time axis of a run is the model's own (t = j * record_every / steps with the training runs'
``steps``), so a run recorded only up to its prefix is forecast exactly like a full one.

What the model was fitted on comes from the model itself (GFM saves its optimizer, record_every, steps and
parameter count), from ``summary.json`` beside the per-seed directories (the store key
``<task>-<optimizer>``), and from the training store's attributes (the layout): the store passed as
``store=``, or, for a model directory of the pipeline (``<data>/models/<task>/<optimizer>/<model>/<seed>``),
``<data>/trajectories/<task>/<optimizer>.zarr`` when it is there.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfm.forecasters.base import Forecaster, ForecasterError, ModelFileError, Trajectories, load_forecaster
from gfm.layout import ParamSpec, layout_from_shapes
from gfm.optimizers import HYPER_DEFAULTS, HYPER_NAMES, STATE_NAMES

__all__ = ["TrainedOn", "TrainedForecaster", "Forecast", "RunMismatchError", "load", "forecast_run",
           "prefix_from_arrays", "layout_of"]


class RunMismatchError(ForecasterError):
    """The run to forecast does not match what the model was fitted on (the message names each mismatch)."""


@dataclass(frozen=True)
class TrainedOn:
    """What a saved model was fitted on, as far as it is known (None: unknown).

    Attributes:
        store: the training store's key ``<task>-<optimizer>``.
        optimizer: optimizer name of the training runs.
        record_every: optimizer steps between records of the training runs.
        steps: optimizer steps of a whole training run (the time axis).
        n_params: parameters of the training runs' network.
        layout: the training runs' parameter layout.
        sources: where these facts were read, for messages.
    """

    store: str | None = None
    optimizer: str | None = None
    record_every: int | None = None
    steps: int | None = None
    n_params: int | None = None
    layout: tuple[ParamSpec, ...] | None = None
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Forecast:
    """Forecast weights of some runs.

    Attributes:
        weights: (run, horizon, param) float32.
        horizons: record index of each horizon; optimizer step = horizon * record_every (:attr:`steps`).
        record_every: optimizer steps between records.
        layout: the runs' parameter layout when known (needed by :meth:`state_dict` / :meth:`load_into`).
        run_ids: the runs' positions in their store, when read from one.
        model: the forecaster's kind.
    """

    weights: np.ndarray
    horizons: tuple[int, ...]
    record_every: int
    layout: tuple[ParamSpec, ...] | None
    run_ids: np.ndarray | None
    model: str

    @property
    def steps(self) -> tuple[int, ...]:
        """Optimizer step of each horizon."""
        return tuple(h * self.record_every for h in self.horizons)

    def at(self, horizon: int) -> np.ndarray:
        """Forecast weights at record ``horizon``: (run, param)."""
        if horizon not in self.horizons:
            raise ForecasterError(f"horizon {horizon} was not forecast; forecast horizons: {list(self.horizons)}")
        return self.weights[:, self.horizons.index(horizon)]

    def state_dict(self, run: int = 0, horizon: int | None = None) -> dict[str, torch.Tensor]:
        """The forecast weights of ``run`` at ``horizon`` (default: the last) as ``{tensor name: tensor}``."""
        if self.layout is None:
            raise ForecasterError("the run's parameter layout is unknown; give prefix_from_arrays a layout= "
                                  "(or forecast a store, which holds it) to get named tensors")
        if not 0 <= run < self.weights.shape[0]:
            raise ForecasterError(f"run {run} outside the forecast runs 0..{self.weights.shape[0] - 1}")
        flat = torch.from_numpy(self.at(self.horizons[-1] if horizon is None else horizon)[run].copy())
        return {s.name: flat[s.offset : s.offset + s.size].reshape(s.shape).clone() for s in self.layout}

    def load_into(self, module: torch.nn.Module, run: int = 0, horizon: int | None = None) -> torch.nn.Module:
        """Load the forecast weights of ``run`` at ``horizon`` (default: the last) into ``module`` (strict)."""
        state = self.state_dict(run, horizon)
        with torch.no_grad():
            params = dict(module.named_parameters())
            if sorted(params) != sorted(state):
                raise ForecasterError(f"{type(module).__name__} has parameters {sorted(params)[:6]}; the forecast "
                                      f"holds {sorted(state)[:6]}")
            for name, value in state.items():
                if tuple(params[name].shape) != tuple(value.shape):
                    raise ForecasterError(f"{name}: the module's shape is {list(params[name].shape)}, the "
                                          f"forecast's {list(value.shape)}")
                params[name].copy_(value)
        return module


def layout_of(layout: Any, n_params: int | None = None) -> tuple[ParamSpec, ...]:
    """A parameter layout from a ``torch.nn.Module`` (``named_parameters`` order, as ``gfm.record`` writes),
    a sequence of ``(name, shape)`` pairs or of :class:`~gfm.layout.ParamSpec`.

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
        optimizer: the update rule's name, a key of ``gfm.optimizers.STATE_NAMES`` (``sgd``, ``momentum``,
            ``nesterov``, ``adam``, ``adamw``, ``rmsprop``).
        lr: learning rate of the update leaving each record: a number, (record,) or (run, record).
        hyper: the other hyper-parameters (a number or one per run); missing ones take PyTorch's defaults
            (``gfm.optimizers.HYPER_DEFAULTS``), ``lr`` defaults to the lr at record 0.
        states: optimizer state arrays by name (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``,
            ``square_avg``), shaped like ``weights``: what ``torch.optim`` holds after each record's updates.
        record_every: optimizer steps between records.
        layout: a ``torch.nn.Module`` or a list of ``(name, shape)``: lets the forecast be checked against the
            model's training layout and loaded back into a network.

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
    return Trajectories(weights=torch.from_numpy(w.copy()), lr=lr_t, optimizer=optimizer,
                        record_every=record_every, steps=(T - 1) * record_every, states=state_t, hyper=hp,
                        layout=specs)


# --- what the model was fitted on --------------------------------------------------------------------------
def _summary_store_key(model_dir: Path) -> str | None:
    from gfm.inputs import read_json

    path = model_dir.parent / "summary.json"
    if not path.is_file():
        return None
    meta = read_json(path, root=model_dir.parent, error=ModelFileError)
    key = meta.get("store") if isinstance(meta, dict) else None
    return key if isinstance(key, str) and "-" in key else None


def _pipeline_store(model_dir: Path, key: str | None) -> Path | None:
    """``<data>/trajectories/<task>/<optimizer>.zarr`` for ``<data>/models/<task>/<optimizer>/<model>/<seed>``,
    when that store key is the one summary.json names and the store is there."""
    parents = model_dir.resolve().parents
    if key is None or len(parents) < 5 or parents[3].name != "models":
        return None
    task, opt = parents[2].name, parents[1].name
    path = parents[4] / "trajectories" / task / f"{opt}.zarr"
    return path if key == f"{task}-{opt}" and path.exists() else None


_CHECKED_FACTS = ("optimizer", "record_every", "steps", "n_params")


def _trained_on(fc: Forecaster, model_dir: Path, store: str | Path | None) -> TrainedOn:
    """Facts from summary.json, the training store and the model itself; sources that contradict each other
    (a store regenerated after training, or the wrong ``store=``) are refused, not silently preferred."""
    from gfm.store import open_trajectories

    found: list[tuple[str, dict[str, Any]]] = []
    key = _summary_store_key(model_dir)
    if key is not None:
        found.append((str(model_dir.parent / "summary.json"), {"store": key, "optimizer": key.rsplit("-", 1)[1]}))
    path = Path(store) if store is not None else _pipeline_store(model_dir, key)
    if path is not None:
        ts = open_trajectories(path)
        found.append((str(path), {"store": ts.attrs.get("store"), "optimizer": ts.optimizer["name"],
                                  "record_every": ts.record_every, "steps": int(ts.attrs["task"]["steps"]),
                                  "n_params": ts.n_params, "layout": ts.layout}))
    own = {k: fc.extra[k] for k in _CHECKED_FACTS if k in fc.extra}
    if own:
        found.append((str(model_dir / "config.json"), own))
    facts: dict[str, Any] = {}
    where: dict[str, str] = {}
    clash = []
    for source, values in found:
        for k, v in values.items():
            if k in _CHECKED_FACTS and k in facts and facts[k] != v:
                clash.append(f"{k} {facts[k]!r} in {where[k]}, {v!r} in {source}")
            facts[k], where[k] = v, source
    if clash:
        raise ModelFileError(f"{model_dir}: what the model was trained on is contradicted ({'; '.join(clash)}): a "
                             "store that is not the one it was fitted on; pass store= the right one or re-run train")
    return TrainedOn(**facts, sources=tuple(source for source, _ in found))


def _model_directory(model_dir: str | Path, seed: int | str | None) -> Path:
    d = Path(model_dir)
    if seed is not None:
        return d / str(seed)
    if not (d / "config.json").exists() and (d / "summary.json").exists():
        seeds = sorted((p.name for p in d.iterdir() if (p / "config.json").is_file()), key=lambda s: (len(s), s))
        raise ModelFileError(f"{d}: a model of the train stage holds one fit per dataset seed "
                             f"({', '.join(seeds) or 'none found'}); pass seed= one of them or the seed's directory")
    return d


class TrainedForecaster:
    """A saved model plus what it was fitted on; made by :func:`load` (``gfm.load_forecaster``).

    Attributes:
        forecaster: the loaded :class:`~gfm.forecasters.base.Forecaster`.
        directory: the model directory.
        trained_on: :class:`TrainedOn`.
    """

    def __init__(self, forecaster: Forecaster, directory: Path, trained_on: TrainedOn):
        self.forecaster, self.directory, self.trained_on = forecaster, directory, trained_on

    @property
    def kind(self) -> str:
        return self.forecaster.name

    @property
    def prefix_end(self) -> int:
        """K: the model reads records 0..K of a run."""
        return self.forecaster.prefix_end

    @property
    def horizons(self) -> tuple[int, ...]:
        """The record indices the model forecasts."""
        return self.forecaster.horizons

    def __repr__(self) -> str:
        t = self.trained_on
        return (f"TrainedForecaster({self.kind!r}, {str(self.directory)!r}, prefix_end={self.prefix_end}, "
                f"horizons={list(self.horizons)}, optimizer={t.optimizer!r}, n_params={t.n_params})")

    # --- checks --------------------------------------------------------------------------------------
    def mismatches(self, run: Trajectories, *, allow_other_layout: bool = False) -> list[str]:
        """What about ``run`` does not match the model's training runs, one line each (empty: it fits)."""
        fc, t = self.forecaster, self.trained_on
        out = []
        if not fc.closed_form:
            if t.optimizer is not None and run.optimizer != t.optimizer:
                out.append(f"optimizer: the run uses {run.optimizer}, the model was fitted on {t.optimizer} runs")
            if t.record_every is not None and run.record_every != t.record_every:
                out.append(f"record_every: the run is recorded every {run.record_every} steps, the model's training "
                           f"runs every {t.record_every} (its horizons count those records)")
            out += self._layout_mismatches(run, allow_other_layout)
        missing_states = [s for s in fc.states_needed() if s not in run.states]
        if missing_states:
            out.append(f"optimizer state: the model reads {', '.join(missing_states)} at the prefix end; the run "
                       "has none (record it with gfm.record, or pass states= to prefix_from_arrays)")
        missing_hyper = [h for h in fc.hyper_needed() if h not in run.hyper]
        if missing_hyper:
            out.append(f"hyper-parameters: the model reads {', '.join(missing_hyper)}; the run has "
                       f"{', '.join(sorted(run.hyper)) or 'none'}")
        return out

    def _layout_mismatches(self, run: Trajectories, allow_other_layout: bool) -> list[str]:
        t, fixed = self.trained_on, self.forecaster.fixed_n_params()
        if fixed is not None and run.n_params != fixed:
            return [f"parameters: the run has {run.n_params}, and this {self.kind} model forecasts networks of "
                    f"exactly {fixed} (its field is built for one size)"]
        if allow_other_layout:
            return []
        if t.layout is not None and run.layout is not None:
            mine = [(s.name, tuple(s.shape)) for s in run.layout]
            theirs = [(s.name, tuple(s.shape)) for s in t.layout]
            if mine != theirs:
                diff = next(((a, b) for a, b in zip(mine, theirs) if a != b), None)
                where = (f"first difference: {diff[0][0]} {list(diff[0][1])} in the run, {diff[1][0]} "
                         f"{list(diff[1][1])} in the training runs" if diff else
                         f"the run has {len(mine)} tensors, the training runs {len(theirs)}")
                return [f"layout: the run's network is not the one the model was fitted on ({where}); pass "
                        "allow_other_layout=True to forecast another network anyway"]
            return []
        if t.n_params is not None and run.n_params != t.n_params:
            return [f"parameters: the run has {run.n_params}, the model's training runs {t.n_params}; pass "
                    "allow_other_layout=True to forecast another network anyway"]
        return []

    # --- forecasting ---------------------------------------------------------------------------------
    def _as_trajectories(self, run: Any, runs: Any) -> tuple[list[Trajectories], str]:
        from gfm.store import TrajectoryStore, open_trajectories

        if isinstance(run, (str, Path)):
            run = open_trajectories(run)
        if isinstance(run, TrajectoryStore):
            ids = np.arange(run.n_runs) if runs is None else np.asarray(runs, dtype=np.int64).reshape(-1)
            if ids.size == 0 or ids.min() < 0 or ids.max() >= run.n_runs:
                raise ForecasterError(f"runs: expected store positions 0..{run.n_runs - 1}; got {ids.tolist()[:8]}")
            block = int(run.attrs.get("block_runs") or len(ids))  # bounded memory, as the forecast stage reads
            records = min(run.n_records, self.prefix_end + 1)
            return [Trajectories.from_store(run, ids[s : s + block], records=records)
                    for s in range(0, len(ids), block)], str(run.path)
        if isinstance(run, Trajectories):
            return [run if runs is None else run.select(runs)], "the run"
        if isinstance(run, np.ndarray | torch.Tensor):
            raise ForecasterError("a bare array does not say its optimizer, lr or state: wrap it with "
                                  "gfm.prefix_from_arrays(weights, optimizer=..., lr=...) first")
        raise ForecasterError(f"run: got {type(run).__name__}; expected a trajectory store (path or "
                              "gfm.open_trajectories), or Trajectories (gfm.prefix_from_arrays)")

    def _on_model_time(self, run: Trajectories) -> Trajectories:
        steps = self.trained_on.steps
        if steps is None:
            if not self.forecaster.closed_form:
                raise ForecasterError(f"{self.directory}: the length of the runs this {self.kind} model was fitted "
                                      "on is unknown (no training store found beside it); pass store= the "
                                      "trajectory store it was trained on to gfm.load_forecaster")
            return run
        return run if run.steps == steps else dataclasses.replace(run, steps=steps)

    @torch.no_grad()
    def forecast(self, run: Any, horizons: int | Sequence[int] | None = None, *, runs: Any = None,
                 allow_other_layout: bool = False) -> Forecast:
        """Forecast the weights of ``run`` at ``horizons`` from its records 0..prefix_end.

        Args:
            run: a trajectory store (its path or ``gfm.open_trajectories(...)``, e.g. written by ``gfm.record``)
                or :class:`~gfm.forecasters.base.Trajectories` (``gfm.prefix_from_arrays``). Records past the
                prefix are not read.
            horizons: record indices among the fitted :attr:`horizons` (default: all of them).
            runs: which runs of the store (positions; default: all).
            allow_other_layout: forecast a network whose layout differs from the training runs' (a transfer,
                as in the generalize stage); the optimizer and record spacing must still match.

        Returns:
            :class:`Forecast`.

        Raises:
            RunMismatchError: the run does not match what the model was fitted on (each mismatch named).
            ForecasterError: a prefix shorter than the model reads, horizons it was not fitted for, bad input.
        """
        hs = tuple(self.horizons) if horizons is None else (
            (int(horizons),) if isinstance(horizons, int | np.integer) else tuple(int(h) for h in horizons))
        parts, label = self._as_trajectories(run, runs)
        problems = self.mismatches(parts[0], allow_other_layout=allow_other_layout)
        if problems:
            fitted = f" (fitted on store {self.trained_on.store})" if self.trained_on.store else ""
            raise RunMismatchError(f"{label} does not match the {self.kind} model {self.directory}{fitted}:\n  - "
                                   + "\n  - ".join(problems))
        preds = [self.forecaster.forecast(self._on_model_time(p), horizons=hs).cpu().numpy() for p in parts]
        weights = np.concatenate(preds).astype(np.float32)
        bad = ~np.isfinite(weights.reshape(len(weights), -1)).all(axis=1)
        if bad.any():
            warnings.warn(f"{self.kind} forecasts non-finite weights for run(s) {np.flatnonzero(bad)[:5].tolist()}",
                          stacklevel=2)
        ids = [p.run_ids for p in parts]
        return Forecast(weights=weights, horizons=hs, record_every=parts[0].record_every, layout=parts[0].layout,
                        run_ids=None if any(i is None for i in ids) else np.concatenate(ids), model=self.kind)


def load(model_dir: str | Path, *, seed: int | str | None = None, store: str | Path | None = None) -> TrainedForecaster:
    """Load a model written by the train stage, with what it was fitted on.

    Args:
        model_dir: one fit, ``data/models/<task>/<optimizer>/<model>/<seed>/`` (``config.json`` +
            ``weights.safetensors``), or the model's directory ``data/models/<task>/<optimizer>/<model>`` with
            ``seed``.
        seed: the dataset seed whose fit to load, when ``model_dir`` is the model's directory.
        store: the trajectory store the model was trained on (default: the pipeline's store beside the model,
            when there); its layout and run length are what runs are checked against.

    Raises:
        ModelFileError: missing, malformed or unsafe model files, no seed given for a per-seed directory, or a
            training store that contradicts the model.
        ForecasterError: an unknown kind or invalid config.
    """
    directory = _model_directory(model_dir, seed)
    fc = load_forecaster(directory)
    return TrainedForecaster(fc, directory, _trained_on(fc, directory, store))


def forecast_run(model_dir: str | Path, run: Any, horizons: int | Sequence[int] | None = None, *,
                 seed: int | str | None = None, store: str | Path | None = None, runs: Any = None,
                 allow_other_layout: bool = False) -> Forecast:
    """:func:`load` then :meth:`TrainedForecaster.forecast` in one call (arguments as there)."""
    return load(model_dir, seed=seed, store=store).forecast(run, horizons, runs=runs,
                                                            allow_other_layout=allow_other_layout)

