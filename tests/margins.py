"""Knobs for the tests that train, so their margins can be checked away from the one seed and CPU they were
written on.

- ``GFM_TEST_SEED`` (default 0) shifts the seed of every fit these tests make (``fit_rng``) and of the data they
  draw themselves (``data_seed``): a threshold that holds only for seed 0 fails at another shift.
- ``GFM_TEST_THREADS`` (default 1) is torch's thread count during those tests (reductions split differently
  over threads, so the float round-off changes, as it does across CPUs).

A threshold in these tests states the spread it was set from (seeds, threads, machine) and keeps a factor of
at least 2 between it and the worst value measured, so that round-off on another CPU (which moved the WNN
overfit ratio from 109x to 54x between two machines of the same kind) cannot reach it.
``python -m benchmarks.test_margins`` re-measures them.
"""

from __future__ import annotations

import os

import torch

SEED_SHIFT = int(os.environ.get("GFM_TEST_SEED", "0"))
THREADS = int(os.environ.get("GFM_TEST_THREADS", "1"))


def fit_rng(seed: int) -> torch.Generator:
    """The generator a test passes to ``fit`` (``seed`` shifted by ``GFM_TEST_SEED``)."""
    return torch.Generator().manual_seed(seed + 1000 * SEED_SHIFT)


def data_seed(seed: int) -> int:
    """A seed for data a test draws itself (shifted by ``GFM_TEST_SEED``)."""
    return seed + 1000 * SEED_SHIFT


def at_least(name: str, factor: float, required: float) -> None:
    """Assert an improvement ``factor`` (e.g. first loss / best loss, baseline error / model error) is at least
    ``required``. With ``GFM_MARGINS_LOG`` set, also appends ``{"name", "factor", "required", "seed", "threads"}``
    as one JSON line to that file, which ``benchmarks/test_margins.py`` tabulates."""
    log = os.environ.get("GFM_MARGINS_LOG")
    if log:
        import json

        with open(log, "a") as f:
            f.write(json.dumps({"name": name, "factor": float(factor), "required": required, "seed": SEED_SHIFT,
                                "threads": THREADS}) + "\n")
    assert factor >= required, f"{name}: improvement {factor:.3g}x, needs {required:.3g}x"
