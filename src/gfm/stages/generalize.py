"""Stage ``generalize``: does a forecaster trained on one kind of network forecast another?

The paper claims GFM "generalises across architectures and initialisations". For each pair in
``generalize.pairs`` (source store -> target store, same optimizer), every model in ``generalize.models``
that was fitted on the *source* store's training runs (dataset seed d) forecasts the *target* store's test runs
of the same dataset seed d, and is scored beside the same model fitted on the target itself (in-distribution)
and beside ``last_value`` on the target. A model whose parameters depend on the network's size (e.g. a joint
field) cannot transfer across architectures; it is reported as such, not skipped silently.

Output: ``data/metrics/generalize.json``::

    {"pairs": [{"source", "target", "label", "dataset_seeds": [...], "models": {name: {"transfer": {mean, std,
      n, per_seed}, "in_distribution": {...}, "transfer_xlv": {...}, "in_distribution_xlv": {...},
      "error": null | str} | {"refused": str}}, "last_value": {mean, std, n, per_seed} | {"refused": str}}]}

A model that refused the source or the target store at train time (its model directory holds ``refused.json``
instead of weights, gfm.forecasters.StoreNotSupported) is not scored on that pair: its entry is
``{"refused": "<source|target> <store>: <reason>"}``, as evaluate's metrics write a refusal. So is a model fitted on the
target that refuses to forecast it. A model fitted on the source that refuses to forecast the target (or fails
to) is the ``error`` of a scored entry: it cannot transfer.

``per_seed`` lists are in ``dataset_seeds`` order (``generate.dataset_seeds`` order), one value per seed with
test runs, so the report can compare two models, or transfer with in-distribution, paired by seed (gfm.metrics.stats).

Usage::

    gfm generalize --params params.yaml --out data/metrics/generalize.json
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gfm.artifacts.outputs import GENERALIZE, claim_output, write_json_output
from gfm.config import Params
from gfm.forecasters import ForecasterError, StoreNotSupported, Trajectories, read_model
from gfm.metrics.model_entries import refusal_of
from gfm.pipeline import under
from gfm.stages.evaluate import mean_std
from gfm.stages.forecast import read_split, test_runs
from gfm.store.reader import open_trajectories

__all__ = ["run", "pair_label"]


def pair_label(params: Params, source: str, target: str) -> str:
    """What differs between two stores' tasks, e.g. ``hidden [10] -> [20]``."""
    a, b = params.lookup_store(source)[1], params.lookup_store(target)[1]
    diffs = []
    for name in ("hidden", "dim", "init", "n_samples", "batch_size", "kind"):
        va, vb = getattr(a, name, None), getattr(b, name, None)
        if va != vb:
            if hasattr(va, "dist"):
                va, vb = f"{va.dist} x{va.scale:g}", f"{vb.dist} x{vb.scale:g}"
            elif isinstance(va, tuple):
                va, vb = list(va), list(vb)
            diffs.append(f"{name} {va} -> {vb}")
    return "; ".join(diffs) or "same task"


def _refusals(data: Path, names: list[str], sides: dict[str, tuple[str, object]]) -> dict[str, str]:
    """model -> why it is not scored on a pair: it refused the source or the target store at train time
    (``sides``: side -> (store key, store spec))."""
    out: dict[str, str] = {}
    for name in names:
        for side, (key, spec) in sides.items():
            reason = refusal_of(under(data, "model", spec.task, spec.optimizer.name, name, replaces="data"))
            if reason is not None and name not in out:
                out[name] = f"{side} {key}: {reason}"
    return out


def _first_line(exc: BaseException, limit: int) -> str:
    """The first line of an exception's message, at most ``limit`` characters (empty for an empty message)."""
    return (str(exc).splitlines() or [""])[0][:limit]


def _final_mse(model_dir: Path, target: Trajectories, prefix_end: int, final: int) -> float:
    fc = read_model(model_dir)
    with torch.no_grad():
        pred = fc.forecast(target.prefix(prefix_end), horizons=[final])[:, 0]
    return float(((pred.double() - target.weights[:, final].double()) ** 2).mean())


def run(params: Params, *, data: Path = Path("data"), out: Path) -> dict:
    """Score every (pair, model) and write ``out`` atomically (an empty ``pairs`` list writes no rows: the
    stage exists in every study so that Snakemake and DVC keep one DAG)."""
    claim_output(out, GENERALIZE)  # before any work: an --out this stage may not replace is refused (gfm.artifacts.outputs)
    gcfg = params.generalize
    k, final = params.forecast.prefix_end, params.forecast.horizons[-1]
    result = {"prefix_end": k, "final": final, "models": list(gcfg.models), "pairs": []}
    for pair in gcfg.pairs:
        src_spec, _ = params.lookup_store(pair.source)
        tgt_spec, _ = params.lookup_store(pair.target)
        tgt_store = open_trajectories(under(data, "trajectories", tgt_spec.task, tgt_spec.optimizer.name, replaces="data"))
        by_seed, _ = test_runs(read_split(under(data, "split", tgt_spec.task, tgt_spec.optimizer.name, replaces="data")))
        entry = {"source": pair.source, "target": pair.target, "label": pair_label(params, pair.source, pair.target),
                 "models": {}}
        scores: dict[str, dict[str, list[float]]] = {}
        errors: dict[str, str] = {}
        refused = _refusals(data, ["last_value", *gcfg.models],
                            {"source": (pair.source, src_spec), "target": (pair.target, tgt_spec)})
        order = {int(d): i for i, d in enumerate(params.generate.dataset_seeds)}
        seeds_used = []
        for seed in sorted(by_seed, key=lambda d: (order.get(int(d), len(order)), int(d))):
            runs = by_seed[seed]
            if not runs:
                continue
            seeds_used.append(int(seed))
            target = Trajectories.from_store(tgt_store, runs)
            for name in ["last_value", *gcfg.models]:
                row = scores.setdefault(name, {"transfer": [], "in_distribution": []})
                if name in refused:
                    row["transfer"].append(float("nan"))
                    row["in_distribution"].append(float("nan"))
                    continue
                for what, spec in (("transfer", src_spec), ("in_distribution", tgt_spec)):
                    model_dir = under(data, "model", spec.task, spec.optimizer.name, name, replaces="data") / str(seed)
                    try:
                        row[what].append(_final_mse(model_dir, target, k, final))
                    except StoreNotSupported as exc:
                        if what == "in_distribution":  # fitted on the target, refuses to forecast it
                            refused.setdefault(name, f"target {pair.target}: {_first_line(exc, 300)}")
                        else:  # fitted on the source, refuses the target: it cannot transfer
                            errors[name] = f"{what}: {type(exc).__name__}: {_first_line(exc, 160)}"
                        row[what].append(float("nan"))
                    except (ForecasterError, RuntimeError, ValueError) as exc:
                        # e.g. a joint field sized for another network: a real, reportable limitation
                        errors[name] = f"{what}: {type(exc).__name__}: {_first_line(exc, 160)}"
                        row[what].append(float("nan"))
        base = np.array(scores["last_value"]["in_distribution"])
        entry["dataset_seeds"] = seeds_used
        for name in gcfg.models:
            if name in refused:
                entry["models"][name] = {"refused": refused[name]}
                continue
            row = scores[name]
            entry["models"][name] = {
                "transfer": {**mean_std(row["transfer"]), "per_seed": list(row["transfer"])},
                "in_distribution": {**mean_std(row["in_distribution"]), "per_seed": list(row["in_distribution"])},
                "transfer_xlv": mean_std(np.array(row["transfer"]) / base),
                "in_distribution_xlv": mean_std(np.array(row["in_distribution"]) / base),
                "error": errors.get(name),
            }
        entry["last_value"] = ({"refused": refused["last_value"]} if "last_value" in refused
                               else {**mean_std(base), "per_seed": base.tolist()})
        result["pairs"].append(entry)
    write_json_output(out, GENERALIZE, result)
    return result
