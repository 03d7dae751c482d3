"""Stage ``train``: fit one forecaster per dataset seed of one store (LFD-2 protocol: mean ± std over seeds).

For model NAME of store ``<task>-<optimizer>``, every dataset seed d of the split gets its own fit on d's
non-diverged train runs, early-stopped on d's non-diverged val runs (test runs are never read). All seeds are
fitted in one process, because the default study has hundreds of small fits and a Python + torch start-up
costs more than most of them. Output (written to a temporary sibling, then renamed into place)::

    data/models/<task>/<optimizer>/<model>/
        summary.json                 kind, options, per seed: runs used, epochs, val weight MSE (no timings:
                                 they go to the job log, so the artifact is byte-reproducible)
        <dataset_seed>/config.json   \\ the forecaster (read_model(dir))
        <dataset_seed>/weights.safetensors
        <dataset_seed>/train_log.csv epoch,train_loss,val_loss,best_val_loss (losses in the model's
                                     own normalised units; one epoch-0 row of weight MSE for closed-form models)

A forecaster that cannot forecast the store raises ``StoreNotSupported`` in its fit: the directory then holds
``refused.json`` alone (gfm.artifacts.refusals: model, kind, the one-line reason) and the job succeeds, so the store's
other models are forecast and scored as usual. Any other error fails the job.

Usage::

    gfm train --params params.yaml --store mlp_regression-sgd --model lstm \\
              --split data/splits/mlp_regression/sgd.json --in data/trajectories/mlp_regression/sgd.zarr \\
              --out data/models/mlp_regression/sgd/lstm
    gfm train --params tests/params.tiny.yaml ...          # the tiny CPU study, seconds

Seeds: the generator of one fit is derived from ``train.seed``, the store key, the model name and the dataset
seed, so adding a model or a store never changes another fit. CPU results are identical run to run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from gfm.artifacts.outputs import MODELS, discard_temp, open_temp_dir, replace_output
from gfm.artifacts.refusals import REFUSED_FILE, refusal_reason, write_refusal
from gfm.base.errors import GFMError, ParamsError, count_text, on_out_of_memory, size_text
from gfm.base.schema import build
from gfm.base.seeds import hashed_seed
from gfm.config import Params, to_dict
from gfm.forecasters import FORECASTERS, Forecaster, StoreNotSupported, Trajectories, make_forecaster
from gfm.stages.split import SplitError, read_split
from gfm.stages.train_fit import fit_seed, fit_seed_streamed
from gfm.stages.tuning import budget_problems, choose, draw_trials, grid_size, learned_options, tuning_seed
from gfm.store.reader import open_trajectories

__all__ = ["run", "derive_seed", "model_problems", "resolve_train_device", "TrainSummary"]

TIMING_KEYS = ("fit_seconds", "forecasts_per_second")


@dataclass
class TrainSummary:
    """What one train job did (also written to ``summary.json``, minus wall-clock fields in tests)."""

    store: str
    model: str
    kind: str
    device: str
    seeds: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    refused: str | None = None  # the reason, when the forecaster refused the store (StoreNotSupported)


def model_problems(params: Params, names: list[str] | None = None) -> list[str]:
    """Validate ``models.<name>`` entries against their forecaster's ``Config``, and the fair-comparison
    protocol (gfm.stages.tuning): no per-model budget, a search space of valid options with at least
    ``train.tuning.trials`` points for every learned model. One line per problem.

    Args:
        params: validated params.
        names: the entries to check; default ``train.models`` (the ones the pipeline trains).
    """
    import gfm.forecasters  # noqa: F401  (fills the registry)

    problems: list[str] = []
    tuning = params.train.tuning
    for name in params.train.models if names is None else names:
        spec_ = params.models[name]
        kind = spec_.get("kind") if isinstance(spec_, dict) else None
        if not isinstance(kind, str) or kind not in FORECASTERS:
            problems.append(f"models.{name}.kind: got {kind!r}; expected one of {', '.join(sorted(FORECASTERS))}")
            continue
        options = {k: v for k, v in spec_.items() if k != "kind"}
        cls = FORECASTERS[kind]
        space = tuning.space.get(name)
        if not cls.closed_form:
            problems += budget_problems(name, options, space)
            options = learned_options(options, params.train.budget)
            if tuning.trials and space is None:
                problems.append(f"train.tuning.space.{name}: missing; with train.tuning.trials = {tuning.trials} "
                                "every learned model needs a search space (option -> list of values)")
            elif tuning.trials and grid_size(space) < tuning.trials:
                problems.append(f"train.tuning.space.{name}: {grid_size(space)} option sets; "
                                f"train.tuning.trials = {tuning.trials} needs at least as many")
        elif space:
            problems.append(f"train.tuning.space.{name}: {kind} is fitted in closed form and is not tuned")
        trial_sets = [{}]
        for key, values in (space or {}).items():
            if not values:
                problems.append(f"train.tuning.space.{name}.{key}: empty; expected a list of values")
            trial_sets += [{key: v} for v in values]
        for trial in trial_sets:
            where = f"models.{name}" if not trial else f"train.tuning.space.{name}.{next(iter(trial))}"
            before = len(problems)
            cfg = build(cls.Config, {**options, **trial}, where, problems)
            if cfg is not None and len(problems) == before:
                try:
                    fc = make_forecaster(kind, cfg, prefix_end=params.forecast.prefix_end, horizons=params.forecast.horizons)
                except GFMError as exc:  # e.g. a window longer than the prefix
                    problems.append(f"{where}: {exc}")
                else:
                    problems += model_size_problems(params, name, fc, where)
            if len(problems) > before and not trial:
                break  # the base options are wrong: trial lines would repeat the same problem
    return list(dict.fromkeys(problems))


def model_size_problems(params: Params, name: str, fc: Forecaster, where: str) -> list[str]:
    """Model ``name`` (built as ``fc``) against ``limits.max_model_params`` and ``max_model_bytes`` on the largest
    network of the stores that train it (every store when none lists it: ``gfm train --model`` accepts any
    model), refused before anything is built: an order-of-magnitude estimate (Forecaster.size_estimate)."""
    lim = params.limits
    keys = [k for k in params.stores if name in params.store_models(k)] or list(params.stores)
    worst = None
    for key in keys:
        st = params.stores[key]
        if st.task not in params.tasks or params.tasks[st.task].n_params() > lim.max_params:
            continue  # reported by the params checks
        est = fc.size_estimate(params.tasks[st.task].n_params(), st.optimizer.name)
        if worst is None or est.train_bytes > worst[1].train_bytes:
            worst = (key, est)
    if worst is None:
        return []
    key, est = worst
    what = (f"about {count_text(est.params)} parameters and {size_text(est.train_bytes)} to train on store {key} "
            "(parameters, gradients, AdamW state and one batch's activations; an order-of-magnitude estimate)")
    lower = f"lower the sizes or batch_size of models.{name}, or raise the limit"
    if est.params > lim.max_model_params:
        return [f"{where}: {what}, above limits.max_model_params = {count_text(lim.max_model_params)}; {lower}"]
    if est.train_bytes > lim.max_model_bytes:
        return [f"{where}: {what}, above limits.max_model_bytes = {size_text(lim.max_model_bytes)}; {lower}"]
    return []


def derive_seed(train_seed: int, store: str, model: str, dataset_seed: int | str) -> int:
    """A 63-bit seed for one fit, stable across Python versions and independent of every other fit."""
    return hashed_seed(int(train_seed), store, model, int(dataset_seed))


def resolve_train_device(device: str, cls: type[Forecaster]) -> torch.device:
    """Neural models follow ``device`` (auto = CUDA when present); classical ones always run on CPU."""
    if not cls.neural or device == "cpu":
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise GFMError("device: cuda was asked for but torch.cuda.is_available() is False; use auto or cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(params: Params, *, store_key: str, model: str, split: Path, store: Path, out: Path,
        progress: bool | None = None, models_checked: bool = False) -> TrainSummary:
    """Fit model ``model`` for every dataset seed of one store and write ``out`` atomically.

    Memory is bounded by one dataset seed's train + val runs for learned models (seeds are read one at a
    time), and by one block of runs for closed-form ones (``Forecaster.closed_form``): those learn nothing
    from data, so their train/val scores are computed block by block from prefixes and horizon records only.

    Args:
        params: validated params (``forecast``, ``train.seed``, ``models.<model>``, ``device`` are read).
        store_key: ``<task>-<optimizer>``.
        model: a name from ``params.models``.
        split: the store's split JSON.
        store: the trajectory store.
        out: the model directory to create (replaced if present).
        progress: tqdm bar on stderr (None = only when stderr is a terminal).
        models_checked: every ``models:`` entry of ``params`` has passed :func:`model_problems` already (the
            CLI's params loading checks them for every command), so it is not run again.

    Returns:
        The summary also written to ``out/summary.json``; for a model that refused the store (``StoreNotSupported``
        from its fit) one whose ``refused`` holds the reason, and ``out`` holds only ``refused.json``.

    Raises:
        ParamsError: unknown model or invalid model options.
        SplitError, StoreError: unusable inputs.
    """
    params.lookup_store(store_key)
    if model not in params.models:
        raise ParamsError(f"--model: got {model!r}; expected one of {', '.join(sorted(params.models)) or '(none)'}")
    problems = [] if models_checked else model_problems(params, sorted({*params.train.models, model}))
    if problems:
        raise ParamsError(problems)
    spec_ = dict(params.models[model])
    kind = spec_.pop("kind")
    cls = FORECASTERS[kind]
    learned = not cls.closed_form
    if learned:  # the shared budget and stopping rule (gfm.stages.tuning)
        spec_ = learned_options(spec_, params.train.budget)
    device = resolve_train_device(params.device, cls)
    fcst = params.forecast
    ts = open_trajectories(store)
    if fcst.horizons[-1] >= ts.n_records:
        raise GFMError(f"forecast.horizons: {fcst.horizons[-1]} is beyond the last recorded step of {store} "
                       f"({ts.n_records - 1})")
    datasets = read_split(split, store=ts)
    # test runs are never read by this stage
    keep = {seed: {part: sorted(set(e[part]) - set(e["diverged"])) for part in ("train", "val")}
            for seed, e in datasets.items()}
    for seed in sorted(keep, key=int):
        if not keep[seed]["train"]:
            raise SplitError(f"{split}: dataset seed {seed} has no non-diverged train runs; cannot fit {model}")
    summary = TrainSummary(store=store_key, model=model, kind=kind, device=str(device))
    tmp = open_temp_dir(out, MODELS)  # refuses an --out that is not an earlier model directory (gfm.artifacts.outputs)
    try:
        show = sys.stderr.isatty() if progress is None else progress
        t0 = time.perf_counter()
        bar = tqdm(total=len(keep), desc=f"{store_key}/{model}", unit="seed", file=sys.stderr, disable=not show)

        def fit(seed: str, options: dict, out_dir: Path) -> dict:
            doing = f"fitting {model} ({kind}) on dataset seed {seed} of store {store_key}"
            advice = (f"lower the sizes or batch_size of models.{model} (gfm validate estimates its training "
                      "memory: limits.max_model_bytes), or train where more memory is free")
            with on_out_of_memory(doing, advice):
                return fit_in_memory(seed, options, out_dir)

        def fit_in_memory(seed: str, options: dict, out_dir: Path) -> dict:
            fc = make_forecaster(kind, options, prefix_end=fcst.prefix_end, horizons=fcst.horizons)
            fc.on_epoch = lambda row: bar.set_postfix(seed=seed, epoch=row["epoch"], val=f"{row['val_loss']:.3g}")
            rng = torch.Generator().manual_seed(derive_seed(params.train.seed, store_key, model, seed))
            train_runs, val_runs = keep[seed]["train"], keep[seed]["val"]
            if cls.closed_form:
                return fit_seed_streamed(fc, ts, train_runs, val_runs, rng=rng, out=out_dir)
            # one seed's runs at a time: memory is bounded by the largest seed, not the store
            both = Trajectories.from_store(ts, train_runs + val_runs)
            n = len(train_runs)
            return fit_seed(fc, both.select(range(n)), both.select(range(n, both.n_runs)), rng=rng, out=out_dir,
                            device=device)

        tuning = None
        chosen = spec_
        if learned and params.train.tuning.trials:
            # validation-only search on one dataset seed; the chosen trial's fit is that seed's final fit
            tune_on = tuning_seed(params.train.tuning.dataset_seed, list(keep))
            trials = draw_trials(params.train.tuning.space[model], params.train.tuning.trials,
                                 seed=params.train.seed, model=model)
            rows = []
            for i, trial in enumerate(trials):
                entry = fit(tune_on, {**spec_, **trial}, tmp / "trials" / str(i))
                rows.append({"options": trial, "val_final_mse": entry["val_weight_mse"][str(fcst.horizons[-1])],
                             "val_loss": entry["best_val_loss"], "steps_used": entry["steps_used"], "entry": entry})
                print(f"{store_key}/{model} trial {i} {trial}: val final MSE {rows[-1]['val_final_mse']:.6g}",
                      file=sys.stderr)
            try:
                best = choose([r["val_final_mse"] for r in rows])
            except ValueError as exc:
                raise GFMError(f"{store_key}/{model}: tuning on dataset seed {tune_on}: {exc}") from None
            chosen = {**spec_, **trials[best]}
            os.replace(tmp / "trials" / str(best), tmp / tune_on)
            shutil.rmtree(tmp / "trials")
            summary.seeds[tune_on] = rows[best]["entry"]
            tuning = {"dataset_seed": int(tune_on), "metric": "val weight MSE at the final horizon",
                      "chosen": best, "chosen_options": trials[best],
                      "trials": [{k: v for k, v in r.items() if k != "entry"} for r in rows]}
            bar.update(1)
        for seed in sorted(keep, key=int):
            if seed in summary.seeds:
                continue
            summary.seeds[seed] = fit(seed, chosen, tmp / seed)
            bar.update(1)
        for seed, entry in summary.seeds.items():
            e = datasets[seed]
            entry["dropped_diverged"] = len(set(e["diverged"]) & set(e["train"] + e["val"]))
        summary.seeds = dict(sorted(summary.seeds.items(), key=lambda kv: int(kv[0])))
        bar.close()
        summary.seconds = round(time.perf_counter() - t0, 3)
        for seed, entry in summary.seeds.items():
            print(f"{store_key}/{model} seed {seed}: " + ", ".join(f"{k} {entry.get(k)}" for k in TIMING_KEYS),
                  file=sys.stderr)
        print(f"{store_key}/{model}: {summary.seconds} s", file=sys.stderr)
        meta = {"store": store_key, "model": model, "kind": kind, "options": to_dict(chosen), "device": str(device),
                "forecast": to_dict(fcst), "train_seed": params.train.seed,
                "budget_steps": params.train.budget.steps if learned else None,
                "budget": to_dict(params.train.budget) if learned else None,
                "tuning": tuning,
                "seeds": {seed: {k: v for k, v in e.items() if k not in TIMING_KEYS}
                          for seed, e in summary.seeds.items()}}
        (tmp / "summary.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    except StoreNotSupported as exc:  # the model's refusal of this store, not a failure: recorded, job succeeds
        discard_temp(tmp)
        summary.refused, summary.seeds = refusal_reason(exc), {}
        tmp = open_temp_dir(out, MODELS)
        write_refusal(tmp / REFUSED_FILE, model=model, kind=kind, reason=summary.refused, stage="train")
    except BaseException:
        discard_temp(tmp)  # a failed fit leaves nothing beside the output
        raise
    replace_output(tmp, out, MODELS)
    return summary
