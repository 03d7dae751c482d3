"""What ``gfm check`` says about one artifact (:class:`Verdict`), and the helpers the validators of each format
share, the check of a CSV (plot data, train logs) among them. Each format's validator lives beside the code that
reads and writes it (:mod:`gfm.store.scan`, :mod:`gfm.stages.forecast_check`, :mod:`gfm.forecasters.model_files`);
:mod:`gfm.tools.check` finds the artifacts and dispatches to them."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfm.artifacts.inputs import MAX_JSON_BYTES, file_problem, read_json
from gfm.base.errors import GFMError, one_line

__all__ = ["Verdict", "READ_BYTES", "runs_text", "foreign_line", "zarr_attrs", "artifact_kind", "check_csv"]

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


_INT_COLUMNS = {"epoch", "horizon", "step", "param"}
_TEXT_COLUMNS = {"model", "series"}


def check_csv(path: Path, v: Verdict) -> None:
    """``gfm check`` of a CSV (evaluate's plot data, a train log): a distinct header, and every row as many
    fields as the header, numbers in the numeric columns. Rows are streamed (memory: one row; csv's field size limit bounds a line without newlines)."""
    regular = file_problem(path, path.parent)
    if regular:
        v.problems.append(f"{regular}; not read")
        return
    n = 0
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                v.problems.append("empty (no header)")
                return
            if len(set(header)) != len(header) or not all(header):
                v.problems.append(f"header {header!r:.200} must name distinct columns")
                return
            for i, row in enumerate(reader, start=2):
                n += 1
                problem = _csv_row_problem(header, row)
                if problem:
                    v.problems.append(f"line {i}: {problem}")
                    return
    except (UnicodeDecodeError, csv.Error) as exc:
        v.problems.append(f"not a readable CSV ({type(exc).__name__})")
        return
    v.summary = f"{n} rows, columns {', '.join(header)}"


def _csv_row_problem(header: list[str], row: list[str]) -> str | None:
    if len(row) != len(header):
        return f"{len(row)} fields; the header has {len(header)}"
    for col, cell in zip(header, row, strict=True):
        if col in _TEXT_COLUMNS or cell == "":
            continue
        try:
            value = float(cell)
        except ValueError:
            return f"column {col} holds {cell!r:.80}; expected a number"
        if col in _INT_COLUMNS and not (math.isfinite(value) and value == int(value)):
            return f"column {col} holds {cell!r:.80}; expected an integer"
    return None
