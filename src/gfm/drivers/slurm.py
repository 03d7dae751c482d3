"""SLURM's side: checking a Snakemake profile against the cluster before anything is submitted, and how
the SLURM executor must poll job states here (``sacct`` needs an accounting database; without one it must
use ``squeue``, or it never sees a job finish and waits forever; docs/cluster.md §2)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from gfm.drivers.process import DriverError

__all__ = ["is_slurm_profile", "slurm_profile_problems", "accounting_enabled", "status_command_args"]

STATUS_KEY = "slurm-status-command"
INIT_KEY = "slurm-init-seconds-before-status-checks"
PLUGIN_INIT_SECONDS = 40   # the executor's default first poll


def _profile_config(profile: Path) -> dict:
    import yaml

    conf_file = next((profile / n for n in ("config.yaml", "profile.yaml") if (profile / n).is_file()), None)
    if conf_file is None:
        raise DriverError(f"no config.yaml in Snakemake profile {profile}")
    return yaml.safe_load(conf_file.read_text()) or {}


def is_slurm_profile(profile: str | Path) -> bool:
    """Whether the profile runs jobs through the SLURM executor."""
    conf = Path(profile) / "config.yaml"
    return conf.is_file() and str(_profile_config(Path(profile)).get("executor", "")) == "slurm"


def _profile_partitions(profile: Path) -> list[tuple[str, str]]:
    """(where, partition) for every ``slurm_partition`` a profile asks for."""
    conf = _profile_config(profile)

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


def _require_sinfo() -> None:
    if shutil.which("sinfo") is None:
        raise DriverError("sinfo not found: this machine is not a SLURM submit host (run the cluster "
                          "profile on a login node, or use `dvc repro` locally)")


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
    _require_sinfo()
    proc = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise DriverError(f"sinfo failed: {proc.stderr.strip()}")
    available = sorted(set(proc.stdout.split()))
    return [f"profile {profile}: {where} asks for partition {name!r}; this cluster has: {', '.join(available)}"
            for where, name in _profile_partitions(profile) if name not in available]


def _cluster_config() -> dict[str, str]:
    """``scontrol show config`` as {key: value} (empty when scontrol is missing or fails)."""
    if shutil.which("scontrol") is None:
        return {}
    proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)\s*=\s*(.*)$", proc.stdout, re.M)}


def accounting_enabled() -> bool:
    """Whether ``sacct`` can report job states here: the cluster stores accounting (slurmdbd), read from
    ``scontrol show config``; where that cannot be read, by asking ``sacct`` itself."""
    storage = _cluster_config().get("AccountingStorageType")
    if storage is not None:
        return storage != "accounting_storage/none"
    if shutil.which("sacct") is None:
        return False
    proc = subprocess.run(["sacct", "-n", "-X", "-o", "JobID"], capture_output=True, text=True)
    return proc.returncode == 0 and "accounting storage is disabled" not in proc.stderr.lower()


def _seconds(value: str) -> int | None:
    match = re.match(r"(\d+)\s*sec", value)
    return int(match.group(1)) if match else None


def status_command_args(profile: str | Path) -> list[str]:
    """Extra Snakemake arguments so the SLURM executor sees jobs finish on this cluster.

    With accounting, none (the executor's default ``sacct``). Without, ``--slurm-status-command squeue``
    unless the profile sets ``slurm-status-command`` itself. The executor honours ``squeue`` only when
    SLURM keeps finished jobs visible for at least 3 x the first status check's delay (``MinJobAge``);
    otherwise it goes back to ``sacct`` and waits forever, so that is an error here, before submitting.

    Raises:
        DriverError: no accounting and ``MinJobAge`` too short for ``squeue`` polling.
    """
    conf = _profile_config(Path(profile))
    if conf.get(STATUS_KEY) or accounting_enabled():
        return []
    init = int(conf.get(INIT_KEY, PLUGIN_INIT_SECONDS))
    age = _seconds(_cluster_config().get("MinJobAge", ""))
    if age is not None and age < 3 * init:
        raise DriverError(f"this cluster has no accounting database (sacct cannot see jobs), so the SLURM "
                          f"executor must poll with squeue, which needs MinJobAge >= 3 x {INIT_KEY} "
                          f"({3 * init} s; profile {profile}); slurm.conf has MinJobAge={age}: raise it, or "
                          f"lower {INIT_KEY} in the profile")
    return ["--slurm-status-command", "squeue"]
