"""Stage ``headline``: what DVC shows, small enough to live in git.

The evaluate stages write one metrics JSON per store with ~40 numbers per model (DVC-cached, under data/).
``dvc exp show`` and ``dvc metrics diff`` over those give thousands of columns and need a ``dvc pull`` to
compare two commits. This stage condenses them into files that git tracks (``cache: false`` in dvc.yaml):

* ``metrics.json``: one number per (store, model), the final-step weight MSE relative to ``last_value`` on
  the same test runs (xLV, mean over dataset seeds; the README results table shows it with its std):
  ``{"final_xlv": {<store>: {<model>: xlv}}}``, stores and models in params order. ``last_value`` itself is
  left out (its xLV is 1 by definition), and so is a store that does not train ``last_value`` (it has no
  xLV), and so is a model that refused a store (``{"refused": reason}`` in evaluate's metrics: no number). Values are rounded to 4 significant digits so that a re-run that changes nothing a reader could
  see changes nothing in the diff; non-finite values (a diverged forecast) are written as ``null``.
* ``plots/error_vs_horizon/<store>.csv`` (step, model, mse, mse_std) and ``plots/trajectory/<store>.csv``
  (step, param, series, value): evaluate's plot data of each store, one directory per kind of plot. DVC
  configures plots by path prefix, so each kind needs a directory of its own for its own template
  (dvc.yaml ``plots:``; the templates are workflow/plots/*.json). Evaluate keeps its per-store directories,
  which the report reads. Rows of a model that refused the store are left out, and a store where every model
  refused has no error-vs-horizon file (there is nothing to draw).

Usage::

    gfm headline --metrics data/metrics/mlp_regression/sgd.json data/metrics/digits/adam.json \\
        --plots data/plots --out metrics.json --plot-data plots
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from gfm.artifacts.inputs import MAX_JSON_BYTES, read_bytes, read_json
from gfm.artifacts.output_contents import MARKER_FILE, MARKER_KEY
from gfm.artifacts.outputs import (
    Kind,
    claim_output,
    discard_temp,
    open_temp_dir,
    replace_output,
    write_json_output,
)
from gfm.artifacts.zarr_files import SNAKEMAKE_STAMP
from gfm.base.errors import GFMError
from gfm.metrics.model_entries import refusal, scored

__all__ = ["HEADLINE", "PLOT_DATA", "PLOT_KINDS", "headline_metrics", "plot_rows", "run"]

KEY = "final_xlv"
REFERENCE = "last_value"
DIGITS = 4
# kind of plot -> (evaluate's CSV it is drawn from, the columns DVC reads, in order)
PLOT_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "error_vs_horizon": ("mse_vs_horizon.csv", ("step", "model", "mse", "mse_std")),
    "trajectory": ("trajectory.csv", ("step", "param", "series", "value")),
}
_MODEL_COLUMN = {"error_vs_horizon": "model", "trajectory": "series"}  # the column naming a row's model
_MAX_CSV_BYTES = 256 << 20  # evaluate's plot CSVs are ~50 KB per store in the default study
# a store key names files here: <task>-<optimizer>, as the params schema and the Snakemake wildcards allow
_STORE_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_]*)-([a-z]+)")


def _own_headline(path: Path) -> str | None:
    try:
        data = read_json(path)
    except (OSError, GFMError):
        return "is a file that is not a headline metrics JSON (not JSON)"
    if not isinstance(data, dict) or set(data) - {MARKER_KEY} != {KEY}:
        return f"is a JSON file that is not a headline metrics JSON (it must hold exactly the key {KEY!r})"
    return None


def _own_plot_data(path: Path) -> str | None:
    for entry in sorted(path.iterdir()):
        if entry.name in (SNAKEMAKE_STAMP, MARKER_FILE):
            continue
        if entry.name not in PLOT_KINDS or entry.is_symlink() or not entry.is_dir():
            return f"holds {entry.name}, which is not one of {sorted(PLOT_KINDS)} (headline plot data)"
        for f in sorted(entry.iterdir()):
            if f.suffix != ".csv" or f.is_symlink() or not f.is_file():
                return f"holds {entry.name}/{f.name}, which is not a CSV file of headline plot data"
    return None


HEADLINE = Kind("headline metrics JSON", False, _own_headline)
PLOT_DATA = Kind("headline plot-data directory", True, _own_plot_data)


def _significant(value: object) -> float | None:
    if value is None:
        return None
    v = float(value)
    return float(f"{v:.{DIGITS}g}") if math.isfinite(v) else None


def _xlv(store: str, model: str, entry: dict) -> object:
    xlv = entry["final_xlv"]
    if not isinstance(xlv, dict) or "mean" not in xlv:
        raise GFMError(f"store {store}, model {model}: final_xlv has no mean; not written by evaluate")
    return xlv["mean"]


def headline_metrics(metrics: Iterable[dict]) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{"final_xlv": {store: {model: xlv}}}`` from evaluate's per-store metrics (in the given order).

    Raises:
        GFMError: a metrics document without the keys evaluate writes, or the same store twice.
    """
    out: dict[str, dict[str, float | None]] = {}
    for m in metrics:
        store, models = m.get("store"), m.get("models")
        if not isinstance(store, str) or not isinstance(models, dict):
            raise GFMError(f"metrics of store {store!r}: no 'store'/'models' keys; not written by evaluate")
        if store in out:
            raise GFMError(f"store {store}: given twice")
        row = {name: _significant(_xlv(store, name, entry)) for name, entry in scored(models).items()
               if name != REFERENCE and "final_xlv" in entry}
        if row:
            out[store] = row
    return {KEY: out}


def plot_rows(text: str, columns: Sequence[str], *, source: str) -> list[dict[str, str]]:
    """The rows of one of evaluate's plot CSVs, reduced to ``columns`` (values kept as written).

    Raises:
        GFMError: a column is missing or the file holds no data row (DVC would draw an empty plot).
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise GFMError(f"{source}: no column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or [])}); "
                       "re-run evaluate")
    rows = [{c: row[c] for c in columns} for row in reader]
    if not rows:
        raise GFMError(f"{source}: no data rows; re-run evaluate")
    return rows


def _csv_text(rows: list[dict[str, str]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _read(path: Path, limit: int, missing: str) -> bytes:
    if not path.exists() and not path.is_symlink():
        raise GFMError(f"{path}: {missing}")
    return read_bytes(path, limit)


def _load_metrics(path: Path) -> dict:
    raw = _read(path, MAX_JSON_BYTES, "metrics not found (run the evaluate stage of this store)")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise GFMError(f"{path}: not a metrics JSON file") from None
    if not isinstance(data, dict) or not {"store", "task", "optimizer", "models"} <= set(data):
        raise GFMError(f"{path}: not an evaluate metrics JSON (needs store, task, optimizer, models)")
    key = _STORE_KEY.fullmatch(str(data["store"]))
    if key is None or key.groups() != (data["task"], data["optimizer"]):
        raise GFMError(f"{path}: store {str(data['store'])[:80]!r} is not <task>-<optimizer> of its task "
                       f"{str(data['task'])[:80]!r} and optimizer {str(data['optimizer'])[:80]!r}")
    return data


def run(metrics: Sequence[Path], *, plots: Path, out: Path, plot_data: Path) -> dict:
    """Write ``out`` (headline metrics) and ``plot_data`` (per-kind plot CSVs) from the metrics files of
    the stores to show (in this order) and evaluate's plot directories under ``plots`` (<task>/<optimizer>/).
    Returns the headline metrics."""
    if not metrics:
        raise GFMError("gfm headline: no metrics files given (no store trains a model?)")
    docs = [_load_metrics(Path(p)) for p in metrics]
    headline = headline_metrics(docs)
    claim_output(out, HEADLINE)  # both outputs are claimed before anything is written
    tmp = open_temp_dir(plot_data, PLOT_DATA)
    try:
        for kind, (name, columns) in PLOT_KINDS.items():
            (tmp / kind).mkdir()
            for doc in docs:
                if kind == "error_vs_horizon" and not scored(doc["models"]):
                    continue  # every model refused this store: no curve to draw
                refused = {n for n, e in doc["models"].items() if refusal(e) is not None}
                src = Path(plots) / doc["task"] / doc["optimizer"] / name
                raw = _read(src, _MAX_CSV_BYTES, f"plot data not found (run the evaluate stage of store {doc['store']})")
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    raise GFMError(f"{src}: not a UTF-8 CSV file") from None
                rows = [r for r in plot_rows(text, columns, source=str(src)) if r[_MODEL_COLUMN[kind]] not in refused]
                (tmp / kind / f"{doc['store']}.csv").write_text(_csv_text(rows, columns))
    except BaseException:
        discard_temp(tmp)
        raise
    replace_output(tmp, plot_data, PLOT_DATA)
    write_json_output(out, HEADLINE, headline, sort_keys=False, allow_nan=False)
    return headline
