"""The report's paired comparisons: every statement that one model beats another, and the tables' number format.

A comparison is a ratio of final-step weight MSEs paired over dataset seeds with a Student t interval on the
log ratios and a verdict on "ratio < threshold" (gfm.metrics.stats: met / not met / not resolved), never a comparison
of two means. Used for the paper's claims (``report.claims``, written to ``reports/claims.json`` and quoted in
the README's results block), the per-store paired-comparison tables and the generalisation comparisons.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gfm.config import Params
from gfm.metrics.model_entries import NOT_COMPUTED, cell_text, refusal, refused_cell, scored
from gfm.metrics.stats import METHOD, paired_ratio, seeds_to_resolve, verdict

__all__ = ["fmt", "table", "model_order", "paired", "claims", "write_claims", "paired_section", "generalize_paired",
           "paired_cells", "ci_text", "verdict_text", "method_line"]


def fmt(ms: dict | None, digits: int = 3) -> str:
    """``mean ± std`` in compact scientific notation; ``n/a`` for missing, ``-`` for a score over no values
    (``n`` 0: e.g. coverage when no run's draws were finite), ``inf``/``nan`` of real values shown as is."""
    if not ms:
        return "n/a"
    if ms.get("n") == 0:
        return NOT_COMPUTED
    m, s = ms["mean"], ms["std"]
    if not math.isfinite(m):
        return str(m)
    return f"{m:.{digits}g} ± {s:.2g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown (GitHub) table: header row, separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(r) + " |" for r in rows]]


def _final_per_seed(m: dict, name: str) -> list[float] | None:
    """Per-seed final-step MSE of model ``name`` in one store's metrics (None: not trained there, refused, or
    metrics written before per-seed values were kept)."""
    entry = m["models"].get(name)
    return None if entry is None or refusal(entry) is not None else entry["final_mse"].get("per_seed")


def _not_compared(m: dict, names: tuple[str, ...]) -> str | None:
    """Why the models ``names`` cannot be compared on one store (not trained there, or refused it), or None."""
    missing = [n for n in names if n not in m["models"]]
    notes = [f"{' and '.join(missing)} not trained on {m['store']}"] if missing else []
    notes += [f"{n} refused {m['store']}: {refusal(m['models'][n])}" for n in names
              if n in m["models"] and refusal(m["models"][n]) is not None]
    return "; ".join(notes) or None


def paired(m: dict, model: str, baseline: str, threshold: float, level: float, tolerance: float = 0.0) -> dict:
    """``model`` vs ``baseline`` on one store, paired by dataset seed: gfm.metrics.stats.PairedRatio as JSON plus the
    ``verdict`` on "ratio < threshold" (``unstable`` within ``tolerance`` of it: gfm.metrics.stats.verdict) and a
    ``note`` (why there is no verdict, if so)."""
    a, b = _final_per_seed(m, model), _final_per_seed(m, baseline)
    why = _not_compared(m, (model, baseline))
    if why:
        return {"ratio": None, "ci": [None, None], "n_seeds": 0, "per_seed_ratios": [], "level": level,
                "verdict": "skipped", "note": why}
    if a is None or b is None:
        return {"ratio": None, "ci": [None, None], "n_seeds": 0, "per_seed_ratios": [], "level": level,
                "verdict": "not resolved", "note": "metrics without final_mse.per_seed (re-run evaluate)"}
    pr = paired_ratio(a, b, level, seeds=m.get("dataset_seeds"))
    out = pr.to_json()
    note = out.pop("problem")
    if note is None and pr.n < 2:
        note = f"{pr.n} dataset seed(s): no interval"
    v = verdict(pr.ci, threshold, tolerance)
    if v == "unstable" and note is None:
        note = (f"the interval ends within {tolerance:.0%} of {threshold:g}, inside what another machine's "
                "round-off can move")
    need = seeds_to_resolve(pr.per_seed, threshold, level) if v == "not resolved" else None
    if need is not None and note is None:
        note = f"about {need} seeds would resolve it at this effect and spread"
    return {**out, "verdict": v, "note": note, "seeds_to_resolve": need}


def claims(params: Params, metrics: dict[str, dict]) -> list[dict]:
    """``report.claims`` checked on every store of ``report.target_task``: one row per (store, claim), paired over
    dataset seeds (gfm.metrics.stats). A claim whose models were not trained on a store, or refused it, gets verdict
    ``skipped`` and a ``note`` (with the refusal's reason). These rows are ``reports/claims.json``."""
    rows = []
    level = params.report.level
    for key, m in metrics.items():
        if m["task"] != params.report.target_task:
            continue
        for c in params.report.claims:
            text = c.text or f"{c.model} final MSE / {c.baseline} < {c.threshold:g}"
            have = scored(m["models"])
            mean = {n: (have[n]["final_mse"]["mean"] if n in have else None) for n in (c.model, c.baseline)}
            rows.append({"store": key, "task": m["task"], "optimizer": m["optimizer"], "claim": text,
                         "model": c.model, "baseline": c.baseline, "threshold": c.threshold,
                         "model_mean": _json_num(mean[c.model]), "baseline_mean": _json_num(mean[c.baseline]),
                         "dataset_seeds": list(m.get("dataset_seeds", [])),
                         **paired(m, c.model, c.baseline, c.threshold, level, params.report.tolerance),
                         "method": METHOD.format(level=level)})
    return rows


def write_claims(path: Path, rows: list[dict]) -> None:
    """``claims.json``: the rows of :func:`claims` (strict JSON: non-finite numbers are null)."""
    path.write_text(json.dumps(rows, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n")


def _json_num(v):
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def ci_text(r: dict) -> str:
    """``0.62 [0.41, 0.94]``; ``n/a`` without a ratio; the ratio alone without an interval."""
    if r.get("ratio") is None:
        return "n/a"
    lo, hi = r["ci"]
    return f"{r['ratio']:.3g}" + (f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None else " [no interval]")


def verdict_text(r: dict) -> str:
    v = r["verdict"]
    text = {"met": "met", "not met": "**not met**", "not resolved": "not resolved", "unstable": "unstable",
            "skipped": "skipped"}[v]
    return text + (f" ({cell_text(r['note'], 600)})" if r.get("note") and v != "met" else "")


def method_line(params: Params) -> str:
    return (f"Ratio = final-step weight MSE of the model ÷ the baseline's, {METHOD.format(level=params.report.level)}"
            f"; {len(params.generate.dataset_seeds)} dataset seeds. Verdict on \"ratio < threshold\": met = the "
            "whole interval is below the threshold, not met = the whole interval is at or above it, not resolved "
            f"= the interval straddles it (the seeds cannot tell), unstable = met or not met with an interval edge within "
            f"{params.report.tolerance:.0%} of the threshold (what round-off on another machine can move: README, "
            "Reproducibility). No correction for the number of claims.")


def paired_section(params: Params, metrics: dict[str, dict]) -> list[str]:
    """Per store, the paper's method (the models of ``report.claims``) and the store's best other model (lowest
    mean final MSE) against every other model: ratio [interval] and the verdict on "ratio < 1". A model that
    refused the store is no column and its row says why."""
    methods = list(dict.fromkeys(c.model for c in params.report.claims))
    lines = ["## Paired comparisons (final-step weight MSE)", "",
             "Each cell: final MSE of the column model ÷ the row model, paired over dataset seeds "
             f"(geometric mean [{params.report.level:.0%} t interval on the log ratios]) and the verdict on "
             "\"column model beats row model\" (ratio < 1). Columns: the paper's method"
             + (f" ({', '.join(f'`{n}`' for n in methods)})" if methods else " (none declared in report.claims)")
             + " and the store's best other model by mean final MSE.", ""]
    any_table = False
    for key, m in metrics.items():
        have = scored(m["models"])
        names = [n for n in model_order(params) if n in have]
        refs = [n for n in methods if n in have]
        others = [n for n in names if n not in refs]
        finite = [n for n in others if math.isfinite(have[n]["final_mse"]["mean"])]
        best = min(finite, key=lambda n: have[n]["final_mse"]["mean"]) if finite else None
        cols = refs + ([best] if best else [])
        if not cols or len(names) < 2:
            continue
        rows = []
        for n in [n for n in model_order(params) if n in m["models"]]:
            if n not in have:
                rows.append([n, refused_cell(refusal(m["models"][n])), *["refused"] * (len(cols) - 1)])
                continue
            cells = []
            for ref in cols:
                if ref == n:
                    cells.append("—")
                    continue
                r = paired(m, ref, n, 1.0, params.report.level, params.report.tolerance)
                cells.append(f"{ci_text(r)} {verdict_text(r)}")
            rows.append([n, *cells])
        header = ["vs (row)", *[f"{c}" + (" (best other)" if c == best else "") for c in cols]]
        lines += [f"### {key}", ""] + table(header, rows) + [""]
        any_table = True
    return lines if any_table else []


def model_order(params: Params) -> list[str]:
    """Every model trained on any store, train.models first."""
    names = list(params.train.models)
    for key in params.stores:
        names += [n for n in params.store_models(key) if n not in names]
    return names


def generalize_paired(params: Params, data: dict) -> list[str]:
    """The comparisons the transfer table invites, paired over the target's dataset seeds: each model's transfer
    ÷ in-distribution MSE (the cost of transfer; "< 1" = transfer beats fitting on the target), and on transfer,
    the paper's method (report.claims models; when none is transferred, the last of generalize.models) ÷ every
    other transferred model ("< 1" = it transfers better). A model refused on a pair gets one row saying why and
    no comparison."""
    level, tol = params.report.level, params.report.tolerance
    methods = [n for n in dict.fromkeys(c.model for c in params.report.claims) if n in data["models"]]
    if not methods and len(data["models"]) > 1:
        methods = [data["models"][-1]]
    rows = []
    for pair in data["pairs"]:
        name = f"{pair['source']} → {pair['target']}"
        seeds = pair.get("dataset_seeds")
        have = scored(pair["models"])
        per = {n: {w: e[w].get("per_seed") for w in ("transfer", "in_distribution")} for n, e in have.items()}
        for n in data["models"]:
            if n not in have:
                rows.append([name, n, "n/a", f"skipped ({refused_cell(refusal(pair['models'].get(n)) or 'no result')})"])
                continue
            rows.append([name, f"{n} transfer ÷ {n} in-dist.", *paired_cells(per[n]["transfer"],
                                                                            per[n]["in_distribution"], seeds, level,
                                                                            tol)])
        for a in methods:
            for b in data["models"]:
                if b != a and a in have and b in have:
                    rows.append([name, f"{a} ÷ {b} (transfer)",
                                 *paired_cells(per[a]["transfer"], per[b]["transfer"], seeds, level, tol)])
    if not rows:
        return []
    return ["Paired over the target's dataset seeds (" + METHOD.format(level=level) + "); verdict on ratio < 1:", ""] \
        + table(["source → target", "comparison", "ratio [interval]", "verdict"], rows) + [""]


def paired_cells(a: list[float] | None, b: list[float] | None, seeds, level: float, tolerance: float = 0.0) -> list[str]:
    if a is None or b is None:
        return ["n/a", "not resolved (metrics without per_seed; re-run generalize)"]
    pr = paired_ratio(a, b, level, seeds=seeds)
    r = {**pr.to_json(), "verdict": verdict(pr.ci, 1.0, tolerance)}
    r["note"] = r.pop("problem")
    return [ci_text(r), verdict_text(r)]


def uncertainty_section(metrics: dict[str, dict]) -> list[str]:
    """Markdown table of the sampled forecasts' scores (evaluate's ``uncertainty``), one row per (store, model)
    that sampled; empty when none did. A 90% interval is called calibrated when it covers 0.85-0.95. The scores
    are over the runs whose draws are all finite; ``non-finite draws`` counts the others (``-`` scores: no run
    had finite draws)."""
    rows = []
    for key, m in metrics.items():
        for name, e in scored(m["models"]).items():
            u = e.get("uncertainty")
            if u is None:
                continue
            loss = u.get("loss") or {}
            rows.append([key, name, str(u["samples"]), str(u.get("nonfinite_draw_runs", 0)),
                         fmt(u["coverage_50"], 2), fmt(u["coverage_90"], 2), _calibrated(u["coverage_90"]),
                         fmt(u["crps"]), fmt(loss.get("coverage_90"), 2), fmt(loss.get("crps"))])
    if not rows:
        return []
    return ["## Uncertainty: sampled final weights", "",
            "Models that sample give draws of each test run's final weights, their spread calibrated to 90% "
            "coverage on validation runs. Coverage = share of the true final weights inside the draws' central "
            "50% / 90% interval; CRPS in weight units (lower is better; equals the mean absolute error of a point "
            "forecast); `loss` = the same for the training loss the draws reach. Mean ± std over dataset seeds, "
            "over the test runs whose draws are all finite: `non-finite draws` counts the runs with a non-finite "
            "draw (their point forecasts are scored above; `-`: no run had finite draws).",
            ""] + table(["store", "model", "draws", "non-finite draws", "coverage 50%", "coverage 90%",
                         "90% within 0.85-0.95", "CRPS", "loss coverage 90%", "loss CRPS"], rows) + [""]


def _calibrated(coverage_90: dict) -> str:
    """``yes`` when the mean 90% coverage lies in 0.85-0.95, ``no`` otherwise, ``-`` without a score."""
    c90 = coverage_90.get("mean")
    if fmt(coverage_90) == NOT_COMPUTED or not isinstance(c90, (int, float)) or not math.isfinite(c90):
        return NOT_COMPUTED
    return "yes" if 0.85 <= c90 <= 0.95 else "no"
