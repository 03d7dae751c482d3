"""One DAG, two drivers: the glue between DVC (staleness, versions, sharing) and Snakemake (jobs, SLURM).

DVC stages run ``snakemake --cores all --allowed-rules <rule> -- <targets>`` (docs/architecture.md §6), so both tools
describe one pipeline. Two hand-overs between them need care, and this module does them:

* **adopt** (consumer path): after ``dvc pull`` / ``dvc checkout`` the outputs are current by content, but
  their mtimes follow the order they were written and ``.snakemake/`` has no metadata, so a plain
  ``snakemake -n`` would plan spurious jobs. Once ``dvc status`` is clean, ``snakemake --touch --forceall``
  marks every output as current and records the params it was made from (so later edits are seen).
* **commit** (cluster path): after ``snakemake --profile profiles/slurm`` the outputs are new but ``dvc.lock``
  is not. Snakemake does not see edits to the Python modules a stage depends on, so outputs made before such
  an edit are stale although Snakemake is happy with them. ``commit_cluster_run`` force-runs exactly those,
  then ``dvc commit -f`` records everything, and checks that ``dvc status`` is clean.

Commands::

    gfm adopt [--pull]                       # consumer: (dvc pull,) check dvc status is clean, touch
    gfm commit [--profile profiles/slurm]    # cluster: force-run stale outputs, dvc commit -f
    gfm commit --dry-run                     # only say which stages are stale and why
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gfm.errors import GFMError

__all__ = [
    "DriverError",
    "DvcStage",
    "StageVerdict",
    "AdoptResult",
    "CommitResult",
    "dvc_stages",
    "dvc_status",
    "parse_stage_cmd",
    "stale_stages",
    "check_remote",
    "adopt",
    "commit_cluster_run",
    "format_verdicts",
    "slurm_profile_problems",
    "snakemake_summary",
    "snakemake_jobs",
]

PARAMS_FILE = "params.yaml"


class DriverError(GFMError, RuntimeError):
    """DVC and Snakemake disagree, or one of them failed; the message says which and what to do."""


@dataclass(frozen=True)
class DvcStage:
    """One resolved DVC stage (``foreach``/``matrix`` expanded), as DVC itself reads ``dvc.yaml``.

    Attributes:
        name: DVC's address, e.g. ``generate@mlp_regression-adam``.
        cmd: the stage command.
        rules: the Snakemake rules named by ``--allowed-rules`` in ``cmd`` (empty if ``cmd`` is not Snakemake).
        targets: the Snakemake targets after ``--`` in ``cmd``.
        outs: output paths, relative to the repository root.
        deps: file/directory dependencies (``params.yaml`` itself excluded).
        params: params keys of ``params.yaml`` the stage lists (dotted, e.g. ``tasks.mlp_regression``).
    """

    name: str
    cmd: str
    rules: tuple[str, ...]
    targets: tuple[str, ...]
    outs: tuple[str, ...]
    deps: tuple[str, ...]
    params: tuple[str, ...]


@dataclass(frozen=True)
class StageVerdict:
    """Why a stage that ``dvc status`` reports needs re-running before ``dvc commit`` (or not)."""

    name: str
    stale: bool
    reason: str


@dataclass(frozen=True)
class AdoptResult:
    pulled: bool
    outputs: int


@dataclass(frozen=True)
class CommitResult:
    verdicts: tuple[StageVerdict, ...]
    forced: tuple[str, ...]
    committed: bool
    pushed: bool = False


def _tool(name: str) -> str:
    """The venv's copy of a tool (next to this interpreter) so the versions pinned here are used."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DriverError(f"{name!r} not found next to {sys.executable} nor on PATH; it comes with gfm's "
                          f"`pipeline` extra: pip install 'gfm[pipeline]' (in a checkout: make venv)")
    return found


def _run(args: Sequence[str], root: Path, *, what: str, env: dict[str, str] | None = None,
         stream: bool = False) -> subprocess.CompletedProcess:
    """Run a tool in ``root``; raise DriverError naming ``what`` with the tail of its output on failure."""
    proc = subprocess.run(list(args), cwd=root, env=env, text=True,
                          capture_output=not stream)
    if proc.returncode != 0:
        tail = "" if stream else "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DriverError(f"{what} failed (exit {proc.returncode}): {shlex.join(args)}" + (f"\n{tail}" if tail else ""))
    return proc


def parse_stage_cmd(cmd: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a DVC stage command ``snakemake ... --allowed-rules R1 R2 -- T1 T2`` into ((R1, R2), (T1, T2)).

    Args:
        cmd: the command string of a DVC stage.

    Returns:
        The allowed rules (empty when the command is not a Snakemake call or names none) and the targets.
    """
    argv = shlex.split(cmd)
    if not argv or Path(argv[0]).name != "snakemake":
        return (), ()
    targets: tuple[str, ...] = ()
    if "--" in argv:
        cut = argv.index("--")
        argv, targets = argv[:cut], tuple(argv[cut + 1:])
    rules: list[str] = []
    if "--allowed-rules" in argv:
        for word in argv[argv.index("--allowed-rules") + 1:]:
            if word.startswith("-"):
                break
            rules.append(word)
    return tuple(rules), targets


def dvc_stages(root: str | Path = ".") -> list[DvcStage]:
    """Every stage of ``dvc.yaml`` with ``foreach``/``matrix`` resolved, read through DVC's own API.

    Args:
        root: the repository root.

    Returns:
        The stages in DVC's order.
    """
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    stages = []
    with Repo(str(root)) as repo:
        for st in repo.index.stages:
            if not st.cmd:   # .dvc files (dvc add) are data, not pipeline stages
                continue
            cmd = st.cmd if isinstance(st.cmd, str) else " && ".join(st.cmd)
            rules, targets = parse_stage_cmd(cmd)
            params: list[str] = []
            deps: list[str] = []
            for dep in st.deps:
                if isinstance(dep, ParamsDependency):
                    if Path(dep.def_path).name != PARAMS_FILE:
                        raise DriverError(f"stage {st.addressing}: params from {dep.def_path}; "
                                          f"expected only {PARAMS_FILE} (the single source of truth)")
                    params += list(dep.params)
                else:
                    deps.append(str(dep.def_path))
            stages.append(DvcStage(name=getattr(st, "name", None) or st.addressing, cmd=cmd, rules=rules, targets=targets,
                                   outs=tuple(str(o.def_path) for o in st.outs),
                                   deps=tuple(deps), params=tuple(params)))
    return stages


def dvc_status(root: str | Path = ".") -> dict:
    """``dvc status --json``: ``{stage: [changes]}``, empty when the workspace matches ``dvc.lock``."""
    proc = _run([_tool("dvc"), "status", "--json"], Path(root), what="dvc status")
    text = proc.stdout.strip()
    # DVC may print warnings before the JSON document; the document is the last line.
    return json.loads(text.splitlines()[-1]) if text else {}


def _newest_mtime(path: Path) -> float:
    if path.is_dir():
        times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        return max(times, default=path.stat().st_mtime)
    return path.stat().st_mtime


def _oldest_mtime(path: Path) -> float:
    if path.is_dir():
        times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
        return min(times, default=path.stat().st_mtime)
    return path.stat().st_mtime


def stale_stages(status: dict, stages: Sequence[DvcStage], root: str | Path = ".") -> list[StageVerdict]:
    """Decide, for each stage ``dvc status`` reports, whether its outputs are stale.

    A stage whose only change is its outputs (Snakemake re-made them) is current: commit it. A stage whose
    command changed is stale. A stage whose dependencies or params changed is stale unless every file of
    every output is newer than every changed dependency: Snakemake re-runs jobs on params and input
    changes itself, but not on edits of the Python modules listed in ``deps`` (they are not rule inputs).

    Args:
        status: ``dvc_status(root)``.
        stages: ``dvc_stages(root)``.
        root: the repository root.

    Returns:
        One verdict per stage named in ``status``, in ``stages`` order.
    """
    root = Path(root)
    by_name = {s.name: s for s in stages}
    verdicts = []
    for name in [s.name for s in stages if s.name in status]:
        stage = by_name[name]
        changed_deps: list[str] = []
        reason = ""
        for change in status[name]:
            if change == "changed command" or (isinstance(change, dict) and "changed command" in change):
                reason = "its command changed"
            elif isinstance(change, dict) and "changed deps" in change:
                changed_deps += list(change["changed deps"])
            elif isinstance(change, str) and change not in ("always changed",):
                reason = reason or change
        missing = [o for o in stage.outs if not (root / o).exists()]
        if reason:
            verdicts.append(StageVerdict(name, True, reason))
        elif missing:
            verdicts.append(StageVerdict(name, True, f"output missing: {', '.join(missing)}"))
        elif changed_deps:
            present = [d for d in changed_deps if (root / d).exists()]
            newest = max((_newest_mtime(root / d) for d in present), default=0.0)
            oldest_out = min(_oldest_mtime(root / o) for o in stage.outs)
            if oldest_out < newest:
                culprit = max(present, key=lambda d: _newest_mtime(root / d))
                verdicts.append(StageVerdict(name, True, f"{culprit} changed after its outputs were made"))
            else:
                verdicts.append(StageVerdict(name, False, "outputs were re-made after their inputs changed"))
        else:
            verdicts.append(StageVerdict(name, False, "only its outputs changed"))
    return verdicts


def check_remote(root: str | Path = ".", remote: str | None = None) -> str:
    """Check that the DVC remote (default: the project's default remote) is configured and, if it is a local
    directory, exists. Returns its URL.

    Raises:
        DriverError: no default remote, an unknown remote name, or a local remote directory that is missing.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        conf = repo.config
        name = remote or conf["core"].get("remote")
        names = sorted(conf["remote"])
        if not name:
            raise DriverError("no default DVC remote; set one with `dvc remote add -d <name> <url>`")
        if name not in conf["remote"]:
            raise DriverError(f"DVC remote {name!r} is not configured; expected one of {names}")
        url = conf["remote"][name]["url"]
    if "://" not in url and not Path(url).is_dir():
        raise DriverError(f"DVC remote {name!r} points at {url}, which does not exist; ask whoever shares the "
                          "results for its path and run `dvc remote modify --local "
                          f"{name} url <path>` (or `dvc remote add -d --local <name> <path>`)")
    return url


def snakemake_summary(root: str | Path = ".", args: Sequence[str] = (), *,
                      detailed: bool = False) -> list[dict[str, str]]:
    """``snakemake --summary`` (``--detailed-summary`` with ``detailed``) as one dict per output.

    Args:
        root: the repository root.
        args: extra Snakemake arguments, e.g. ``["--configfile", "other.yaml"]``.
        detailed: also list each output's input files and shell command.

    Returns:
        Rows keyed by Snakemake's column names (``output_file``, ``rule``, ``status``, ``plan``, ...).
    """
    flag = "--detailed-summary" if detailed else "--summary"
    out = _snakemake(Path(root), [flag, *args], profile=None, what=f"snakemake {flag}").stdout
    lines = [line for line in out.splitlines() if "\t" in line]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def snakemake_jobs(root: str | Path = ".") -> list[dict[str, object]]:
    """Every job of Snakemake's full DAG (``snakemake -n --forceall``): rule, inputs and outputs.

    Args:
        root: the repository root.

    Returns:
        One ``{"rule": str, "input": [paths], "output": [paths]}`` per job, target rules included.
    """
    out = _snakemake(Path(root), ["-n", "--forceall"], profile=None, what="snakemake -n --forceall").stdout
    jobs: list[dict[str, object]] = []
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            jobs.append({"rule": line.split()[1].rstrip(":"), "input": [], "output": []})
        elif jobs and line.startswith(("    input: ", "    output: ")):
            key, _, files = line.strip().partition(": ")
            jobs[-1][key] = [f for f in files.split(", ") if f]
    return jobs


def _profile_partitions(profile: Path) -> list[tuple[str, str]]:
    """(where, partition) for every ``slurm_partition`` a profile asks for."""
    import yaml

    conf_file = next((profile / n for n in ("config.yaml", "profile.yaml") if (profile / n).is_file()), None)
    if conf_file is None:
        raise DriverError(f"no config.yaml in Snakemake profile {profile}")
    conf = yaml.safe_load(conf_file.read_text()) or {}

    def partition(res) -> str | None:
        if isinstance(res, dict):
            value = res.get("slurm_partition")
        else:   # command-line style: ["slurm_partition=gpu", "runtime=60"]
            value = next((r.split("=", 1)[1] for r in res or [] if str(r).startswith("slurm_partition=")), None)
        return None if value is None else str(value).strip("'\"")

    found = []
    if (p := partition(conf.get("default-resources"))) is not None:
        found.append(("default-resources", p))
    for rule, res in (conf.get("set-resources") or {}).items():
        if (p := partition(res)) is not None:
            found.append((f"set-resources.{rule}", p))
    return found


def slurm_profile_problems(profile: str | Path = "profiles/slurm") -> list[str]:
    """Check a SLURM profile against the cluster before submitting anything.

    The SLURM executor reports an sbatch failure of a group job only as "Error in group ...", without
    SLURM's reason, so a typo in a partition name would otherwise be a puzzle.

    Args:
        profile: the profile directory.

    Returns:
        One line per problem (empty when the profile fits this cluster).

    Raises:
        DriverError: no SLURM client here, or the profile cannot be read.
    """
    profile = Path(profile)
    if shutil.which("sinfo") is None:
        raise DriverError("sinfo not found: this machine is not a SLURM submit host (run the cluster "
                          "profile on a login node, or use `dvc repro` locally)")
    proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DriverError(f"sinfo failed: {proc.stderr.strip()}")
    available = sorted(set(proc.stdout.split()))
    return [f"profile {profile}: {where} asks for partition {name!r}; this cluster has: {', '.join(available)}"
            for where, name in _profile_partitions(profile) if name not in available]


def _remote_objects(root: Path) -> dict[str, str]:
    """md5 -> output path of every object ``dvc.lock`` refers to (directory listings and their files)."""
    import yaml

    lock = root / "dvc.lock"
    objects: dict[str, str] = {}
    if not lock.is_file():
        return objects
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if "md5" in out:
                objects[out["md5"]] = out["path"]
    return objects


def _audit_local_remote(root: Path, url: str) -> tuple[list[str], list[str]]:
    """Re-hash the objects ``dvc.lock`` needs on a local remote: (corrupted, missing) descriptions."""
    import hashlib

    remote = (root / ".dvc" / url).resolve()
    corrupted, missing = [], []
    todo = list(_remote_objects(root).items())
    while todo:
        h, path = todo.pop()
        digest = h.removesuffix(".dir")
        obj = remote / "files" / "md5" / h[:2] / h[2:]   # DVC 3 layout; a listing keeps its .dir suffix
        if not obj.is_file():
            missing.append(f"{path} ({h})")
            continue
        data = obj.read_bytes()
        got = hashlib.md5(data).hexdigest()  # noqa: S324 - DVC's content address, not security
        if got != digest:
            corrupted.append(f"{obj} for {path} (expected md5 {digest}, content hashes to {got})")
        elif h.endswith(".dir"):
            todo += [(e["md5"], f"{path}/{e['relpath']}") for e in json.loads(data)]
    return corrupted, missing


def _corrupted_message(corrupted: list[str], outcome: str) -> str:
    return (f"hash mismatch: {len(corrupted)} objects on the remote are corrupted: " + "; ".join(corrupted[:5])
            + f"; {outcome}; re-push them from a good copy (`dvc push`)")


def _explain_pull_failure(root: Path, url: str, output: str) -> str:
    """Say why ``dvc pull`` failed: for a local remote, tell a corrupted remote from an incomplete one."""
    if "://" in url:
        return "dvc pull failed: " + " ".join(output.strip().splitlines()[-8:])
    corrupted, missing = _audit_local_remote(root, url)
    parts = [_corrupted_message(corrupted, "nothing was checked out from them")] if corrupted else []
    if missing:
        parts.append(f"{len(missing)} objects are missing on the remote {(root / '.dvc' / url).resolve()}: "
                     f"{', '.join(missing[:5])}; ask whoever produced them to `dvc push`")
    if not parts:
        parts.append(" ".join(output.strip().splitlines()[-8:]))
    return "dvc pull failed: " + " | ".join(parts)


def _snakemake(root: Path, args: Sequence[str], *, profile: str | None, what: str,
               stream: bool = False) -> subprocess.CompletedProcess:
    cmd = [_tool("snakemake")]
    if profile:
        cmd += ["--profile", profile]
    return _run(cmd + list(args), root, what=what, stream=stream)


def adopt(root: str | Path = ".", *, pull: bool = False, remote: str | None = None) -> AdoptResult:
    """Make Snakemake accept outputs that DVC restored, so a plain ``snakemake -n`` plans nothing.

    Args:
        root: the repository root.
        pull: run ``dvc pull`` first (after checking the remote exists).
        remote: the remote to pull from (default: the default remote).

    Returns:
        Whether data was pulled, and how many outputs Snakemake now considers current.

    Raises:
        DriverError: the remote is missing, ``dvc pull`` failed, ``dvc status`` is not clean (touching would
            declare outputs current that are not), or Snakemake still plans jobs afterwards.
    """
    root = Path(root)
    if pull:
        url = check_remote(root, remote)
        if "://" not in url:
            # Audit a local remote before pulling: DVC (verify = true) refuses a corrupted object but then
            # deletes it from the remote and calls it "missing", which destroys the evidence.
            corrupted, _ = _audit_local_remote(root, url)
            if corrupted:
                raise DriverError("dvc pull refused: " + _corrupted_message(corrupted, "nothing was pulled"))
        args = [_tool("dvc"), "pull"] + (["-r", remote] if remote else [])
        proc = subprocess.run(args, cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DriverError(_explain_pull_failure(root, url, proc.stdout + proc.stderr))
    status = dvc_status(root)
    if status:
        names = sorted(status)
        raise DriverError(f"dvc status is not clean ({len(names)} stages: {', '.join(names[:6])}"
                          f"{' ...' if len(names) > 6 else ''}); restore them first with `dvc pull` or "
                          "`dvc checkout`, or recompute with `dvc repro`, then adopt")
    # --touch runs locally even under a SLURM profile; one core is plenty for touching files.
    _snakemake(root, ["--touch", "--forceall", "--cores", "1"], profile=None,
               what="snakemake --touch")
    plan = _snakemake(root, ["--summary"], profile=None, what="snakemake --summary").stdout
    rows = [line.split("\t") for line in plan.splitlines() if "\t" in line][1:]
    pending = [r[0] for r in rows if r[-1] != "no update"]
    if pending:
        raise DriverError(f"after touching, Snakemake still plans {len(pending)} outputs that DVC does not "
                          f"track: {', '.join(pending[:6])}; add them to dvc.yaml or build them")
    return AdoptResult(pulled=pull, outputs=len(rows))


def commit_cluster_run(root: str | Path = ".", *, profile: str | None = None, dry_run: bool = False,
                       push: bool = False) -> CommitResult:
    """Record the outputs of a direct Snakemake run (e.g. on SLURM) in ``dvc.lock``, without recording
    stale outputs as current.

    Steps: ``dvc status``; stale stages (see :func:`stale_stages`) and stages with missing outputs are
    re-made with ``snakemake [--profile P] --forcerun <their outputs> -- <all DVC outputs>`` (downstream jobs
    follow); ``dvc commit -f``; ``dvc status`` must then be clean; optionally ``dvc push``.

    Args:
        root: the repository root.
        profile: Snakemake profile for the force-run (``profiles/slurm`` on the cluster).
        dry_run: only report the verdicts; run and commit nothing.
        push: ``dvc push`` after a clean commit.

    Returns:
        The verdicts, the stages force-run, and whether the commit (and push) happened.

    Raises:
        DriverError: Snakemake or DVC failed, or ``dvc status`` is still not clean after the commit.
    """
    root = Path(root)
    if profile and not dry_run and _is_slurm_profile(Path(profile)):
        problems = slurm_profile_problems(profile)
        if problems:
            raise DriverError("; ".join(problems))
    stages = dvc_stages(root)
    status = dvc_status(root)
    verdicts = tuple(stale_stages(status, stages, root))
    forced = tuple(v.name for v in verdicts if v.stale)
    if dry_run:
        return CommitResult(verdicts, forced, committed=False)
    if not status:
        return CommitResult(verdicts, forced, committed=False, pushed=_push(root) if push else False)
    if forced:
        # A DVC out may be a directory holding several Snakemake outputs (one per model, an index): force
        # the Snakemake outputs inside the stale stages' outs, and ask for every stage's own targets.
        by_name = {s.name: s for s in stages}
        stale_outs = [o for n in forced for o in by_name[n].outs]
        made = [p for job in snakemake_jobs(root) for p in job["output"]]
        force = sorted({p for p in made if any(p == o or p.startswith(o.rstrip("/") + "/") for o in stale_outs)})
        targets = list(dict.fromkeys(t for s in stages for t in (s.targets or s.outs)))
        _snakemake(root, ["--forcerun", *force, "--", *targets], profile=profile,
                   what="snakemake (re-running stale outputs)", stream=True)
    # -f: DVC asks for confirmation on a terminal otherwise; we decided above that the outputs are current.
    _run([_tool("dvc"), "commit", "-f", "-q"], root, what="dvc commit")
    left = dvc_status(root)
    if left:
        raise DriverError(f"dvc status still reports {sorted(left)} after dvc commit: {json.dumps(left)}")
    return CommitResult(verdicts, forced, committed=True, pushed=_push(root) if push else False)


def _is_slurm_profile(profile: Path) -> bool:
    conf = profile / "config.yaml"
    return conf.is_file() and "executor: slurm" in conf.read_text()


def _push(root: Path) -> bool:
    check_remote(root)
    _run([_tool("dvc"), "push", "--run-cache"], root, what="dvc push")
    return True


def format_verdicts(verdicts: Sequence[StageVerdict]) -> str:
    """One line per stage: ``re-run  name: reason`` or ``commit  name: reason``."""
    return "\n".join(f"{'re-run' if v.stale else 'commit'}  {v.name}: {v.reason}" for v in verdicts)

