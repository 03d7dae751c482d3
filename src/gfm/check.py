"""``gfm check PATH``: is an artifact complete and sound? One verdict per artifact, one line per problem.

Recognised artifacts (anything else under a directory is walked into; an unrecognised file is a problem):

========================  ==========================================================================
trajectory store (.zarr)  schema version, completion flag, attributes (layout offsets add up to
                          n_params, state names of the optimizer), every array's shape and dtype,
                          every chunk decoded (read in bounded blocks), weights / loss / state finite
                          for runs not flagged diverged, ``final/*`` equal to the last step, lr finite
forecast store (.zarr)    kind, schema version, completion flag, shapes against its horizons,
                          store indices unique, chunks readable
model directory           ``load_forecaster`` accepts it (format, kind, config, safetensors header:
                          size, F32 only, plain tensor names, tensors fit the model), tensors finite
trained-model directory   ``summary.json`` lists exactly the seed directories, each a sound model
split JSON                structure, decimal seeds, run ids, train / val / test disjoint
metrics JSON              keys, counts, horizons, reference losses finite, MSEs non-negative
CSV (logs, plot data)     header, one field per column, numbers where numbers belong
report directory          ``summary.md`` and ``summary.html`` present and non-empty
``*.partial`` / ``*.tmp``  an interrupted writer's leftovers: never a finished artifact
========================  ==========================================================================

Nothing here executes anything read from the artifact: JSON is parsed, safetensors headers are checked
before any tensor is read, Zarr holds only numbers.

Usage::

    gfm check data/trajectories/mlp_regression/sgd.zarr     # one artifact
    gfm check data                                          # every artifact under data/
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfm.errors import GFMError, one_line
from gfm.inputs import (
    MAX_JSON_BYTES,
    array_meta_problems,
    chunk_file_limit,
    file_problem,
    foreign_files,
    read_json,
    tree_problems,
)
from gfm.store_check import inspect_trajectory_store

__all__ = ["Verdict", "check_path", "READ_BYTES"]

READ_BYTES = 64 << 20  # at most this much array data is held in memory at once
_LEFTOVER_SUFFIXES = (".partial", ".tmp")


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


def check_path(path: str | Path) -> list[Verdict]:
    """Check the artifact at ``path``, or every artifact under a directory that is not one itself.

    Nothing is read that could not be part of an artifact: under a directory, a symbolic link whose target
    leaves it, and anywhere a FIFO, device or socket, is a problem named unread (a FIFO would block the
    check, ``/dev/zero`` never ends); every read is bounded (``gfm.inputs``)."""
    path = Path(path)
    return _check_under(path, Path(os.path.realpath(path)) if path.is_dir() else None)


def _check_under(path: Path, root: Path | None) -> list[Verdict]:
    if not path.exists() and not path.is_symlink():
        return [Verdict(path, "missing", ["no such file or directory"])]
    if path.name.endswith(_LEFTOVER_SUFFIXES):
        return [Verdict(path, "leftover", ["unfinished output of an interrupted writer; re-run its stage "
                                           "(generate resumes from it) or delete it"])]
    if path.is_symlink() and not path.exists():
        return [Verdict(path, "broken link", ["symbolic link to nothing"])]
    if path.is_symlink() and root is not None and not _inside(path, root):
        return [Verdict(path, "link", [f"symbolic link leaving {root} (to {os.path.realpath(path)}); not followed"])]
    if not path.is_dir() and not path.is_file():
        return [Verdict(path, "special file", [f"{file_problem(path)}; not read"])]
    try:
        kind = _kind(path)
    except GFMError as exc:  # a zarr.json / config.json that cannot even be classified
        return [Verdict(path, "directory", [str(exc).removeprefix(f"{path}/")])]
    if kind is None:
        if path.is_dir():
            # a linked directory inside the walked root is walked where it lives (no loops)
            found = [v for child in sorted(path.iterdir()) if not child.name.startswith(".")
                     and not (child.is_symlink() and child.is_dir() and root is not None and _inside(child, root))
                     for v in _check_under(child, root)]
            return found or [Verdict(path, "directory", ["no artifact of this pipeline found here"])]
        return [Verdict(path, "file", [f"not an artifact of this pipeline (expected .zarr, .json, .csv, "
                                       f"a model directory or a report; got {path.suffix or 'no suffix'})"])]
    verdict = Verdict(path, kind)
    try:
        if path.is_dir() and kind != "trajectory store":  # the store inspection walks its own tree
            unsafe, _ = tree_problems(path)
            if unsafe:
                verdict.problems += unsafe
                return [verdict]
        _CHECKS[kind](path, verdict)
    except GFMError as exc:
        verdict.problems.append(str(exc).removeprefix(f"{path}: "))
    except Exception as exc:  # noqa: BLE001 - a malformed artifact gets a verdict, never a traceback
        verdict.problems.append(f"malformed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return [verdict]


def _inside(path: Path, root: Path) -> bool:
    target = os.path.realpath(path)
    return target == str(root) or target.startswith(str(root).rstrip(os.sep) + os.sep)


def _kind(path: Path) -> str | None:
    if path.is_dir():
        if (path / "zarr.json").is_file():
            attrs = _zarr_attrs(path)
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


def _zarr_attrs(path: Path) -> Any:
    """The root attributes of a Zarr directory, or None when its zarr.json is not a readable JSON object."""
    try:
        meta = read_json(path / "zarr.json", limit=MAX_JSON_BYTES, root=path)
    except GFMError:
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def _read_json(path: Path) -> Any:
    return read_json(path, error=GFMError)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _runs_text(runs: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in runs[:limit])
    return f"{len(runs)} runs ({shown}{', ...' if len(runs) > limit else ''})"


# --- trajectory store --------------------------------------------------------------------------------
def _check_trajectory_store(path: Path, v: Verdict) -> None:
    import zarr

    # Structure first, with the stages' own rules (gfm.inputs): files, attributes, array metadata.
    inspection = inspect_trajectory_store(path)
    v.problems += inspection.problems
    if inspection.foreign:
        v.problems.append(_foreign_line(inspection.foreign))
    if inspection.problems:
        return
    attrs = inspection.attrs
    R, T, P = attrs["n_runs"], attrs["n_records"], attrs["n_params"]
    opt = attrs["optimizer"]["name"]
    try:
        g = zarr.open_group(str(path), mode="r")
        arrays = {name: g[name] for name in ("weights", "loss", "lr", "final/weights", "final/loss",
                                            "runs/diverged", *(f"state/{s}" for s in attrs["state_names"]))}
    except Exception as exc:  # noqa: BLE001 - any failure to open is the verdict
        v.problems.append(f"not a readable Zarr group ({type(exc).__name__})")
        return
    try:
        diverged = arrays["runs/diverged"][:].astype(bool)
        for name in sorted(g["runs"].array_keys()):
            if not np.isfinite(np.asarray(g[f"runs/{name}"][:], dtype=np.float64)).all():
                v.problems.append(f"runs/{name} holds non-finite values")
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode
        v.problems.append(f"runs/*: chunk data unreadable ({type(exc).__name__})")
        return
    no_loss = attrs.get("loss_source") == "none"
    _check_trajectory_data(arrays, diverged, R, T, P, v, loss_recorded=not no_loss)
    v.summary = (f"{R} runs x {T} records x {P} params, optimizer {opt}, {int(diverged.sum())} diverged, "
                 f"{'no loss recorded (loss_source none), ' if no_loss else ''}every chunk read")


def _foreign_line(foreign: list[str]) -> str:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return f"files that are not part of the store: {shown} (an interrupted writer's or a stranger's; delete them)"


def _check_trajectory_data(arrays: dict, diverged: np.ndarray, R: int, T: int, P: int, v: Verdict, *,
                           loss_recorded: bool = True) -> None:
    """Decode every chunk, a bounded block of runs at a time, checking values as they stream past.

    ``loss_recorded`` False (attribute ``loss_source: none``: ``gfm import`` of weights without a loss) means
    the loss arrays hold NaN by design, the honest value for "not measured" (a made-up number would be
    scored by evaluate as if it were a loss); they must then hold nothing else."""
    n_state = sum(1 for n in arrays if n.startswith("state/"))
    block = max(1, READ_BYTES // (T * P * 4 * (1 + n_state)))
    nonfinite: dict[str, list[int]] = {}
    mismatch: dict[str, list[int]] = {}
    for start in range(0, R, block):
        sl = slice(start, min(start + block, R))
        where = f"runs {sl.start}..{sl.stop - 1}"
        try:
            w = arrays["weights"][sl]  # (run, step, param)
            loss, lr = arrays["loss"][sl], arrays["lr"][sl]
            fw, fl = arrays["final/weights"][sl], arrays["final/loss"][sl]
            states = {n: arrays[n][sl] for n in arrays if n.startswith("state/")}
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode is the verdict
            v.problems.append(f"{where}: chunk data unreadable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        ok = ~diverged[sl]
        runs = np.arange(sl.start, sl.stop)
        for name, a in (("weights", w), *((("loss", loss),) if loss_recorded else ()), *states.items()):
            bad = ok & ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            nonfinite.setdefault(name, []).extend(runs[bad].tolist())
        if not loss_recorded:
            held = ~np.isnan(loss).all(axis=1) | ~np.isnan(fl)
            mismatch.setdefault("loss (loss_source none)", []).extend(runs[held].tolist())
        bad_lr = ~np.isfinite(lr).all(axis=1) | (lr < 0).any(axis=1)
        nonfinite.setdefault("lr", []).extend(runs[bad_lr].tolist())
        for name, got, last in (("final/weights", fw, w[:, -1]), ("final/loss", fl, loss[:, -1])):
            same = (got == last) | (np.isnan(got) & np.isnan(last))
            bad = ~same.reshape(same.shape[0], -1).all(axis=1)
            mismatch.setdefault(name, []).extend(runs[bad].tolist())
    for name, runs in nonfinite.items():
        if runs:
            what = "non-finite or negative" if name == "lr" else "non-finite values (missing chunks read as NaN)"
            v.problems.append(f"{name}: {_runs_text(np.asarray(runs))} not flagged diverged hold {what}"
                              if name != "lr" else f"lr: {_runs_text(np.asarray(runs))} hold {what} values")
    for name, runs in mismatch.items():
        if runs and name.startswith("loss"):
            v.problems.append(f"loss: {_runs_text(np.asarray(runs))} hold values although the attributes say no "
                              "loss was recorded (loss_source none)")
        elif runs:
            v.problems.append(f"{name}: {_runs_text(np.asarray(runs))} differ from the last recorded step")


# --- forecast store ----------------------------------------------------------------------------------
def _check_forecast_store(path: Path, v: Verdict) -> None:
    import zarr

    from gfm.store import SCHEMA_VERSION

    attrs = _zarr_attrs(path)
    if not isinstance(attrs, dict):
        v.problems.append("zarr.json is not readable JSON")
        return
    if attrs.get("schema_version") != SCHEMA_VERSION:
        v.problems.append(f"schema_version {attrs.get('schema_version')!r:.40}; this code reads {SCHEMA_VERSION}")
        return
    if attrs.get("complete") is not True:
        v.problems.append("no completion flag: re-run the forecast stage")
        return
    horizons, k = attrs.get("horizons"), attrs.get("prefix_end")
    if not _is_int(k) or not isinstance(horizons, list) or not horizons or not all(_is_int(h) and h > k for h in horizons):
        v.problems.append(f"prefix_end {k!r:.40} / horizons {horizons!r:.80}: expected an integer and integers after it")
        return
    metas = {}
    n_draws = attrs.get("samples", 0)
    if not _is_int(n_draws) or n_draws < 0:
        v.problems.append(f"attribute samples {n_draws!r:.40}: expected the number of draws per run (0 = none)")
        return
    arrays = (("weights", "float32"), ("runs/store_index", "int64"), ("runs/dataset_seed", "int64"))
    for name, dtype in arrays + ((("samples", "float32"),) if n_draws else ()):
        try:
            meta = read_json(path / name / "zarr.json", limit=1 << 20, root=path)
        except GFMError as exc:
            v.problems.append(f"array {name}: {str(exc).removeprefix(str(path / name / 'zarr.json') + ': ')}")
            continue
        bad = array_meta_problems(meta, f"array {name}", None, dtype)
        v.problems += bad
        if not bad:
            metas[name] = meta
    if v.problems:
        return
    shape = metas["weights"]["shape"]
    R = shape[0] if len(shape) == 3 else None
    if (len(shape) != 3 or shape[1] != len(horizons) or metas["runs/store_index"]["shape"] != [R]
            or metas["runs/dataset_seed"]["shape"] != [R]):
        v.problems.append(f"weights {tuple(shape)}, store_index {tuple(metas['runs/store_index']['shape'])}: "
                          f"expected (run, {len(horizons)}, param) and (run,)")
        return
    if n_draws and metas["samples"]["shape"] != [R, n_draws, shape[2]]:
        v.problems.append(f"samples {tuple(metas['samples']['shape'])}: expected (run, draw, param) = ({R}, {n_draws}, {shape[2]})")
        return
    if attrs.get("n_runs") not in (None, R):
        v.problems.append(f"attribute n_runs {attrs.get('n_runs')!r:.40} but {R} forecast runs")
    _, files = tree_problems(path)
    big = [f"{rel} ({size} bytes)" for name, meta in metas.items() for rel, size in files.items()
           if rel.startswith(name + "/") and rel != f"{name}/zarr.json" and size > chunk_file_limit(meta)]
    if big:
        v.problems.append(f"chunk files larger than their chunk can encode to (refused unread): {', '.join(big[:5])}")
        return
    foreign = foreign_files(files, {"", "runs"}, metas)
    if foreign:
        v.problems.append(_foreign_line(foreign))
    try:
        g = zarr.open_group(str(path), mode="r")
        w, idx, seeds = g["weights"], g["runs/store_index"], g["runs/dataset_seed"]
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"arrays weights, runs/store_index, runs/dataset_seed not all readable ({type(exc).__name__})")
        return
    R, H, P = w.shape
    block = max(1, READ_BYTES // max(1, H * P * 4))
    nonfinite: list[int] = []
    try:
        index = idx[:]
        seeds[:]
        for start in range(0, R, block):
            part = w[start : start + block]
            bad_rows = ~np.isfinite(part.reshape(part.shape[0], -1)).all(axis=1)
            nonfinite += (np.flatnonzero(bad_rows) + start).tolist()
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"chunk data unreadable ({type(exc).__name__})")
        return
    if len(np.unique(index)) != len(index) or (index < 0).any():
        v.problems.append("runs/store_index must be distinct non-negative run ids")
    elif nonfinite:  # the forecast stage refuses to write these; a store holding them is not its output
        v.problems.append(f"weights: non-finite forecasts of {_runs_text(index[nonfinite])} (store runs)")
    elif n_draws:
        try:
            draws = g["samples"][:]  # (run, draw, param): the final horizon only, small beside the weights
        except Exception as exc:  # noqa: BLE001
            v.problems.append(f"samples: chunk data unreadable ({type(exc).__name__})")
            return
        bad = ~np.isfinite(draws.reshape(len(draws), -1)).all(axis=1)
        if bad.any():
            v.problems.append(f"samples: non-finite draws of {_runs_text(index[np.flatnonzero(bad)])} (store runs)")
    v.summary = (f"model {attrs.get('model')}, {R} runs x {H} horizons x {P} params"
                 + (f", {n_draws} draws per run" if n_draws else ""))


# --- models ------------------------------------------------------------------------------------------
def _check_model(path: Path, v: Verdict) -> None:
    from gfm.forecasters import load_forecaster

    fc = load_forecaster(path)  # refuses what the stages refuse: headers, shapes, non-finite tensors
    if (path / "train_log.csv").is_file():
        sub = Verdict(path / "train_log.csv", "csv")
        _check_csv(path / "train_log.csv", sub)
        v.problems += [f"train_log.csv: {p}" for p in sub.problems]
    v.summary = f"{fc.name}, prefix_end {fc.prefix_end}, horizons {list(fc.horizons)}"


def _check_trained_models(path: Path, v: Verdict) -> None:
    summary = _read_json(path / "summary.json")
    if not isinstance(summary, dict) or not isinstance(summary.get("seeds"), dict) or "kind" not in summary:
        v.problems.append("summary.json must hold 'kind' and 'seeds'")
        return
    listed = set(summary["seeds"])
    present = {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if listed != present:
        v.problems.append(f"summary.json lists seeds {sorted(listed)}, the directory holds {sorted(present)}")
    for seed in sorted(listed & present):
        sub = Verdict(path / seed, "model")
        try:
            _check_model(path / seed, sub)
        except GFMError as exc:
            sub.problems.append(str(exc).removeprefix(f"{path / seed}/"))
        v.problems += [f"{seed}/: {p}" for p in sub.problems]
        if sub.ok and _read_json(path / seed / "config.json").get("kind") != summary["kind"]:
            v.problems.append(f"{seed}/: kind differs from summary.json's {summary['kind']!r}")
    v.summary = f"{summary['kind']}, {len(listed)} dataset seeds"


def _check_safetensors(path: Path, v: Verdict) -> None:
    from gfm.forecasters.base import _check_safetensors_header

    _check_safetensors_header(path)
    v.summary = "header sound (F32 tensors with plain names)"


# --- JSON and CSV ------------------------------------------------------------------------------------
def _check_json(path: Path, v: Verdict) -> None:
    data = _read_json(path)
    if not isinstance(data, dict):
        v.problems.append("expected a JSON object")
    elif "datasets" in data:
        v.kind = "split"
        _check_split(path, data, v)
    elif "models" in data and "counts" in data:
        v.kind = "metrics"
        _check_metrics(data, v)
    elif "pairs" in data:
        v.kind = "generalisation metrics"
        if not isinstance(data["pairs"], list) or not all(isinstance(p, dict) and "models" in p for p in data["pairs"]):
            v.problems.append("'pairs' must be a list of objects with 'models'")
    elif set(data) == {"store", "models"}:
        v.kind = "model index"
        if not isinstance(data["models"], dict) or not all(isinstance(k, str) for k in data["models"].values()):
            v.problems.append("'models' must map model names to forecaster kinds")
    else:
        v.problems.append(f"unrecognised JSON (keys {sorted(data)[:6]})")


def _check_split(path: Path, data: dict, v: Verdict) -> None:
    from gfm.split import read_split_structure, split_problems

    datasets = read_split_structure(path)
    v.problems += split_problems(datasets)  # the stages refuse the same (gfm.split.read_split)
    n = len({r for e in datasets.values() for p in ("train", "val", "test") for r in e[p]})
    v.summary = f"{len(datasets)} dataset seeds, {n} runs"


def _check_metrics(data: dict, v: Verdict) -> None:
    def mean_std(x: Any, where: str, finite: bool = False) -> None:
        if not isinstance(x, dict) or not all(isinstance(x.get(k), (int, float)) for k in ("mean", "std")):
            v.problems.append(f"{where}: expected {{mean, std, n}} numbers")
        elif finite and not (math.isfinite(x["mean"]) and math.isfinite(x["std"])):
            v.problems.append(f"{where}: non-finite ({x['mean']}, {x['std']})")
        elif x["mean"] < 0 and where.endswith("mse"):
            v.problems.append(f"{where}: negative MSE {x['mean']}")

    counts = data.get("counts")
    if not isinstance(counts, dict) or not all(_is_int(c) and c >= 0 for c in counts.values()):
        v.problems.append("counts: expected non-negative integers")
    hz = data.get("horizons")
    if not isinstance(hz, list) or not hz or not all(map(_is_int, hz)) or hz != sorted(set(hz)):
        v.problems.append(f"horizons: expected increasing integers; got {hz!r}")
    for name, ref in (data.get("reference") or {}).items():
        mean_std(ref, f"reference.{name}", finite=True)
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        v.problems.append("models: expected at least one model")
        return
    for name, m in models.items():
        if not isinstance(m, dict):
            v.problems.append(f"models.{name}: expected an object")
            continue
        mean_std(m.get("final_mse"), f"models.{name}.final_mse")
        for h, ms in (m.get("mse_by_horizon") or {}).items():
            mean_std(ms, f"models.{name}.mse_by_horizon.{h}.mse")
    v.summary = f"store {data.get('store')}, {len(models)} models"


_INT_COLUMNS = {"epoch", "horizon", "step", "param"}
_TEXT_COLUMNS = {"model", "series"}


def _check_csv(path: Path, v: Verdict) -> None:
    """Rows are streamed (memory: one row; csv's field size limit bounds a line without newlines)."""
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


def _check_report(path: Path, v: Verdict) -> None:
    for name in ("summary.md", "summary.html"):
        p = path / name
        if not p.is_file() or p.stat().st_size == 0:
            v.problems.append(f"{name} missing or empty")
    v.summary = "summary.md, summary.html"


_CHECKS = {
    "trajectory store": _check_trajectory_store,
    "forecast store": _check_forecast_store,
    "model": _check_model,
    "trained models": _check_trained_models,
    "safetensors": _check_safetensors,
    "json": _check_json,
    "csv": _check_csv,
    "report": _check_report,
}
