"""The tool commands of ``gfm`` around the stores and the drivers: import, info, adopt, commit, slurm-check,
workspace, check. `gfm.cli` builds the parser and maps errors to exit codes."""

from __future__ import annotations

import argparse
import json
import sys

from gfm.cli_stages import load_validated_params

__all__ = ["add_parsers"]


def _cmd_import(args: argparse.Namespace) -> int:
    from gfm.recording.importer import import_trajectories

    chunks = load_validated_params(args.params).store if args.params else None
    summary = import_trajectories(args.src, args.dest, meta=args.meta, chunks=chunks, overwrite=args.overwrite)
    print(json.dumps(summary, sort_keys=True))
    return 0


def _cmd_declare(args: argparse.Namespace) -> int:
    from gfm.recording.declare import declare

    print(declare(args.store, params_path=args.params, task=args.task, models=args.models, write=args.write),
          end="" if not args.write else "\n")
    return 0


def _cmd_rechunk(args: argparse.Namespace) -> int:
    from gfm.config import StoreLayoutConfig
    from gfm.recording.declare import rechunk

    chunks = load_validated_params(args.params).store if args.params else StoreLayoutConfig()
    done = rechunk(args.src, args.dest, chunks=chunks)
    print(f"wrote {done['store']}: {done['runs']} runs x {done['records']} records x {done['params']} params, "
          f"{chunks.chunk_runs} runs per chunk")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from gfm.store.reader import open_trajectories

    # open_trajectories checks the store's structure (gfm.artifacts.inputs): every attribute read below is present and
    # of its type, and a damaged store is one `error:` line, exit 2
    ts = open_trajectories(args.store)
    runs = ts.runs
    print(json.dumps({
        "store": ts.attrs["store"], "runs": ts.n_runs, "records": ts.n_records, "params": ts.n_params,
        "optimizer": ts.optimizer["name"], "task": ts.attrs["task"]["kind"],
        "diverged": int(runs["diverged"].sum()), "state": list(ts.state_names),
        "layout": [(s.name, list(s.shape)) for s in ts.layout],
        "loss_recorded": ts.attrs.get("loss_source") != "none", "network": ts.network.as_attr(),
        "eval_samples": ts.group["eval/x"].shape[1] if ts.has_eval_data else 0,
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
    from gfm.tools.workspace import sync_workspace

    dest = sync_workspace(args.dest, args.params, repo=args.repo)
    print(f"{dest}: workspace ready for {args.params}; run it as `make run PRESET=<name>` does: "
          f"cd {dest} && snakemake --cores all && gfm commit (or: dvc repro)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from gfm.tools.check import check_path

    verdicts = [v for path in args.paths for v in check_path(path)]
    for v in verdicts:
        for line in v.lines():
            print(line)
    bad = sum(not v.ok for v in verdicts)
    if bad:
        print(f"{bad} of {len(verdicts)} artifacts have problems", file=sys.stderr)
    return 1 if bad else 0


def add_parsers(sub) -> None:
    """Register the tool commands on ``gfm``'s subparsers, after the stage commands."""
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

    d = sub.add_parser("declare", help="declare a recorded or imported store in params (a task of kind "
                                       "`recorded` and its store entry), so the pipeline runs it")
    d.add_argument("store", metavar="STORE.zarr", help="the store gfm.record or gfm import wrote")
    d.add_argument("--params", default="params.yaml", metavar="PARAMS.yaml",
                   help="the params file (default: %(default)s); paths are written relative to its directory")
    d.add_argument("--task", default=None, metavar="NAME",
                   help="task name (default: the store's recorded name, else its directory's stem)")
    d.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="forecasters to train on it (default: train.models)")
    d.add_argument("--write", action="store_true",
                   help="edit the params file in place (comments kept); without it, print the entries")
    d.set_defaults(func=_cmd_declare)

    r = sub.add_parser("rechunk", help="rewrite a trajectory store in the generated chunk layout (a gfm.record "
                                       "store holds one run per chunk; forecasting reads many runs per call)")
    r.add_argument("src", metavar="SRC.zarr", help="the finished store to rewrite")
    r.add_argument("dest", metavar="DEST.zarr", help="the store to write (a trajectory store there is replaced)")
    r.add_argument("--params", default=None, metavar="PARAMS.yaml",
                   help="take the chunk layout from this params file's `store:` (default: its defaults)")
    r.set_defaults(func=_cmd_rechunk)

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
