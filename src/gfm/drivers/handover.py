"""The hand-overs between the two drivers of one DAG: DVC (staleness, versions, sharing) and Snakemake (jobs,
SLURM). DVC stages run ``snakemake --cores all --allowed-rules <rule> -- <targets>`` (docs/architecture.md
§6), so both tools describe one pipeline, and two moments need care:

* **adopt** (consumer path): after ``dvc pull`` / ``dvc checkout`` the outputs are current by content, but
  their mtimes follow the order they were written and ``.snakemake/`` has no metadata, so a plain
  ``snakemake -n`` would plan spurious jobs. Once ``dvc status`` is clean, ``snakemake --touch --forceall``
  marks every output as current and records the params it was made from (so later edits are seen).
* **commit** (cluster path): after ``snakemake [--profile profiles/slurm]`` the outputs are new but
  ``dvc.lock`` is not. ``commit_cluster_run`` decides from content and Snakemake's records which reported
  stages were not made from their current dependencies (``gfm.drivers.provenance``), force-runs exactly
  those, then ``dvc commit -f`` records everything, and checks that ``dvc status`` is clean.

Commands::

    gfm adopt [--pull]                       # consumer: (dvc pull,) check dvc status is clean, touch
    gfm commit [--profile profiles/slurm]    # cluster: force-run stale outputs, dvc commit -f
    gfm commit --dry-run                     # only say which stages are stale and why
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gfm.drivers import dvc, slurm
from gfm.drivers.process import DriverError
from gfm.drivers.provenance import Evidence, StageVerdict, params_reported, stale_stages, within
from gfm.drivers.snakemake import (
    incomplete_outputs,
    params_changed,
    pending_outputs,
    read_records,
    snakemake,
    snakemake_jobs,
    touch_all,
)

__all__ = ["AdoptResult", "CommitResult", "adopt", "commit_cluster_run", "evidence"]


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


def adopt(root: str | Path = ".", *, pull: bool = False, remote: str | None = None) -> AdoptResult:
    """Make Snakemake accept outputs that DVC restored, so a plain ``snakemake -n`` plans nothing.

    Args:
        root: the repository root.
        pull: run ``dvc pull`` first (after checking the remote exists).
        remote: the remote to pull from (default: the default remote).

    Returns:
        Whether data was pulled, and how many outputs Snakemake now considers current.

    Raises:
        DriverError: ``root`` is not a DVC repository, the remote is missing, ``dvc pull`` failed, ``dvc status`` is not clean (touching would
            declare outputs current that are not), or Snakemake still plans jobs afterwards.
    """
    root = dvc.require_repo(root, "gfm adopt")
    if pull:
        dvc.pull(root, remote)
    status = dvc.dvc_status(root)
    if status:
        names = sorted(status)
        raise DriverError(f"dvc status is not clean ({len(names)} stages: {', '.join(names[:6])}"
                          f"{' ...' if len(names) > 6 else ''}); restore them first with `dvc pull` or "
                          "`dvc checkout`, or recompute with `dvc repro`, then adopt")
    touch_all(root)
    pending, outputs = pending_outputs(root)
    if pending:
        raise DriverError(f"after touching, Snakemake still plans {len(pending)} outputs that DVC does not "
                          f"track: {', '.join(pending[:6])}; add them to dvc.yaml or build them")
    return AdoptResult(pulled=pull, outputs=outputs)


def evidence(root: Path, status: dict) -> Evidence:
    """Snakemake's records and ``dvc.lock``'s stage names; Snakemake's params check only when a stage
    reports a params change (it costs a Snakemake start)."""
    return Evidence(records=read_records(root), incomplete=frozenset(incomplete_outputs(root)),
                    locked=frozenset(dvc.locked_stages(root)),
                    params_changed=frozenset(params_changed(root)) if params_reported(status) else None)


def commit_cluster_run(root: str | Path = ".", *, profile: str | None = None, dry_run: bool = False,
                       push: bool = False) -> CommitResult:
    """Record the outputs of a direct Snakemake run (e.g. on SLURM) in ``dvc.lock``, without recording
    stale outputs as current.

    Steps: ``dvc status``; stale stages (see :func:`gfm.drivers.provenance.stale_stages`) are re-made with
    ``snakemake [--profile P] --forcerun <their outputs> -- <all DVC outputs>`` (downstream jobs follow; on
    a SLURM cluster without accounting with ``--slurm-status-command squeue``); ``dvc commit -f``;
    ``dvc status`` must then be clean; optionally ``dvc push``.

    Args:
        root: the repository root.
        profile: Snakemake profile for the force-run (``profiles/slurm`` on the cluster).
        dry_run: only report the verdicts; run and commit nothing.
        push: ``dvc push`` after a clean commit.

    Returns:
        The verdicts, the stages force-run, and whether the commit (and push) happened.

    Raises:
        DriverError: ``root`` is not a DVC repository, Snakemake or DVC failed, the profile does not fit the cluster, or ``dvc status`` is
            still not clean after the commit.
    """
    root = dvc.require_repo(root, "gfm commit")
    extra: list[str] = []
    # Snakemake also takes its profile from $SNAKEMAKE_PROFILE: a re-run under it needs the same checks
    effective = profile or os.environ.get("SNAKEMAKE_PROFILE")
    if effective and not dry_run and slurm.is_slurm_profile(root / effective):
        problems = slurm.slurm_profile_problems(root / effective)
        if problems:
            raise DriverError("; ".join(problems))
        extra = slurm.status_command_args(root / effective)
    stages = dvc.dvc_stages(root)
    status = dvc.dvc_status(root)
    verdicts = tuple(stale_stages(status, stages, evidence(root, status), root)) if status else ()
    forced = tuple(v.name for v in verdicts if v.stale)
    if dry_run:
        return CommitResult(verdicts, forced, committed=False)
    if not status:
        return CommitResult(verdicts, forced, committed=False, pushed=dvc.push(root) if push else False)
    if forced:
        # A DVC out may be a directory holding several Snakemake outputs (one per model, an index): force
        # the Snakemake outputs inside the stale stages' outs, and ask for every stage's own targets.
        by_name = {s.name: s for s in stages}
        stale_outs = [o for n in forced for o in by_name[n].outs]
        made = [p for job in snakemake_jobs(root) for p in job["output"]]
        force = sorted({p for p in made if within(p, stale_outs)})
        targets = list(dict.fromkeys(t for s in stages for t in (s.targets or s.outs)))
        snakemake(root, [*extra, "--forcerun", *force, "--", *targets], profile=profile,
                  what="snakemake (re-running stale outputs)", stream=True)
    dvc.commit(root)
    left = dvc.dvc_status(root)
    if left:
        raise DriverError(f"dvc status still reports {sorted(left)} after dvc commit: {json.dumps(left)}")
    return CommitResult(verdicts, forced, committed=True, pushed=dvc.push(root) if push else False)
