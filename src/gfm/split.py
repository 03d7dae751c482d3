"""Stage ``split``: train / val / test run ids of a store, per dataset seed.

Runs are assigned in index order within each dataset (LFD-2: 0-99 train, 100-149 val, 150-199 test of 200),
so a split never depends on anything random. Diverged runs stay in their split but are listed under
``diverged`` so that consumers can drop them and report how many they dropped.

Usage::

    gfm split --params params.yaml --in data/trajectories/mlp_regression/sgd.zarr \\
              --out data/splits/mlp_regression/sgd.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gfm.config import SplitConfig
from gfm.store import open_trajectories

__all__ = ["make_split", "run"]


def make_split(dataset_seed: np.ndarray, index: np.ndarray, diverged: np.ndarray, cfg: SplitConfig) -> dict:
    """Split run ids (positions in the store) per dataset seed.

    Args:
        dataset_seed: (run,) dataset seed of each run.
        index: (run,) index of each run within its dataset.
        diverged: (run,) bool.
        cfg: fractions.

    Returns:
        ``{"datasets": {seed: {"train": [...], "val": [...], "test": [...], "diverged": [...]}}, ...}``.
    """
    out = {}
    for seed in sorted(set(dataset_seed.tolist())):
        runs = np.flatnonzero(dataset_seed == seed)
        runs = runs[np.argsort(index[runs], kind="stable")]
        n = len(runs)
        n_train = int(round(cfg.train * n))
        n_val = int(round(cfg.val * n))
        parts = {"train": runs[:n_train], "val": runs[n_train : n_train + n_val], "test": runs[n_train + n_val :]}
        entry = {k: v.tolist() for k, v in parts.items()}
        entry["diverged"] = runs[diverged[runs]].tolist()
        out[str(seed)] = entry
    return {"fractions": {"train": cfg.train, "val": cfg.val, "test": cfg.test}, "datasets": out}


def run(cfg: SplitConfig, *, store: Path, out: Path) -> dict:
    """Read a store's run fields and write its split JSON atomically."""
    ts = open_trajectories(store)
    runs = ts.runs
    split = make_split(runs["dataset_seed"], runs["index"], runs["diverged"].astype(bool), cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(split, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out)
    return split
