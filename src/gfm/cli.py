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
    gfm pipeline [--write dvc.yaml]                         dvc.yaml from the stage table
    gfm schema   [--write workflow/schemas/params.schema.json]   the params schema from the params dataclasses
    gfm --version                                           the package version

`gfm <command> --help` explains every flag and ends with an example.

Every error the user can fix (bad params, missing or unfinished inputs, a missing optional dependency)
prints one line per problem to stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from gfm import cli_stages, cli_tools
from gfm._version import __version__
from gfm.base.errors import GFMError, ParamsError, is_out_of_memory, one_line, out_of_memory_text
from gfm.cli_stages import THREADS_HELP, load_validated_params

__all__ = ["main", "load_validated_params"]

# What to do about an allocation that failed outside any stage's own context (gfm.base.errors.on_out_of_memory).
OOM_ADVICE = ("lower the sizes of the models or tasks involved (gfm validate estimates them against limits:), or run "
              "where more memory is free")

# Modules that only the pipeline needs (pyproject.toml, extra `pipeline`), imported lazily where used, so
# `pip install gfm-pipeline` without the extra still gives the library and the stage commands: module -> distribution.
PIPELINE_MODULES = {"snakemake": "snakemake", "dvc": "dvc", "matplotlib": "matplotlib",
                    "sklearn": "scikit-learn", "markdown_it": "markdown-it-py"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gfm", description="Gradient Flow Matching pipeline: generate training "
                                "trajectories, learn their flow, forecast final weights. Each command is one "
                                "pipeline stage or a tool around the stores and the DVC/Snakemake drivers.",
                                epilog="`gfm <command> --help` explains a command and shows an example.")
    p.add_argument("--version", action="version", version=f"gfm {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="<command>")
    cli_stages.add_parsers(sub)
    cli_tools.add_parsers(sub)
    from gfm.pipeline.dvc_yaml import add_commands  # gfm pipeline (dvc.yaml), gfm schema, gfm train-index

    add_commands(sub)
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
    "declare": "gfm declare recorded/my_net.zarr --task my_net --write   # tasks.my_net + stores.my_net-<optimizer>",
    "rechunk": "gfm rechunk runs/my_net.zarr runs/my_net.fast.zarr --params params.yaml",
    "adopt": "dvc pull && gfm adopt      # or: gfm adopt --pull",
    "commit": "snakemake --profile profiles/slurm && gfm commit --profile profiles/slurm --push",
    "slurm-check": "gfm slurm-check --profile profiles/slurm",
    "workspace": "gfm workspace build/quick --params params.quick.yaml\n"
                 "cd build/quick && snakemake --cores all && gfm commit     # what make run PRESET=quick runs",
    "check": "gfm check data/trajectories data/models reports/claims.json",
    "pipeline": "gfm pipeline --write dvc.yaml      # regenerate dvc.yaml from the stage table (gfm.pipeline)",
    "schema": "gfm schema --write workflow/schemas/params.schema.json   # regenerate it from the params dataclasses",
    "train-index": "gfm train-index --store mlp_regression-sgd --out data/models/mlp_regression/sgd/index.json",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 0):
        # Snakemake passes the job's `threads`. Torch would otherwise split every op of these tiny nets over
        # all cores, which on a loaded machine made generation many times slower (BENCHMARKS.md, "Generation").
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
        print(f"error: gfm {args.command} needs {dist}, part of gfm-pipeline's `pipeline` extra: pip "
              f"install 'gfm-pipeline[pipeline]' (in a checkout: pip install -e '.[pipeline]', or make venv)", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # an allocation no stage named (GFMError above names its own)
        if not is_out_of_memory(exc):
            raise
        print(f"error: gfm {args.command}: {out_of_memory_text(exc, f'running gfm {args.command}', OOM_ADVICE)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
