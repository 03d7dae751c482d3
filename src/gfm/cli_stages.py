"""The pipeline-stage commands of ``gfm``: validate, generate, split, train, forecast, evaluate, generalize,
headline, report, accelerate. Each parses its flags, validates the params file and calls its stage's
``run``; `gfm.cli` builds the parser and maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gfm.base.errors import ParamsError
from gfm.config import load_params
from gfm.pipeline import PATHS


def _folder(name: str) -> str:
    """The folder of output ``name`` before its first wildcard (``metrics`` -> ``data/metrics``): a default."""
    return PATHS[name].split("{", 1)[0].rstrip("/")


__all__ = ["load_validated_params", "add_parsers", "PARAMS_HELP", "STORE_HELP", "THREADS_HELP"]

PARAMS_HELP = "the params file (default: %(default)s)"
STORE_HELP = "store key '<task>-<optimizer>' from params.stores, e.g. mlp_regression-sgd"
THREADS_HELP = "torch intra-op threads (0 = torch's default; Snakemake passes the rule's threads)"


def load_validated_params(path: str | Path):
    """Params as every command sees them (``gfm validate`` included): the file read and validated
    (:func:`gfm.config.load_params`), then the options of every entry of ``models:`` checked against its
    forecaster, so no stage starts on a file validate refuses."""
    from gfm.stages.train import model_problems

    params = load_params(path)
    problems = model_problems(params, sorted(params.models))
    if problems:
        raise ParamsError(problems, source=str(path))
    return params


def _cmd_validate(args: argparse.Namespace) -> int:
    params = load_validated_params(args.params)
    def runs(task) -> int:  # a declared store's runs are its own, over its own dataset seeds
        if task.kind == "recorded":
            from gfm.config.declared import read_declared

            return read_declared(task.source).n_runs
        return len(params.generate.dataset_seeds) * task.runs_per_dataset

    n_runs = sum(runs(params.tasks[s.task]) for s in params.stores.values())
    print(f"{args.params}: ok ({len(params.tasks)} tasks, {len(params.stores)} stores, {n_runs} runs)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from gfm.stages import generate

    params = load_validated_params(args.params)
    params.lookup_store(args.store)
    summary = generate.run(params, args.store, out=Path(args.out), progress=False if args.quiet else None)
    print(json.dumps(summary.__dict__, sort_keys=True))
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from gfm.stages import split

    params = load_validated_params(args.params)
    result = split.run(params.split, store=Path(args.inp), out=Path(args.out))
    print(split_line(Path(args.out), result["datasets"]))
    return 0


def split_line(out: Path, datasets: dict[str, dict[str, list[int]]]) -> str:
    """What ``gfm split`` prints: one line of totals (the run ids are in the file)."""
    total = {part: sum(len(e[part]) for e in datasets.values()) for part in ("train", "val", "test", "diverged")}
    return (f"wrote {out}: {len(datasets)} dataset seeds, {total['train']} train, {total['val']} val, "
            f"{total['test']} test runs ({total['diverged']} diverged)")


def _cmd_train(args: argparse.Namespace) -> int:
    from gfm.stages import train

    params = load_validated_params(args.params)  # every model's options checked, before any data is read
    summary = train.run(params, store_key=args.store, model=args.model, split=Path(args.split), store=Path(args.inp),
                        out=Path(args.out), progress=False if args.quiet else None, models_checked=True)
    print(train_line(Path(args.out), summary))
    return 0


def train_line(out: Path, summary) -> str:
    """What ``gfm train`` prints: one line, the fits or the model's refusal of the store (a refusal is not a
    failure: the job succeeds; the details are in ``summary.json`` / ``refused.json``)."""
    if summary.refused is not None:
        return f"{summary.store}/{summary.model}: refused the store: {summary.refused} (wrote {out}/refused.json)"
    return (f"wrote {out}: {summary.model} ({summary.kind}) fitted on {len(summary.seeds)} dataset seeds in "
            f"{summary.seconds} s")


def _cmd_forecast(args: argparse.Namespace) -> int:
    from gfm.stages import forecast

    params = load_validated_params(args.params)
    summary = forecast.run(params, store_key=args.store, store=Path(args.inp), split=Path(args.split),
                           models=Path(args.models), out=Path(args.out), names=args.model or None)
    print(forecast_line(Path(args.out), summary))
    return 0


def forecast_line(out: Path, summaries: dict[str, dict]) -> str:
    """What ``gfm forecast`` prints: one line, the models forecast and those that refused the store, with why."""
    done = {n: s for n, s in summaries.items() if "refused" not in s}
    runs = sorted({s["n_runs"] for s in done.values()})
    line = f"wrote {out}: {len(done)} models forecast" + (f" {runs[0]} test runs" if len(runs) == 1 else "")
    refused = [f"{n} ({s['refused']})" for n, s in summaries.items() if "refused" in s]
    return line + (f"; {len(refused)} refused the store: {'; '.join(refused)}" if refused else "")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gfm.stages import evaluate

    params = load_validated_params(args.params)
    result = evaluate.run(params, store_key=args.store, store=Path(args.inp), split=Path(args.split),
                          forecasts=Path(args.forecasts), metrics=Path(args.metrics), plots=Path(args.plots))
    print(evaluate_line(Path(args.metrics), result))
    return 0


def evaluate_line(metrics: Path, result: dict) -> str:
    """What ``gfm evaluate`` prints: one line, how many models were scored and which refused the store."""
    refused = [n for n, m in result["models"].items() if "refused" in m]
    scored = len(result["models"]) - len(refused)
    return (f"wrote {metrics}: {scored} models scored on {result['counts']['test_runs']} test runs"
            + (f"; refused the store: {', '.join(refused)}" if refused else ""))


def _cmd_generalize(args: argparse.Namespace) -> int:
    from gfm.stages import generalize

    params = load_validated_params(args.params)
    result = generalize.run(params, data=Path(args.data), out=Path(args.out))
    print(json.dumps({p["target"]: {n: m["transfer_xlv"]["mean"] for n, m in p["models"].items()}
                      for p in result["pairs"]}, sort_keys=True))
    return 0


def _cmd_headline(args: argparse.Namespace) -> int:
    from gfm.report import headline

    result = headline.run([Path(m) for m in args.metrics], plots=Path(args.plots), out=Path(args.out),
                          plot_data=Path(args.plot_data))
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from gfm.report import summary as report

    params = load_validated_params(args.params)
    if args.readme:
        report.update_readme(params, Path(args.metrics), Path(args.readme))
        print(f"updated the results block of {args.readme}")
    else:
        from gfm.tools.workspace import workspace_params_source

        # in a gfm workspace, params.yaml is a copy of a preset: the report names the preset too
        source = workspace_params_source(Path(args.params).resolve().parent)
        out = report.run(params, metrics_dir=Path(args.metrics), plots_dir=Path(args.plots), out=Path(args.out),
                         accelerate_dir=Path(args.accelerate),
                         models_dir=Path(args.models) if args.models else None, config_source=source)
        print(f"wrote {out / 'summary.md'} and {out / 'summary.html'}")
    return 0


def _cmd_accelerate(args: argparse.Namespace) -> int:
    from gfm.stages import accelerate

    params = load_validated_params(args.params)
    result = accelerate.run(params, store_key=args.store, split=Path(args.split), models=Path(args.models),
                            out=Path(args.out), part=args.runs, progress=not args.quiet)
    print(json.dumps({name: {k: m[k] for k in ("speedup_steps", "final_loss_mean", "accepted", "rejected")}
                      for name, m in result["models"].items()}, sort_keys=True))
    return 0


def add_parsers(sub) -> None:
    """Register the stage commands on ``gfm``'s subparsers, in the order ``gfm --help`` lists them."""
    v = sub.add_parser("validate", help="check a params file without running anything")
    v.add_argument("params", nargs="?", default="params.yaml", metavar="PARAMS.yaml",
                   help="the params file to check (default: %(default)s)")
    v.set_defaults(func=_cmd_validate)

    g = sub.add_parser("generate", help="train and record the runs of one store")
    g.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    g.add_argument("--store", required=True, metavar="KEY", help=STORE_HELP)
    g.add_argument("--out", required=True, metavar="STORE.zarr", help="the trajectory store to write")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("split", help="train/val/test run ids of a store")
    s.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    s.add_argument("--in", dest="inp", required=True, metavar="STORE.zarr", help="the trajectory store to split")
    s.add_argument("--out", required=True, metavar="SPLIT.json",
                   help="split JSON to write: train/val/test run ids per dataset seed")
    s.set_defaults(func=_cmd_split)

    t = sub.add_parser("train", help="fit one model per dataset seed of one store")
    t.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    t.add_argument("--store", required=True, metavar="KEY", help=STORE_HELP)
    t.add_argument("--model", required=True, metavar="NAME", help="a name from params.models")
    t.add_argument("--split", required=True, metavar="SPLIT.json", help="the store's split JSON")
    t.add_argument("--in", dest="inp", required=True, metavar="STORE.zarr", help="the trajectory store")
    t.add_argument("--out", required=True, metavar="DIR", help="model directory to write (one <seed>/ per seed)")
    t.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser("forecast", help="forecast the test runs of one store with every trained model")
    f.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    f.add_argument("--store", required=True, metavar="KEY", help=STORE_HELP)
    f.add_argument("--model", action="append", metavar="NAME",
                   help="only this model (repeatable; default: train.models)")
    f.add_argument("--in", dest="inp", required=True, metavar="STORE.zarr", help="the trajectory store")
    f.add_argument("--split", required=True, metavar="SPLIT.json", help="the store's split JSON (its test runs "
                                                                        "are forecast)")
    f.add_argument("--models", required=True, metavar="DIR",
                   help="the store's model directory (holds <model>/<seed>/)")
    f.add_argument("--out", required=True, metavar="DIR", help="directory of <model>.zarr forecast stores to write")
    f.set_defaults(func=_cmd_forecast)

    e = sub.add_parser("evaluate", help="score every model's forecasts of one store")
    e.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    e.add_argument("--store", required=True, metavar="KEY", help=STORE_HELP)
    e.add_argument("--in", dest="inp", required=True, metavar="STORE.zarr",
                   help="the trajectory store (the true test runs)")
    e.add_argument("--split", required=True, metavar="SPLIT.json", help="the store's split JSON")
    e.add_argument("--forecasts", required=True, metavar="DIR", help="directory of <model>.zarr forecast stores")
    e.add_argument("--metrics", required=True, metavar="METRICS.json", help="metrics JSON to write")
    e.add_argument("--plots", required=True, metavar="DIR", help="directory of plot CSVs to write")
    e.set_defaults(func=_cmd_evaluate)

    gz = sub.add_parser("generalize", help="forecast one store's test runs with models fitted on another")
    gz.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    gz.add_argument("--data", default=_folder("trajectories").split("/")[0], metavar="DIR",
                    help="root of trajectories/, splits/, models/ (default: %(default)s)")
    gz.add_argument("--out", default=PATHS["generalize"], metavar="METRICS.json",
                    help="metrics JSON to write (default: %(default)s)")
    gz.set_defaults(func=_cmd_generalize)

    hl = sub.add_parser("headline", help="metrics.json (one xLV per store and model) and per-kind plot CSVs "
                                         "for DVC, both tracked by git")
    hl.add_argument("--metrics", nargs="+", required=True, metavar="METRICS.json",
                    help="evaluate's metrics JSON of each store to show, in this order")
    hl.add_argument("--plots", default=_folder("plots"), metavar="DIR",
                    help="evaluate's plot CSVs, <task>/<optimizer>/ (default: %(default)s)")
    hl.add_argument("--out", default=PATHS["headline_metrics"], metavar="METRICS.json",
                    help="headline metrics JSON to write (default: %(default)s)")
    hl.add_argument("--plot-data", default=PATHS["headline_plots"], metavar="DIR",
                    help="directory to write: error_vs_horizon/<store>.csv, trajectory/<store>.csv "
                         "(default: %(default)s)")
    hl.set_defaults(func=_cmd_headline)

    r = sub.add_parser("report", help="summary.md/.html + figures from every store's metrics")
    r.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    r.add_argument("--metrics", default=_folder("metrics"), metavar="DIR",
                   help="per-store metrics JSON, <task>/<optimizer>.json (default: %(default)s)")
    r.add_argument("--plots", default=_folder("plots"), metavar="DIR",
                   help="per-store plot CSVs written by evaluate (default: %(default)s)")
    r.add_argument("--accelerate", default=_folder("accelerate"), metavar="DIR",
                   help="jump-ahead results (a missing dir = none; default: %(default)s)")
    r.add_argument("--models", default=None, metavar="DIR",
                   help="trained models (data/models): the training-protocol tables and validation curves "
                        "(omitted: left out of the report)")
    r.add_argument("--out", default=PATHS["reports"], metavar="DIR",
                   help="report directory: summary.md, summary.html, figures/ (default: %(default)s)")
    r.add_argument("--readme", default=None, metavar="README.md",
                   help="instead: regenerate this README's results block")
    r.set_defaults(func=_cmd_report)

    ac = sub.add_parser("accelerate", help="jump-ahead training with a trained forecaster vs plain training")
    ac.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    ac.add_argument("--store", required=True, metavar="KEY", help="a key of accelerate.stores")
    ac.add_argument("--split", required=True, metavar="SPLIT.json", help="the store's split JSON")
    ac.add_argument("--models", required=True, metavar="DIR",
                    help="the store's model directory (holds <model>/<seed>/)")
    ac.add_argument("--out", required=True, metavar="METRICS.json", help="metrics JSON to write")
    ac.add_argument("--runs", choices=["test", "val"], default="test",
                    help="which split runs to re-train (val: for choosing the accelerate settings)")
    ac.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    ac.add_argument("--quiet", action="store_true", help="no per-seed progress lines")
    ac.set_defaults(func=_cmd_accelerate)
