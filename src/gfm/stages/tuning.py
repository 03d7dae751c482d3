"""The fair-comparison protocol of the train stage: one budget for every learned model, the same search.

Two rules make a comparison between forecasters one a reviewer can accept:

* **One budget** (``train.budget``): every learned forecaster (``Forecaster.closed_form`` is False) trains
  for the same number of optimizer updates, scores its validation forecasts at the same interval and stops
  under the same patience rule (gfm.forecasters.fitting). :func:`learned_options` writes the budget into a
  model's options; a ``models:`` entry that sets a budget key itself is refused (:func:`budget_problems`), so
  no model can quietly get more.
* **The same tuning** (``train.tuning``): for every learned model, ``trials`` option sets are drawn from that
  model's declared search space (:func:`draw_trials`: distinct grid points in a random order fixed by the
  train seed and the model name, so every store of a model tries the same sets), each is fitted on one
  dataset seed's train runs and scored on that seed's *validation* runs by the weight MSE at the final
  horizon, and the best is used for every dataset seed (:func:`choose`). Test runs are never read.

Tuning on one dataset seed and reusing the choice keeps the default study within its time budget: a search
costs ``trials - 1`` extra fits per (store, model), since the chosen trial's fit *is* that seed's final fit
(the same options, runs and random stream).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any

from gfm.base.seeds import hashed_seed
from gfm.forecasters.fitting import BUDGET_KEYS

__all__ = ["learned_options", "budget_problems", "draw_trials", "choose", "tuning_seed", "grid_size"]


def learned_options(options: dict[str, Any], budget: Any) -> dict[str, Any]:
    """``options`` of a learned model with the shared budget (``train.budget``) written in."""
    return {**options, **{k: getattr(budget, k) for k in BUDGET_KEYS}}


def budget_problems(name: str, options: dict[str, Any], space: dict[str, list[Any]] | None) -> list[str]:
    """Budget keys set per model (in ``models.<name>`` or its search space): refused, one line each."""
    out = [f"models.{name}.{k}: set for every learned model at once by train.budget.{k}; remove it here"
           for k in BUDGET_KEYS if k in options]
    out += [f"train.tuning.space.{name}.{k}: the budget is not tuned (train.budget.{k} holds for every model)"
            for k in BUDGET_KEYS if k in (space or {})]
    return out


def grid_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(set(map(json.dumps, v))) for v in space.values()) if space else 1


def draw_trials(space: dict[str, list[Any]], trials: int, *, seed: int, model: str) -> list[dict[str, Any]]:
    """``trials`` distinct option sets from the grid of ``space`` (option -> values), in a random order that
    depends only on ``seed`` and ``model``. Raises ValueError when the grid has fewer points than ``trials``."""
    keys = sorted(space)
    values = [list(dict.fromkeys(map(json.dumps, space[k]))) for k in keys]  # distinct, in declared order
    grid = [dict(zip(keys, map(json.loads, combo), strict=True)) for combo in itertools.product(*values)]
    if len(grid) < trials:
        raise ValueError(f"{model}: the search space has {len(grid)} option sets; {trials} trials need as many")
    rng = random.Random(hashed_seed(int(seed), "tuning", model, bits=64))
    return rng.sample(grid, trials)


def tuning_seed(configured: int | None, dataset_seeds: list[str]) -> str:
    """The dataset seed the trials use: ``train.tuning.dataset_seed``, else the first seed of the split."""
    if configured is None:
        return sorted(dataset_seeds, key=int)[0]
    if str(configured) not in dataset_seeds:
        raise ValueError(f"train.tuning.dataset_seed: {configured} is not a dataset seed of this split "
                         f"({', '.join(sorted(dataset_seeds, key=int))})")
    return str(configured)


def choose(scores: list[float]) -> int:
    """Index of the best trial: the lowest finite validation score; the first on ties. Raises ValueError when
    no trial has a finite score."""
    finite = [(s, i) for i, s in enumerate(scores) if isinstance(s, (int, float)) and math.isfinite(s)]
    if not finite:
        raise ValueError("every trial's validation score is NaN or infinite")
    return min(finite)[1]
