"""Stage ``split``: train / val / test run ids of a store, per dataset seed.

Runs are assigned in index order within each dataset (LFD-2: 0-99 train, 100-149 val, 150-199 test of 200),
so a split never depends on anything random. Diverged runs stay in their split but are listed under
``diverged`` so that consumers can drop them and report how many they dropped.

Usage::

    gfm split --params params.yaml --in data/trajectories/mlp_regression/sgd.zarr \\
              --out data/splits/mlp_regression/sgd.json
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gfm.artifacts.outputs import SPLIT, write_json_output
from gfm.base.errors import GFMError
from gfm.config import SplitConfig
from gfm.store.reader import open_trajectories

__all__ = ["make_split", "run", "read_split", "read_split_structure", "split_problems", "SplitError", "PARTS"]

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
    write_json_output(out, SPLIT, split)
    return split


def read_split(path: Path, n_runs: int | None = None, *, run_seeds: np.ndarray | None = None, store: Any = None
               ) -> dict[str, dict[str, list[int]]]:
    """The ``datasets`` mapping of a split file, checked before anything trusts it: the one reader of split
    files (train, forecast, evaluate, generalize, accelerate and the benchmarks call it; ``gfm check`` calls
    its two halves, :func:`read_split_structure` and :func:`split_problems`).

    Dataset keys become directory names downstream (``<models>/<seed>/``), so only decimal seeds are
    accepted: a pulled split file cannot point a stage at ``../`` anything. The rules ``gfm check`` applies
    to a split (:func:`split_problems`) are enforced here too: a stage never trains on test runs.

    Args:
        path: the split JSON written by :func:`run`.
        n_runs: the store's run count; when given, every run id must be in ``0..n_runs - 1``.
        run_seeds: the store's ``runs/dataset_seed`` (implies ``n_runs``); when given, every run listed under
            a dataset seed must belong to that seed.
        store: the opened trajectory store the split belongs to: gives ``run_seeds`` (what only the store can
            say: run ids within it and within their dataset seed).

    Raises:
        SplitError: missing file, not JSON, wrong structure, a non-decimal dataset key, a bad run id, parts
            that share runs, a run listed twice, or a run of another dataset seed.
    """
    if store is not None:
        run_seeds = store.runs["dataset_seed"]
    if run_seeds is not None:
        n_runs = len(run_seeds)
    datasets = read_split_structure(path, n_runs)
    problems = split_problems(datasets, run_seeds)
    if problems:
        more = f" (and {len(problems) - 1} more problems: gfm check {path})" if len(problems) > 1 else ""
        raise SplitError(f"{path}: {problems[0]}{more}")
    return datasets


def read_split_structure(path: Path, n_runs: int | None = None) -> dict[str, dict[str, list[int]]]:
    """The ``datasets`` mapping with its structure checked (keys, parts, run ids), not its semantics."""
    from gfm.artifacts.inputs import read_json

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise SplitError(f"{path}: split file not found (run the split stage)")
    data = read_json(path, error=SplitError)
    datasets = data.get("datasets") if isinstance(data, dict) else None
    if datasets is None:
        raise SplitError(f"{path}: not a split file (expected JSON with 'datasets')")
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


def _ids(runs: list[int], limit: int = 5) -> str:
    return ", ".join(map(str, runs[:limit])) + (", ..." if len(runs) > limit else "")


def split_problems(datasets: dict[str, dict[str, list[int]]], run_seeds: np.ndarray | None = None) -> list[str]:
    """What is wrong with a structurally sound split, one line each (``gfm check`` lists them all, a stage
    refuses on the first): a run listed twice in one part, parts sharing runs (test runs would leak into
    training), diverged runs outside the parts, the same run under two dataset seeds and, given the store's
    ``runs/dataset_seed``, runs listed under a seed they do not belong to."""
    problems: list[str] = []
    owner: dict[int, str] = {}
    for seed, e in datasets.items():
        for part in PARTS:
            dup = sorted(r for r, c in Counter(e[part]).items() if c > 1)
            if dup:
                problems.append(f"datasets.{seed}.{part} lists runs more than once ({_ids(dup)})")
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sorted(set(e[a]) & set(e[b]))
            if shared:
                problems.append(f"datasets.{seed}: {a} and {b} share runs ({_ids(shared)}); "
                                f"{'test runs would leak into training' if 'train' in (a, b) else 'parts must be disjoint'}")
        union = set(e["train"]) | set(e["val"]) | set(e["test"])
        outside = sorted(set(e["diverged"]) - union)
        if outside:
            problems.append(f"datasets.{seed}.diverged lists runs outside train/val/test ({_ids(outside)})")
        twice = sorted(r for r in union if owner.setdefault(r, seed) != seed)
        if twice:
            problems.append(f"datasets.{seed} lists runs also listed under another dataset seed ({_ids(twice)})")
        if run_seeds is not None:
            foreign = sorted(r for r in union if str(int(run_seeds[r])) != seed)
            if foreign:
                problems.append(f"datasets.{seed} lists runs of another dataset seed ({_ids(foreign)}: seed "
                                f"{int(run_seeds[foreign[0]])} in the store)")
    return problems
