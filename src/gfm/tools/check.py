"""``gfm check PATH``: is an artifact complete and sound? One verdict per artifact, one line per problem.

Recognised artifacts (anything else under a directory is walked into; an unrecognised file is a problem):

========================  ==========================================================================
trajectory store (.zarr)  schema version, completion flag, attributes (layout offsets add up to
                          n_params, state names of the optimizer), every array's shape and dtype,
                          every chunk decoded (read in bounded blocks), weights / loss / state finite
                          for runs not flagged diverged, ``final/*`` equal to the last step, lr finite
forecast store (.zarr)    kind, schema version, completion flag, shapes against its horizons,
                          float arrays filled with NaN, every chunk of every grid present and
                          counted (attribute ``chunks``), store indices unique, values finite
model directory           ``read_model`` accepts it (format, kind, config, fitted values as the
                          forecaster declares them, safetensors header: size, F32 only, plain tensor
                          names, tensors fit the model), tensors finite
trained-model directory   ``summary.json`` lists exactly the seed directories, each a sound model
split JSON                structure, decimal seeds, run ids, train / val / test disjoint
metrics JSON              keys, counts, horizons, reference losses finite, MSEs non-negative; a refused
                          model's entry holds its reason alone
model refusal JSON        model, kind and a one-line reason (a model that refused the store: gfm.artifacts.refusals)
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

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gfm.artifacts.inputs import file_problem, is_int, read_json, tree_problems
from gfm.artifacts.verdict import READ_BYTES, Verdict, artifact_kind, check_csv
from gfm.base.errors import GFMError, is_out_of_memory, out_of_memory_text
from gfm.stages.forecast_check import check_forecast_store
from gfm.store.scan import check_trajectory_store

__all__ = ["Verdict", "check_path", "READ_BYTES"]

_LEFTOVER_SUFFIXES = (".partial", ".tmp")


def check_path(path: str | Path) -> list[Verdict]:
    """Check the artifact at ``path``, or every artifact under a directory that is not one itself.

    Nothing is read that could not be part of an artifact: under a directory, a symbolic link whose target
    leaves it, and anywhere a FIFO, device or socket, is a problem named unread (a FIFO would block the
    check, ``/dev/zero`` never ends); every read is bounded (``gfm.artifacts.inputs``)."""
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
        kind = artifact_kind(path)
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
        if is_out_of_memory(exc):  # not malformed: too large for the memory left
            verdict.problems.append(out_of_memory_text(exc, f"checking this {kind}", "run gfm check where more "
                                                                                      "memory is free"))
            return [verdict]
        verdict.problems.append(f"malformed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    return [verdict]


def _inside(path: Path, root: Path) -> bool:
    target = os.path.realpath(path)
    return target == str(root) or target.startswith(str(root).rstrip(os.sep) + os.sep)


def _read_json(path: Path) -> Any:
    return read_json(path, error=GFMError)


# --- JSON and CSV ------------------------------------------------------------------------------------
def _check_json(path: Path, v: Verdict) -> None:
    data = _read_json(path)
    if not isinstance(data, dict):
        v.problems.append("expected a JSON object")
    elif "datasets" in data:
        v.kind = "split"
        _check_split(path, v)
    elif "models" in data and "counts" in data:
        v.kind = "metrics"
        _check_metrics(data, v)
    elif "pairs" in data:
        v.kind = "generalisation metrics"
        if not isinstance(data["pairs"], list) or not all(isinstance(p, dict) and "models" in p for p in data["pairs"]):
            v.problems.append("'pairs' must be a list of objects with 'models'")
    elif set(data) - {"gfm_output", "refused"} == {"store", "models"}:  # gfm_output: the writer's marker
        v.kind = "model index"
        if not isinstance(data["models"], dict) or not all(isinstance(k, str) for k in data["models"].values()):
            v.problems.append("'models' must map model names to forecaster kinds")
        elif not isinstance(data.get("refused", {}), dict) or not set(data.get("refused", {})) <= set(data["models"]) \
                or not all(isinstance(r, str) for r in data.get("refused", {}).values()):
            v.problems.append("'refused' must map listed model names to the reasons they refused the store")
    elif {"model", "kind", "refused"} <= set(data):
        from gfm.artifacts.refusals import refusal_problems

        v.kind = "model refusal"
        v.problems += refusal_problems(data)
        v.summary = "" if v.problems else f"{data['model']} ({data['kind']}) refused the store: {data['refused']}"
    else:
        v.problems.append(f"unrecognised JSON (keys {sorted(data)[:6]})")


def _check_split(path: Path, v: Verdict) -> None:
    from gfm.stages.split import read_split_structure, split_problems

    datasets = read_split_structure(path)
    v.problems += split_problems(datasets)  # the stages refuse the same (gfm.stages.split.read_split)
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
    if not isinstance(counts, dict) or not all(is_int(c) and c >= 0 for c in counts.values()):
        v.problems.append("counts: expected non-negative integers")
    hz = data.get("horizons")
    if not isinstance(hz, list) or not hz or not all(map(is_int, hz)) or hz != sorted(set(hz)):
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
        if "refused" in m:  # a model that refused this store: its reason and nothing else (gfm.metrics.model_entries)
            if set(m) != {"refused"} or not isinstance(m["refused"], str) or not m["refused"].strip():
                v.problems.append(f"models.{name}: a refusal holds only 'refused', a non-empty reason")
            continue
        mean_std(m.get("final_mse"), f"models.{name}.final_mse")
        for h, ms in (m.get("mse_by_horizon") or {}).items():
            mean_std(ms, f"models.{name}.mse_by_horizon.{h}.mse")
    refused = sum(isinstance(m, dict) and "refused" in m for m in models.values())
    v.summary = f"store {data.get('store')}, {len(models)} models" + (f" ({refused} refused)" if refused else "")


def _check_report(path: Path, v: Verdict) -> None:
    for name in ("summary.md", "summary.html"):
        p = path / name
        if not p.is_file() or p.stat().st_size == 0:
            v.problems.append(f"{name} missing or empty")
    v.summary = "summary.md, summary.html"


def _check_model_files(kind: str) -> Callable[[Path, Verdict], None]:
    """A validator of gfm.forecasters.model_files, imported when a model is found: it needs torch, which
    checking a store, a split or a CSV does not."""

    def check(path: Path, v: Verdict) -> None:
        from gfm.forecasters import model_files

        getattr(model_files, kind)(path, v)

    return check


# Each format's validator lives beside the code that reads and writes that format.
_CHECKS = {
    "trajectory store": check_trajectory_store,
    "forecast store": check_forecast_store,
    "model": _check_model_files("check_model_dir"),
    "trained models": _check_model_files("check_trained_models"),
    "safetensors": _check_model_files("check_safetensors_file"),
    "json": _check_json,
    "csv": check_csv,
    "report": _check_report,
}
