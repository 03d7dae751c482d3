"""What ``gfm check`` says about one artifact (:class:`Verdict`), and the helpers the validators of each format
share. Each format's validator lives beside the code that reads and writes it (:mod:`gfm.store_check`,
:mod:`gfm.forecast_check`, :mod:`gfm.forecasters.model_files`); :mod:`gfm.check` finds the artifacts and
dispatches to them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfm.errors import GFMError, one_line
from gfm.inputs import MAX_JSON_BYTES, read_json
from gfm.inputs import _is_int as is_int

__all__ = ["Verdict", "READ_BYTES", "runs_text", "foreign_line", "zarr_attrs", "is_int", "artifact_kind"]

READ_BYTES = 64 << 20  # at most this much array data is held in memory at once


@dataclass
class Verdict:
    """What :func:`check_path` found for one artifact."""

    path: Path
    kind: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem, or one ``ok`` line."""
        if self.problems:  # paths and messages may hold user text: escaped, one line each
            return [one_line(f"{self.path}: {self.kind}: {p}") for p in self.problems]
        return [one_line(f"{self.path}: ok ({self.kind}{': ' + self.summary if self.summary else ''})")]


def zarr_attrs(path: Path) -> Any:
    """The root attributes of a Zarr directory, or None when its zarr.json is not a readable JSON object."""
    try:
        meta = read_json(path / "zarr.json", limit=MAX_JSON_BYTES, root=path)
    except GFMError:
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def runs_text(runs: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in runs[:limit])
    return f"{len(runs)} runs ({shown}{', ...' if len(runs) > limit else ''})"


def foreign_line(foreign: list[str]) -> str:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return f"files that are not part of the store: {shown} (an interrupted writer's or a stranger's; delete them)"


def artifact_kind(path: Path) -> str | None:
    """What kind of artifact ``path`` looks like (from its files and attributes), None if none of ours."""
    if path.is_dir():
        if (path / "zarr.json").is_file():
            attrs = zarr_attrs(path)
            return "forecast store" if isinstance(attrs, dict) and attrs.get("kind") == "forecast" \
                else "trajectory store"
        if (path / "config.json").is_file() or (path / "weights.safetensors").is_file():
            return "model"
        if (path / "summary.json").is_file():
            return "trained models"
        if (path / "summary.md").is_file() or (path / "summary.html").is_file():
            return "report"
        return None
    if path.suffix == ".json":
        return "json"
    if path.suffix == ".csv":
        return "csv"
    if path.suffix == ".safetensors":
        return "safetensors"
    return None
