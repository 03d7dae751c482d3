"""Command line: ``gfm <command> ...`` (also ``python -m gfm``). Thin: parse, validate params, call a stage.

Commands::

    gfm validate [PARAMS]                                  check a params file; exit 0 or 2
    gfm generate --params P --store KEY --out STORE.zarr   train and record one store
    gfm split    --params P --in STORE.zarr --out SPLIT.json
    gfm info     STORE.zarr                                 print a store's summary

Every error the user can fix (bad params, missing or unfinished inputs) prints one line per problem to
stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gfm.config import load_params
from gfm.errors import GFMError, ParamsError

__all__ = ["main"]


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


def _cmd_info(args: argparse.Namespace) -> int:
    from gfm.store import open_trajectories

    ts = open_trajectories(args.store)
    runs = ts.runs
    print(json.dumps({
        "store": ts.attrs["store"], "runs": ts.n_runs, "records": ts.n_records, "params": ts.n_params,
        "optimizer": ts.optimizer["name"], "task": ts.attrs["task"]["kind"],
        "diverged": int(runs["diverged"].sum()), "state": list(ts.state_names),
        "layout": [(s.name, list(s.shape)) for s in ts.layout],
    }, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gfm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a params file without running anything")
    v.add_argument("params", nargs="?", default="params.yaml")
    v.set_defaults(func=_cmd_validate)

    g = sub.add_parser("generate", help="train and record the runs of one store")
    g.add_argument("--params", default="params.yaml")
    g.add_argument("--store", required=True, help="store key '<task>-<optimizer>' from params.stores")
    g.add_argument("--out", required=True, help="output .zarr path")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)

    s = sub.add_parser("split", help="train/val/test run ids of a store")
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--in", dest="inp", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=_cmd_split)

    i = sub.add_parser("info", help="summarise a trajectory store")
    i.add_argument("store")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamsError as exc:
        for problem in exc.problems:
            print(f"error: {exc.source}: {problem}", file=sys.stderr)
        return 2
    except GFMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
