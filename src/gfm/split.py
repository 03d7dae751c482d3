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
from gfm.errors import GFMError
from gfm.store import open_trajectories

__all__ = ["make_split", "run", "read_split", "SplitError", "PARTS"]

PARTS = ("train", "val", "test", "diverged")


class SplitError(GFMError, ValueError):
    """The split file is missing, malformed or does not match the store."""


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


def read_split(path: Path, n_runs: int | None = None) -> dict[str, dict[str, list[int]]]:
    """The ``datasets`` mapping of a split file, checked before anything trusts it.

    Dataset keys become directory names downstream (``<models>/<seed>/``), so only decimal seeds are
    accepted: a pulled split file cannot point a stage at ``../`` anything.

    Args:
        path: the split JSON written by :func:`run`.
        n_runs: the store's run count; when given, every run id must be in ``0..n_runs - 1``.

    Raises:
        SplitError: missing file, not JSON, wrong structure, a non-decimal dataset key or a bad run id.
    """
    try:
        data = json.loads(Path(path).read_text())
        datasets = data["datasets"]
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found (run the split stage)") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise SplitError(f"{path}: not a split file (expected JSON with 'datasets')") from None
    if not isinstance(datasets, dict):
        raise SplitError(f"{path}: 'datasets' must map dataset seeds to their runs")
    limit = "" if n_runs is None else f" in 0..{n_runs - 1}"
    for seed, entry in datasets.items():
        if not (seed.isascii() and seed.isdigit()):
            raise SplitError(f"{path}: dataset key {seed!r} is not a decimal dataset seed")
        if not isinstance(entry, dict):
            raise SplitError(f"{path}: datasets.{seed} must be a mapping with {', '.join(PARTS)}")
        for part in PARTS:
            runs = entry.get(part)
            if not isinstance(runs, list) or any(
                    isinstance(r, bool) or not isinstance(r, int) or r < 0 or (n_runs is not None and r >= n_runs)
                    for r in runs):
                raise SplitError(f"{path}: datasets.{seed}.{part} must list run ids{limit}")
    return datasets
