"""What the jump-ahead experiment (:mod:`gfm.stages.accelerate`) reports: per-loop statistics against plain training,
with paired intervals over runs, the loss-against-time curves the report draws, and which model the train
stage's validation scores name as the store's best forecaster.

Pure functions of the loops' arrays and the train stage's summaries; no torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gfm.metrics.stats import paired_ratio

__all__ = ["steps_to", "summarise", "curve", "best_by_validation", "why_not", "CANNOT_JUMP", "CURVE_POINTS", "SPEEDUP_TARGET"]

CANNOT_JUMP = ("last_value",)  # kinds whose forecast is the current weights: a "jump" there moves nothing
CURVE_POINTS = 101  # points of each loss-against-time curve kept for the report's figure
SPEEDUP_TARGET = 1.3  # the goal: reach the plain run's final held-out loss at least 1.3x sooner (wall time when
# timed, else optimizer steps), paired interval over runs wholly above 1, no run ending worse than plain


def steps_to(curve_: np.ndarray, target: np.ndarray) -> np.ndarray:
    """First k with curve[r, k] <= target[r] (run,), or -1 where never."""
    hit = curve_ <= target[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1)


def _interval(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Geometric-mean ratio a / b over runs (paired) with its 95% Student t interval on the log ratios."""
    r = paired_ratio(np.maximum(a, 1e-12).tolist(), np.maximum(b, 1e-12).tolist()).to_json()
    return {"ratio": r["ratio"], "ci": r["ci"], "n_runs": r["n_seeds"]}


def summarise(plain: dict, loop: dict, *, budget: int, timing: bool) -> dict[str, Any]:
    """Per-loop statistics against the plain runs (same runs, same order).

    The target of run r is the plain run's final held-out loss (``loss[:, -1]``). A run that never reaches it
    counts ``budget`` steps and its whole wall time (so the speed-ups cannot be inflated by failures) and is
    reported in ``reached``. Speed-ups come twice: the ratio of sums over runs (``speedup_steps``,
    ``speedup_wall``) and the geometric mean of the per-run ratios with a paired 95% interval over the runs of
    every dataset seed (``speedup_*_paired``). ``worse_runs`` counts runs whose final held-out loss is above
    plain training's (beyond float round-off).
    """
    target = plain["loss"][:, -1]
    k_plain = steps_to(plain["loss"], target)
    k_loop = steps_to(loop["loss"], target)
    reached = k_loop >= 0
    k_loop_c = np.where(reached, k_loop, budget)
    final = loop["loss"][:, -1]
    ratio = final / np.maximum(target, 1e-30)
    no_worse = final <= target * (1 + 1e-6)
    out = {
        "runs": int(len(target)),
        "reached": float(reached.mean()),
        "steps_to_target_mean": float(k_loop_c.mean()),
        "steps_to_target_median": float(np.median(k_loop_c)),
        "plain_steps_to_target_mean": float(k_plain.mean()),
        "speedup_steps": float(k_plain.sum() / max(k_loop_c.sum(), 1)),
        "speedup_steps_median_run": float(np.median(k_plain / np.maximum(k_loop_c, 1))),
        "speedup_steps_paired": _interval(np.maximum(k_plain, 1).astype(float), np.maximum(k_loop_c, 1).astype(float)),
        "final_loss_mean": float(final.mean()),
        "final_loss_median": float(np.median(final)),
        "final_loss_ratio_median": float(np.median(ratio)),
        "no_worse_final": float(no_worse.mean()),
        "worse_runs": int((~no_worse).sum()),
        "accepted": int(loop["accepted"].sum()),
        "rejected": int(loop["rejected"].sum()),
        "jumped_steps_mean": float(loop["jumped_steps"].mean()),
    }
    if timing:
        # seconds (run, budget + 1): the clock of the run's stacked loop (one per dataset seed) after k steps
        rows = np.arange(len(target))
        t_plain = plain["seconds"][rows, k_plain]
        t_loop = np.where(reached, loop["seconds"][rows, np.maximum(k_loop, 0)], loop["seconds"][:, -1])
        out.update({"seconds_to_target_mean": float(t_loop.mean()), "plain_seconds_to_target_mean": float(t_plain.mean()),
                    "speedup_wall": float(t_plain.sum() / max(t_loop.sum(), 1e-12)),
                    "speedup_wall_paired": _interval(t_plain, t_loop),
                    "seconds_total_mean": float(loop["seconds"][:, -1].mean()),
                    "plain_seconds_total_mean": float(plain["seconds"][:, -1].mean())})
    return out


def curve(loop: dict, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """The loop's held-out loss against its step and wall clock, for the report's figure: at up to ``points``
    evenly spaced steps, the median loss over runs and the mean clock over runs (each dataset seed's runs
    share one stacked clock)."""
    loss, seconds = loop["loss"], loop["seconds"]
    ks = np.unique(np.linspace(0, loss.shape[1] - 1, points).round().astype(int))
    return {"step": ks.tolist(), "loss": [float(v) for v in np.median(loss[:, ks], 0)],
            "seconds": [round(float(v), 6) for v in seconds[:, ks].mean(0)]}


def best_by_validation(models_dir: Path, horizons: list[int], candidates: list[str]) -> dict[str, Any] | None:
    """The store's best forecaster on validation runs among ``candidates`` (model names with a directory under
    ``models_dir``): the lowest weight MSE of the train stage's validation forecasts (``summary.json``,
    ``seeds.<seed>.val_weight_mse``), averaged over ``horizons`` and dataset seeds. Test runs are never read.

    Returns:
        ``{"model", "val_weight_mse", "ranking": [[name, mse], ...]}``, or None when no candidate has scores.
    """
    scores = []
    for name in candidates:
        path = Path(models_dir) / name / "summary.json"
        if not path.is_file():
            continue
        seeds = json.loads(path.read_text()).get("seeds", {})
        vals = [float(s["val_weight_mse"][str(h)]) for s in seeds.values()
                for h in horizons if str(h) in s.get("val_weight_mse", {})]
        if vals and len(vals) == len(seeds) * len(horizons) and all(math.isfinite(v) for v in vals):
            scores.append((name, float(np.mean(vals))))
    if not scores:
        return None
    scores.sort(key=lambda kv: kv[1])
    return {"model": scores[0][0], "val_weight_mse": scores[0][1], "ranking": [list(kv) for kv in scores]}


def why_not(m: dict[str, Any], step_seconds: float | None, target: float = SPEEDUP_TARGET) -> str | None:
    """One sentence on why a loop does not meet the goal (at least ``target`` x sooner to plain training's final
    held-out loss in wall time, paired interval wholly above 1, no run ending worse), from its own numbers; None
    when it does."""
    wall = m.get("speedup_wall_paired", {})
    ratio, (lo, _hi) = wall.get("ratio"), wall.get("ci") or [None, None]
    faster = lo is not None and lo > 1
    if faster and ratio >= target and m["worse_runs"] == 0:
        return None
    if faster and m["worse_runs"]:
        return (f"it is {ratio:.2f}x faster, but {m['worse_runs']} of {m['runs']} runs ended with a higher held-out "
                "loss than plain training (a jump kept on the deciding samples that the measured ones did not "
                "confirm)")
    if faster:
        return f"it is {ratio:.2f}x faster, short of the {target:g}x goal"
    if m["accepted"] == 0:
        return (f"no jump was kept: all {m['rejected']} forecasts had a higher held-out loss than the current "
                "weights")
    if m["speedup_steps"] <= 1:
        return (f"{m['accepted']} of {m['accepted'] + m['rejected']} jumps were kept, but they did not bring "
                "the runs to the target in fewer optimizer steps")
    overhead = m.get("jump_seconds_per_run")
    saved_steps = m["plain_steps_to_target_mean"] - m["steps_to_target_mean"]
    saved = saved_steps * (step_seconds or 0)
    if overhead is not None and step_seconds and overhead >= saved:
        return (f"it saves {saved_steps:.0f} optimizer steps per run (about {saved:.3g} s) but its forecasts and "
                f"checks cost {overhead:.3g} s per run")
    return "the wall-time interval over runs reaches 1: the gain is not resolved on these runs"
