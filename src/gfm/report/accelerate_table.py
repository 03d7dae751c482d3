"""The jump-ahead table of the report: one block per store of ``accelerate.stores`` (gfm.stages.accelerate's JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from gfm.config import Params
from gfm.metrics.accelerate_summary import SPEEDUP_TARGET
from gfm.metrics.model_entries import cell_text
from gfm.pipeline import under

__all__ = ["accelerate_section"]


def _g(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def accelerate_section(params: Params, metrics_dir: Path) -> list[str]:
    """Markdown lines of the jump-ahead table, one block per store of ``accelerate.stores`` whose JSON exists.

    Args:
        params: validated params (which stores, the settings quoted above the table).
        metrics_dir: the directory of ``<task>/<optimizer>.json`` (``data/metrics/accelerate``).

    Returns:
        Markdown lines (empty when no store has results).
    """
    acc = params.accelerate
    found = [(k, under(metrics_dir, "accelerate", s.task, s.optimizer)) for k, s in acc.stores.items()]
    found = [(k, p) for k, p in found if p.is_file()]
    if not found:
        return []
    lines = ["## Jump-ahead training (`gfm accelerate`)", "",
             f"Every {acc.every} optimizer steps each run forecasts its weights at records {list(acc.horizons)} from "
             f"its last {params.forecast.prefix_end + 1} records and jumps to the best candidate if the loss on "
             f"{acc.holdout} held-out samples does not get worse (optimizer state after a jump: "
             f"{acc.state_after_jump}). Target: the plain run's final loss after the same optimizer-step budget, "
             f"measured on {acc.measure} other held-out samples per run that never decide a jump. `steps` = "
             "optimizer steps to reach it (runs that never do count the whole budget; `reached` says how many "
             "did). Speed-ups are plain ÷ jump-ahead: the geometric mean of the per-run ratios with its paired 95% "
             "interval over the runs of every dataset seed. Wall time counts every step, forecast, held-out check "
             "and rejected jump; fitting the forecaster is not in it (one fit per dataset seed serves every run; "
             "its seconds are in the train job's log, `logs/train/<task>/<optimizer>/<model>.log`). "
             f"Goal: >= {SPEEDUP_TARGET}x sooner (in wall time where timed), interval "
             "wholly above 1, no run ending worse than plain (✓). Besides `accelerate.models`, the store's best "
             "forecaster on validation runs jumps too. Test runs only; the settings were chosen on validation "
             "runs.", ""]
    for key, path in found:
        r = json.loads(path.read_text())
        timing = "seconds" in r
        header = ["loop", "steps to target", "speed-up (steps)", "reached", "final loss (mean)", "runs worse",
                  "jumps kept / rejected"]
        if timing:
            header += ["s to target", "speed-up (wall)", "forecast ms per run"]
        m0 = next((m for m in r["models"].values() if "refused" not in m), None)
        plain_row = ["plain", _g(m0["plain_steps_to_target_mean"]) if m0 else "–", "1", "100%",
                     _g(r["plain"]["final_loss_mean"]), "–", "–"]
        if timing:
            plain_row += [_g(m0["plain_seconds_to_target_mean"]) if m0 else "–", "1", "–"]
        rows = [plain_row]
        notes = []
        for name, m in r["models"].items():
            if "refused" in m:  # the model refused this store (gfm.artifacts.refusals): its reason, no numbers
                rows.append([name, f"refused: {cell_text(m['refused'])}"] + ["–"] * (len(header) - 2))
                continue
            label = name + (" (best on validation)" if m.get("chosen", "").startswith("best") else "")
            row = [label, _g(m["steps_to_target_mean"]), _paired(m.get("speedup_steps_paired"), m["speedup_steps"]),
                   f"{m['reached']:.0%}", _g(m["final_loss_mean"]), str(m.get("worse_runs", "–")),
                   f"{m['accepted']} / {m['rejected']}"]
            if timing:
                row += [_g(m["seconds_to_target_mean"]), _paired(m.get("speedup_wall_paired"), m["speedup_wall"]),
                        _g(m.get("forecast_ms_per_attempt"))]
            if m["meets_target"]:
                row[0] += " ✓"
            rows.append(row)
            if m.get("why_not"):
                notes.append(f"- {name} does not meet the goal: {m['why_not']}.")
        cost = f", one optimizer step {r['step_ms']:.3g} ms per run" if "step_ms" in r else ""
        lines += [f"### {key} ({r['plain']['runs']} runs, budget {r['budget']} steps{cost})", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  *["| " + " | ".join(row) + " |" for row in rows], ""]
        best = r.get("best_by_validation")
        if best:
            lines += [f"Best forecaster of this store on validation runs: {best['model']} (weight MSE "
                      f"{best['val_weight_mse']:.3g} at the jump horizons).", ""]
        met = [n for n, m in r["models"].items() if m.get("meets_target")]
        lines += [f"Target met by: {', '.join(met)}." if met else "Target not met by any forecaster.", ""]
        if notes:
            lines += [*notes, ""]
    return lines


def _paired(p: dict | None, fallback: float) -> str:
    """``1.42x [1.21, 1.66]`` from a paired ratio (gfm.metrics.accelerate_summary), or the ratio of sums of results
    written before the intervals were kept."""
    if not p or p.get("ratio") is None:
        return f"{fallback:.2f}x"
    lo, hi = p.get("ci") or [None, None]
    return f"{p['ratio']:.2f}x" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")
