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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfm.core.layout import ParamSpec
from gfm.forecasters.base import Forecaster, ForecasterError, Trajectories, integers
from gfm.forecasters.model_files import read_model
from gfm.forecasters.run_arrays import layout_of, prefix_from_arrays
from gfm.forecasters.trained_on import TrainedOn, model_directory, read_trained_on

__all__ = ["TrainedOn", "TrainedForecaster", "Forecast", "RunMismatchError", "load", "forecast_run",
           "prefix_from_arrays", "layout_of"]


class RunMismatchError(ForecasterError):
    """The run to forecast does not match what the model was fitted on (the message names each mismatch)."""


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
        from gfm.store.reader import TrajectoryStore, open_trajectories

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
            if runs is not None and (not len(runs) or min(runs) < 0 or max(runs) >= run.n_runs):
                raise ForecasterError(f"runs: expected positions 0..{run.n_runs - 1}; got {list(runs)[:8]}")
            return [run if runs is None else run.select(list(runs))], "the run"
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
        hs = tuple(self.horizons) if horizons is None else integers(horizons, "horizons")
        if not hs:
            raise ForecasterError(f"horizons: got none; expected record indices among the fitted {list(self.horizons)} "
                                  "(or leave horizons out for all of them)")
        parts, label = self._as_trajectories(run, None if runs is None else integers(runs, "runs"))
        problems = self.mismatches(parts[0], allow_other_layout=allow_other_layout)
        if problems:
            fitted = f" (fitted on store {self.trained_on.store})" if self.trained_on.store else ""
            raise RunMismatchError(f"{label} does not match the {self.kind} model {self.directory}{fitted}:\n  - "
                                   + "\n  - ".join(problems))
        for p in parts:  # a forecast from a NaN prefix is NaN or, worse, a number: refused, as the stage does
            _refuse_nonfinite(p, self.prefix_end, label)
        preds = [self.forecaster.forecast(self._on_model_time(p), horizons=hs).cpu().numpy() for p in parts]
        weights = np.concatenate(preds).astype(np.float32)
        bad = ~np.isfinite(weights.reshape(len(weights), -1)).all(axis=1)
        if bad.any():  # the forecast stage refuses to write these; the API does not return them either
            raise ForecasterError(f"{label}: the {self.kind} model forecasts non-finite weights (NaN or Inf) for "
                                  f"{_run_names(parts, np.flatnonzero(bad))}; check the model with gfm check "
                                  f"{self.directory}")
        ids = [p.run_ids for p in parts]
        return Forecast(weights=weights, horizons=hs, record_every=parts[0].record_every, layout=parts[0].layout,
                        run_ids=None if any(i is None for i in ids) else np.concatenate(ids), model=self.kind)


def _run_names(parts: list[Trajectories], positions: np.ndarray, limit: int = 5) -> str:
    """Runs at ``positions`` of the concatenated ``parts``, by store position when read from a store."""
    ids = [p.run_ids for p in parts]
    names = np.concatenate(ids)[positions] if all(i is not None for i in ids) else positions
    shown = ", ".join(str(int(r)) for r in names[:limit]) + (", ..." if len(names) > limit else "")
    return f"run{'s' if len(names) > 1 else ''} {shown}"


def _refuse_nonfinite(part: Trajectories, prefix_end: int, label: str) -> None:
    """Refuse a prefix (records 0..prefix_end of weights, lr and optimizer state) holding NaN or Inf."""
    bad = part.nonfinite_runs(prefix_end)
    if bad.size:
        verb = "holds" if bad.size == 1 else "hold"
        raise ForecasterError(f"{label}: {_run_names([part], bad)} {verb} non-finite values "
                              f"(NaN or Inf) in records 0..{prefix_end}, which the model reads; a diverged run has "
                              "no forecast (leave it out with runs=)")


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
    directory = model_directory(model_dir, seed)
    fc = read_model(directory)
    return TrainedForecaster(fc, directory, read_trained_on(fc, directory, store))


def forecast_run(model_dir: str | Path, run: Any, horizons: int | Sequence[int] | None = None, *,
                 seed: int | str | None = None, store: str | Path | None = None, runs: Any = None,
                 allow_other_layout: bool = False) -> Forecast:
    """:func:`load` then :meth:`TrainedForecaster.forecast` in one call (arguments as there)."""
    return load(model_dir, seed=seed, store=store).forecast(run, horizons, runs=runs,
                                                            allow_other_layout=allow_other_layout)

