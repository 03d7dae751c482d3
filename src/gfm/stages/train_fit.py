"""One dataset seed of the train stage (gfm.stages.train): fit a forecaster, save it with its train log, and return
the seed's line of the summary. Learned models see the seed's train and val runs in memory; closed-form ones
(``Forecaster.closed_form``) are scored by streaming the store block by block, so their memory is bounded at
any store size.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from gfm.forecasters import Forecaster, Trajectories
from gfm.forecasters.model_files import save_model
from gfm.store.reader import read_runs

__all__ = ["fit_seed", "fit_seed_streamed", "LOG_COLUMNS", "STREAM_BYTES"]

# No wall-clock column: artifacts must be byte-identical across machines and schedulers (a SLURM run and a
# local run are compared byte for byte); timings go to the job's log (stderr) and Snakemake's benchmark TSV.
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_final_mse", "best_val_loss")


def _weight_mse(fc: Forecaster, traj: Trajectories) -> list[float]:
    """Forecast MSE over runs and parameters at each fitted horizon (weight units)."""
    if traj.n_runs == 0:
        return [float("nan")] * len(fc.horizons)
    pred = fc.forecast(traj.prefix(fc.prefix_end), horizons=fc.horizons)
    true = traj.weights[:, list(fc.horizons)].float()
    return [float(v) for v in ((pred - true) ** 2).mean(dim=(0, 2))]


def _write_log(path: Path, log: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in log:
            writer.writerow({k: (f"{row[k]:.8g}" if isinstance(row.get(k), float) else row.get(k, ""))
                             for k in LOG_COLUMNS})


def _saved_log(fc: Forecaster, out: Path, log: list[dict], train_mse: list[float], val_mse: list[float],
               fit_seconds: float) -> list[dict]:
    """Save ``fc`` and its train log to ``out``; a closed-form fit's empty log becomes one epoch-0 row of how it
    does, in weight units, so every model has a log."""
    if not log:
        log = [{"epoch": 0, "step": 0, "train_loss": float(np.mean(train_mse)), "val_loss": float(np.mean(val_mse)),
                "val_final_mse": val_mse[-1], "best_val_loss": float(np.mean(val_mse)),
                "seconds": round(fit_seconds, 4)}]
    save_model(fc, out)
    _write_log(out / "train_log.csv", log)
    return log


def _seed_entry(fc: Forecaster, log: list[dict], n_train: int, n_val: int, val_mse: list[float], fit_seconds: float,
                forecast_seconds: float) -> dict:
    """One dataset seed's line of the summary."""
    best = min((r["val_loss"] for r in log if r["val_loss"] == r["val_loss"]), default=float("nan"))
    return {"train_runs": n_train, "val_runs": n_val, "epochs": int(log[-1]["epoch"]),
            "steps_used": int(log[-1].get("step", 0)),
            "best_val_loss": best, "fit_seconds": round(fit_seconds, 3),
            "forecasts_per_second": round(n_val / forecast_seconds, 1) if n_val and forecast_seconds else None,
            "val_weight_mse": dict(zip(map(str, fc.horizons), val_mse, strict=True))}


def fit_seed(fc: Forecaster, train: Trajectories, val: Trajectories, *, rng: torch.Generator,
             out: Path, device: torch.device) -> dict:
    """Fit ``fc`` on one dataset seed's runs, save it with its train log to ``out``; return its summary."""
    t0 = time.perf_counter()
    log = fc.fit(train.to(device), val.to(device), rng=rng)
    fit_seconds = time.perf_counter() - t0
    train_mse, val_mse = _weight_mse(fc, train), _weight_mse(fc, val)
    log = _saved_log(fc, out, log, train_mse, val_mse, fit_seconds)
    t1 = time.perf_counter()
    fc.forecast(val.prefix(fc.prefix_end), horizons=fc.horizons) if val.n_runs else None
    forecast_seconds = time.perf_counter() - t1
    return _seed_entry(fc, log, train.n_runs, val.n_runs, val_mse, fit_seconds, forecast_seconds)


STREAM_BYTES = 64 << 20  # read budget of one block when streaming a store (closed-form models)


def _block_runs(ts, records: int) -> int:
    """Runs per streamed block so that one block of ``records`` records (weights + lr + states) fits
    :data:`STREAM_BYTES`."""
    per_run = records * ts.n_params * 4 * (1 + len(ts.state_names)) + records * 4
    return max(1, STREAM_BYTES // per_run)


def _streamed_mse(fc: Forecaster, ts, runs: list[int], block: int) -> tuple[list[float], float]:
    """Forecast MSE over runs and parameters at each fitted horizon, reading ``block`` runs at a time
    (prefix records and horizon records only). Also returns the seconds spent inside ``fc.forecast``."""
    horizons = list(fc.horizons)
    if not runs:
        return [float("nan")] * len(horizons), 0.0
    sums = np.zeros(len(horizons))
    seconds = 0.0
    for start in range(0, len(runs), block):
        part = np.asarray(runs[start : start + block], dtype=np.int64)
        prefix = Trajectories.from_store(ts, part, records=fc.prefix_end + 1)
        true = read_runs(ts.weights, part)[:, horizons]  # (run, H, P); slices, not fancy selection (store.py)
        t0 = time.perf_counter()
        pred = fc.forecast(prefix, horizons=horizons)
        seconds += time.perf_counter() - t0
        sums += ((pred.double() - torch.from_numpy(true).double()) ** 2).sum(dim=(0, 2)).numpy()
    return [float(v) for v in sums / (len(runs) * ts.n_params)], seconds


def fit_seed_streamed(fc: Forecaster, ts, train_runs: list[int], val_runs: list[int], *, rng: torch.Generator,
                      out: Path) -> dict:
    """:func:`fit_seed` for a closed-form forecaster, streaming the store: bounded memory at any size.

    ``fit`` of a closed-form model learns nothing and only checks what it is given, so it sees the prefix of
    the first train run; the train/val weight MSE are then accumulated block by block.
    """
    t0 = time.perf_counter()
    first = Trajectories.from_store(ts, train_runs[:1], records=fc.prefix_end + 1)
    log = fc.fit(first, first, rng=rng)
    fit_seconds = time.perf_counter() - t0
    block = _block_runs(ts, ts.n_records)  # a block's whole runs are read for their horizon records
    train_mse, _ = _streamed_mse(fc, ts, train_runs, block)
    val_mse, forecast_seconds = _streamed_mse(fc, ts, val_runs, block)
    log = _saved_log(fc, out, log, train_mse, val_mse, fit_seconds)
    return _seed_entry(fc, log, len(train_runs), len(val_runs), val_mse, fit_seconds, forecast_seconds)
