"""Snakemake's own view of a test repository, for the tests that compare it with DVC's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from conftest import run_tool

__all__ = ["snakemake_summary"]


def snakemake_summary(root: str | Path = ".", args: Sequence[str] = (), *,
                      detailed: bool = False) -> list[dict[str, str]]:
    """``snakemake --summary`` (``--detailed-summary`` with ``detailed``) as one dict per output.

    Args:
        root: the repository root.
        args: extra Snakemake arguments, e.g. ``["--config", "device=cpu"]`` (the workflow refuses --configfile).
        detailed: also list each output's input files and shell command.

    Returns:
        Rows keyed by Snakemake's column names (``output_file``, ``rule``, ``status``, ``plan``, ...).
    """
    flag = "--detailed-summary" if detailed else "--summary"
    out = run_tool(["snakemake", flag, *args], Path(root)).stdout
    lines = [line for line in out.splitlines() if "\t" in line]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]
