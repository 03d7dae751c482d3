"""``gfm check`` of a forecast store (the forecast stage's output, written by :mod:`gfm.stages.forecast`): kind, schema
version, completion flag, shapes against its horizons, the optional ``samples`` draws, the float arrays filled
with NaN, every chunk of every array's grid present and counted in the ``chunks`` attribute, store indices
unique, every chunk decoded, forecasts finite, and the runs with non-finite draws as many as the store records
(attribute ``nonfinite_draw_runs``: draws may be non-finite, point forecasts may not).

The same rules gate every reader: :func:`gfm.stages.forecast.open_forecasts` (evaluate, generalize, the Python API)
and the forecast stage itself, which checks what it wrote before the store is renamed into place
(:func:`verify_forecast_store`). A chunk file that is missing would otherwise read as the array's fill value,
which zarr returns without complaint: numbers nobody forecast."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gfm.artifacts import verdict
from gfm.artifacts.inputs import (
    array_meta_problems,
    chunk_file_limit,
    foreign_files_in_listing,
    is_int,
    read_json,
    tree_problems,
)
from gfm.artifacts.verdict import Verdict, foreign_line, runs_text, zarr_attrs
from gfm.artifacts.zarr_files import chunk_grid, missing_chunks
from gfm.base.errors import GFMError, StoreIncompleteError, StoreSchemaError, shorten

__all__ = ["check_forecast_store", "verify_forecast_store", "chunk_record"]

FLOAT_ARRAYS = ("weights", "samples")  # filled with NaN: a chunk that is not there never reads as a number


def chunk_record(group) -> dict[str, int]:
    """The completeness record the forecast stage writes (attribute ``chunks``): how many chunk files each
    array of the open Zarr ``group`` holds, which is every chunk of its grid (the stage writes empty chunks
    too)."""
    names = ("weights", "runs/store_index", "runs/dataset_seed", "samples")
    return {name: int(group[name].nchunks) for name in names if name in group}


def verify_forecast_store(path: Path) -> None:
    """Refuse (one line, :class:`~gfm.base.errors.StoreError`) a forecast store that ``gfm check`` would not call ok:
    the gate of every reader and of the writer before it declares a store complete."""
    v = Verdict(path, "forecast store")
    try:
        check_forecast_store(path, v)
    except GFMError:
        raise
    except Exception as exc:  # noqa: BLE001 - what gfm check calls malformed, a reader refuses in one line
        v.problems.append(f"malformed ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})")
    if v.problems:
        more = f" (and {len(v.problems) - 1} more problems: gfm check {path})" if len(v.problems) > 1 else ""
        error = StoreIncompleteError if v.problems[0].startswith("no completion flag") else StoreSchemaError
        raise error(f"{path}: {v.problems[0]}{more}")


def _completeness_problems(attrs: dict, metas: dict[str, dict], files: dict[str, int]) -> list[str]:
    """NaN fill of the float arrays, every chunk of every grid present, the ``chunks`` record agreeing."""
    problems = []
    for name in FLOAT_ARRAYS:
        if name in metas and metas[name].get("fill_value") != "NaN":
            problems.append(f"array {name}: fill_value {metas[name].get('fill_value')!r:.40}; a forecast store's "
                            "float arrays are filled with NaN, so a missing chunk cannot read as numbers "
                            "(written by an older gfm?); re-run the forecast stage")
    record = attrs.get("chunks")
    if not isinstance(record, dict):
        problems.append("no completeness record (attribute chunks: chunk files per array; written by an older "
                        "gfm or not by the forecast stage); re-run the forecast stage")
    for name, meta in metas.items():
        n, missing = missing_chunks(name, meta, files)
        if missing:
            problems.append(f"array {name}: chunk{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
                            f"(of {n} in its grid; a missing chunk would read as its fill value); re-run the "
                            "forecast stage")
        elif isinstance(record, dict) and record.get(name) != n:
            problems.append(f"array {name}: attribute chunks records {shorten(record.get(name), 40)} chunk "
                            f"files, its grid has {n}")
    return problems


def _nonfinite_chunks(values: np.ndarray, start: int, meta: dict, limit: int = 5) -> list[str]:
    """Keys of the chunks holding the non-finite values of rows ``start..`` of an array (first ``limit``)."""
    _, key = chunk_grid(meta)
    chunk = np.asarray(meta["chunk_grid"]["configuration"]["chunk_shape"])
    at = np.argwhere(~np.isfinite(values))
    if not at.size:
        return []
    at[:, 0] += start
    return [key(tuple(int(c) for c in row)) for row in np.unique(at // chunk, axis=0)[:limit]]


def check_forecast_store(path: Path, v: Verdict) -> None:
    import zarr

    from gfm.store.arrays import SCHEMA_VERSION

    attrs = zarr_attrs(path)
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
    if not is_int(k) or not isinstance(horizons, list) or not horizons or not all(is_int(h) and h > k for h in horizons):
        v.problems.append(f"prefix_end {k!r:.40} / horizons {horizons!r:.80}: expected an integer and integers after it")
        return
    metas = {}
    n_draws = attrs.get("samples", 0)
    if not is_int(n_draws) or n_draws < 0:
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
    foreign = foreign_files_in_listing(files, {"", "runs"}, metas)
    if foreign:
        v.problems.append(foreign_line(foreign))
    incomplete = _completeness_problems(attrs, metas, files)
    if incomplete:
        v.problems += incomplete
        return
    try:
        g = zarr.open_group(str(path), mode="r")
        w, idx, seeds = g["weights"], g["runs/store_index"], g["runs/dataset_seed"]
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"arrays weights, runs/store_index, runs/dataset_seed not all readable ({type(exc).__name__})")
        return
    R, H, P = w.shape
    block = max(1, verdict.READ_BYTES // max(1, H * P * 4))
    nonfinite: list[int] = []
    bad_chunks: list[str] = []
    try:
        index = idx[:]
        seeds[:]
        for start in range(0, R, block):
            part = w[start : start + block]
            bad_rows = ~np.isfinite(part.reshape(part.shape[0], -1)).all(axis=1)
            nonfinite += (np.flatnonzero(bad_rows) + start).tolist()
            if bad_rows.any() and len(bad_chunks) < 5:
                bad_chunks += _nonfinite_chunks(part, start, metas["weights"], 5 - len(bad_chunks))
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"chunk data unreadable ({type(exc).__name__})")
        return
    if len(np.unique(index)) != len(index) or (index < 0).any():
        v.problems.append("runs/store_index must be distinct non-negative run ids")
    elif nonfinite:  # the forecast stage refuses to write these; a store holding them is not its output
        v.problems.append(f"weights: non-finite forecasts of {runs_text(index[nonfinite])} (store runs) in chunk"
                          f"{'s' if len(bad_chunks) > 1 else ''} {', '.join(dict.fromkeys(bad_chunks))}")
    elif n_draws:
        _check_draws(g, attrs, index, metas["samples"], v)
    v.summary = (f"model {attrs.get('model')}, {R} runs x {H} horizons x {P} params"
                 + (f", {n_draws} draws per run" if n_draws else "")
                 + (f" ({attrs['nonfinite_draw_runs']} runs with non-finite draws)"
                    if n_draws and attrs.get("nonfinite_draw_runs") else ""))


def _check_draws(g, attrs: dict, index: np.ndarray, meta: dict, v: Verdict) -> None:
    """Draws may be non-finite (a sampled trajectory can blow up where the point forecast does not), but only as
    many runs as the writer counted in ``nonfinite_draw_runs`` (absent: 0, the stores of a gfm that refused
    them): a draw that became NaN or Inf afterwards is named with its chunk."""
    recorded = attrs.get("nonfinite_draw_runs", 0)
    if not is_int(recorded) or not 0 <= recorded <= len(index):
        v.problems.append(f"attribute nonfinite_draw_runs {recorded!r:.40}: expected the number of runs with "
                          f"non-finite draws (0..{len(index)})")
        return
    try:
        draws = g["samples"][:]  # (run, draw, param): the final horizon only, small beside the weights
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"samples: chunk data unreadable ({type(exc).__name__})")
        return
    bad = ~np.isfinite(draws.reshape(len(draws), -1)).all(axis=1)
    if int(bad.sum()) != recorded:
        chunks = _nonfinite_chunks(draws, 0, meta)
        where = f" in chunk{'s' if len(chunks) > 1 else ''} {', '.join(chunks)}" if chunks else ""
        v.problems.append(f"samples: non-finite draws of {runs_text(index[np.flatnonzero(bad)])} (store runs)"
                          f"{where}; attribute nonfinite_draw_runs records {recorded} such runs")
