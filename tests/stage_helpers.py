"""Helpers for tests that run the stage cores in-process on the tiny store (no Snakemake, no DVC)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from gfm.forecasters.base import Trajectories
from gfm.stages import forecast, split, train
from gfm.store.reader import open_trajectories

__all__ = ["first_seed_runs", "train_and_forecast"]


def first_seed_runs(store: Path, split_path: Path) -> dict[str, Trajectories]:
    """Train / val / test Trajectories of the first dataset seed of ``split_path``."""
    ts = open_trajectories(store)
    datasets = json.loads(split_path.read_text())["datasets"]
    parts = datasets[sorted(datasets)[0]]
    return {k: Trajectories.from_store(ts, np.array(parts[k])) for k in ("train", "val", "test")}


def train_and_forecast(params, store: Path, root: Path, models: list[str], store_key: str = "mlp_regression-adam"):
    """split -> train ``models`` -> forecast for one store, under ``root``; returns (params, split path) with
    ``train.models`` set to ``models``."""
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, models=list(models)))
    split_path = root / "split.json"
    split.run(params.split, store=store, out=split_path)
    for name in models:
        train.run(params, store_key=store_key, model=name, split=split_path, store=store,
                  out=root / "models" / name, progress=False)
    forecast.run(params, store_key=store_key, store=store, split=split_path, models=root / "models",
                 out=root / "forecasts")
    return params, split_path
