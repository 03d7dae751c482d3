"""Stage ``accelerate``: jump-ahead training. Train a network and, every K optimizer steps, forecast where its
weights will be with a trained forecaster and jump there, keeping the jump only if the loss on held-out data
does not get worse.

One job per store of ``accelerate.stores``. For the first ``accelerate.runs`` test runs of every dataset seed
(runs the forecasters never saw), the run is re-trained from its own seeds (params ``seed``; same init, same
hyper-parameters) three ways, all runs of one dataset seed stacked as in the generator:

* ``plain``: ``budget`` optimizer steps of the store's optimizer on ``n_samples`` training samples;
* one loop per model of ``accelerate.models`` (the fit of that dataset seed, ``data/models/...``): the same
  steps and minibatches, plus, at every K-th step (K = ``accelerate.every``), a jump attempt:

  1. the prefix is the run's last ``prefix_end + 1`` records (every ``record_every`` steps, weights, lr and
     optimizer state), relabelled as records 0..prefix_end. The forecasters were fitted on prefixes that
     start at initialisation; later windows are treated as if training had started at the window's first
     record (exact for a time-homogeneous optimizer such as SGD or momentum with a constant lr, an
     approximation otherwise). A run that jumped needs ``prefix_end`` new records before its next attempt;
  2. the forecaster predicts the weights at each candidate horizon of ``accelerate.horizons``;
  3. the candidate with the lowest loss on ``holdout`` held-out samples of the run's own data distribution
     (never trained on) is taken if that loss is not above the held-out loss of the current weights; else the
     run rolls back (keeps its weights) and simply continues;
  4. after a jump the optimizer state is kept (``state_after_jump: keep``: the momentum direction of the
     recent steps stays a good direction near the forecast) or zeroed (``reset``: Adam's bias correction
     restarts); the lr schedule follows the run's virtual step, optimizer steps plus steps jumped over.

Reported per store and per loop (``data/metrics/accelerate/<task>/<optimizer>.json``, a DVC metric): optimizer steps
and wall-clock to reach the plain run's final *training* loss (full training set), the final training loss
after the same budget, accepted and rejected jumps; the speed-up is plain steps / jump-ahead steps. Wall-clock
counts the training loop, forecasts and held-out checks, not the per-step monitoring of the training loss.

Usage::

    gfm accelerate --params params.yaml --store mlp_regression-sgd --split data/splits/mlp_regression/sgd.json \\
                   --models data/models/mlp_regression/sgd --out data/metrics/accelerate/mlp_regression/sgd.json
    gfm accelerate ... --runs val          # the same on validation runs (for choosing K, horizons, holdout)
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gfm.artifacts.outputs import ACCELERATE, claim_output, write_json_output
from gfm.artifacts.refusals import REFUSED_FILE, read_refusal
from gfm.base.errors import GFMError
from gfm.base.seeds import hashed_seed
from gfm.config import Params, TaskConfig, to_dict
from gfm.core.optimizers import init_state, lr_multiplier, update
from gfm.forecasters import Forecaster, Trajectories, read_model
from gfm.metrics.accelerate_summary import (
    CANNOT_JUMP,
    SPEEDUP_TARGET,
    best_by_validation,
    curve,
    summarise,
    why_not,
)
from gfm.stages.runs import RunId, epoch_orders, run_ids, setup_run
from gfm.stages.split import SplitError, read_split
from gfm.tasks import Task, make_task

__all__ = ["run", "simulate_jumps", "summarise", "AccelerateError", "SPEEDUP_TARGET"]



class AccelerateError(GFMError, ValueError):
    """Missing split, model or a forecaster that does not fit the accelerate settings."""


def _batch_seed(seed: int, task_name: str, run: RunId) -> int:
    return hashed_seed("accelerate", int(seed), task_name, run.dataset_seed, run.index)


def setup_runs(task_cfg: TaskConfig, opt, seed: int, runs: list[RunId], *, holdout: int, budget: int,
               task_name: str, measure: int = 0) -> dict:
    """Training data, held-out data, init, hyper-parameters and minibatch order of ``runs``, stacked.

    Each run draws one pool of ``n_samples + holdout + measure`` samples from its own data stream
    (``task_name``'s streams, gfm.stages.runs): the first ``n_samples`` train it, the next ``holdout`` are held out --
    never in a minibatch, only deciding whether a jump is kept -- and the last ``measure`` are held out from
    both: the loss the experiment reports is measured on them, so a jump chosen on the ``holdout`` samples is
    not also graded on them. One draw of the task, so the held-out samples come from the
    run's own distribution (its regression target, class means or image set: "drawn like its training data")
    while occupying a disjoint segment of the stream: independent samples given that distribution, and for
    image tasks (a permutation of the image set) never the same image. Why not a separate stream: the tasks
    draw their target function and their samples from one generator, so a second generator would also draw a
    second target. The learning-rate scale (least squares' 1 / lambda_max) is computed on the training samples
    only. Initial weights and hyper-parameters are the stored run's; so are the training samples of image tasks
    (a prefix of the same permutation); for the synthetic regression the target is drawn after the inputs, so
    it differs from the stored run's. tests/test_leakage.py checks the held-out rows against both.

    Returns:
        x (run, n, ...), y (run, n), xh (run, holdout, ...), yh (run, holdout), xm (run, measure, ...),
        ym (run, measure), w0 (run, param), hyper {name: (run, 1)}, orders (run, epoch, n), the task.
    """
    n = task_cfg.n_samples
    task = make_task(task_cfg)
    pool_task = make_task(dataclasses.replace(task_cfg, n_samples=n + holdout + measure))
    setups = [setup_run(pool_task, opt, seed, r, task_name=task_name) for r in runs]
    per_epoch = math.ceil(n / task_cfg.batch_size) if task_cfg.batch_size else 1
    epochs = math.ceil(budget / per_epoch) if task_cfg.batch_size else 0
    orders = torch.stack([epoch_orders(torch.Generator().manual_seed(_batch_seed(seed, task_name, r)), epochs, n)
                          for r in runs])
    x = torch.stack([s.x[:n] for s in setups])
    y = torch.stack([s.y[:n] for s in setups])
    hyper: dict[str, list[float]] = {k: [] for k in setups[0].hyper}
    for s, xi, yi in zip(setups, x, y):
        scale = task.lr_scale(xi, yi)  # training samples only: the held-out ones must not set the step size
        for k, v in s.hyper.items():
            hyper[k].append(v / s.lr_scale * scale if k == "lr" and scale != s.lr_scale else v)
    h = n + holdout
    return {"x": x, "y": y, "xh": torch.stack([s.x[n:h] for s in setups]), "yh": torch.stack([s.y[n:h] for s in setups]),
            "xm": torch.stack([s.x[h:] for s in setups]), "ym": torch.stack([s.y[h:] for s in setups]),
            "w0": torch.stack([s.w0 for s in setups]),
            "hyper": {k: torch.tensor(v, dtype=torch.float32).unsqueeze(1) for k, v in hyper.items()},
            "orders": orders, "task": task}


@torch.no_grad()
def simulate_jumps(task: Task, opt, data: dict, *, budget: int, forecaster: Forecaster | None, every: int,
                   horizons: list[int], state_after_jump: str = "keep") -> dict[str, Any]:
    """Train the runs of ``data`` for ``budget`` optimizer steps, with jump attempts if ``forecaster`` is given.

    Args:
        task: the task (stacked forward and loss).
        opt: the store's OptimizerConfig.
        data: from :func:`setup_runs`.
        budget: optimizer steps per run.
        forecaster: a fitted forecaster (its ``prefix_end``; ``horizons`` must be among its fitted ones), or
            None for plain training.
        every: K, steps between jump attempts (a multiple of the task's ``record_every``).
        horizons: candidate horizons, recorded-step indices of the forecaster.
        state_after_jump: ``keep`` or ``reset`` the optimizer state of a run that jumped.

    Returns:
        ``loss`` (run, budget + 1) loss after k optimizer steps (and the jumps made at k) on the run's
        ``measure`` held-out samples (its full training set when ``data`` has none), ``seconds`` (budget + 1,)
        loop wall-clock up to k, ``accepted``/``rejected`` (run,) jump counts, ``jumped_steps`` (run,)
        optimizer steps skipped by accepted jumps, ``attempts`` (forecasts made for the stacked runs),
        ``forecast_seconds`` and ``verify_seconds`` (the part of the clock spent forecasting and checking
        candidates on the held-out samples).
    """
    cfg = task.cfg
    e, R = cfg.record_every, data["w0"].shape[0]
    x, y, xh, yh, orders = data["x"], data["y"], data["xh"], data["yh"], data["orders"]
    xm, ym = (data["xm"], data["ym"]) if data.get("xm") is not None and data["xm"].shape[1] else (x, y)
    N, B = x.shape[1], cfg.batch_size
    theta = data["w0"].clone()
    hp = dict(data["hyper"])
    base_lr = hp["lr"]
    state = init_state(opt.name, theta)
    n_upd = torch.zeros(R, 1)  # optimizer updates since the state (re)started: Adam's bias correction
    vstep = torch.zeros(R, dtype=torch.long)  # virtual step: optimizer steps + steps jumped over
    if forecaster is not None:
        p = forecaster.prefix_end
        if every % e:
            raise AccelerateError(f"accelerate.every: got {every}; expected a multiple of record_every ({e})")
    hist_w: list[torch.Tensor] = []
    hist_s: list[dict[str, torch.Tensor]] = []
    hist_lr: list[torch.Tensor] = []
    since = torch.zeros(R, dtype=torch.long)  # records in the current window (reset by a jump)
    accepted = torch.zeros(R, dtype=torch.long)
    rejected = torch.zeros(R, dtype=torch.long)
    jumped = torch.zeros(R, dtype=torch.long)
    loss_curve = torch.empty(R, budget + 1)
    seconds = np.zeros(budget + 1)
    hyper_flat = {k: v.view(-1) for k, v in hp.items()}
    elapsed = forecast_seconds = verify_seconds = 0.0
    attempts = 0

    def lr_now() -> torch.Tensor:
        mults = torch.tensor([lr_multiplier(opt.schedule, int(v), cfg.steps) for v in vstep]).view(R, 1)
        return base_lr * mults

    for k in range(budget + 1):
        t0 = time.perf_counter()
        if forecaster is not None and k % e == 0:
            hist_w.append(theta.clone())
            hist_s.append({n: s.clone() for n, s in state.items()})
            hist_lr.append(lr_now().view(-1))
            del hist_w[: -(p + 1)], hist_s[: -(p + 1)], hist_lr[: -(p + 1)]
            since += 1
        if forecaster is not None and 0 < k < budget and k % every == 0:
            eligible = since >= p + 1
            if bool(eligible.any()):
                prefix = Trajectories(
                    weights=torch.stack(hist_w, 1), lr=torch.stack(hist_lr, 1), optimizer=opt.name, record_every=e,
                    steps=cfg.steps, states={n: torch.stack([h[n] for h in hist_s], 1) for n in state},
                    hyper=hyper_flat)
                t_fc = time.perf_counter()
                pred = forecaster.forecast(prefix, horizons=horizons)  # (run, candidate, param)
                t_check = time.perf_counter()
                now = task.loss(theta, xh, yh)  # (run,)
                cand = torch.stack([task.loss(pred[:, i].contiguous(), xh, yh) for i in range(len(horizons))], 1)
                forecast_seconds += t_check - t_fc
                verify_seconds += time.perf_counter() - t_check
                attempts += 1
                cand = torch.where(torch.isfinite(cand) & torch.isfinite(pred).all(2), cand, torch.inf)
                best_loss, best = cand.min(1)
                ok = eligible & (best_loss <= now)
                rejected += (eligible & ~ok).long()
                if bool(ok.any()):
                    target = pred[torch.arange(R), best]
                    theta = torch.where(ok.view(R, 1), target, theta)
                    if state_after_jump == "reset":
                        state = {n: torch.where(ok.view(R, 1), torch.zeros_like(s), s) for n, s in state.items()}
                        n_upd = torch.where(ok.view(R, 1), torch.zeros_like(n_upd), n_upd)
                    gain = (torch.tensor(horizons)[best] - p) * e
                    jumped += torch.where(ok, gain, 0)
                    vstep += torch.where(ok, gain, 0)
                    accepted += ok.long()
                    # the jump target starts the run's new window
                    hist_w[-1] = theta.clone()
                    hist_s[-1] = {n: s.clone() for n, s in state.items()}
                    hist_lr[-1] = lr_now().view(-1)
                    since = torch.where(ok, torch.ones_like(since), since)
        elapsed += time.perf_counter() - t0
        seconds[k] = elapsed
        loss_curve[:, k] = task.loss(theta, xm, ym)  # after k steps and the jumps at k; monitoring, not timed
        if k == budget:
            break
        t0 = time.perf_counter()
        if B:
            per_epoch = math.ceil(N / B)
            epoch, start = divmod(k, per_epoch)
            idx = orders[:, epoch, start * B : min(start * B + B, N)]  # (run, batch)
            xb = torch.gather(x, 1, idx.view(R, -1, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:]))
            yb = torch.gather(y, 1, idx)
        else:
            xb, yb = x, y
        _, grad = task.loss_and_grad(theta, xb, yb)
        hp["lr"] = lr_now()
        n_upd += 1
        theta, state = update(opt.name, theta, grad, state, hp, n_upd)
        vstep += 1
        elapsed += time.perf_counter() - t0
    return {"loss": loss_curve.numpy(), "seconds": seconds, "accepted": accepted.numpy(),
            "rejected": rejected.numpy(), "jumped_steps": jumped.numpy(), "attempts": attempts,
            "forecast_seconds": forecast_seconds, "verify_seconds": verify_seconds}


def _read_split_runs(split: Path, part: str, runs: list[RunId]) -> dict[str, list[int]]:
    """The ``part`` run ids of each dataset seed, checked like every stage's split (gfm.stages.split.read_split)
    against the store's runs (``runs``, in store order)."""
    try:
        datasets = read_split(split, run_seeds=np.array([r.dataset_seed for r in runs], dtype=np.int64))
    except SplitError as exc:
        raise AccelerateError(str(exc)) from None
    return {d: list(entry[part]) for d, entry in datasets.items()}


def run(params: Params, *, store_key: str, split: Path, models: Path, out: Path, part: str = "test",
        progress: bool = False) -> dict[str, Any]:
    """Jump-ahead experiment of one store; writes ``out`` (JSON) and returns it.

    Args:
        params: validated params (``accelerate``, ``forecast``, the store and its task, ``seed``,
            ``generate.dataset_seeds``).
        store_key: ``<task>-<optimizer>``, a key of ``accelerate.stores``.
        split: the store's split JSON (its ``part`` runs are re-trained).
        models: the store's model directory (``<model>/<dataset seed>/`` from the train stage).
        out: JSON path to write.
        part: ``test`` (the reported experiment) or ``val`` (for choosing the settings).
        progress: print one line per dataset seed and loop.

    Raises:
        AccelerateError: unknown store, missing split or model, a horizon the model was not fitted for.
    """
    claim_output(out, ACCELERATE)  # before any work: an --out this stage may not replace is refused (gfm.artifacts.outputs)
    acc = params.accelerate
    if store_key not in acc.stores:
        known = ", ".join(sorted(acc.stores)) or "(none: accelerate.stores is empty)"
        raise AccelerateError(f"--store: got {store_key!r}; expected one of {known}")
    spec, task_cfg = params.lookup_store(store_key)
    budget = acc.budget or task_cfg.steps
    all_runs = run_ids(params.generate.dataset_seeds, task_cfg.runs_per_dataset)
    chosen = _read_split_runs(split, part, all_runs)
    t_start = time.perf_counter()
    store_models = Path(models)  # the store's model directory (data/models/<task>/<optimizer>), from --models
    refused = {}  # models that refused this store at train time (gfm.artifacts.refusals): reported, never run
    for name in acc.models:
        mark = store_models / name / REFUSED_FILE
        if mark.exists():
            refused[name] = read_refusal(mark, model=name)["refused"]
    can_jump = [m for m in params.store_models(store_key) if params.models[m]["kind"] not in CANNOT_JUMP
                and not (store_models / m / REFUSED_FILE).exists()]
    best = best_by_validation(store_models, list(acc.horizons), can_jump)
    jumpers = [m for m in acc.models if m not in refused and params.models[m]["kind"] not in CANNOT_JUMP]
    if best is not None and best["model"] not in jumpers:
        jumpers.append(best["model"])  # the store's best forecaster jumps too, chosen on validation runs
    per_model: dict[str, list[dict]] = {"plain": [], **{m: [] for m in jumpers}}
    for d, ids in sorted(chosen.items(), key=lambda kv: int(kv[0])):
        ids = ids[: acc.runs] if acc.runs else ids
        if not ids:
            continue
        data = setup_runs(task_cfg, spec.optimizer, params.seed, [all_runs[i] for i in ids], holdout=acc.holdout,
                          budget=budget, task_name=spec.task, measure=acc.measure)
        task = data["task"]
        plain = simulate_jumps(task, spec.optimizer, data, budget=budget, forecaster=None, every=acc.every,
                               horizons=list(acc.horizons))
        per_model["plain"].append(plain)
        for name in jumpers:
            path = store_models / name / str(d)
            try:
                fc = read_model(path)
            except GFMError as exc:
                raise AccelerateError(f"{path}: {exc} (train model {name!r} for this store first)") from None
            missing = [h for h in acc.horizons if h not in fc.horizons]
            if missing:
                raise AccelerateError(f"{path}: accelerate.horizons {missing} were not fitted; it forecasts "
                                      f"{list(fc.horizons)}")
            loop = simulate_jumps(task, spec.optimizer, data, budget=budget, forecaster=fc, every=acc.every,
                                  horizons=list(acc.horizons), state_after_jump=acc.state_after_jump)
            per_model[name].append(loop)
            if progress:
                print(f"{store_key} seed {d} {name}: accepted {int(loop['accepted'].sum())}, rejected "
                      f"{int(loop['rejected'].sum())}", flush=True)

    def cat(name: str) -> dict:
        parts = per_model[name]
        runs = sum(len(p["accepted"]) for p in parts)
        return {"loss": np.concatenate([p["loss"] for p in parts]),
                "seconds": np.concatenate([np.broadcast_to(p["seconds"], p["loss"].shape) for p in parts]),
                "accepted": np.concatenate([p["accepted"] for p in parts]),
                "rejected": np.concatenate([p["rejected"] for p in parts]),
                "jumped_steps": np.concatenate([p["jumped_steps"] for p in parts]),
                # a forecast serves the stacked runs of its dataset seed at once: its cost is shared by them
                "attempts_per_run": sum(p["attempts"] for p in parts) / len(parts),
                "jump_seconds_per_run": sum(p["forecast_seconds"] + p["verify_seconds"] for p in parts) / runs,
                "forecast_seconds_per_run": sum(p["forecast_seconds"] for p in parts) / runs}

    if not per_model["plain"]:
        raise AccelerateError(f"{split}: no {part} runs to accelerate")
    loops = {name: cat(name) for name in per_model}  # each loop's runs of every dataset seed, concatenated once
    plain = loops["plain"]
    # one optimizer step of one run: the plain loop's clock over its steps and stacked runs
    step_seconds = float(np.mean([p["seconds"][-1] / (budget * len(p["accepted"])) for p in per_model["plain"]]))
    result = {
        "store": store_key, "task": spec.task, "optimizer": spec.optimizer.name, "part": part,
        "budget": budget, "record_every": task_cfg.record_every, "prefix_end": params.forecast.prefix_end,
        "config": to_dict(acc) | {"stores": sorted(acc.stores)},
        "loss": f"held-out ({acc.measure} samples per run, never deciding a jump)",
        "plain": {"runs": int(plain["loss"].shape[0]), "final_loss_mean": float(plain["loss"][:, -1].mean()),
                  "final_loss_median": float(np.median(plain["loss"][:, -1])),
                  "initial_loss_mean": float(plain["loss"][:, 0].mean())},
        "best_by_validation": best,
        "models": {},
    }
    for name, reason in refused.items():
        result["models"][name] = {"refused": reason}
    for name in jumpers:
        loop = loops[name]
        m = summarise(plain, loop, budget=budget, timing=acc.timing)
        m["chosen"] = "accelerate.models" if name in acc.models else "best on validation runs"
        if acc.timing:
            m["forecast_ms_per_attempt"] = round(1000 * loop["forecast_seconds_per_run"]
                                                 / max(loop["attempts_per_run"], 1), 4)
            m["jump_seconds_per_run"] = round(loop["jump_seconds_per_run"], 6)
        primary = m["speedup_wall_paired"] if acc.timing else m["speedup_steps_paired"]
        lo = primary["ci"][0]
        m["meets_target"] = bool(primary["ratio"] is not None and primary["ratio"] >= SPEEDUP_TARGET
                                 and lo is not None and lo > 1 and m["worse_runs"] == 0)
        if acc.timing:
            m["why_not"] = why_not(m, step_seconds)
        result["models"][name] = m
    result["curves"] = {name: curve(loop) for name, loop in loops.items()}
    if not acc.timing:  # the clock is not reproducible: curves keep steps and losses only
        for c in result["curves"].values():
            del c["seconds"]
    if acc.timing:
        result["step_ms"] = round(1000 * step_seconds, 4)
        result["seconds"] = round(time.perf_counter() - t_start, 3)
        result["threads"] = torch.get_num_threads()
    out = Path(out)
    write_json_output(out, ACCELERATE, result)
    return result
