"""Running the pipeline's tools (dvc, snakemake) from the venv that runs gfm, with one error type."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from gfm.base.errors import GFMError

__all__ = ["DriverError", "tool", "run_tool"]


class DriverError(GFMError, RuntimeError):
    """DVC and Snakemake disagree, or one of them failed; the message says which and what to do."""


def tool(name: str) -> str:
    """The venv's copy of a tool (next to this interpreter) so the versions pinned here are used."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise DriverError(f"{name!r} not found next to {sys.executable} nor on PATH; it comes with "
                          f"gfm-pipeline's `pipeline` extra: pip install 'gfm-pipeline[pipeline]' (in a checkout: make venv)")
    return found


def run_tool(args: Sequence[str], root: Path, *, what: str, env: dict[str, str] | None = None,
             stream: bool = False) -> subprocess.CompletedProcess:
    """Run a tool in ``root``; raise DriverError naming ``what`` with the tail of its output on failure."""
    proc = subprocess.run(list(args), cwd=root, env=env, text=True,
                          capture_output=not stream)
    if proc.returncode != 0:
        tail = "" if stream else "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DriverError(f"{what} failed (exit {proc.returncode}): {shlex.join(args)}" + (f"\n{tail}" if tail else ""))
    return proc
