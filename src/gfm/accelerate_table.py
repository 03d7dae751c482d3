"""The jump-ahead table of the report: one block per store of ``accelerate.stores`` (gfm.accelerate's JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from gfm.accelerate import SPEEDUP_TARGET
from gfm.config import Params
from gfm.model_entries import cell_text
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
             f"{acc.state_after_jump}). Target: the plain run's final training loss after the same optimizer-step "
             f"budget. `steps` = optimizer steps to reach it (runs that never do count the whole budget; `reached` "
             f"says how many did), speed-up = plain steps / jump-ahead steps (goal: >= {SPEEDUP_TARGET}x with no "
             "worse final loss). Test runs only; the settings were chosen on validation runs.", ""]
    for key, path in found:
        r = json.loads(path.read_text())
        timing = "seconds" in r
        header = ["loop", "steps to target", "speed-up (steps)", "reached", "final loss (mean)", "final ≤ plain",
                  "jumps accepted / rejected"] + (["s to target", "speed-up (wall)"] if timing else [])
        m0 = next((m for m in r["models"].values() if "refused" not in m), None)
        plain_row = ["plain", _g(m0["plain_steps_to_target_mean"]) if m0 else "–", "1", "1",
                     _g(r["plain"]["final_loss_mean"]), "–", "–"]
        if timing:
            plain_row += [_g(m0["plain_seconds_to_target_mean"]) if m0 else "–", "1"]
        rows = [plain_row]
        for name, m in r["models"].items():
            if "refused" in m:  # the model refused this store (gfm.refusals): its reason, no numbers
                rows.append([name, f"refused: {cell_text(m['refused'])}"] + ["–"] * (len(header) - 2))
                continue
            row = [name, _g(m["steps_to_target_mean"]), f"{m['speedup_steps']:.2f}x" + (" ✓" if m["meets_target"] else ""),
                   f"{m['reached']:.0%}", _g(m["final_loss_mean"]), f"{m['no_worse_final']:.0%}",
                   f"{m['accepted']} / {m['rejected']}"]
            if timing:
                row += [_g(m["seconds_to_target_mean"]), f"{m['speedup_wall']:.2f}x"]
            rows.append(row)
        lines += [f"### {key} ({r['plain']['runs']} runs, budget {r['budget']} steps)", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                  *["| " + " | ".join(row) + " |" for row in rows], ""]
        met = [n for n, m in r["models"].items() if m.get("meets_target")]
        lines += [f"Target met by: {', '.join(met)}." if met else
                  f"Target ({SPEEDUP_TARGET}x fewer steps, no worse final loss) not met by any forecaster.", ""]
    return lines
