"""Stage ``evaluate``: score every model's forecasts of one store against the recorded truth.

Per (task, optimizer, model), on the non-diverged test runs of each dataset seed:

* weight MSE (mean over parameters and runs) at every horizon, then mean ± std over dataset seeds;
* final-step MSE, also as a ratio to ``last_value`` on the same runs (xLV; < 1 beats "stop here") and as the
  median over runs (a few exploding forecasts dominate a mean); ``final_mse.per_seed`` keeps the per-seed
  values (one per entry of ``dataset_seeds``, in that order, which is ``generate.dataset_seeds`` order) for
  the report's paired comparisons (gfm.metrics.stats);
* downstream: the forecast final weights are loaded into the task's network and its training loss (and
  accuracy for classification) is measured on each run's own data (regenerated from the run's seeds);
  reported beside the truly trained final loss, the prefix-end loss, and the share of the remaining loss drop
  the forecast recovers, (L_prefix - L_forecast) / (L_prefix - L_final), computed from per-seed means;
* uncertainty, for models whose forecast store holds draws of the final weights (gfm_function): coverage of
  the draws' central 50% and 90% intervals and the CRPS (gfm.metrics.uncertainty), of the final weights and of the
  training loss the draws reach, under ``uncertainty`` (keys ``coverage_50``, ``coverage_90``, ``crps``,
  ``loss``).

A model that refused the store (``<model>.refused.json`` in the forecast directory, gfm.artifacts.refusals) appears as
``models[<model>] = {"refused": "<reason>"}`` and nothing else; the others are scored as usual. A store every
model refused still gets a valid metrics file: its counts and reference block, and only refusals under
``models`` (and plot CSVs with no model rows). Of sampled draws, only the runs whose draws are all finite are
scored; ``uncertainty.nonfinite_draw_runs`` counts the rest.

Outputs: ``data/metrics/<task>/<optimizer>.json`` and, under ``data/plots/<task>/<optimizer>/``,
``mse_vs_horizon.csv`` and ``trajectory.csv`` (long format), all DVC-cached. The report draws them; the
headline stage (gfm.report.headline) condenses them into what ``dvc metrics`` / ``dvc plots`` show.

Usage::

    gfm evaluate --params params.yaml --store mlp_regression-sgd --in data/trajectories/mlp_regression/sgd.zarr \\
        --split data/splits/mlp_regression/sgd.json --forecasts data/forecasts/mlp_regression/sgd \\
        --metrics data/metrics/mlp_regression/sgd.json --plots data/plots/mlp_regression/sgd
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from gfm.artifacts.outputs import (
    METRICS,
    PLOTS,
    claim_output,
    discard_temp,
    open_temp_dir,
    replace_output,
    write_json_output,
)
from gfm.artifacts.refusals import forecast_refusal_path, read_refusal
from gfm.artifacts.verdict import READ_BYTES
from gfm.base.errors import GFMError, shorten
from gfm.config import Params
from gfm.metrics.uncertainty import covered, crps
from gfm.stages.forecast import open_forecasts, read_split, test_runs
from gfm.stages.runs import RunId, setup_run
from gfm.store.reader import open_trajectories, read_runs
from gfm.tasks import make_task
from gfm.tasks.recorded import recorded_task

__all__ = ["run", "mean_std", "downstream_losses", "uncertainty_scores"]


def mean_std(values: list[float] | np.ndarray) -> dict[str, float]:
    """Mean and population std over dataset seeds (non-finite values propagate: they are reported, not hidden)."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


@torch.no_grad()
def downstream_losses(task, setups, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-run training loss (and accuracy for classification) of flat weights ``theta`` (run, param)."""
    x = torch.stack([s.x for s in setups])
    y = torch.stack([s.y for s in setups])
    t = torch.as_tensor(theta, dtype=torch.float32)
    loss = task.loss(t, x, y).numpy()
    acc = task.accuracy(t, x, y)
    return loss, (None if acc is None else acc.numpy())


def uncertainty_scores(task, setups, draws: np.ndarray, true_w: np.ndarray, true_loss: np.ndarray,
                       seed_of: np.ndarray, seeds: list[int]) -> dict:
    """Coverage of the central 50% and 90% intervals and the CRPS (gfm.metrics.uncertainty) of sampled final weights
    ``draws`` (run, draw, param) against the true final weights, pooled over parameters within a run, and of
    the training loss those draws reach against the run's true final loss; each as mean +- std over dataset
    seeds of the per-seed means (``seed_of``: each run's dataset seed; ``seeds``: their order).

    Only runs whose draws are all finite are scored (a non-finite draw has no interval or CRPS to speak of);
    ``nonfinite_draw_runs`` counts the others, and a seed with none left drops out of the mean (``n`` counts
    the seeds scored; all-NaN scores with ``n`` 0 when no run is)."""
    finite = np.isfinite(draws.reshape(len(draws), -1)).all(axis=1)
    keep = np.flatnonzero(finite)
    scored = [s for s in seeds if (seed_of[keep] == s).any()]

    def per_seed(v: np.ndarray) -> list[float]:
        return [float(np.mean(v[seed_of[keep] == s])) for s in scored]

    def summary(values: list[float]) -> dict:
        return mean_std(values) if values else {"mean": float("nan"), "std": float("nan"), "n": 0}

    def scores(x: np.ndarray, y: np.ndarray) -> dict:
        if not keep.size:
            return {k: summary([]) for k in ("coverage_50", "coverage_90", "crps")}
        per_run = lambda v: v.reshape(len(v), -1).mean(1)  # noqa: E731 - (run, ...) -> (run,)
        return {"coverage_50": summary(per_seed(per_run(covered(x, y, 0.5)))),
                "coverage_90": summary(per_seed(per_run(covered(x, y, 0.9)))),
                "crps": summary(per_seed(per_run(crps(x, y))))}

    n_draws = draws.shape[1]
    kept, kept_setups = draws[keep], [setups[i] for i in keep] if task is not None else []
    out = {"samples": int(n_draws), "nonfinite_draw_runs": int((~finite).sum()), **scores(kept, true_w[keep])}
    if task is None:  # no network to score the draws with on the run's own data (a declared store without it)
        return out
    loss = (np.stack([downstream_losses(task, kept_setups, kept[:, j])[0] for j in range(n_draws)], 1) if keep.size
            else None)  # (run, draw)
    return {**out, "loss": scores(loss, true_loss[keep])}


def run(params: Params, *, store_key: str, store: Path, split: Path, forecasts: Path, metrics: Path,
        plots: Path) -> dict:
    """Evaluate every model trained on one store; write metrics JSON and plot CSVs."""
    claim_output(plots, PLOTS)  # before any work: outputs this stage may not replace are refused (gfm.artifacts.outputs)
    claim_output(metrics, METRICS)
    spec, task_cfg = params.lookup_store(store_key)
    ts = open_trajectories(store)
    by_seed, skipped = test_runs(read_split(split, store=ts))
    runs = np.array([r for s in sorted(by_seed, key=int) for r in by_seed[s]], dtype=np.int64)
    seed_of = np.array([int(s) for s in sorted(by_seed, key=int) for _ in by_seed[s]], dtype=np.int64)
    if runs.size == 0:
        raise GFMError(f"{split}: no non-diverged test runs to evaluate")
    horizons = list(params.forecast.horizons)
    k = params.forecast.prefix_end
    # whole test runs, as many as fit READ_BYTES at a time, keeping only the horizon and prefix-end records:
    # memory is bounded by that, not by the test set (BENCHMARKS.md "Bounded memory"); not one write block at a
    # time, which is one run of a recorded store, and a read call per run
    block = max(1, READ_BYTES // (4 * ts.n_records * ts.n_params))
    truth_parts, prefix_parts = [], []
    for start in range(0, runs.size, block):
        w = read_runs(ts.weights, runs[start : start + block])  # (block, record, param)
        truth_parts.append(w[:, horizons])
        prefix_parts.append(w[:, k])
        del w
    truth = np.concatenate(truth_parts)  # (run, horizon, param)
    w_prefix = np.concatenate(prefix_parts)  # (run, param)
    losses = read_runs(ts.loss, runs)  # (run, record)
    true_loss_final, loss_prefix = losses[:, -1], losses[:, k]
    task, setups, absent = _downstream_data(params, spec, task_cfg, ts, runs, seed_of)
    present = set(seed_of.tolist())
    seeds = [int(s) for s in params.generate.dataset_seeds if int(s) in present]  # params order: per_seed lists
    seeds += sorted(present - set(seeds))
    masks = {s: seed_of == s for s in seeds}

    def per_seed(v: np.ndarray) -> list[float]:
        return [float(np.mean(v[masks[s]])) for s in seeds]

    final_true_w = truth[:, -1]
    reference: dict = {}
    if task is not None:
        loss_final_eval, acc_final = downstream_losses(task, setups, final_true_w)
        loss_prefix_eval, acc_prefix = downstream_losses(task, setups, w_prefix)
        if task_cfg.kind == "recorded":  # the store's loss is the user's (minibatch, training set): the
            true_loss_final, loss_prefix = loss_final_eval, loss_prefix_eval  # references are on the same data
        reference = {"true_final_loss": mean_std(per_seed(true_loss_final)),
                     "prefix_loss": mean_std(per_seed(loss_prefix))}
        if acc_final is not None:
            reference["true_final_accuracy"] = mean_std(per_seed(acc_final))
            reference["prefix_accuracy"] = mean_std(per_seed(acc_prefix))

    models: dict[str, dict] = {}
    curves: list[dict] = []
    traj_rows: list[dict] = []
    plot_run = 0  # first test run of the first seed
    n_show = min(params.evaluate.trajectory_params, ts.n_params)
    show_params = np.unique(np.linspace(0, ts.n_params - 1, n_show).round().astype(int))
    for name in params.store_models(store_key):
        reason = _refusal(forecasts, name)
        if reason is not None:  # the model refused the store: listed with its reason, nothing to score
            models[name] = {"refused": reason}
            continue
        fs = open_forecasts(forecasts / f"{name}.zarr")  # refuses missing or non-finite chunks (gfm check's rules)
        _check_fits(fs, horizons=horizons, prefix_end=k, runs=runs, n_params=ts.n_params)
        order = {int(r): i for i, r in enumerate(fs.store_index)}
        pred = fs.weights[[order[int(r)] for r in runs]]  # (run, horizon, param), aligned with `runs`
        se = ((pred.astype(np.float64) - truth) ** 2).mean(axis=2)  # (run, horizon)
        by_h = {str(h): mean_std(per_seed(se[:, j])) for j, h in enumerate(horizons)}
        final_se = se[:, -1]
        entry = {
            "final_mse": {**mean_std(per_seed(final_se)), "per_seed": per_seed(final_se)},
            "final_mse_median_run": float(np.median(final_se)),
            "mse_by_horizon": by_h,
            "nonfinite_runs": int((~np.isfinite(final_se)).sum()),
            "_per_seed_final": per_seed(final_se),
        }
        if task is not None:
            loss_fc, acc_fc = downstream_losses(task, setups, pred[:, -1])
            drop_true = np.array(per_seed(loss_prefix)) - np.array(per_seed(true_loss_final))
            drop_fc = np.array(per_seed(loss_prefix)) - np.array(per_seed(loss_fc))
            entry["downstream"] = {"loss": mean_std(per_seed(loss_fc)),
                                   "recovered": mean_std(np.where(drop_true != 0, drop_fc / np.where(drop_true != 0, drop_true, 1), np.nan))}
            if acc_fc is not None:
                entry["downstream"]["accuracy"] = mean_std(per_seed(acc_fc))
        if fs.samples is not None:
            draws = fs.samples[[order[int(r)] for r in runs]]  # (run, draw, param), aligned with `runs`
            entry["uncertainty"] = uncertainty_scores(task, setups, draws, final_true_w, true_loss_final, seed_of,
                                                      seeds)
        models[name] = entry
        for h in horizons:
            curves.append({"model": name, "horizon": h, "step": h * ts.record_every,
                           "mse": by_h[str(h)]["mean"], "mse_std": by_h[str(h)]["std"]})
        for p in show_params:
            for j, h in enumerate(horizons):
                traj_rows.append({"param": int(p), "step": h * ts.record_every, "series": name,
                                  "value": float(pred[plot_run, j, p])})
    scored = [entry for entry in models.values() if "refused" not in entry]
    if "last_value" in models and "refused" not in models["last_value"]:
        base = np.array(models["last_value"]["_per_seed_final"])
        for entry in scored:
            entry["final_xlv"] = mean_std(np.array(entry["_per_seed_final"]) / base)
    for entry in scored:
        entry.pop("_per_seed_final")

    true_traj = read_runs(ts.weights, runs[plot_run : plot_run + 1])[0]  # (record, param): one whole run
    for p in show_params:
        for j in range(ts.n_records):
            traj_rows.append({"param": int(p), "step": j * ts.record_every, "series": "true",
                              "value": float(true_traj[j, p])})

    result = {
        "store": store_key, "task": spec.task, "optimizer": spec.optimizer.name, "kind": task_cfg.kind,
        "prefix_end": k, "horizons": horizons, "record_every": ts.record_every, "dataset_seeds": seeds,
        "counts": {"test_runs": int(runs.size), "skipped_diverged_test_runs": skipped,
                   "diverged_runs_in_store": int(ts.runs["diverged"].sum()), "runs_in_store": ts.n_runs},
        "reference": reference, "models": models,
    }
    if task is None:
        result["downstream_absent"] = absent
    # plots first, metrics last: a metrics file is only ever newer than the plots it summarises
    _write_plots(plots, curves, traj_rows)
    _write_json(metrics, result)
    return result


def _downstream_data(params: Params, spec, task_cfg, ts, runs: np.ndarray, seed_of: np.ndarray):
    """The network and each test run's own data that downstream metrics are computed with: ``(task, setups,
    "")``, or ``(None, [], reason)`` when the store cannot give them. A generated run's data is regenerated from
    its seeds; a declared store's is its held-out evaluation data (``eval/x``, ``eval/y``) through the network
    rebuilt from its layout, activation and loss (gfm.tasks.recorded), never another task's data."""
    if task_cfg.kind != "recorded":
        task = make_task(task_cfg)
        index = ts.runs["index"]
        return task, [setup_run(task, spec.optimizer, params.seed, RunId(int(seed_of[i]), int(index[r])),
                                task_name=spec.task) for i, r in enumerate(runs)], ""
    task, reason = recorded_task(dict(ts.attrs), ts.layout, ts.has_eval_data)
    if task is None:
        return None, [], reason
    x, y = ts.eval_data(runs)  # (run, sample, ...), in the order of ``runs``
    return task, [SimpleNamespace(x=torch.from_numpy(x[i]), y=torch.from_numpy(y[i])) for i in range(runs.size)], ""


def _refusal(forecasts: Path, name: str) -> str | None:
    """The reason model ``name`` refused the store, from the forecast directory's ``<name>.refused.json``
    (gfm.artifacts.refusals), or None when it forecast."""
    path = forecast_refusal_path(forecasts, name)
    if not path.exists() and not path.is_symlink():
        return None
    if (forecasts / f"{name}.zarr").exists():
        raise GFMError(f"{forecasts}: holds both {name}.zarr and {path.name}; a forecast directory holds one "
                       "of them per model; re-run forecast")
    return read_refusal(path, model=name)["refused"]


def _check_fits(fs, *, horizons: list[int], prefix_end: int, runs: np.ndarray, n_params: int) -> None:
    """Refuse a forecast store that is sound on its own but not a forecast of these test runs: other horizons,
    prefix end or runs, or weights of another network size (they would be scored against the wrong truth)."""
    if fs.horizons != horizons or fs.attrs.get("prefix_end") != prefix_end:
        raise GFMError(f"{fs.path}: forecasts from prefix end {shorten(fs.attrs.get('prefix_end'), 20)} at horizons "
                       f"{shorten(fs.horizons)}; params ask for {prefix_end} and {horizons}; re-run forecast")
    if not np.array_equal(np.sort(fs.store_index), np.sort(runs)):
        raise GFMError(f"{fs.path}: forecasts do not cover the same test runs ({fs.store_index.size} forecast, "
                       f"{runs.size} non-diverged test runs in the split); re-run forecast")
    if fs.weights.shape[2] != n_params:
        raise GFMError(f"{fs.path}: forecasts hold {fs.weights.shape[2]} parameters per run; the trajectory store's "
                       f"runs have {n_params}; re-run forecast on this store")


def _write_json(path: Path, data: dict) -> None:
    write_json_output(path, METRICS, data)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({c: (f"{row[c]:.9g}" if isinstance(row[c], float) else row[c]) for c in columns})


def _write_plots(directory: Path, curves: list[dict], traj: list[dict]) -> None:
    tmp = open_temp_dir(directory, PLOTS)
    try:
        _write_csv(tmp / "mse_vs_horizon.csv", curves, ["model", "horizon", "step", "mse", "mse_std"])
        _write_csv(tmp / "trajectory.csv", traj, ["param", "step", "series", "value"])
    except BaseException:
        discard_temp(tmp)
        raise
    replace_output(tmp, directory, PLOTS)
