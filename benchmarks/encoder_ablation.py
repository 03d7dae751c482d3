"""Encoder or field? The per-parameter LSTM given gfm_function's run code z (``lstm_z``), on validation runs.

``gfm_function`` couples every parameter through the network's function *and* conditions on a run code z
inferred from the prefix. ``lstm_z`` (gfm.forecasters.conditioned) gives the LSTM that same encoder. For each
store and dataset seed this fits ``lstm`` and ``lstm_z`` with the LSTM options the pipeline's tuning chose for
``lstm`` there (``summary.json``) and the encoder options its tuning chose for ``gfm_function``, under the
shared budget and stopping rule, and scores them with the pipeline's fitted ``gfm_function`` of that seed by
the validation weight MSE at the final horizon (the tuning score). Validation runs only: test runs are never
read (they are evaluate's). Paired ratios over dataset seeds with 95% t intervals (gfm.metrics.stats).

Usage (after ``make run``; one thread, as a train job)::

    python -m benchmarks.encoder_ablation --stores mlp_regression-sgd mlp_regression-adam

Prints one Markdown row per store.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gfm.config import load_params
from gfm.forecasters import Trajectories, make_forecaster, read_model
from gfm.forecasters.fitting import val_scores
from gfm.metrics.stats import paired_ratio
from gfm.stages import train
from gfm.stages.split import read_split
from gfm.stages.tuning import learned_options
from gfm.store.reader import open_trajectories


def chosen(params, models_dir: Path, task: str, opt: str, model: str) -> dict:
    spec = dict(params.models[model])
    spec.pop("kind")
    summary = json.loads((models_dir / task / opt / model / "summary.json").read_text())
    return {**learned_options(spec, params.train.budget), **(summary.get("tuning") or {}).get("chosen_options", {})}


def ratio_text(a: list[float], b: list[float]) -> str:
    pr = paired_ratio(a, b, 0.95)
    return f"{pr.ratio:.3g} [{pr.ci[0]:.3g}, {pr.ci[1]:.3g}]" if pr.ci and pr.ci[0] is not None else f"{pr.ratio:.3g}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--stores", nargs="+", required=True)
    p.add_argument("--models-dir", default="data/models")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params, models_dir, fc_cfg = load_params(args.params), Path(args.models_dir), load_params(args.params).forecast
    print("| store | val final MSE lstm / lstm_z / gfm_function (mean over seeds) | lstm_z / lstm | "
          "gfm_function / lstm_z | fit s lstm / lstm_z |")
    print("|---|---|---|---|---|")
    for key in args.stores:
        st, _ = params.lookup_store(key)
        task, opt = st.task, st.optimizer.name
        ts = open_trajectories(Path("data/trajectories") / task / f"{opt}.zarr")
        split = read_split(Path("data/splits") / task / f"{opt}.json", store=ts)
        lstm_opts = chosen(params, models_dir, task, opt, "lstm")
        fn = chosen(params, models_dir, task, opt, "gfm_function")
        z_opts = {**lstm_opts, "probes": fn["probes"], "basis": fn["basis"], "encoder_lr": fn["lr"]}
        scores = {"lstm": [], "lstm_z": [], "gfm_function": []}
        seconds = {"lstm": 0.0, "lstm_z": 0.0}
        for seed in [str(s) for s in params.generate.dataset_seeds]:
            e = split[seed]
            runs_tr = sorted(set(e["train"]) - set(e["diverged"]))
            runs_va = sorted(set(e["val"]) - set(e["diverged"]))
            both = Trajectories.from_store(ts, runs_tr + runs_va)
            tr, va = both.select(range(len(runs_tr))), both.select(range(len(runs_tr), both.n_runs))
            for kind, options in (("lstm", lstm_opts), ("lstm_z", z_opts)):
                fc = make_forecaster(kind, options, prefix_end=fc_cfg.prefix_end, horizons=fc_cfg.horizons)
                rng = torch.Generator().manual_seed(train.derive_seed(params.train.seed, key, "lstm", seed))
                t0 = time.perf_counter()
                fc.fit(tr, va, rng=rng)
                seconds[kind] += time.perf_counter() - t0
                scores[kind].append(val_scores(fc, va)["val_final_mse"])
            fitted = read_model(models_dir / task / opt / "gfm_function" / seed)
            scores["gfm_function"].append(val_scores(fitted, va)["val_final_mse"])
        means = " / ".join(f"{sum(v) / len(v):.3g}" for v in scores.values())
        print(f"| {key} | {means} | {ratio_text(scores['lstm_z'], scores['lstm'])} | "
              f"{ratio_text(scores['gfm_function'], scores['lstm_z'])} | {seconds['lstm']:.0f} / {seconds['lstm_z']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
