"""Snakemake's side of the pipeline: invoking it, its full job list, and what it recorded about each output
(``.snakemake/metadata``: the rule, inputs, params, the checksums of small inputs, when the job started)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gfm.drivers.process import run_tool, tool

__all__ = ["Record", "snakemake", "snakemake_jobs", "read_records", "incomplete_outputs", "params_changed",
           "touch_all", "pending_outputs"]


@dataclass(frozen=True)
class Record:
    """What Snakemake recorded when the job that made ``output`` finished.

    Attributes:
        output: the output path (relative to the repository root).
        rule: the rule that made it.
        inputs: the job's input files.
        checksums: ``{input: "sha256:<hex>"}`` for the inputs Snakemake checksums (files up to its
            ``--max-checksum-file-size``, 1 MB by default; never directories).
        started: when the job was registered, by the clock of the host that ran Snakemake (it writes
            every record), so the records of one workflow are ordered by one clock.
    """

    output: str
    rule: str
    inputs: tuple[str, ...] = ()
    checksums: dict[str, str] = field(default_factory=dict)
    started: float = 0.0


def snakemake(root: Path, args: Sequence[str], *, profile: str | None, what: str, stream: bool = False):
    """Run ``snakemake [--profile P] ARGS`` in ``root`` (DriverError naming ``what`` on failure)."""
    cmd = [tool("snakemake")]
    if profile:
        cmd += ["--profile", profile]
    return run_tool(cmd + list(args), root, what=what, stream=stream)


def snakemake_jobs(root: str | Path = ".") -> list[dict[str, object]]:
    """Every job of Snakemake's full DAG (``snakemake -n --forceall``): rule, inputs and outputs.

    Args:
        root: the repository root.

    Returns:
        One ``{"rule": str, "input": [paths], "output": [paths]}`` per job, target rules included.
    """
    out = snakemake(Path(root), ["-n", "--forceall"], profile=None, what="snakemake -n --forceall").stdout
    jobs: list[dict[str, object]] = []
    for line in out.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            jobs.append({"rule": line.split()[1].rstrip(":"), "input": [], "output": []})
        elif jobs and line.startswith(("    input: ", "    output: ")):
            key, _, files = line.strip().partition(": ")
            jobs[-1][key] = [f for f in files.split(", ") if f]
    return jobs


def _keys(folder: Path) -> dict[str, Path]:
    """Output path -> record file of Snakemake's file persistence: the key is the url-safe base64 of the
    path, cut into '@'-prefixed directory names when it is too long for one file name."""
    if not folder.is_dir():
        return {}
    found = {}
    for f in folder.rglob("*"):
        if f.is_file():
            parts = [p.removeprefix("@") for p in f.relative_to(folder).parts]
            try:
                found[base64.urlsafe_b64decode("".join(parts)).decode()] = f
            except ValueError:   # not a record (a stray file): skip it
                continue
    return found


def read_records(root: str | Path = ".") -> dict[str, Record]:
    """Every output Snakemake holds a finished-job record for, from ``.snakemake/metadata``."""
    records = {}
    for output, f in _keys(Path(root) / ".snakemake" / "metadata").items():
        doc = json.loads(f.read_text())
        checksums = {k: v if ":" in v else f"sha256:{v}" for k, v in (doc.get("input_checksums") or {}).items()}
        records[output] = Record(output=output, rule=doc.get("rule") or "", inputs=tuple(doc.get("input") or ()),
                                 checksums=checksums, started=float(doc.get("starttime") or 0.0))
    return records


def incomplete_outputs(root: str | Path = ".") -> set[str]:
    """Outputs whose job started and never finished (Snakemake's incomplete markers)."""
    return set(_keys(Path(root) / ".snakemake" / "incomplete"))


def params_changed(root: str | Path = ".") -> set[str]:
    """Outputs whose recorded params differ from what the current params give (the params are the rules'
    triggers, the same keys DVC lists), from ``snakemake --summary --rerun-triggers params``: with only the
    params trigger, the summary's status ignores modification times. (``--list-changes params`` would be
    the direct question, but Snakemake 9 lists every output that has recorded params there, changed or not.)"""
    out = snakemake(Path(root), ["--summary", "--rerun-triggers", "params"], profile=None,
                    what="snakemake --summary --rerun-triggers params").stdout
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    if not rows:
        return set()
    status = rows[0].index("status")
    return {r[0] for r in rows[1:] if len(r) > status and r[status] == "params changed"}


def touch_all(root: str | Path = ".") -> None:
    """``snakemake --touch --forceall``: mark every output current and record what it was made from."""
    # --touch runs locally even under a SLURM profile; one core is plenty for touching files.
    snakemake(Path(root), ["--touch", "--forceall", "--cores", "1"], profile=None, what="snakemake --touch")


def pending_outputs(root: str | Path = ".") -> tuple[list[str], int]:
    """(outputs Snakemake would still make, all outputs) from ``snakemake --summary``'s plan column."""
    plan = snakemake(Path(root), ["--summary"], profile=None, what="snakemake --summary").stdout
    rows = [line.split("\t") for line in plan.splitlines() if "\t" in line][1:]
    return [r[0] for r in rows if r[-1] != "no update"], len(rows)
