"""Stage ``forecast``: forecast every test run of a store from its prefix with every trained model.

For each model and dataset seed, the model fitted on that seed (``<models>/<model>/<seed>/``) sees records
0..prefix_end of the seed's test runs and predicts the weights at every horizon. Diverged test runs are
skipped and counted. All models of a store are forecast in one process (forecasting takes milliseconds; a
process start-up with torch takes seconds). Output, one small Zarr v3 store per model, the whole directory
written under a temporary name and renamed when complete::

    data/forecasts/<task>/<optimizer>/<model>.zarr
        weights            (run, horizon, param) float32   forecast weights
        runs/store_index   (run,) int64                    position of the run in the trajectory store
        runs/dataset_seed  (run,) int64
        samples            (run, sample, param) float32    only for models that sample (``n_samples() > 0``,
                                                          e.g. gfm_function): draws of the final-horizon weights
        attrs: schema_version, complete, kind="forecast", store, model, prefix_end, horizons, skipped_diverged,
               samples (draws per run; 0 = point forecasts only), chunks (chunk files per array)

Every chunk of every array is written, even one equal to the fill value, and the float arrays are filled with
NaN: a chunk file that goes missing reads as NaN, never as a number, and the ``chunks`` attribute records how
many files each array holds. The stage checks the store with ``gfm check``'s rules
(:func:`gfm.forecast_check.verify_forecast_store`) before it is declared complete, and every reader
(:func:`open_forecasts`) refuses what those rules refuse, naming the array and chunk.

Draws are seeded by ``params.seed`` and each run's store index, so they do not depend on block boundaries.

Usage::

    gfm forecast --params params.yaml --store mlp_regression-sgd \\
        --in data/trajectories/mlp_regression/sgd.zarr --split data/splits/mlp_regression/sgd.json \\
        --models data/models/mlp_regression/sgd --out data/forecasts/mlp_regression/sgd
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from gfm.config import Params
from gfm.errors import GFMError, StoreIncompleteError, StoreNotFoundError, StoreSchemaError
from gfm.forecast_check import chunk_record, verify_forecast_store
from gfm.forecasters import Trajectories, load_forecaster
from gfm.inputs import tree_problems
from gfm.outputs import FORECASTS, discard_temp, open_temp_dir, replace_output
from gfm.split import read_split  # re-exported: evaluate and generalize import it from here
from gfm.store import SCHEMA_VERSION, open_trajectories

__all__ = ["run", "forecast_model", "open_forecasts", "write_forecast_store", "ForecastStore", "read_split",
           "test_runs"]


def test_runs(split: dict[str, dict[str, list[int]]]) -> tuple[dict[str, list[int]], int]:
    """Non-diverged test runs per dataset seed, and how many diverged test runs were left out."""
    out, skipped = {}, 0
    for seed, entry in split.items():
        bad = set(entry["diverged"])
        out[seed] = [r for r in entry["test"] if r not in bad]
        skipped += len(entry["test"]) - len(out[seed])
    return out, skipped


@dataclass
class ForecastStore:
    """Read view of a forecast store."""

    path: Path
    weights: np.ndarray  # (run, horizon, param)
    store_index: np.ndarray  # (run,)
    dataset_seed: np.ndarray  # (run,)
    attrs: dict
    samples: np.ndarray | None = None  # (run, sample, param) draws of the final-horizon weights

    @property
    def horizons(self) -> list[int]:
        return list(self.attrs["horizons"])


def open_forecasts(path: str | Path) -> ForecastStore:
    """Open a finished forecast store (refuses missing, unfinished or foreign ones)."""
    path = Path(path)
    if not path.exists():
        raise StoreNotFoundError(f"{path}: no forecast store here")
    unsafe, _ = tree_problems(path)  # links leaving it, FIFOs, devices: refused unread (gfm.inputs)
    if unsafe:
        raise StoreSchemaError(f"{path}: {unsafe[0]}")
    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - anything unreadable is refused with one line
        raise StoreSchemaError(f"{path}: not a readable Zarr group ({type(exc).__name__})") from None
    attrs = dict(g.attrs)
    if attrs.get("kind") != "forecast" or attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreSchemaError(f"{path}: not a forecast store of schema {SCHEMA_VERSION}")
    if attrs.get("complete") is not True:
        raise StoreIncompleteError(f"{path}: forecast store is not complete; re-run the forecast stage")
    verify_forecast_store(path)  # gfm check's rules: every chunk there, counted, decoded and finite
    samples = g["samples"][:] if int(attrs.get("samples") or 0) else None
    return ForecastStore(path, g["weights"][:], g["runs/store_index"][:], g["runs/dataset_seed"][:], attrs, samples)


def forecast_model(params: Params, *, store_key: str, model: str, ts, runs_by_seed: dict[str, list[int]],
                   skipped: int, models: Path, out: Path) -> dict:
    """Forecast the test runs with the per-seed fits under ``models`` and write the store ``out``."""
    fc_cfg = params.forecast
    horizons = list(fc_cfg.horizons)
    preds, draws, index, seeds = [], [], [], []
    n_draws: int | None = None
    for seed in sorted(runs_by_seed, key=int):
        runs = runs_by_seed[seed]
        if not runs:
            continue
        model_dir = models / str(seed)
        fc = load_forecaster(model_dir)
        if fc.prefix_end != fc_cfg.prefix_end or not set(horizons) <= set(fc.horizons):
            raise GFMError(f"{model_dir}: fitted for prefix_end {fc.prefix_end} and horizons {list(fc.horizons)}, "
                           f"but params ask for {fc_cfg.prefix_end} and {horizons}; re-run the train stage")
        # a block of runs at a time: memory holds one block's prefixes, whatever the store's size
        block = int(ts.attrs["block_runs"])
        for start in range(0, len(runs), block):
            prefix = Trajectories.from_store(ts, runs[start : start + block], records=fc_cfg.prefix_end + 1)
            nan_runs = prefix.nonfinite_runs(fc_cfg.prefix_end)
            if nan_runs.size:  # a damaged store (a missing chunk reads as NaN), not the model: say so
                first = [int(r) for r in np.asarray(runs[start : start + block])[nan_runs][:5]]
                which = f"runs {', '.join(map(str, first))} of dataset seed {seed} hold" if nan_runs.size > 1 else \
                    f"run {first[0]} of dataset seed {seed} holds"
                raise GFMError(f"{ts.path}: store {which} non-finite values in records 0..{fc_cfg.prefix_end} "
                               f"(not flagged diverged); nothing was written (check the store with "
                               f"`gfm check {ts.path}`)")
            with torch.no_grad():
                pred = fc.forecast(prefix, horizons=horizons).cpu().numpy()
            bad = ~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)
            if bad.any():  # never written as a complete forecast: `gfm check` and evaluate would have to guess
                first = [int(r) for r in np.asarray(runs[start : start + block])[bad][:5]]
                raise GFMError(f"{model_dir}: model {model} forecasts non-finite weights (NaN or Inf) for store "
                               f"run{'s' if len(first) > 1 else ''} {', '.join(map(str, first))} of dataset seed "
                               f"{seed}; nothing was written (check the model with `gfm check {model_dir}`)")
            preds.append(pred)
            n = fc.n_samples()
            if n_draws not in (None, n):
                raise GFMError(f"{model_dir}: draws {n} per run, but the other seeds' fits of {model} give {n_draws}")
            n_draws = n
            if n:
                draws.append(_draws(fc, prefix, horizons[-1], n, params.seed, model_dir, runs[start : start + block]))
        index += runs
        seeds += [int(seed)] * len(runs)
    weights = np.concatenate(preds).astype(np.float32)
    summary = {"kind": "forecast", "schema_version": SCHEMA_VERSION, "store": store_key, "model": model,
               "prefix_end": fc_cfg.prefix_end, "horizons": horizons, "skipped_diverged": skipped,
               "n_runs": len(weights), "samples": int(n_draws or 0)}
    write_forecast_store(out, weights=weights, store_index=np.asarray(index, np.int64),
                         dataset_seed=np.asarray(seeds, np.int64),
                         samples=np.concatenate(draws).astype(np.float32) if n_draws else None, attrs=summary)
    return summary


def write_forecast_store(out: Path, *, weights: np.ndarray, store_index: np.ndarray, dataset_seed: np.ndarray,
                         samples: np.ndarray | None, attrs: dict) -> None:
    """Write the forecast store ``out`` (layout in the module docstring; ``attrs`` without ``chunks`` and
    ``complete``, which are added here), then check it with ``gfm check``'s rules: a store they refuse raises
    and is never flagged complete. The forecast stage writes under a temporary name, so a refused store is
    never renamed into place."""
    g = zarr.open_group(str(out), mode="w", zarr_format=3)
    R, H, P = weights.shape
    _write_array(g, "weights", weights.astype(np.float32), (R, 1, P), ("run", "horizon", "param"))
    _write_array(g, "runs/store_index", store_index.astype(np.int64), (R,), None)
    _write_array(g, "runs/dataset_seed", dataset_seed.astype(np.int64), (R,), None)
    if samples is not None:
        _write_array(g, "samples", samples.astype(np.float32), samples.shape, ("run", "sample", "param"))
    g.attrs.update({**attrs, "chunks": chunk_record(g), "complete": True})
    verify_forecast_store(out)


def _write_array(g: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...],
                 dims: tuple[str, ...] | None) -> None:
    """Write ``data`` as array ``name`` with every chunk stored (even one equal to the fill value, which zarr
    skips by default), so "a file per chunk of the grid" is what complete means; float arrays are filled
    with NaN, so a chunk that goes missing reads as NaN, not as forecast zeros."""
    fill = np.nan if data.dtype.kind == "f" else 0
    g.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=fill,
                   dimension_names=dims, config={"write_empty_chunks": True})[:] = data


def _draws(fc, prefix: Trajectories, horizon: int, n: int, seed: int, model_dir: Path, runs) -> np.ndarray:
    """``n`` draws of the weights at ``horizon`` for each run of ``prefix``; non-finite draws are refused like
    non-finite point forecasts."""
    with torch.no_grad():
        out = fc.sample_final(prefix, horizon=horizon, n=n, seed=seed).cpu().numpy()
    bad = ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        first = [int(r) for r in np.asarray(runs)[bad][:5]]
        raise GFMError(f"{model_dir}: non-finite sampled weights (NaN or Inf) for store run(s) "
                       f"{', '.join(map(str, first))}; nothing was written")
    return out


def run(params: Params, *, store_key: str, store: Path, split: Path, models: Path, out: Path,
        names: list[str] | None = None) -> dict[str, dict]:
    """Forecast the test runs of ``store`` with every model in ``names`` (default: the store's models), reading
    ``models/<name>/<seed>/`` and writing ``out/<name>.zarr``; ``out`` appears only when all are done."""
    params.lookup_store(store_key)
    names = params.store_models(store_key) if names is None else names
    for name in names:  # a name becomes a path (<models>/<name>, <out>/<name>.zarr): only declared models
        if name not in params.models:
            raise GFMError(f"--model: got {name!r}; expected one of {', '.join(sorted(params.models)) or '(none)'}")
    ts = open_trajectories(store)
    runs_by_seed, skipped = test_runs(read_split(split, store=ts))
    horizons = list(params.forecast.horizons)
    if horizons[-1] >= ts.n_records:
        raise GFMError(f"forecast.horizons: {horizons[-1]} is beyond the last recorded step of {store} "
                       f"({ts.n_records - 1})")
    if not any(runs_by_seed.values()):
        raise GFMError(f"{split}: no test runs to forecast (all diverged or an empty test split)")
    tmp = open_temp_dir(out, FORECASTS, suffix=".partial")  # refuses an --out that is not earlier forecasts
    try:
        summaries = {name: forecast_model(params, store_key=store_key, model=name, ts=ts,
                                          runs_by_seed=runs_by_seed, skipped=skipped, models=models / name,
                                          out=tmp / f"{name}.zarr")
                     for name in names}
    except BaseException:
        discard_temp(tmp)  # a failed job leaves nothing beside the output
        raise
    replace_output(tmp, out, FORECASTS)
    return summaries
