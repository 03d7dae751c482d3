"""Command line: ``gfm <command> ...`` (also ``python -m gfm``). Thin: parse, validate params, call a stage.

Commands::

    gfm validate [PARAMS]                                  check a params file; exit 0 or 2
    gfm generate --params P --store KEY --out STORE.zarr   train and record one store
    gfm split    --params P --in STORE.zarr --out SPLIT.json
    gfm train    --params P --store KEY --model NAME --split SPLIT.json --in STORE.zarr --out DIR
    gfm forecast --params P --store KEY --in STORE.zarr --split S.json --models DIR --out DIR
    gfm evaluate --params P --store KEY --in STORE.zarr --split S.json --forecasts DIR --metrics M.json --plots DIR
    gfm generalize --params P [--data data --out data/metrics/generalize.json]
    gfm report   --params P [--metrics DIR --plots DIR --out reports] [--readme README.md]
    gfm headline --metrics M.json... [--plots DIR --out metrics.json --plot-data plots]   what DVC shows
    gfm info     STORE.zarr                                 print a store's summary
    gfm import   SRC.npz|SRC.npy DEST.zarr [--meta M]      NumPy trajectories -> a trajectory store
    gfm accelerate --params P --store KEY --split S.json --models DIR --out A.json   jump-ahead training
    gfm check    PATH...                                    validate artifacts; one line per problem, exit 1
    gfm adopt    [--pull]                                   after dvc pull: make Snakemake see outputs current
    gfm commit   [--profile P] [--dry-run] [--push]         after snakemake: re-run stale, dvc commit -f
    gfm slurm-check [--profile profiles/slurm]              the partitions a profile asks for exist
    gfm --version                                           the package version

`gfm <command> --help` explains every flag and ends with an example.

Every error the user can fix (bad params, missing or unfinished inputs, a missing optional dependency)
prints one line per problem to stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gfm._version import __version__
from gfm.config import load_params as _load_params_file
from gfm.errors import GFMError, ParamsError, one_line

__all__ = ["main", "load_params"]

# Modules that only the pipeline needs (pyproject.toml, extra `pipeline`), imported lazily where used, so
# `pip install gfm` without the extra still gives the library and the stage commands: module -> distribution.
PIPELINE_MODULES = {"snakemake": "snakemake", "dvc": "dvc", "matplotlib": "matplotlib",
                    "sklearn": "scikit-learn", "markdown_it": "markdown-it-py"}


def load_params(path: str | Path):
    """Params as every command sees them (``gfm validate`` included): the file validated, then the options
    of every entry of ``models:`` against its forecaster, so no stage starts on a file validate refuses."""
    from gfm.train import model_problems

    params = _load_params_file(path)
    problems = model_problems(params, sorted(params.models))
    if problems:
        raise ParamsError(problems, source=str(path))
    return params


def _cmd_validate(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    n_runs = sum(len(params.generate.dataset_seeds) * params.tasks[s.task].runs_per_dataset
                 for s in params.stores.values())
    print(f"{args.params}: ok ({len(params.tasks)} tasks, {len(params.stores)} stores, {n_runs} runs)")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from gfm import generate

    params = load_params(args.params)
    params.lookup_store(args.store)
    summary = generate.run(params, args.store, out=Path(args.out), progress=False if args.quiet else None)
    print(json.dumps(summary.__dict__, sort_keys=True))
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from gfm import split

    params = load_params(args.params)
    result = split.run(params.split, store=Path(args.inp), out=Path(args.out))
    sizes = {d: {k: len(v) for k, v in e.items()} for d, e in result["datasets"].items()}
    print(json.dumps(sizes, sort_keys=True))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from gfm import train

    params = load_params(args.params)
    # unknown model options (of every trained model, and of --model) fail here, before any data is read
    problems = train.model_problems(params, sorted({*params.train.models, args.model} & set(params.models)))
    if problems:
        raise ParamsError(problems, source=args.params)
    summary = train.run(params, store_key=args.store, model=args.model, split=Path(args.split), store=Path(args.inp),
                        out=Path(args.out), progress=False if args.quiet else None)
    print(json.dumps({"store": summary.store, "model": summary.model, "seconds": summary.seconds,
                      "seeds": sorted(summary.seeds)}, sort_keys=True))
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from gfm import forecast

    params = load_params(args.params)
    summary = forecast.run(params, store_key=args.store, store=Path(args.inp), split=Path(args.split),
                           models=Path(args.models), out=Path(args.out), names=args.model or None)
    print(json.dumps({name: s["n_runs"] for name, s in summary.items()}, sort_keys=True))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from gfm import evaluate

    params = load_params(args.params)
    result = evaluate.run(params, store_key=args.store, store=Path(args.inp), split=Path(args.split),
                          forecasts=Path(args.forecasts), metrics=Path(args.metrics), plots=Path(args.plots))
    print(json.dumps({n: m["final_mse"] for n, m in result["models"].items()}, sort_keys=True))
    return 0


def _cmd_generalize(args: argparse.Namespace) -> int:
    from gfm import generalize

    params = load_params(args.params)
    result = generalize.run(params, data=Path(args.data), out=Path(args.out))
    print(json.dumps({p["target"]: {n: m["transfer_xlv"]["mean"] for n, m in p["models"].items()}
                      for p in result["pairs"]}, sort_keys=True))
    return 0


def _cmd_headline(args: argparse.Namespace) -> int:
    from gfm import headline

    result = headline.run([Path(m) for m in args.metrics], plots=Path(args.plots), out=Path(args.out),
                          plot_data=Path(args.plot_data))
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from gfm import report

    params = load_params(args.params)
    if args.readme:
        report.update_readme(params, Path(args.metrics), Path(args.readme))
        print(f"updated the results block of {args.readme}")
    else:
        out = report.run(params, metrics_dir=Path(args.metrics), plots_dir=Path(args.plots), out=Path(args.out),
                         accelerate_dir=Path(args.accelerate),
                         models_dir=Path(args.models) if args.models else None)
        print(f"wrote {out / 'summary.md'} and {out / 'summary.html'}")
    return 0


def _cmd_accelerate(args: argparse.Namespace) -> int:
    from gfm import accelerate

    params = load_params(args.params)
    result = accelerate.run(params, store_key=args.store, split=Path(args.split), models=Path(args.models),
                            out=Path(args.out), part=args.runs, progress=not args.quiet)
    print(json.dumps({name: {k: m[k] for k in ("speedup_steps", "final_loss_mean", "accepted", "rejected")}
                      for name, m in result["models"].items()}, sort_keys=True))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from gfm.importer import import_trajectories

    chunks = load_params(args.params).store if args.params else None
    summary = import_trajectories(args.src, args.dest, meta=args.meta, chunks=chunks, overwrite=args.overwrite)
    print(json.dumps(summary, sort_keys=True))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from gfm.store import open_trajectories

    # open_trajectories checks the store's structure (gfm.inputs): every attribute read below is present and
    # of its type, and a damaged store is one `error:` line, exit 2
    ts = open_trajectories(args.store)
    runs = ts.runs
    print(json.dumps({
        "store": ts.attrs["store"], "runs": ts.n_runs, "records": ts.n_records, "params": ts.n_params,
        "optimizer": ts.optimizer["name"], "task": ts.attrs["task"]["kind"],
        "diverged": int(runs["diverged"].sum()), "state": list(ts.state_names),
        "layout": [(s.name, list(s.shape)) for s in ts.layout],
        "loss_recorded": ts.attrs.get("loss_source") != "none",
    }, indent=1))
    return 0


def _cmd_adopt(args: argparse.Namespace) -> int:
    from gfm import drivers

    result = drivers.adopt(args.repo, pull=args.pull, remote=args.remote)
    print(f"adopted: dvc status clean{' after dvc pull' if result.pulled else ''}; "
          f"Snakemake now sees {result.outputs} outputs as current")
    return 0


def _cmd_commit(args: argparse.Namespace) -> int:
    from gfm import drivers

    result = drivers.commit_cluster_run(args.repo, profile=args.profile, dry_run=args.dry_run, push=args.push)
    if result.verdicts:
        print(drivers.format_verdicts(result.verdicts))
    if args.dry_run:
        print(f"dry run: would re-run {len(result.forced)} stages, then dvc commit -f")
    else:
        print(f"{'committed' if result.committed else 'nothing to commit'}: dvc status clean"
              f"{'; pushed' if result.pushed else ''}")
    return 0


def _cmd_slurm_check(args: argparse.Namespace) -> int:
    from gfm import drivers

    problems = drivers.slurm_profile_problems(args.profile)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.profile}: ok (every partition it asks for exists)")
    return 2 if problems else 0


def _cmd_workspace(args: argparse.Namespace) -> int:
    from gfm.workspace import sync_workspace

    dest = sync_workspace(args.dest, args.params, repo=args.repo)
    print(f"{dest}: workspace ready for {args.params}; run it with: cd {dest} && dvc repro")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from gfm.check import check_path

    verdicts = [v for path in args.paths for v in check_path(path)]
    for v in verdicts:
        for line in v.lines():
            print(line)
    bad = sum(not v.ok for v in verdicts)
    if bad:
        print(f"{bad} of {len(verdicts)} artifacts have problems", file=sys.stderr)
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gfm", description="Gradient Flow Matching pipeline: generate training "
                                "trajectories, learn their flow, forecast final weights. Each command is one "
                                "pipeline stage or a tool around the stores and the DVC/Snakemake drivers.",
                                epilog="`gfm <command> --help` explains a command and shows an example.")
    p.add_argument("--version", action="version", version=f"gfm {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")

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
    gz.add_argument("--data", default="data", metavar="DIR",
                    help="root of trajectories/, splits/, models/ (default: %(default)s)")
    gz.add_argument("--out", default="data/metrics/generalize.json", metavar="METRICS.json",
                    help="metrics JSON to write (default: %(default)s)")
    gz.set_defaults(func=_cmd_generalize)

    hl = sub.add_parser("headline", help="metrics.json (one xLV per store and model) and per-kind plot CSVs "
                                         "for DVC, both tracked by git")
    hl.add_argument("--metrics", nargs="+", required=True, metavar="METRICS.json",
                    help="evaluate's metrics JSON of each store to show, in this order")
    hl.add_argument("--plots", default="data/plots", metavar="DIR",
                    help="evaluate's plot CSVs, <task>/<optimizer>/ (default: %(default)s)")
    hl.add_argument("--out", default="metrics.json", metavar="METRICS.json",
                    help="headline metrics JSON to write (default: %(default)s)")
    hl.add_argument("--plot-data", default="plots", metavar="DIR",
                    help="directory to write: error_vs_horizon/<store>.csv, trajectory/<store>.csv "
                         "(default: %(default)s)")
    hl.set_defaults(func=_cmd_headline)

    r = sub.add_parser("report", help="summary.md/.html + figures from every store's metrics")
    r.add_argument("--params", default="params.yaml", help=PARAMS_HELP, metavar="PARAMS.yaml")
    r.add_argument("--metrics", default="data/metrics", metavar="DIR",
                   help="per-store metrics JSON, <task>/<optimizer>.json (default: %(default)s)")
    r.add_argument("--plots", default="data/plots", metavar="DIR",
                   help="per-store plot CSVs written by evaluate (default: %(default)s)")
    r.add_argument("--accelerate", default="data/metrics/accelerate", metavar="DIR",
                   help="jump-ahead results (a missing dir = none; default: %(default)s)")
    r.add_argument("--models", default=None, metavar="DIR",
                   help="trained models (data/models): the training-protocol tables and validation curves "
                        "(omitted: left out of the report)")
    r.add_argument("--out", default="reports", metavar="DIR",
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

    im = sub.add_parser("import", help="NumPy trajectories (.npy/.npz + metadata) -> a trajectory store")
    im.add_argument("src", metavar="SRC.npz|SRC.npy",
                    help=".npy (run, step, param) weights or .npz with weights[, loss, lr, state_<name>]")
    im.add_argument("dest", metavar="DEST.zarr", help="the trajectory store to write")
    im.add_argument("--meta", default=None, metavar="META.yaml",
                    help="metadata YAML/JSON (default: <src stem>.meta.yaml beside src)")
    im.add_argument("--params", default=None, metavar="PARAMS.yaml",
                    help="take Zarr chunking from this params file's `store:`")
    im.add_argument("--overwrite", action="store_true", help="replace an existing store")
    im.set_defaults(func=_cmd_import)

    i = sub.add_parser("info", help="summarise a trajectory store")
    i.add_argument("store", metavar="STORE.zarr", help="the trajectory store to summarise")
    i.set_defaults(func=_cmd_info)

    a = sub.add_parser("adopt", help="after dvc pull/checkout: check dvc status is clean, mark outputs current "
                                     "for Snakemake")
    a.add_argument("--pull", action="store_true", help="run `dvc pull` first")
    a.add_argument("--remote", default=None, metavar="NAME",
                   help="DVC remote to pull from (default: the default remote)")
    a.add_argument("--repo", default=".", metavar="DIR", help="repository root (default: %(default)s)")
    a.set_defaults(func=_cmd_adopt)

    c = sub.add_parser("commit", help="after a direct snakemake run: re-run stale outputs, dvc commit -f")
    c.add_argument("--profile", default=None, metavar="DIR", help="Snakemake profile for re-runs, e.g. profiles/slurm")
    c.add_argument("--dry-run", action="store_true", help="only report which stages are stale")
    c.add_argument("--push", action="store_true", help="dvc push --run-cache after committing")
    c.add_argument("--repo", default=".", metavar="DIR", help="repository root (default: %(default)s)")
    c.set_defaults(func=_cmd_commit)

    k = sub.add_parser("slurm-check", help="check a SLURM profile against this cluster (partitions)")
    k.add_argument("--profile", default="profiles/slurm", metavar="DIR",
                   help="Snakemake profile directory to check (default: %(default)s)")
    k.set_defaults(func=_cmd_slurm_check)

    w = sub.add_parser("workspace", help="create/sync build/<preset>/: the pipeline on another params file "
                                         "(e.g. params.quick.yaml), apart from this repository's outputs")
    w.add_argument("dest", metavar="DEST", help="workspace directory, e.g. build/quick")
    w.add_argument("--params", required=True, metavar="PARAMS.yaml",
                   help="the preset's params file, e.g. params.quick.yaml")
    w.add_argument("--repo", default=".", metavar="DIR", help="the pipeline repository (default: here)")
    w.set_defaults(func=_cmd_workspace)

    ck = sub.add_parser("check", help="validate artifacts (stores, models, forecasts, metrics); exit 1 on problems")
    ck.add_argument("paths", nargs="+", metavar="PATH", help="an artifact, or a directory to search for them")
    ck.set_defaults(func=_cmd_check)
    for name in THREADED:  # every torch-heavy command takes --threads (rules pass their `threads:`)
        sp = sub.choices.get(name)
        if sp is not None and not any("--threads" in a.option_strings for a in sp._actions):
            sp.add_argument("--threads", type=int, default=0, metavar="N", help=THREADS_HELP)
    _describe(sub)
    return p


def _describe(sub) -> None:
    """Give every command its one-line help as description and its example (EXAMPLES) as epilog, kept as
    written (RawDescriptionHelpFormatter), so `gfm <command> --help` says what it does and how to call it."""
    summaries = {a.dest: a.help for a in sub._choices_actions}
    for name, sp in sub.choices.items():
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
        sp.description = sp.description or summaries.get(name)
        if name in EXAMPLES:
            sp.epilog = "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name].strip().splitlines())


THREADED = ("generate", "train", "forecast", "evaluate", "generalize", "accelerate")
PARAMS_HELP = "the params file (default: %(default)s)"
STORE_HELP = "store key '<task>-<optimizer>' from params.stores, e.g. mlp_regression-sgd"
THREADS_HELP = "torch intra-op threads (0 = torch's default; Snakemake passes the rule's threads)"

# One runnable call per command (`gfm <command> --help` prints it), with the paths the pipeline uses.
EXAMPLES = {
    "validate": "gfm validate params.quick.yaml",
    "generate": "gfm generate --params params.yaml --store mlp_regression-sgd \\\n"
                "    --out data/trajectories/mlp_regression/sgd.zarr",
    "split": "gfm split --in data/trajectories/mlp_regression/sgd.zarr --out data/splits/mlp_regression/sgd.json",
    "train": "gfm train --store mlp_regression-sgd --model gfm_state --split data/splits/mlp_regression/sgd.json \\\n"
             "    --in data/trajectories/mlp_regression/sgd.zarr --out data/models/mlp_regression/sgd/gfm_state",
    "forecast": "gfm forecast --store mlp_regression-sgd --in data/trajectories/mlp_regression/sgd.zarr \\\n"
                "    --split data/splits/mlp_regression/sgd.json --models data/models/mlp_regression/sgd \\\n"
                "    --out data/forecasts/mlp_regression/sgd",
    "evaluate": "gfm evaluate --store mlp_regression-sgd --in data/trajectories/mlp_regression/sgd.zarr \\\n"
                "    --split data/splits/mlp_regression/sgd.json --forecasts data/forecasts/mlp_regression/sgd \\\n"
                "    --metrics data/metrics/mlp_regression/sgd.json --plots data/plots/mlp_regression/sgd",
    "generalize": "gfm generalize --params params.yaml --data data --out data/metrics/generalize.json",
    "headline": "gfm headline --metrics data/metrics/mlp_regression/sgd.json data/metrics/digits/adam.json \\\n"
                "    --plots data/plots --out metrics.json --plot-data plots",
    "report": "gfm report --models data/models --out reports        # reports/summary.md, summary.html\n"
              "gfm report --readme README.md                        # the README's results block",
    "accelerate": "gfm accelerate --store mlp_regression-sgd --split data/splits/mlp_regression/sgd.json \\\n"
                  "    --models data/models/mlp_regression/sgd --out data/metrics/accelerate/mlp_regression/sgd.json",
    "import": "gfm import w.npy data/imported/w.zarr --meta w.meta.yaml --params params.yaml",
    "info": "gfm info data/trajectories/mlp_regression/sgd.zarr",
    "adopt": "dvc pull && gfm adopt      # or: gfm adopt --pull",
    "commit": "snakemake --profile profiles/slurm && gfm commit --profile profiles/slurm --push",
    "slurm-check": "gfm slurm-check --profile profiles/slurm",
    "workspace": "gfm workspace build/quick --params params.quick.yaml && cd build/quick && dvc repro",
    "check": "gfm check data/trajectories data/models reports/claims.json",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        # Snakemake passes the job's `threads`. Torch would otherwise split every op of these tiny nets over
        # all cores, and on a loaded machine that made generation 10-25x slower (BENCHMARKS.md).
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except ParamsError as exc:
        for problem in exc.problems:
            print(f"error: {exc.source}: {problem}", file=sys.stderr)
        return 2
    except GFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, unwritable output, full disk: the message names the path
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a pipeline-only module: name the extra; any other missing module is a bug
        dist = PIPELINE_MODULES.get((exc.name or "").split(".")[0])
        if dist is None:
            raise
        print(f"error: gfm {args.command} needs {dist}, part of gfm's `pipeline` extra: pip install "
              f"'gfm[pipeline]' (in a checkout: pip install -e '.[pipeline]', or make venv)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
