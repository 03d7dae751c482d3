"""What the report says about how every learned model was trained: budget, tuning, validation curves.

Reads the train stage's ``data/models/<task>/<optimizer>/<model>/summary.json`` and ``<seed>/train_log.csv``
(never a test run: the train stage reads none) and builds

* one table per store: the shared budget, the updates each model actually used, whether its validation
  curve had flattened, the trials of its search and the options it chose (:func:`protocol_section`); a model
  that refused the store (``refused.json`` instead of weights) has a row saying why;
* one figure per store: every learned model's validation score against updates on the tuning seed
  (:func:`val_curve_figures`), so a reader can see that no model ran out of budget while still improving.

"Flattened" (:func:`flattened`): the fit stopped on patience before the budget ran out, or the last quarter
of the budget brought less than ``FLAT_SHARE`` of the fit's whole improvement in validation score (first
score to best). A relative criterion ("the best score fell by < 2% in the last quarter") would call a curve
that is converging geometrically to zero (full-batch least squares) unfinished forever, and the cosine decay
of the learning rate gives every fit some late gain; the share of the total gain measures diminishing returns.
Whether a larger budget would change the comparison is measured directly in BENCHMARKS.md ("Training budget").
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from gfm.config import Params
from gfm.metrics.model_entries import refusal_of, refused_cell

__all__ = ["FLAT_SHARE", "load_summaries", "load_refusals", "read_log", "flattened", "protocol_section",
           "val_curve_figures"]

FLAT_SHARE = 0.05  # share of a fit's whole validation improvement that its last quarter of budget may bring


def load_summaries(params: Params, models_dir: Path) -> dict[str, dict[str, dict]]:
    """store key -> model -> summary.json of every *learned* model (``budget_steps`` set) that was trained."""
    out: dict[str, dict[str, dict]] = {}
    for key, st in params.stores.items():
        for name in params.store_models(key):
            path = models_dir / st.task / st.optimizer.name / name / "summary.json"
            if not path.is_file():
                continue
            summary = json.loads(path.read_text())
            if summary.get("budget_steps"):
                out.setdefault(key, {})[name] = summary
    return out


def load_refusals(params: Params, models_dir: Path) -> dict[str, dict[str, str]]:
    """store key -> model -> reason, for every model that refused its store at train time."""
    out: dict[str, dict[str, str]] = {}
    for key, st in params.stores.items():
        for name in params.store_models(key):
            reason = refusal_of(models_dir / st.task / st.optimizer.name / name)
            if reason is not None:
                out.setdefault(key, {})[name] = reason
    return out


def read_log(path: Path) -> list[dict[str, float]]:
    """A train_log.csv as numbers (empty cells -> NaN)."""
    with path.open() as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def flattened(log: list[dict[str, float]], budget: int) -> bool:
    """Whether a validation curve had flattened before the budget ran out (module docstring)."""
    rows = [r for r in log if math.isfinite(r.get("val_loss", math.nan))]
    if not rows:
        return False
    if int(rows[-1].get("step", 0)) < budget:
        return True  # stopped on patience
    best = min(r["val_loss"] for r in rows)
    before = [r["val_loss"] for r in rows if r["step"] <= 0.75 * budget]
    if not before:
        return False
    gain = rows[0]["val_loss"] - best
    return gain <= 0 or min(before) - best < FLAT_SHARE * gain


def _options_text(options: dict) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(options.items()))


def protocol_section(params: Params, models_dir: Path) -> list[str]:
    """Markdown: the training protocol and, per store, each learned model's budget use and tuning."""
    summaries = load_summaries(params, models_dir)
    refusals = load_refusals(params, models_dir)
    b, t = params.train.budget, params.train.tuning
    lines = ["## Training protocol (every learned model alike)", "",
             f"Budget: {b.steps} optimizer updates per fit (AdamW, cosine decay, gradient-norm clip), validation "
             f"score every {b.eval_every} updates (weight MSE of the validation runs' forecasts, mean over horizons), "
             f"stop after {b.patience} scores without improvement, best state kept. Tuning: "
             + (f"{t.trials} option sets per model drawn from `train.tuning.space`, fitted on one dataset seed "
                f"({'the first' if t.dataset_seed is None else t.dataset_seed}) and chosen by validation weight MSE "
                "at the final horizon; the choice is reused for every seed. Test runs are read only by evaluate."
                if t.trials else "none (`train.tuning.trials: 0`): the `models:` options as given."),
             "", f"'flattened': seeds whose validation curve had flattened before the budget ran out: stopped on "
                 f"patience, or the last quarter of the budget brought less than {FLAT_SHARE:.0%} of the fit's whole "
                 "improvement in validation score.", ""]
    if not summaries and not refusals:
        return lines + ["No learned model was trained.", ""]
    for key in [k for k in params.stores if k in summaries or k in refusals]:
        rows = []
        for name in params.store_models(key):
            if name in refusals.get(key, {}):
                rows.append([name, refused_cell(refusals[key][name]), "-", "-", "-"])
            elif name in summaries.get(key, {}):
                rows.append(_learned_row(params, models_dir, key, name, summaries[key][name]))
        lines += [f"### {key}", "",
                  "| model | budget (updates) | updates used | flattened | chosen options |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return lines


def _learned_row(params: Params, models_dir: Path, key: str, name: str, s: dict) -> list[str]:
    """One learned model's row of :func:`protocol_section` from its summary.json ``s``."""
    budget = int(s["budget_steps"])
    seeds = s.get("seeds", {})
    used = [int(e.get("steps_used", 0)) for e in seeds.values()]
    st = params.stores[key]
    logs = [models_dir / st.task / st.optimizer.name / name / seed / "train_log.csv" for seed in seeds]
    flat = sum(flattened(read_log(log), budget) for log in logs if log.is_file())
    tuning = s.get("tuning")
    if tuning:
        scores = ", ".join(f"{tr['val_final_mse']:.3g}" for tr in tuning["trials"])
        chosen = f"{_options_text(tuning['chosen_options'])} (trial {tuning['chosen'] + 1} of " \
                 f"{len(tuning['trials'])}; val scores {scores})"
    else:
        chosen = "not tuned"
    return [name, str(budget), f"{min(used)}-{max(used)}" if used else "-", f"{flat}/{len(seeds)}", chosen]


def val_curve_figures(params: Params, models_dir: Path, fig_dir: Path) -> dict[str, str]:
    """store key -> PNG name: each learned model's validation score vs updates on the tuning seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    for key, models in load_summaries(params, models_dir).items():
        st = params.stores[key]
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        drawn = 0
        for name, s in models.items():
            seed = str((s.get("tuning") or {}).get("dataset_seed") or sorted(s.get("seeds", {"0": 0}), key=int)[0])
            path = models_dir / st.task / st.optimizer.name / name / seed / "train_log.csv"
            if not path.is_file():
                continue
            log = [r for r in read_log(path) if math.isfinite(r.get("val_loss", math.nan))]
            if not log:
                continue
            ax.plot([r["step"] for r in log], [r["val_loss"] for r in log], marker=".", ms=3, label=name)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.axvline(params.train.budget.steps, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("optimizer updates (dashed: the budget)")
        ax.set_ylabel("val weight MSE (mean over horizons)")
        ax.set_title(f"{st.task} / {st.optimizer.name}: validation curves (tuning seed)", fontsize=10)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        name = f"{key}-val-curves.png"
        fig.savefig(fig_dir / name, metadata={"Software": None})
        plt.close(fig)
        out[key] = name
    return out
