"""Stage ``train``: fit one forecaster per dataset seed of one store (LFD-2 protocol: mean ± std over seeds).

For model NAME of store ``<task>-<optimizer>``, every dataset seed d of the split gets its own fit on d's
non-diverged train runs, early-stopped on d's non-diverged val runs (test runs are never read). All seeds are
fitted in one process, because the default study has hundreds of small fits and a Python + torch start-up
costs more than most of them. Output (written to a temporary sibling, then renamed into place)::

    data/models/<task>/<optimizer>/<model>/
        summary.json                 kind, options, per seed: runs used, epochs, fit seconds, val weight MSE
        <dataset_seed>/config.json   \\ the forecaster (load_forecaster(dir))
        <dataset_seed>/weights.safetensors
        <dataset_seed>/train_log.csv epoch,train_loss,val_loss,best_val_loss,seconds (losses in the model's
                                     own normalised units; one epoch-0 row of weight MSE for closed-form models)

Usage::

    gfm train --params params.yaml --store mlp_regression-sgd --model lstm \\
              --split data/splits/mlp_regression/sgd.json --in data/trajectories/mlp_regression/sgd.zarr \\
              --out data/models/mlp_regression/sgd/lstm
    gfm train --params tests/params.tiny.yaml ...          # the tiny CPU study, seconds

Seeds: the generator of one fit is derived from ``train.seed``, the store key, the model name and the dataset
seed, so adding a model or a store never changes another fit. CPU results are identical run to run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gfm.config import Params, to_dict
from gfm.errors import GFMError, ParamsError
from gfm.forecasters import FORECASTERS, Forecaster, Trajectories, make_forecaster
from gfm.schema import build
from gfm.store import open_trajectories

__all__ = ["run", "fit_seed", "derive_seed", "model_problems", "resolve_train_device", "TrainSummary",
           "LOG_COLUMNS"]

LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "best_val_loss", "seconds")


class SplitError(GFMError, ValueError):
    """The split file is missing, malformed or does not match the store."""


@dataclass
class TrainSummary:
    """What one train job did (also written to ``summary.json``, minus wall-clock fields in tests)."""

    store: str
    model: str
    kind: str
    device: str
    seeds: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def model_problems(params: Params, names: list[str] | None = None) -> list[str]:
    """Validate ``models.<name>`` entries against their forecaster's ``Config``; one line per problem.

    Args:
        params: validated params.
        names: the entries to check; default ``train.models`` (the ones the pipeline trains).
    """
    import gfm.forecasters  # noqa: F401  (fills the registry)

    problems: list[str] = []
    for name in params.train.models if names is None else names:
        spec_ = params.models[name]
        kind = spec_.get("kind") if isinstance(spec_, dict) else None
        if kind not in FORECASTERS:
            problems.append(f"models.{name}.kind: got {kind!r}; expected one of {', '.join(sorted(FORECASTERS))}")
            continue
        options = {k: v for k, v in spec_.items() if k != "kind"}
        cfg = build(FORECASTERS[kind].Config, options, f"models.{name}", problems)
        if cfg is not None:
            try:
                make_forecaster(kind, cfg, prefix_end=params.forecast.prefix_end, horizons=params.forecast.horizons)
            except GFMError as exc:  # e.g. a window longer than the prefix
                problems.append(f"models.{name}: {exc}")
    return problems


def derive_seed(train_seed: int, store: str, model: str, dataset_seed: int | str) -> int:
    """A 63-bit seed for one fit, stable across Python versions and independent of every other fit."""
    blob = json.dumps([int(train_seed), store, model, int(dataset_seed)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1


def resolve_train_device(device: str, cls: type[Forecaster]) -> torch.device:
    """Neural models follow ``device`` (auto = CUDA when present); classical ones always run on CPU."""
    if not cls.neural or device == "cpu":
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GFMError("device: cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read_split(path: Path, n_runs: int) -> dict[str, dict[str, list[int]]]:
    try:
        data = json.loads(Path(path).read_text())
        datasets = data["datasets"]
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found (run the split stage)") from None
    except (ValueError, KeyError, TypeError):
        raise SplitError(f"{path}: not a split file (expected JSON with 'datasets')") from None
    for seed, entry in datasets.items():
        for part in ("train", "val", "test", "diverged"):
            runs = entry.get(part)
            if not isinstance(runs, list) or any(not isinstance(r, int) or not 0 <= r < n_runs for r in runs):
                raise SplitError(f"{path}: datasets.{seed}.{part} must list run ids in 0..{n_runs - 1}")
    return datasets


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


def fit_seed(fc: Forecaster, train: Trajectories, val: Trajectories, *, rng: torch.Generator,
             out: Path, device: torch.device) -> dict:
    """Fit ``fc`` on one dataset seed's runs, save it with its train log to ``out``; return its summary."""
    t0 = time.perf_counter()
    log = fc.fit(train.to(device), val.to(device), rng=rng)
    fit_seconds = time.perf_counter() - t0
    train_mse = _weight_mse(fc, train)
    val_mse = _weight_mse(fc, val)
    if not log:  # closed form: record how it does, in weight units, so every model has a log
        log = [{"epoch": 0, "train_loss": float(np.mean(train_mse)), "val_loss": float(np.mean(val_mse)),
                "best_val_loss": float(np.mean(val_mse)), "seconds": round(fit_seconds, 4)}]
    fc.save(out)
    _write_log(out / "train_log.csv", log)
    t1 = time.perf_counter()
    fc.forecast(val.prefix(fc.prefix_end), horizons=fc.horizons) if val.n_runs else None
    forecast_seconds = time.perf_counter() - t1
    best = min((r["val_loss"] for r in log if r["val_loss"] == r["val_loss"]), default=float("nan"))
    return {"train_runs": train.n_runs, "val_runs": val.n_runs, "epochs": int(log[-1]["epoch"]),
            "best_val_loss": best, "fit_seconds": round(fit_seconds, 3),
            "forecasts_per_second": round(val.n_runs / forecast_seconds, 1) if val.n_runs and forecast_seconds else None,
            "val_weight_mse": dict(zip(map(str, fc.horizons), val_mse, strict=True))}


def run(params: Params, *, store_key: str, model: str, split: Path, store: Path, out: Path,
        progress: bool | None = None) -> TrainSummary:
    """Fit model ``model`` for every dataset seed of one store and write ``out`` atomically.

    Args:
        params: validated params (``forecast``, ``train.seed``, ``models.<model>``, ``device`` are read).
        store_key: ``<task>-<optimizer>``.
        model: a name from ``params.models``.
        split: the store's split JSON.
        store: the trajectory store.
        out: the model directory to create (replaced if present).
        progress: tqdm bar on stderr (None = only when stderr is a terminal).

    Returns:
        The summary also written to ``out/summary.json``.

    Raises:
        ParamsError: unknown model or invalid model options.
        SplitError, StoreError: unusable inputs.
    """
    params.lookup_store(store_key)
    if model not in params.models:
        raise ParamsError(f"--model: got {model!r}; expected one of {', '.join(sorted(params.models)) or '(none)'}")
    problems = model_problems(params, sorted({*params.train.models, model}))
    if problems:
        raise ParamsError(problems)
    spec_ = dict(params.models[model])
    kind = spec_.pop("kind")
    cls = FORECASTERS[kind]
    device = resolve_train_device(params.device, cls)
    fcst = params.forecast
    ts = open_trajectories(store)
    datasets = _read_split(split, ts.n_runs)
    # Read the train and val runs of every seed at once (one pass over the store's chunks); test runs are
    # never read by this stage.
    keep = {seed: {part: sorted(set(e[part]) - set(e["diverged"])) for part in ("train", "val")}
            for seed, e in datasets.items()}
    wanted = sorted({r for e in keep.values() for runs in e.values() for r in runs})
    pos = {r: i for i, r in enumerate(wanted)}
    every = Trajectories.from_store(ts, wanted)
    summary = TrainSummary(store=store_key, model=model, kind=kind, device=str(device))
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    show = sys.stderr.isatty() if progress is None else progress
    t0 = time.perf_counter()
    bar = tqdm(total=len(keep), desc=f"{store_key}/{model}", unit="seed", file=sys.stderr, disable=not show)
    for seed in sorted(keep, key=int):
        fc = make_forecaster(kind, spec_, prefix_end=fcst.prefix_end, horizons=fcst.horizons)
        fc.on_epoch = lambda row, seed=seed: bar.set_postfix(seed=seed, epoch=row["epoch"], val=f"{row['val_loss']:.3g}")
        train = every.select([pos[r] for r in keep[seed]["train"]])
        val = every.select([pos[r] for r in keep[seed]["val"]])
        if train.n_runs == 0:
            raise SplitError(f"{split}: dataset seed {seed} has no non-diverged train runs; cannot fit {model}")
        rng = torch.Generator().manual_seed(derive_seed(params.train.seed, store_key, model, seed))
        entry = fit_seed(fc, train, val, rng=rng, out=tmp / str(seed), device=device)
        entry["dropped_diverged"] = len(set(datasets[seed]["diverged"]) & set(datasets[seed]["train"] + datasets[seed]["val"]))
        summary.seeds[str(seed)] = entry
        bar.update(1)
    bar.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    meta = {"store": store_key, "model": model, "kind": kind, "options": to_dict(spec_), "device": str(device),
            "forecast": to_dict(fcst), "train_seed": params.train.seed, "seconds": summary.seconds,
            "seeds": summary.seeds}
    (tmp / "summary.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return summary
