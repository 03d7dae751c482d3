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
               samples (draws per run; 0 = point forecasts only), chunks (chunk files per array),
               nonfinite_draw_runs (with draws: runs with any non-finite draw)
    data/forecasts/<task>/<optimizer>/<model>.refused.json      instead, for a model that refused the store

Models do not veto each other: a model that refuses the store (``StoreNotSupported`` at train or forecast time,
gfm.artifacts.refusals) is recorded as refused and the others are forecast. Point forecasts and draws do not either: a
point forecast must be finite (a non-finite one fails the stage, naming the runs), while non-finite draws are
kept as they are and counted in ``nonfinite_draw_runs``; evaluate scores the draws of the other runs.

Every chunk of every array is written, even one equal to the fill value, and the float arrays are filled with
NaN: a chunk file that goes missing reads as NaN, never as a number, and the ``chunks`` attribute records how
many files each array holds. The stage checks the store with ``gfm check``'s rules
(:func:`gfm.stages.forecast_check.verify_forecast_store`) before it is declared complete, and every reader
(:func:`open_forecasts`) refuses what those rules refuse, naming the array and chunk.

The test runs' prefixes are read once, in one call when they fit ``PREFIX_BYTES``, and serve every model.
Draws are seeded by ``params.seed`` and each run's store index, so they do not depend on how runs are batched.

Usage::

    gfm forecast --params params.yaml --store mlp_regression-sgd \\
        --in data/trajectories/mlp_regression/sgd.zarr --split data/splits/mlp_regression/sgd.json \\
        --models data/models/mlp_regression/sgd --out data/forecasts/mlp_regression/sgd
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from gfm.artifacts.inputs import tree_problems
from gfm.artifacts.outputs import FORECASTS, discard_temp, open_temp_dir, replace_output
from gfm.artifacts.refusals import (
    REFUSED_FILE,
    forecast_refusal_path,
    read_refusal,
    refusal_reason,
    write_refusal,
)
from gfm.base.errors import GFMError, StoreIncompleteError, StoreNotFoundError, StoreSchemaError
from gfm.config import Params
from gfm.forecasters import StoreNotSupported, Trajectories, read_model
from gfm.stages.forecast_check import chunk_record, verify_forecast_store
from gfm.stages.split import read_split  # re-exported: evaluate and generalize import it from here
from gfm.store.arrays import SCHEMA_VERSION
from gfm.store.reader import open_trajectories

__all__ = ["run", "forecast_model", "open_forecasts", "write_forecast_store", "ForecastStore", "read_split",
           "test_runs", "Prefixes", "nonfinite_draw_runs", "PREFIX_BYTES"]


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
    unsafe, _ = tree_problems(path)  # links leaving it, FIFOs, devices: refused unread (gfm.artifacts.inputs)
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


PREFIX_BYTES = 64 << 20  # test prefixes held in memory at once (weights, lr, optimizer state of records 0..k)


@dataclass
class Prefixes:
    """The prefixes (records 0..prefix_end) of a store's non-diverged test runs, read once for every model.

    All runs are read in one call when their prefixes fit :data:`PREFIX_BYTES` (a prefix is small: records
    0..k of one run), and then kept for every model of the store; otherwise in batches of whole runs that do
    fit, re-read per model. A prefix never contains a horizon record, so nothing a model predicts is read.
    Reading one store write block at a time made a call per test run of a recorded store (one run per block),
    each call paying zarr's per-read overhead."""

    ts: object
    runs: list[int]  # store positions, dataset seed by dataset seed (seeds in increasing order)
    seeds: list[str]  # the dataset seed of each run
    records: int
    budget: int | None = None  # bytes per read; None: PREFIX_BYTES

    @classmethod
    def of(cls, ts, runs_by_seed: dict[str, list[int]], prefix_end: int, budget: int | None = None) -> Prefixes:
        order = sorted(runs_by_seed, key=int)
        return cls(ts, [r for s in order for r in runs_by_seed[s]], [s for s in order for _ in runs_by_seed[s]],
                   prefix_end + 1, budget)

    def __post_init__(self) -> None:
        self._cached: Trajectories | None = None

    @property
    def run_bytes(self) -> int:
        """Bytes of one run's prefix: weights, optimizer state and lr of each record, its hyper-parameters."""
        ts = self.ts
        return self.records * (4 * ts.n_params * (1 + len(ts.state_names)) + 4) + 4 * len(ts.hyper)

    @property
    def batch_runs(self) -> int:
        """Runs per read: as many as fit the byte budget (at least one)."""
        return max(1, (PREFIX_BYTES if self.budget is None else self.budget) // self.run_bytes)

    def batches(self):
        """``(positions, prefix)`` per batch: ``positions`` a slice of :attr:`runs` / :attr:`seeds`."""
        size = self.batch_runs
        if size >= len(self.runs):
            if self._cached is None:
                self._cached = self._read(slice(0, len(self.runs)))
            yield slice(0, len(self.runs)), self._cached
            return
        for start in range(0, len(self.runs), size):
            part = slice(start, start + size)
            yield part, self._read(part)

    def _read(self, part: slice) -> Trajectories:
        runs, k = self.runs[part], self.records - 1
        prefix = Trajectories.from_store(self.ts, runs, records=self.records)
        bad = prefix.nonfinite_runs(k)
        if bad.size:  # a damaged store (a missing chunk reads as NaN), not a model: say so before any forecast
            seeds = self.seeds[part]
            first = [(runs[i], seeds[i]) for i in bad[:5]]
            which = (f"run {first[0][0]} of dataset seed {first[0][1]} holds" if bad.size == 1 else
                     f"runs {', '.join(f'{r} (dataset seed {s})' for r, s in first)} hold")
            raise GFMError(f"{self.ts.path}: store {which} non-finite values in records 0..{k} (not flagged "
                           f"diverged); nothing was written (check the store with `gfm check {self.ts.path}`)")
        return prefix


def _seed_groups(seeds: list[str]) -> list[tuple[str, slice]]:
    """Consecutive stretches of one dataset seed in ``seeds``: (seed, positions)."""
    groups, start = [], 0
    for i in range(1, len(seeds) + 1):
        if i == len(seeds) or seeds[i] != seeds[start]:
            groups.append((seeds[start], slice(start, i)))
            start = i
    return groups


def forecast_model(params: Params, *, store_key: str, model: str, prefixes: Prefixes, skipped: int,
                   models: Path, out: Path) -> dict:
    """Forecast the test runs with the per-seed fits under ``models`` and write the store ``out``.

    Raises:
        StoreNotSupported: the model refuses the store (the caller records the refusal; nothing is written).
        GFMError: a model fitted for other horizons, or non-finite point forecasts.
    """
    fc_cfg = params.forecast
    horizons = list(fc_cfg.horizons)
    preds, draws = [], []
    n_draws: int | None = None
    loaded: tuple[str, object] | None = None  # the last seed's model: runs come seed by seed
    for part, prefix in prefixes.batches():
        runs = prefixes.runs[part]
        for seed, rows in _seed_groups(prefixes.seeds[part]):
            model_dir = models / str(seed)
            if loaded is None or loaded[0] != seed:
                loaded = (seed, _load(model_dir, fc_cfg))
            fc = loaded[1]
            sub = _rows(prefix, rows)
            with torch.no_grad():
                pred = fc.forecast(sub, horizons=horizons).cpu().numpy()
            bad = ~np.isfinite(pred.reshape(len(pred), -1)).all(axis=1)
            if bad.any():  # never written as a complete forecast: `gfm check` and evaluate would have to guess
                first = [int(r) for r in np.asarray(runs[rows])[bad][:5]]
                raise GFMError(f"{model_dir}: model {model} forecasts non-finite weights (NaN or Inf) for store "
                               f"run{'s' if len(first) > 1 else ''} {', '.join(map(str, first))} of dataset seed "
                               f"{seed}; nothing was written (check the model with `gfm check {model_dir}`)")
            preds.append(pred)
            n = fc.n_samples()
            if n_draws not in (None, n):
                raise GFMError(f"{model_dir}: draws {n} per run, but the other seeds' fits of {model} give {n_draws}")
            n_draws = n
            if n:  # non-finite draws are kept and counted: they never veto the point forecast
                with torch.no_grad():
                    draws.append(fc.sample_final(sub, horizon=horizons[-1], n=n, seed=params.seed).cpu().numpy())
    weights = np.concatenate(preds).astype(np.float32)
    samples = np.concatenate(draws).astype(np.float32) if n_draws else None
    summary = {"kind": "forecast", "schema_version": SCHEMA_VERSION, "store": store_key, "model": model,
               "prefix_end": fc_cfg.prefix_end, "horizons": horizons, "skipped_diverged": skipped,
               "n_runs": len(weights), "samples": int(n_draws or 0)}
    if samples is not None:
        summary["nonfinite_draw_runs"] = nonfinite_draw_runs(samples)
    write_forecast_store(out, weights=weights, store_index=np.asarray(prefixes.runs, np.int64),
                         dataset_seed=np.asarray(prefixes.seeds, np.int64), samples=samples, attrs=summary)
    return summary


def _rows(t: Trajectories, rows: slice) -> Trajectories:
    """Runs ``rows`` of ``t`` as views (a seed's share of a batch; ``select`` would copy them)."""
    return dataclasses.replace(t, weights=t.weights[rows], lr=t.lr[rows],
                               states={n: v[rows] for n, v in t.states.items()},
                               hyper={n: v[rows] for n, v in t.hyper.items()},
                               run_ids=None if t.run_ids is None else t.run_ids[rows])


def nonfinite_draw_runs(samples: np.ndarray) -> int:
    """Runs with any non-finite draw in ``samples`` (run, draw, param)."""
    return int((~np.isfinite(samples.reshape(len(samples), -1)).all(axis=1)).sum())


def _load(model_dir: Path, fc_cfg):
    """The fit of one dataset seed, refused if it was fitted for another prefix end or other horizons."""
    fc = read_model(model_dir)
    if fc.prefix_end != fc_cfg.prefix_end or not set(fc_cfg.horizons) <= set(fc.horizons):
        raise GFMError(f"{model_dir}: fitted for prefix_end {fc.prefix_end} and horizons {list(fc.horizons)}, "
                       f"but params ask for {fc_cfg.prefix_end} and {list(fc_cfg.horizons)}; re-run the train stage")
    return fc


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


def run(params: Params, *, store_key: str, store: Path, split: Path, models: Path, out: Path,
        names: list[str] | None = None) -> dict[str, dict]:
    """Forecast the test runs of ``store`` with every model in ``names`` (default: the store's models), reading
    ``models/<name>/<seed>/`` and writing ``out/<name>.zarr``; ``out`` appears only when all are done.

    A model that refuses the store (``models/<name>/refused.json`` from the train stage, or
    ``StoreNotSupported`` from its forecast) gets ``out/<name>.refused.json`` instead (gfm.artifacts.refusals), and
    its entry in the returned summaries is that refusal; the other models are forecast as usual. Any other
    error of any model fails the stage and leaves nothing beside ``out``."""
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
    prefixes = Prefixes.of(ts, runs_by_seed, params.forecast.prefix_end)
    tmp = open_temp_dir(out, FORECASTS, suffix=".partial")  # refuses an --out that is not earlier forecasts
    try:
        summaries = {name: _forecast_or_refuse(params, store_key=store_key, model=name, prefixes=prefixes,
                                               skipped=skipped, models=models / name, out=tmp)
                     for name in names}
    except BaseException:
        discard_temp(tmp)  # a failed job leaves nothing beside the output
        raise
    replace_output(tmp, out, FORECASTS)
    return summaries


def _forecast_or_refuse(params: Params, *, model: str, models: Path, out: Path, **kw) -> dict:
    """``out/<model>.zarr`` from :func:`forecast_model`, or ``out/<model>.refused.json`` when the model refused
    the store at train time (its directory holds ``refused.json``) or refuses it now (StoreNotSupported)."""
    kind = params.models[model]["kind"]
    recorded = models / REFUSED_FILE
    if recorded.exists() or recorded.is_symlink():
        reason = read_refusal(recorded, model=model)["refused"]
    else:
        try:
            return forecast_model(params, model=model, models=models, out=out / f"{model}.zarr", **kw)
        except StoreNotSupported as exc:
            reason = refusal_reason(exc)
            shutil.rmtree(out / f"{model}.zarr", ignore_errors=True)  # nothing half-written stays
    return write_refusal(forecast_refusal_path(out, model), model=model, kind=kind, reason=reason, stage="forecast")
