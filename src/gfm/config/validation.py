"""Checks that span params sections: names that must refer to something, model lists, the generalisation pairs
and jump-ahead stores, and what the study would cost (``limits:``). Each section checks its own fields
(``_check`` in :mod:`gfm.config.sections`); :meth:`gfm.config.Params._check` calls :func:`params_problems`."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from gfm.base.errors import count_text, shorten, size_text
from gfm.base.schema import is_name
from gfm.config.optimizer import OPTIMIZER_STATE_ARRAYS
from gfm.config.sizes import estimate_store

if TYPE_CHECKING:
    from gfm.config.params import Params


def params_problems(p: Params) -> list[tuple[str, str]]:
    """Every cross-section problem as (key, message), in the order ParamsError lists them."""
    return [*_name_problems(p), *_recorded_problems(p), *_model_list_problems(p), *_pair_problems(p), *p.report.check_models(p.models),
            *_listed_model_problems(p, "generalize"), *_accelerate_problems(p), *_horizon_problems(p),
            *reference_problems(p), *size_problems(p)]


def _name_problems(p: Params) -> list[tuple[str, str]]:
    """Store keys that do not match their task and optimizer; task and model names that are not identifiers."""
    out = []
    for key, st in p.stores.items():
        if st.task not in p.tasks:
            out.append((f"stores.{key}.task", f"got {shorten(st.task)}; expected one of {', '.join(sorted(p.tasks))}"))
        expected = f"{st.task}-{st.optimizer.name}"
        if key != expected:
            out.append((f"stores.{key}", f"store keys are '<task>-<optimizer>'; expected {expected!r}"))
    for name in p.tasks:
        if not is_name(name):
            out.append((f"tasks.{name}", "task names use ASCII letters, digits and '_' and start with a letter"))
    for name, m in p.models.items():
        if not is_name(name):
            out.append((f"models.{name}", "model names use ASCII letters, digits and '_' and start with a letter"))
        if not isinstance(m, dict) or not isinstance(m.get("kind"), str):
            out.append((f"models.{name}", f"got {shorten(m)}; expected a mapping with a 'kind' (a forecaster name)"))
    return out


def _recorded_problems(p: Params) -> list[tuple[str, str]]:
    """A generated store needs its learning rate; a recorded store takes every hyper-parameter from its runs
    (its entry names the optimizer only, which must be the store's), has one store entry, and takes no part
    in what needs a task that can be re-run (the jump-ahead experiment) or compared by its config
    (generalisation pairs)."""
    from gfm.config.optimizer import OptimizerConfig

    out, entries = [], {}
    defaults = OptimizerConfig(name="sgd")
    for key, st in p.stores.items():
        task = p.tasks.get(st.task)
        if task is None:
            continue
        if task.kind != "recorded":
            if st.optimizer.lr is None:
                out.append((f"stores.{key}.optimizer.lr", "missing; expected a number or {low, high, log}"))
            continue
        entries.setdefault(st.task, []).append(key)
        set_keys = [f.name for f in dataclasses.fields(OptimizerConfig)
                    if f.name != "name" and getattr(st.optimizer, f.name) != getattr(defaults, f.name)]
        if set_keys:
            out.append((f"stores.{key}.optimizer.{set_keys[0]}", "a recorded store's hyper-parameters are its "
                        "runs' own (read from the store); give only the optimizer's name"))
        if key in p.accelerate.stores:
            out.append((f"accelerate.stores.{key}", "a recorded store cannot be re-trained by jump-ahead (its "
                        "data and loop are the user's); remove it"))
        for i, pair in enumerate(p.generalize.pairs):
            if key in (pair.source, pair.target):
                out.append((f"generalize.pairs[{i}]", f"{key!r} is a recorded store; generalisation pairs "
                            "compare generated tasks"))
    for name, keys in entries.items():
        if len(keys) > 1:
            out.append((f"tasks.{name}", f"a recorded task is one store; stores {', '.join(keys)} use it "
                        "(declare each store as its own task)"))
    return out


def _model_list_problems(p: Params) -> list[tuple[str, str]]:
    """``train:`` and ``stores.*.models`` naming what ``models:`` does not define."""
    out = []
    for i, name in enumerate(p.train.models):
        if name not in p.models:
            out.append((f"train.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(p.models)) or '(none defined in models:)'}"))
    for name in p.train.tuning.space:
        if name not in p.models:
            out.append((f"train.tuning.space.{name}", f"expected a name from models: ({', '.join(sorted(p.models)) or '(none)'})"))
    seed = p.train.tuning.dataset_seed
    if seed is not None and seed not in p.generate.dataset_seeds:
        out.append(("train.tuning.dataset_seed", f"got {seed}; expected one of generate.dataset_seeds "
                                                 f"({list(p.generate.dataset_seeds)})"))
    for key, st in p.stores.items():
        for i, name in enumerate(st.models or ()):
            if name not in p.models:
                out.append((f"stores.{key}.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(p.models)) or '(none)'}"))
    return out


def _pair_problems(p: Params) -> list[tuple[str, str]]:
    """Generalisation pairs: both ends are stores with one optimizer, every transferred model trained on both."""
    out = []
    for i, pair in enumerate(p.generalize.pairs):
        for end in ("source", "target"):
            if getattr(pair, end) not in p.stores:
                out.append((f"generalize.pairs[{i}].{end}", f"got {getattr(pair, end)!r}; expected a key of stores"))
        if pair.source in p.stores and pair.target in p.stores:
            a, b = p.stores[pair.source], p.stores[pair.target]
            if a.optimizer.name != b.optimizer.name:
                out.append((f"generalize.pairs[{i}]", f"source uses {a.optimizer.name}, target {b.optimizer.name}; "
                                                      "a pair must share the optimizer"))
            for name in p.generalize.models:
                for key in (pair.source, pair.target):
                    msg = (f"{name!r} is not trained on store {key!r} (add it to train.models or that "
                           "store's models)")
                    if name not in p.store_models(key) and ("generalize.models", msg) not in out:
                        out.append(("generalize.models", msg))
    return out


def _listed_model_problems(p: Params, section: str) -> list[tuple[str, str]]:
    """``<section>.models`` entries that ``models:`` does not define."""
    return [(f"{section}.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(p.models)) or '(none)'}")
            for i, name in enumerate(getattr(p, section).models) if name not in p.models]


def _accelerate_problems(p: Params) -> list[tuple[str, str]]:
    """Jump-ahead stores that are not the study's, steps between jumps off the record grid, unknown models and
    horizons."""
    out = []
    for key, ast in p.accelerate.stores.items():
        where = f"accelerate.stores.{key}"
        if key not in p.stores:
            out.append((where, f"expected a key of stores ({', '.join(sorted(p.stores))})"))
            continue
        st = p.stores[key]
        if (ast.task, ast.optimizer) != (st.task, st.optimizer.name):
            out.append((where, f"got {{task: {ast.task}, optimizer: {ast.optimizer}}}; the store is "
                               f"{{task: {st.task}, optimizer: {st.optimizer.name}}}"))
        elif st.task in p.tasks and p.accelerate.every % p.tasks[st.task].record_every:  # (a missing task is reported at stores.<key>.task)
            out.append(("accelerate.every", f"got {p.accelerate.every}; expected a multiple of "
                                            f"tasks.{st.task}.record_every ({p.tasks[st.task].record_every})"))
        for name in p.accelerate.models:
            if name in p.models and name not in p.store_models(key):
                out.append(("accelerate.models", f"{name!r} is not trained on store {key!r} (add it to "
                                                 "train.models or that store's models)"))
    out += _listed_model_problems(p, "accelerate")
    bad = [h for h in p.accelerate.horizons if h not in p.forecast.horizons]
    if p.accelerate.stores and bad:
        out.append(("accelerate.horizons", f"got {bad}; expected entries of forecast.horizons "
                                           f"({list(p.forecast.horizons)})"))
    return out


def _horizon_problems(p: Params) -> list[tuple[str, str]]:
    """Forecasters need every horizon recorded on every store they are trained on."""
    out = []
    trained = [(key, st.task) for key, st in p.stores.items() if st.task in p.tasks and p.store_models(key)]
    if trained:
        key, name = min(trained, key=lambda kt: p.tasks[kt[1]].n_records)
        last = p.tasks[name].n_records - 1
        if p.forecast.horizons[-1] > last:
            out.append(("forecast.horizons", f"last horizon {p.forecast.horizons[-1]} is beyond the last recorded "
                                             f"step of task {name!r} ({last}), which store {key!r} trains models on"))
    return out


def reference_problems(p: Params) -> list[tuple[str, str]]:
    """Names that must refer to something (beyond stores -> tasks and the model lists above)."""
    out = []
    trained_tasks = sorted({st.task for st in p.stores.values() if st.task in p.tasks})
    if p.stores and p.report.target_task not in trained_tasks:  # (no stores: reported as such)
        out.append(("report.target_task", f"got {shorten(p.report.target_task)}; expected a task some store "
                                          f"trains: {', '.join(trained_tasks) or '(none)'}"))
    lists = [("train.models", p.train.models), ("generalize.models", p.generalize.models),
             ("accelerate.models", p.accelerate.models), ("accelerate.horizons", p.accelerate.horizons),
             *((f"stores.{k}.models", st.models or ()) for k, st in p.stores.items())]
    for where, names in lists:
        repeated = sorted({n for n in names if list(names).count(n) > 1}, key=str)
        if repeated:
            out.append((where, f"{shorten(repeated)} listed more than once; list each once"))
    fractions = {"train": p.split.train, "val": p.split.val, "test": p.split.test}
    for name in sorted({st.task for key, st in p.stores.items() if st.task in p.tasks}):
        n = p.tasks[name].runs_per_dataset
        n_train, n_val = int(round(p.split.train * n)), int(round(p.split.val * n))
        counts = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
        empty = [part for part, frac in fractions.items() if frac > 0 and counts[part] <= 0]
        if empty:
            out.append((f"tasks.{name}.runs_per_dataset",
                        f"got {n}; the split ({p.split.train:g} / {p.split.val:g} / {p.split.test:g}) "
                        f"leaves no {' or '.join(empty)} runs per dataset seed; raise it"))
    return out

def size_problems(p: Params) -> list[tuple[str, str]]:
    """What would run out of memory, disk or time, from estimates (refused before anything runs)."""
    lim, out = p.limits, []
    for name, task in p.tasks.items():
        n = task.n_params()
        if n > lim.max_params:
            out.append((f"tasks.{name}", f"the network has {count_text(n)} parameters, above limits.max_params = "
                                         f"{count_text(lim.max_params)}; use a smaller network or raise the limit"))
        if task.steps > lim.max_run_steps:
            out.append((f"tasks.{name}.steps", f"got {count_text(task.steps)}; above limits.max_run_steps = "
                                               f"{count_text(lim.max_run_steps)}; lower it or raise the limit"))
    for key, st in p.stores.items():
        task = p.tasks.get(st.task)
        if task is None or task.n_params() > lim.max_params:
            continue
        e = estimate_store(task, st.optimizer.name, len(p.generate.dataset_seeds), p.store.shard_runs)
        shape = (f"{count_text(e.block_runs)} runs x {count_text(e.records)} records x {count_text(e.params)} params x 4 B x "
                 f"{e.arrays} array{'s' if e.arrays > 1 else ''}")
        if e.block_bytes > lim.max_block_bytes:
            more = f" or tasks.{st.task}.n_samples" if e.work_bytes > e.record_bytes else ""
            out.append((f"stores.{key}", f"a write block needs {size_text(e.block_bytes)} ({shape} = "
                                         f"{size_text(e.record_bytes)}, plus {size_text(e.work_bytes)} of data and working "
                                         f"memory), above limits.max_block_bytes = {size_text(lim.max_block_bytes)}; "
                                         f"lower store.shard_runs{more} or raise the limit"))
        if e.store_bytes > lim.max_store_bytes:
            out.append((f"stores.{key}", f"the store needs {size_text(e.store_bytes)} uncompressed ({count_text(e.runs)} runs x "
                                         f"{count_text(e.records)} records x {count_text(e.params)} params x 4 B x {e.arrays}), "
                                         f"above limits.max_store_bytes = {size_text(lim.max_store_bytes)}; lower "
                                         f"tasks.{st.task}.runs_per_dataset or steps, raise record_every, or raise "
                                         "the limit"))
        if e.total_steps > lim.max_total_steps:
            out.append((f"stores.{key}", f"{count_text(e.runs)} runs x {count_text(task.steps)} steps = "
                                         f"{count_text(e.total_steps)} optimizer steps, above limits.max_total_steps = "
                                         f"{count_text(lim.max_total_steps)}; lower tasks.{st.task}.runs_per_dataset "
                                         "or steps, or raise the limit"))
    acc = p.accelerate
    if acc.budget > lim.max_run_steps:
        out.append(("accelerate.budget", f"got {count_text(acc.budget)}; above limits.max_run_steps = "
                                         f"{count_text(lim.max_run_steps)}; lower it or raise the limit"))
    for key, ast in acc.stores.items():
        task = p.tasks.get(ast.task)
        if task is None or key not in p.stores or task.n_params() > lim.max_params:
            continue
        cap = _sample_cap(task)
        if cap is not None and task.n_samples + acc.holdout + acc.measure > cap:
            # an image set has this many images: a larger pool would silently come out short (a smaller held-out
            # set than asked for, or none, which would measure the loss on training samples)
            out.append((f"accelerate.stores.{key}", f"tasks.{ast.task}.n_samples + accelerate.holdout + "
                                                    f"accelerate.measure = {count_text(task.n_samples)} + "
                                                    f"{count_text(acc.holdout)} + {count_text(acc.measure)} samples, "
                                                    f"above the {count_text(cap)} the task's data set has; lower "
                                                    "one of them"))
        runs = (acc.runs or task.runs_per_dataset)  # per dataset seed, one stacked job each
        budget = acc.budget or task.steps
        need = runs * ((task.n_samples + acc.holdout + acc.measure) * (task.input_width() + 1) * 4 * 3
                       + 2 * (task.n_samples + acc.holdout + acc.measure) * task.activation_width() * 4
                       + (budget + 1) * 4 * 2 + (4 + OPTIMIZER_STATE_ARRAYS[ast.optimizer]) * task.n_params() * 4)
        if need > lim.max_block_bytes:
            out.append((f"accelerate.stores.{key}", f"a jump-ahead job needs {size_text(need)} ({count_text(runs)} runs x "
                                                    f"{count_text(task.n_samples + acc.holdout + acc.measure)} samples, "
                                                    f"{count_text(budget)} steps), above limits.max_block_bytes = "
                                                    f"{size_text(lim.max_block_bytes)}; lower accelerate.runs, "
                                                    "holdout or measure, or raise the limit"))
    return out


def _sample_cap(task) -> int | None:
    """The most samples one draw of ``task`` can give (the upper bound of its ``n_samples``: the size of a fixed
    image set), or None for a task that draws as many as asked."""
    for f in dataclasses.fields(task):
        if f.name == "n_samples" and f.metadata.get("le") is not None:
            return int(f.metadata["le"])
    return None
