"""One DAG, two drivers: the glue between DVC (staleness, versions, sharing) and Snakemake (jobs, SLURM).

One module per concern:

* ``gfm.drivers.dvc``: DVC's stages, ``dvc status``, ``dvc.lock``, the remote, pull/commit/push;
* ``gfm.drivers.snakemake``: invoking Snakemake, its job list, its per-output records;
* ``gfm.drivers.slurm``: a profile checked against the cluster, job-state polling with or without an
  accounting database;
* ``gfm.drivers.provenance``: which stages must be re-run before ``dvc commit`` (content, not mtimes);
* ``gfm.drivers.handover``: ``gfm adopt`` and ``gfm commit``;
* ``gfm.drivers.process``: running the venv's tools, ``DriverError``.

The names below are the ones the CLI and the tests use.

May import: gfm.base.
"""

from gfm.drivers.dvc import DvcStage, check_remote, dvc_stages, dvc_status, parse_stage_cmd
from gfm.drivers.handover import AdoptResult, CommitResult, adopt, commit_cluster_run
from gfm.drivers.process import DriverError
from gfm.drivers.provenance import StageVerdict, format_verdicts, stale_stages
from gfm.drivers.slurm import slurm_profile_problems
from gfm.drivers.snakemake import snakemake_jobs

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
    "snakemake_jobs",
]
