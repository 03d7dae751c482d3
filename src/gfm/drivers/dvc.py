"""DVC's side of the pipeline: its stages (as DVC resolves ``dvc.yaml``), ``dvc status``, ``dvc.lock``, the
remote (checked and, when it is a local directory, audited by content), pull, commit and push."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gfm.drivers.process import DriverError, run_tool, tool

__all__ = ["PARAMS_FILE", "DvcStage", "require_repo", "parse_stage_cmd", "dvc_stages", "dvc_status", "locked_stages",
           "check_remote", "pull", "commit", "push"]

PARAMS_FILE = "params.yaml"


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


def require_repo(root: str | Path, command: str) -> Path:
    """Check that ``root`` is the root of a DVC repository (it holds ``.dvc/``) before ``command`` asks DVC
    anything: elsewhere DVC's API raises and ``dvc status`` fails with several lines of its own.

    Raises:
        DriverError: one line naming the folder, the repository above it if there is one, and where to run.
    """
    root = Path(root)
    if (root / ".dvc").is_dir():
        return root
    above = next((p for p in root.resolve().parents if (p / ".dvc").is_dir()), None)
    where = (f"the DVC repository holding it is {above}: run it there or pass --repo {above}" if above else
             "run it in the pipeline repository or a gfm workspace (cd there, or pass --repo DIR)")
    raise DriverError(f"{root.resolve()}: not a DVC repository (no .dvc/ here), so {command} cannot use it; {where}")


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
    proc = run_tool([tool("dvc"), "status", "--json"], Path(root), what="dvc status")
    text = proc.stdout.strip()
    # DVC may print warnings before the JSON document; the document is the last line.
    return json.loads(text.splitlines()[-1]) if text else {}


def _lock(root: Path) -> dict:
    import yaml

    lock = root / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}


def locked_stages(root: str | Path = ".") -> set[str]:
    """The stages ``dvc.lock`` holds a record of (what their deps and outs hashed to when last committed)."""
    return set(_lock(Path(root)))


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


def _remote_objects(root: Path) -> dict[str, str]:
    """md5 -> output path of every object ``dvc.lock`` refers to (directory listings and their files)."""
    return {out["md5"]: out["path"] for stage in _lock(root).values()
            for out in stage.get("outs", []) if "md5" in out}


def _audit_local_remote(root: Path, url: str) -> tuple[list[str], list[str]]:
    """Re-hash the objects ``dvc.lock`` needs on a local remote: (corrupted, missing) descriptions."""
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


def pull(root: str | Path = ".", remote: str | None = None) -> None:
    """``dvc pull`` after checking the remote exists; a local remote is audited by content first.

    Raises:
        DriverError: the remote is missing, holds corrupted objects, or the pull failed (with the reason).
    """
    root = Path(root)
    url = check_remote(root, remote)
    if "://" not in url:
        # Audit a local remote before pulling: DVC (verify = true) refuses a corrupted object but then
        # deletes it from the remote and calls it "missing", which destroys the evidence.
        corrupted, _ = _audit_local_remote(root, url)
        if corrupted:
            raise DriverError("dvc pull refused: " + _corrupted_message(corrupted, "nothing was pulled"))
    args = [tool("dvc"), "pull"] + (["-r", remote] if remote else [])
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DriverError(_explain_pull_failure(root, url, proc.stdout + proc.stderr))


def commit(root: str | Path = ".") -> None:
    """``dvc commit -f``: record the workspace's outputs and deps in ``dvc.lock`` (-f: DVC asks for
    confirmation on a terminal otherwise; the caller has decided the outputs are current)."""
    run_tool([tool("dvc"), "commit", "-f", "-q"], Path(root), what="dvc commit")


def push(root: str | Path = ".") -> bool:
    """``dvc push --run-cache`` to the default remote (checked first). Returns True."""
    check_remote(root)
    run_tool([tool("dvc"), "push", "--run-cache"], Path(root), what="dvc push")
    return True
