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
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfm.errors import GFMError, one_line

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
    """Check the artifact at ``path``, or every artifact under a directory that is not one itself."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return [Verdict(path, "missing", ["no such file or directory"])]
    if path.name.endswith(_LEFTOVER_SUFFIXES):
        return [Verdict(path, "leftover", ["unfinished output of an interrupted writer; re-run its stage "
                                           "(generate resumes from it) or delete it"])]
    if path.is_symlink() and not path.exists():
        return [Verdict(path, "broken link", ["symbolic link to nothing"])]
    kind = _kind(path)
    if kind is None:
        if path.is_dir():
            found = [v for child in sorted(path.iterdir()) if not child.name.startswith(".")
                     for v in check_path(child)]
            return found or [Verdict(path, "directory", ["no artifact of this pipeline found here"])]
        return [Verdict(path, "file", [f"not an artifact of this pipeline (expected .zarr, .json, .csv, "
                                       f"a model directory or a report; got {path.suffix or 'no suffix'})"])]
    verdict = Verdict(path, kind)
    try:
        _CHECKS[kind](path, verdict)
    except GFMError as exc:
        verdict.problems.append(str(exc).removeprefix(f"{path}: "))
    except Exception as exc:  # noqa: BLE001 - a malformed artifact gets a verdict, never a traceback
        verdict.problems.append(f"malformed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return [verdict]


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
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (ValueError, OSError, AttributeError):
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise GFMError(f"not valid JSON ({type(exc).__name__})") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _runs_text(runs: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in runs[:limit])
    return f"{len(runs)} runs ({shown}{', ...' if len(runs) > limit else ''})"


# --- trajectory store --------------------------------------------------------------------------------
def _check_trajectory_store(path: Path, v: Verdict) -> None:
    import zarr

    from gfm.optimizers import STATE_NAMES
    from gfm.store import SCHEMA_VERSION

    attrs = _zarr_attrs(path)
    if not isinstance(attrs, dict):
        v.problems.append("zarr.json is not readable JSON")
        return
    if attrs.get("schema_version") != SCHEMA_VERSION:
        v.problems.append(f"schema_version {attrs.get('schema_version')!r}; this code reads {SCHEMA_VERSION}")
        return
    if attrs.get("complete") is not True:
        v.problems.append("no completion flag: the writer did not finish; re-run the generate stage")
        return
    sizes = {k: attrs.get(k) for k in ("n_runs", "n_records", "n_params", "block_runs")}
    bad = [k for k, n in sizes.items() if not _is_int(n) or n < 1]
    if bad:
        v.problems.append(f"attributes {', '.join(bad)} must be positive integers")
        return
    R, T, P = sizes["n_runs"], sizes["n_records"], sizes["n_params"]
    _check_layout(attrs.get("layout"), P, v)
    opt = (attrs.get("optimizer") or {}).get("name") if isinstance(attrs.get("optimizer"), dict) else None
    states = attrs.get("state_names")
    if opt not in STATE_NAMES:
        v.problems.append(f"optimizer.name {opt!r}; expected one of {', '.join(sorted(STATE_NAMES))}")
        return
    if states != list(STATE_NAMES[opt]):
        v.problems.append(f"state_names {states!r}; optimizer {opt} keeps {list(STATE_NAMES[opt])}")
        return
    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure to open is the verdict
        v.problems.append(f"not a readable Zarr group ({type(exc).__name__})")
        return
    expected = {"weights": ((R, T, P), "float32"), "loss": ((R, T), "float32"), "lr": ((R, T), "float32"),
                "final/weights": ((R, P), "float32"), "final/loss": ((R,), "float32"),
                "runs/dataset_seed": ((R,), "int64"), "runs/index": ((R,), "int64"),
                "runs/diverged": ((R,), "bool"),
                **{f"state/{s}": ((R, T, P), "float32") for s in states}}
    arrays = {}
    for name, (shape, dtype) in expected.items():
        try:
            arr = g[name]
        except (KeyError, ValueError):
            v.problems.append(f"array {name} is missing")
            continue
        if tuple(arr.shape) != shape or str(arr.dtype) != dtype:
            v.problems.append(f"array {name} is {tuple(arr.shape)} {arr.dtype}; the layout says {shape} {dtype}")
            continue
        arrays[name] = arr
    if v.problems:
        return
    try:
        diverged = arrays["runs/diverged"][:].astype(bool)
        for name in sorted(g["runs"].array_keys()):
            if not np.isfinite(np.asarray(g[f"runs/{name}"][:], dtype=np.float64)).all():
                v.problems.append(f"runs/{name} holds non-finite values")
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode
        v.problems.append(f"runs/*: chunk data unreadable ({type(exc).__name__})")
        return
    _check_trajectory_data(arrays, diverged, R, T, P, v)
    v.summary = (f"{R} runs x {T} records x {P} params, optimizer {opt}, {int(diverged.sum())} diverged, "
                 "every chunk read")


def _check_layout(layout: Any, n_params: int, v: Verdict) -> None:
    import re

    if not isinstance(layout, list) or not layout:
        v.problems.append("attribute layout must be a non-empty list")
        return
    offset = 0
    for i, spec in enumerate(layout):
        ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str)
              and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.]*", spec["name"]) is not None
              and isinstance(spec.get("shape"), list) and all(_is_int(n) and n > 0 for n in spec["shape"])
              and spec.get("offset") == offset)
        if not ok:
            v.problems.append(f"layout[{i}] must be {{name, shape, offset}} with offset {offset} (the sum of the "
                              f"sizes before it); got {spec!r}")
            return
        offset += math.prod(spec["shape"])
    if offset != n_params:
        v.problems.append(f"layout covers {offset} parameters; n_params is {n_params}")


def _check_trajectory_data(arrays: dict, diverged: np.ndarray, R: int, T: int, P: int, v: Verdict) -> None:
    """Decode every chunk, a bounded block of runs at a time, checking values as they stream past."""
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
        for name, a in (("weights", w), ("loss", loss), *states.items()):
            bad = ok & ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            nonfinite.setdefault(name, []).extend(runs[bad].tolist())
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
        if runs:
            v.problems.append(f"{name}: {_runs_text(np.asarray(runs))} differ from the last recorded step")


# --- forecast store ----------------------------------------------------------------------------------
def _check_forecast_store(path: Path, v: Verdict) -> None:
    import zarr

    from gfm.store import SCHEMA_VERSION

    attrs = _zarr_attrs(path)
    if attrs.get("schema_version") != SCHEMA_VERSION:
        v.problems.append(f"schema_version {attrs.get('schema_version')!r}; this code reads {SCHEMA_VERSION}")
        return
    if attrs.get("complete") is not True:
        v.problems.append("no completion flag: re-run the forecast stage")
        return
    horizons, k = attrs.get("horizons"), attrs.get("prefix_end")
    if not _is_int(k) or not isinstance(horizons, list) or not horizons or not all(_is_int(h) and h > k for h in horizons):
        v.problems.append(f"prefix_end {k!r} / horizons {horizons!r}: expected an integer and integers after it")
        return
    try:
        g = zarr.open_group(str(path), mode="r")
        w, idx, seeds = g["weights"], g["runs/store_index"], g["runs/dataset_seed"]
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"arrays weights, runs/store_index, runs/dataset_seed not all readable ({type(exc).__name__})")
        return
    if w.ndim != 3 or w.shape[1] != len(horizons) or idx.shape != (w.shape[0],) or seeds.shape != (w.shape[0],):
        v.problems.append(f"weights {tuple(w.shape)}, store_index {tuple(idx.shape)}: expected (run, {len(horizons)}, "
                          "param) and (run,)")
        return
    if attrs.get("n_runs") not in (None, w.shape[0]):
        v.problems.append(f"attribute n_runs {attrs.get('n_runs')} but {w.shape[0]} forecast runs")
    R, H, P = w.shape
    block = max(1, READ_BYTES // max(1, H * P * 4))
    n_nonfinite = 0
    try:
        index = idx[:]
        seeds[:]
        for start in range(0, R, block):
            part = w[start : start + block]
            n_nonfinite += int((~np.isfinite(part.reshape(part.shape[0], -1)).all(axis=1)).sum())
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"chunk data unreadable ({type(exc).__name__})")
        return
    if len(np.unique(index)) != len(index) or (index < 0).any():
        v.problems.append("runs/store_index must be distinct non-negative run ids")
    v.summary = (f"model {attrs.get('model')}, {R} runs x {H} horizons x {P} params"
                 + (f", {n_nonfinite} runs with non-finite forecasts (scored as such by evaluate)" if n_nonfinite else ""))


# --- models ------------------------------------------------------------------------------------------
def _check_model(path: Path, v: Verdict) -> None:
    import torch

    from gfm.forecasters import load_forecaster

    try:
        fc = load_forecaster(path)
    except GFMError as exc:
        v.problems.append(str(exc))
        return
    bad = [n for n, t in fc.state_tensors().items() if not torch.isfinite(t).all()]
    if bad:
        v.problems.append(f"tensors {', '.join(sorted(bad)[:5])} hold non-finite values")
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
        _check_model(path / seed, sub)
        v.problems += [f"{seed}/: {p}" for p in sub.problems]
        if sub.ok and json.loads((path / seed / "config.json").read_text()).get("kind") != summary["kind"]:
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
    from gfm.split import read_split

    datasets = read_split(path)
    n = 0
    for seed, e in datasets.items():
        parts = [set(e[p]) for p in ("train", "val", "test")]
        if sum(map(len, parts)) != len(set().union(*parts)):
            v.problems.append(f"datasets.{seed}: train, val and test share runs")
        if not set(e["diverged"]) <= set().union(*parts):
            v.problems.append(f"datasets.{seed}.diverged lists runs outside train/val/test")
        n += len(set().union(*parts))
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
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        v.problems.append(f"not a readable CSV ({type(exc).__name__})")
        return
    if not rows:
        v.problems.append("empty (no header)")
        return
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header) or not all(header):
        v.problems.append(f"header {header!r} must name distinct columns")
        return
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            v.problems.append(f"line {i}: {len(row)} fields; the header has {len(header)}")
            return
        for col, cell in zip(header, row, strict=True):
            if col in _TEXT_COLUMNS or cell == "":
                continue
            try:
                value = float(cell)
            except ValueError:
                v.problems.append(f"line {i}: column {col} holds {cell!r}; expected a number")
                return
            if col in _INT_COLUMNS and not (math.isfinite(value) and value == int(value)):
                v.problems.append(f"line {i}: column {col} holds {cell!r}; expected an integer")
                return
    v.summary = f"{len(body)} rows, columns {', '.join(header)}"


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
