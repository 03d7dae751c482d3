"""Does an option help? Refit one model with option overrides beside its pipeline options, on validation runs.

For each store and dataset seed, the model is fitted twice from the same random stream: with the options the
pipeline's tuning chose (``summary.json``; the base) and with those options plus each ``--set`` override (the
variant), under the shared budget and stopping rule. Both are scored by the validation weight MSE at the final
horizon (the tuning score); test runs are never read. One Markdown row per store: mean scores, the paired
ratio variant / base over dataset seeds with its 95% t interval (gfm.metrics.stats), and fit seconds.

Usage (after ``make run``; one thread, as a train job)::

    python -m benchmarks.variants --model gfm_function --set unroll=10 --set unroll_sigma=0.1 \\
        --stores mlp_regression-sgd mlp_regression-adam --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from benchmarks.encoder_ablation import chosen, ratio_text
from gfm.config import load_params
from gfm.forecasters import Trajectories, make_forecaster
from gfm.forecasters.fitting import val_scores
from gfm.stages import train
from gfm.stages.split import read_split
from gfm.store.reader import open_trajectories


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--model", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option override (YAML value)")
    p.add_argument("--stores", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", default=None, help="dataset seeds (default: all)")
    p.add_argument("--models-dir", default="data/models")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    kind = params.models[args.model]["kind"]
    print(f"| store | {args.model} val final MSE base / {overrides} | variant / base | fit s base / variant |")
    print("|---|---|---|---|")
    for key in args.stores:
        st, _ = params.lookup_store(key)
        ts = open_trajectories(Path("data/trajectories") / st.task / f"{st.optimizer.name}.zarr")
        split = read_split(Path("data/splits") / st.task / f"{st.optimizer.name}.json", ts.n_runs)
        base = chosen(params, Path(args.models_dir), st.task, st.optimizer.name, args.model)
        scores, seconds = {"base": [], "variant": []}, {"base": 0.0, "variant": 0.0}
        for seed in args.seeds or [str(s) for s in params.generate.dataset_seeds]:
            e = split[seed]
            runs_tr = sorted(set(e["train"]) - set(e["diverged"]))
            runs_va = sorted(set(e["val"]) - set(e["diverged"]))
            both = Trajectories.from_store(ts, runs_tr + runs_va)
            tr, va = both.select(range(len(runs_tr))), both.select(range(len(runs_tr), both.n_runs))
            for name, options in (("base", base), ("variant", {**base, **overrides})):
                fc = make_forecaster(kind, options, prefix_end=params.forecast.prefix_end, horizons=params.forecast.horizons)
                rng = torch.Generator().manual_seed(train.derive_seed(params.train.seed, key, args.model, seed))
                t0 = time.perf_counter()
                fc.fit(tr, va, rng=rng)
                seconds[name] += time.perf_counter() - t0
                scores[name].append(val_scores(fc, va)["val_final_mse"])
        means = " / ".join(f"{sum(v) / len(v):.3g}" for v in scores.values())
        print(f"| {key} | {means} | {ratio_text(scores['variant'], scores['base'])} | "
              f"{seconds['base']:.0f} / {seconds['variant']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
