"""How long a no-op takes: ``dvc status`` and ``dvc repro`` on a finished workspace, and where the time goes.

Run it after ``make run`` (or ``dvc pull``) when ``dvc status`` is clean; it refuses otherwise, since a
``dvc repro`` with work to do would run the pipeline. In one run it times, median of ``--repeats``:

* ``dvc status`` and a no-op ``dvc repro`` with ruamel's pure-Python YAML parser (what DVC gets without
  ``ruamel.yaml.clib``: the naive way) and with its C parser (what ``make venv`` installs);
* an in-process breakdown of one ``dvc status`` (C parser): start-up, reading ``dvc.yaml``/``dvc.lock``, the
  per-stage ``params.yaml`` reads, and the directory walks of deps and outs grouped by top-level folder;
* with ``--grain-probe``: the same ``dvc status`` on a scratch copy (hard links, read-only use) whose stages
  are merged into one per phase (generate, split, train, ...; the union of each phase's deps, outs and
  params, with the hashes of this ``dvc.lock``), to show what a coarser DAG would cost. The copy shares this
  workspace's DVC cache read-only and is deleted afterwards.

Usage::

    python -m benchmarks.dvc_noop                      # 3 repeats
    python -m benchmarks.dvc_noop --repeats 5 --grain-probe
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# Run DVC's CLI with ruamel's C parser switched off: DVC builds YAML(typ="safe") per parse, which reads this
# module global, so clearing it gives exactly what an install without ruamel.yaml.clib gets.
_PURE = "import ruamel.yaml.main as m; m.CParser = None; from dvc.cli import main; raise SystemExit(main({argv}))"
_C = "from dvc.cli import main; raise SystemExit(main({argv}))"


def timed_dvc(argv: list[str], cwd: Path, pure: bool) -> float:
    code = (_PURE if pure else _C).format(argv=repr(argv))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"dvc {' '.join(argv)} failed in {cwd}:\n{proc.stdout}{proc.stderr}")
    return elapsed


def require_clean(cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0 or json.loads(proc.stdout or "{}"):
        raise SystemExit(f"`dvc status` in {cwd} is not clean (run `make run` or `dvc pull` first); "
                         "a no-op repro cannot be timed on a stale workspace:\n" + proc.stdout + proc.stderr)


def median_time(argv: list[str], cwd: Path, pure: bool, repeats: int) -> float:
    return statistics.median(timed_dvc(argv, cwd, pure) for _ in range(repeats))


def breakdown(cwd: Path) -> dict[str, float]:
    """Seconds of one in-process ``dvc status``, by what DVC was doing (a separate process, C parser)."""
    proc = subprocess.run([sys.executable, __file__, "--_breakdown"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    return json.loads(proc.stdout.splitlines()[-1])


def _breakdown_here() -> None:
    # Wraps DVC internals (pinned in constraints.txt); a benchmark, not product code.
    t0 = time.perf_counter()
    from dvc.dependency.param import ParamsDependency
    from dvc.output import Output
    from dvc.repo import Repo

    spent: collections.Counter[str] = collections.Counter()

    def account(cls, name, label):
        inner = getattr(cls, name)

        def wrapper(self, *a, **k):
            t = time.perf_counter()
            try:
                return inner(self, *a, **k)
            finally:
                spent[label(self)] += time.perf_counter() - t
        setattr(cls, name, wrapper)

    def label(o) -> str:
        if isinstance(o, ParamsDependency):
            return "params.yaml read per stage"
        top = "/".join(str(o.def_path).split("/")[:2])
        return f"{'dep' if o.IS_DEPENDENCY else 'out'} {top}"

    account(ParamsDependency, "workspace_status", label)
    account(Output, "status", label)
    t1 = time.perf_counter()
    repo = Repo()
    n_stages = len(list(repo.index.stages))
    t2 = time.perf_counter()
    changed = repo.status()
    t3 = time.perf_counter()
    assert not changed, changed
    out = {"import dvc": t1 - t0, "dvc.yaml + dvc.lock": t2 - t1, "stages": n_stages}
    out.update(sorted(spent.items(), key=lambda kv: -kv[1]))
    out["other (locks, stage objects)"] = (t3 - t2) - sum(spent.values())
    out["total status"] = t3 - t0
    print(json.dumps(out))


def per_phase_copy(src: Path, dest: Path) -> int:
    """A hard-linked copy of ``src`` whose DVC stages are merged into one per phase; returns the stage count."""
    lock = yaml.safe_load((src / "dvc.lock").read_text())
    phases: dict[str, dict] = {}
    for name, stage in lock["stages"].items():
        merged = phases.setdefault(name.split("@")[0], {"deps": {}, "outs": {}, "params": {}})
        for kind in ("deps", "outs"):
            for entry in stage.get(kind, []):
                merged[kind][entry["path"]] = entry
        for pfile, values in stage.get("params", {}).items():
            merged["params"].setdefault(pfile, {}).update(values)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=src, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (src / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
    def link(a: str, b: str) -> None:  # outs kept in git (plots/, metrics.json) were copied above
        if not os.path.exists(b):
            os.link(a, b)

    for path in {path for m in phases.values() for path in m["outs"]}:
        if (src / path).is_dir():
            shutil.copytree(src / path, dest / path, copy_function=link, dirs_exist_ok=True)
        elif (src / path).exists():
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            link(src / path, dest / path)
    stages, lock_stages = {}, {}
    for phase, m in phases.items():
        stages[phase] = {"cmd": "true", "deps": list(m["deps"]), "outs": list(m["outs"]),
                         "params": sorted(k for values in m["params"].values() for k in values)}
        lock_stages[phase] = {"cmd": "true", "deps": list(m["deps"].values()), "params": m["params"],
                              "outs": list(m["outs"].values())}
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (dest / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock_stages}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    cache = (src / ".dvc" / "cache").resolve()
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(cache)], cwd=dest, check=True)
    return len(stages)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--grain-probe", action="store_true", help="also time a per-phase copy of the DAG")
    p.add_argument("--_breakdown", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._breakdown:
        return _breakdown_here()
    cwd = Path.cwd()
    require_clean(cwd)
    rows = []
    for parser, pure in (("pure Python (no ruamel.yaml.clib)", True), ("C (ruamel.yaml.clib)", False)):
        rows.append((parser, median_time(["status"], cwd, pure, args.repeats),
                     median_time(["repro"], cwd, pure, args.repeats)))
    print(f"| YAML parser | `dvc status` | no-op `dvc repro` |  (median of {args.repeats}, {cwd})")
    print("|---|---|---|")
    for parser, status, repro in rows:
        print(f"| {parser} | {status:.2f} s | {repro:.2f} s |")
    print(f"\nratio pure / C: status {rows[0][1] / rows[1][1]:.2f}x, repro {rows[0][2] / rows[1][2]:.2f}x")
    parts = breakdown(cwd)
    print(f"\nOne `dvc status`, C parser, {parts.pop('stages')} stages:")
    for what, seconds in parts.items():
        print(f"  {what:40s} {seconds:6.2f} s")
    if args.grain_probe:
        with tempfile.TemporaryDirectory(prefix="gfm-grain-") as tmp:
            n = per_phase_copy(cwd, Path(tmp))
            timed_dvc(["status"], Path(tmp), pure=False)  # fills the copy's state database
            probe = median_time(["status"], Path(tmp), False, args.repeats)
            print(f"\nPer-phase DAG ({n} stages, same deps, outs and hashes): `dvc status` {probe:.2f} s (C parser)")
            parts = breakdown(Path(tmp))
            parts.pop("stages")
            for what, seconds in parts.items():
                print(f"  {what:40s} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
