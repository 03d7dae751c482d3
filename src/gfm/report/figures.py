"""The report's figures (matplotlib, Agg backend, PNG without a timestamp so that a re-run writes the same bytes).

* :func:`store_figures`: per store, forecast error against horizon and one test run's true vs forecast
  weights (from the evaluate stage's plot CSVs);
* :func:`xlv_heatmap`: the headline, every model's final xLV on every store as one model x store grid;
* :func:`generalize_figure`: per transfer pair, each model's xLV fitted on the source vs on the target;
* :func:`accelerate_figure`: jump-ahead training, optimizer steps to the plain run's final loss and the final
  loss reached.

The numbers drawn are the ones the report's tables print, except where a figure needs an interval: then it is
the paired ratio of gfm.metrics.stats (geometric mean over dataset seeds, Student t interval on the log ratios), the
report's method for every comparison. :func:`generalize_points` is that computation without the drawing.
"""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

from gfm.metrics.model_entries import refusal
from gfm.metrics.stats import paired_ratio

__all__ = ["store_figures", "xlv_heatmap", "generalize_points", "generalize_figure", "accelerate_figure",
           "XLV_DECADES"]

XLV_DECADES = 2  # the heatmap's colours saturate 2 decades either side of xLV = 1 (the cells still print the value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.savefig(path, metadata={"Software": None})  # no version stamp: same data, same bytes
    _pyplot().close(fig)


def _plain_log_ticks(axis) -> None:
    """Tick labels of a log axis as plain numbers (0.6, not 6 x 10^-1), on the ticks matplotlib would label
    (minor ticks only where the axis spans few decades)."""
    import matplotlib.ticker as mticker

    class Plain(mticker.LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    axis.set_major_formatter(Plain())
    axis.set_minor_formatter(Plain(labelOnlyBase=False))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def store_figures(metrics: dict[str, dict], plots_dir: Path, fig_dir: Path) -> dict[str, list[str]]:
    """store key -> [error-vs-horizon PNG, trajectory PNG] (names in ``fig_dir``), from each store's
    ``<plots_dir>/<task>/<optimizer>/{mse_vs_horizon,trajectory}.csv``. Models that refused the store are not
    drawn (the tables say why)."""
    plt = _pyplot()
    figs: dict[str, list[str]] = {}
    for key, m in metrics.items():
        pdir = plots_dir / m["task"] / m["optimizer"]
        refused = {n for n, e in m["models"].items() if refusal(e) is not None}
        curves: dict[str, list[tuple[int, float]]] = {}
        for row in _read_csv(pdir / "mse_vs_horizon.csv"):
            if row["model"] not in refused:
                curves.setdefault(row["model"], []).append((int(row["step"]), float(row["mse"])))
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for name, pts in curves.items():
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("weight MSE (test runs)")
        ax.set_title(f"{m['task']} / {m['optimizer']}: forecast error vs horizon")
        if curves:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        a = f"{key}-mse.png"
        _save(fig, fig_dir / a)

        series: dict[tuple[int, str], list[tuple[int, float]]] = {}
        for row in _read_csv(pdir / "trajectory.csv"):
            if row["series"] in refused:
                continue
            series.setdefault((int(row["param"]), row["series"]), []).append((int(row["step"]), float(row["value"])))
        params_shown = sorted({p for p, _ in series})
        fig, axes = plt.subplots(1, len(params_shown), figsize=(3.2 * len(params_shown), 3), dpi=100, squeeze=False)
        for ax, p in zip(axes[0], params_shown):
            for (pp, name), pts in series.items():
                if pp != p:
                    continue
                style = {"color": "black", "lw": 2} if name == "true" else {"marker": ".", "lw": 1}
                ax.plot(*zip(*pts), label=name, **style)
            ax.set_title(f"param {p}", fontsize=9)
            ax.set_xlabel("step")
        axes[0][0].legend(fontsize=6)
        fig.suptitle(f"{m['task']} / {m['optimizer']}: one test run, true vs forecast", fontsize=10)
        fig.tight_layout()
        b = f"{key}-trajectory.png"
        _save(fig, fig_dir / b)
        figs[key] = [a, b]
    return figs


def xlv_heatmap(models: list[str], stores: list[str], xlv: list[list[float | None]], path: Path, *,
                title: str) -> None:
    """Model x store grid of final xLV (``xlv[i][j]``: model i on store j; None = not trained there).

    Colour on a log scale centred on 1 (blue: below 1, the model beats stopping at the prefix; red: above),
    saturating :data:`XLV_DECADES` decades either side; every cell prints its value. Zero, negative and
    non-finite values get no colour (grey) but still print."""
    import matplotlib.colors as mcolors
    import matplotlib.ticker as mticker
    import numpy as np

    plt = _pyplot()
    logs = [abs(math.log10(v)) for row in xlv for v in row if v is not None and math.isfinite(v) and v > 0]
    decades = min(max(max(logs, default=1.0), 1.0), XLV_DECADES)
    norm = mcolors.LogNorm(vmin=10 ** -decades, vmax=10 ** decades, clip=True)
    grid = np.array([[v if v is not None and math.isfinite(v) and v > 0 else np.nan for v in row] for row in xlv],
                    dtype=float).reshape(len(models), len(stores))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#e4e4e4")
    width = max(6.0, 2.6 + 0.68 * len(stores))  # a narrow grid still has room for its title
    fig, ax = plt.subplots(figsize=(width, 2.2 + 0.34 * len(models)), dpi=100)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    for i, row in enumerate(xlv):
        for j, v in enumerate(row):
            text = "–" if v is None else (f"{v:.2g}" if math.isfinite(v) else str(v))
            strong = v is not None and math.isfinite(v) and v > 0 and abs(math.log10(v)) > 0.6 * decades
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if strong else "black")
    ax.set_xticks(range(len(stores)), stores, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    ax.set_xticks(np.arange(len(stores) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(models) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    bar = fig.colorbar(im, ax=ax, extend="both", fraction=0.03, pad=0.01)
    bar.set_label("xLV (log scale; 1 = last_value)", fontsize=8)
    _plain_log_ticks(bar.ax.yaxis)
    bar.ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    ax.set_title(textwrap.fill(title, int(width * 12)), fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def generalize_points(data: dict, level: float) -> list[dict]:
    """What :func:`generalize_figure` draws, one row per (pair, model, fitted on): ``xlv`` (geometric mean of
    the per-seed MSE ratios to last_value on the target), its ``ci`` (``level`` t interval; NaN without one),
    the ``per_seed`` ratios and a ``note`` when there is no point (the model cannot transfer, or a seed's MSE
    has no log ratio). Pairs without per-seed values (older generalize output) fall back to the stored mean
    xLV without an interval. A model refused on a pair has no point there."""
    rows = []
    for pair in data["pairs"]:
        base = (pair.get("last_value") or {}).get("per_seed")
        for name in data["models"]:
            m = pair["models"].get(name)
            if m is None or refusal(m) is not None:
                continue
            for what in ("transfer", "in_distribution"):
                row = {"pair": f"{pair['source']} → {pair['target']}", "target": pair["target"],
                       "label": pair["label"], "model": name, "fitted_on": what, "note": m.get("error")}
                values = m[what].get("per_seed")
                if values is not None and base is not None and len(values) == len(base):
                    pr = paired_ratio(values, base, level, seeds=pair.get("dataset_seeds"))
                    row.update(xlv=pr.ratio, ci=tuple(pr.ci), per_seed=list(pr.per_seed))
                    row["note"] = row["note"] or pr.problem
                else:
                    row.update(xlv=float(m[f"{what}_xlv"]["mean"]), ci=(math.nan, math.nan), per_seed=[])
                rows.append(row)
    return rows


def generalize_figure(data: dict, level: float, path: Path) -> None:
    """Per transfer pair (x), each model's xLV fitted on the source store (filled) and on the target itself
    (hollow), with the ``level`` interval over dataset seeds and one faint dot per seed (:func:`generalize_points`)."""
    plt = _pyplot()
    rows = generalize_points(data, level)
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    models = list(data["models"])
    colours = plt.get_cmap("tab10").colors
    step = 0.8 / max(2 * len(models), 1)  # x offset between the points of one pair
    width = max(7.0, 2.8 + 2.0 * len(pairs))
    fig, ax = plt.subplots(figsize=(width, 4.6), dpi=100)
    for r in rows:
        j, k = models.index(r["model"]), 0 if r["fitted_on"] == "transfer" else 1
        x = pairs.index(r["pair"]) - 0.4 + step * (2 * j + k + 0.5)
        colour = colours[j % len(colours)]
        dots = [v for v in r["per_seed"] if math.isfinite(v) and v > 0]
        ax.plot([x] * len(dots), dots, ".", color=colour, alpha=0.35, ms=4)
        if not (math.isfinite(r["xlv"]) and r["xlv"] > 0):
            ax.annotate("cannot transfer" if r["note"] else "n/a", (x, 1), rotation=90, ha="center", va="bottom",
                        fontsize=7, color=colour)
            continue
        lo, hi = r["ci"]
        err = [[r["xlv"] - lo], [hi - r["xlv"]]] if math.isfinite(lo) and math.isfinite(hi) else None
        ax.errorbar([x], [r["xlv"]], yerr=err, fmt="o" if k == 0 else "s", color=colour, capsize=3, ms=6,
                    mfc=colour if k == 0 else "white", label=f"{r['model']} ({'transfer' if k == 0 else 'in-dist.'})")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    labels = {r["pair"]: f"→ {r['target']}\n{r['label']}" for r in rows}
    ax.set_xticks(range(len(pairs)), [labels[p] for p in pairs], fontsize=7)
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_ylabel("final xLV on the target (÷ last_value)")
    sources = sorted({p.split(" → ")[0] for p in pairs})
    ax.set_title(textwrap.fill(f"Transfer from {', '.join(sources)}: filled = fitted on the source, hollow = "
                               f"fitted on the target (geometric mean over dataset seeds, {level:.0%} t interval; "
                               "dots: seeds; dashed: last_value)", int(width * 14)), fontsize=9)
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=max(1, len(models)))
    fig.tight_layout()
    _save(fig, path)


def accelerate_figure(results: list[dict], path: Path, *, target: float) -> None:
    """Jump-ahead results of several stores (``data/metrics/accelerate`` JSONs, gfm.stages.accelerate): left, mean
    optimizer steps to the plain run's final held-out loss, plain and each forecaster's loop, with the speed-up
    over each bar and the goal (plain steps / ``target``) as a dashed segment; right, each loop's mean final
    held-out loss ÷ the plain run's (below 1: lower loss after the same budget). Refused models are left out."""
    plt = _pyplot()
    results = [{**r, "models": {n: m for n, m in r["models"].items() if "refused" not in m}} for r in results]
    models = list(dict.fromkeys(n for r in results for n in r["models"]))
    colours = plt.get_cmap("tab10").colors
    width = 0.8 / (len(models) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 4.0 + 2.6 * len(results)), 4.2), dpi=100,
                                      gridspec_kw={"width_ratios": [3, 2]})
    for i, r in enumerate(results):
        plain = next(iter(r["models"].values()))["plain_steps_to_target_mean"] if r["models"] else r["budget"]
        left.bar(i - 0.4 + width / 2, plain, width, color="#999999", label="plain" if i == 0 else None)
        left.hlines(plain / target, i - 0.42, i + 0.42, colors="black", linestyles="dashed", lw=0.9,
                    label=f"goal: {target:g}x fewer steps" if i == 0 else None)
        for j, name in enumerate(models):
            m = r["models"].get(name)
            if m is None:
                continue
            x = i - 0.4 + width * (j + 1.5)
            colour = colours[j % len(colours)]
            left.bar(x, m["steps_to_target_mean"], width, color=colour, label=name if i == 0 else None)
            left.annotate(f"{m['speedup_steps']:.2f}x", (x, m["steps_to_target_mean"]), ha="center", va="bottom",
                          fontsize=7, fontweight="bold" if m["meets_target"] else "normal")
            right.bar(i - 0.4 + 0.8 / len(models) * (j + 0.5), m["final_loss_mean"] / r["plain"]["final_loss_mean"],
                      0.8 / len(models), color=colour)
    names = [f"{r['task']}\n{r['optimizer']} ({r['plain']['runs']} runs)" for r in results]
    for ax in (left, right):
        ax.set_xticks(range(len(results)), names, fontsize=7)
    left.set_ylabel("optimizer steps to the plain run's final held-out loss")
    left.set_title("Steps to target (bold: goal met, with no worse final loss)", fontsize=9)
    left.set_ylim(0, 1.3 * left.get_ylim()[1])  # room for the legend above the bars
    left.legend(fontsize=7, loc="upper center", ncol=min(len(models) + 2, 2 * len(results) + 1))
    right.axhline(1.0, color="grey", lw=0.8, ls="--")
    right.set_ylabel("final held-out loss ÷ plain's (mean)")
    right.set_title("Final loss after the same budget", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def accelerate_curves(results: list[dict], path: Path) -> None:
    """Held-out loss against wall-clock seconds (steps where the results were not timed), one panel per store
    of the jump-ahead results: plain training in grey and each jumping forecaster's loop, median over runs
    (``curves`` of gfm.stages.accelerate's JSON), with plain training's final loss as a dashed line: where a loop's
    curve crosses it is when that loop reached the target."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    names = list(dict.fromkeys(n for r in results for n in r.get("curves", {}) if n != "plain"))
    fig, axes = plt.subplots(1, len(results), figsize=(max(6.0, 4.2 * len(results)), 3.8), dpi=100, squeeze=False)
    for ax, r in zip(axes[0], results):
        curves = r.get("curves", {})
        clock = all("seconds" in c for c in curves.values())
        key = "seconds" if clock else "step"
        for name, c in curves.items():
            colour = "#777777" if name == "plain" else colours[names.index(name) % len(colours)]
            ax.plot(c[key], c["loss"], color=colour, lw=2.0 if name == "plain" else 1.2, label=name)
        ax.axhline(r["plain"]["final_loss_median"], color="black", lw=0.8, ls="--")
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
        ax.set_xlabel("wall-clock seconds (stacked runs of one dataset seed)" if clock else "optimizer steps",
                      fontsize=8)
        ax.set_title(f"{r['task']} {r['optimizer']}" + (f" (one step {r['step_ms']:.3g} ms per run)"
                                                        if "step_ms" in r else ""), fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out loss (median over runs)")
    fig.tight_layout()
    _save(fig, path)
