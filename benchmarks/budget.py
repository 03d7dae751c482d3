"""Is the shared training budget large enough? Refit each learned model with 2x and 4x the budget (BENCHMARKS.md).

For each store and each learned model the pipeline trained there, the fit on the tuning seed is repeated with
the model's chosen options (``summary.json`` ``tuning.chosen_options``) at ``train.budget.steps`` x 1, 2 and 4
(the same random stream, the same validation scoring and patience), and the validation weight MSE at the final
horizon is printed for each. Validation runs only: the test runs are never read. If a larger budget lowered a
model's score by more than the seed-to-seed noise, the budget was binding for that model and the comparison
would favour whoever converges fastest.

Usage (after ``make run``; one thread, as a train job)::

    python -m benchmarks.budget --stores mlp_regression-sgd mlp_regression-adam --factors 1 2 4

Prints one Markdown row per (store, model): val final MSE at each budget, the ratio of the largest budget's
score to the default's, and the updates each fit used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gfm.config import load_params
from gfm.forecasters import FORECASTERS, Trajectories, make_forecaster
from gfm.forecasters.fitting import val_scores
from gfm.stages import train
from gfm.stages.split import read_split
from gfm.stages.tuning import learned_options
from gfm.store.reader import open_trajectories


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--stores", nargs="+", required=True)
    p.add_argument("--models-dir", default="data/models")
    p.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    fc_cfg = params.forecast
    print("| store | model | " + " | ".join(f"val final MSE @ {f}x" for f in args.factors)
          + f" | {args.factors[-1]}x / 1x | updates used | fit s |")
    print("|---|---|" + "---|" * len(args.factors) + "---|---|---|")
    for key in args.stores:
        st, _ = params.lookup_store(key)
        ts = open_trajectories(Path("data/trajectories") / st.task / f"{st.optimizer.name}.zarr")
        split = read_split(Path("data/splits") / st.task / f"{st.optimizer.name}.json", store=ts)
        for model in params.store_models(key):
            spec = dict(params.models[model])
            kind = spec.pop("kind")
            if FORECASTERS[kind].closed_form:
                continue
            summary = json.loads((Path(args.models_dir) / st.task / st.optimizer.name / model / "summary.json").read_text())
            tuning = summary.get("tuning") or {}
            seed = str(tuning.get("dataset_seed") or sorted(split, key=int)[0])
            options = {**learned_options(spec, params.train.budget), **tuning.get("chosen_options", {})}
            e = split[seed]
            runs_tr = sorted(set(e["train"]) - set(e["diverged"]))
            runs_va = sorted(set(e["val"]) - set(e["diverged"]))
            both = Trajectories.from_store(ts, runs_tr + runs_va)
            tr, va = both.select(range(len(runs_tr))), both.select(range(len(runs_tr), both.n_runs))
            scores, used, seconds = [], [], []
            for f in args.factors:
                fc = make_forecaster(kind, {**options, "steps": params.train.budget.steps * f}, prefix_end=fc_cfg.prefix_end,
                                     horizons=fc_cfg.horizons)
                rng = torch.Generator().manual_seed(train.derive_seed(params.train.seed, key, model, seed))
                t0 = time.perf_counter()
                log = fc.fit(tr, va, rng=rng)
                seconds.append(time.perf_counter() - t0)
                scores.append(val_scores(fc, va)["val_final_mse"])
                used.append(int(log[-1]["step"]))
            print(f"| {key} | {model} | " + " | ".join(f"{s:.4g}" for s in scores)
                  + f" | {scores[-1] / scores[0]:.3f} | {' / '.join(map(str, used))} | "
                  + " / ".join(f"{s:.1f}" for s in seconds) + " |", flush=True)


if __name__ == "__main__":
    main()
