"""``gfm check`` of a forecast store (the forecast stage's output, written by :mod:`gfm.forecast`): kind, schema
version, completion flag, shapes against its horizons, the optional ``samples`` draws, store indices unique,
every chunk decoded and finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gfm import verdict
from gfm.errors import GFMError
from gfm.inputs import array_meta_problems, chunk_file_limit, foreign_files, read_json, tree_problems
from gfm.verdict import Verdict, foreign_line, is_int, runs_text, zarr_attrs

__all__ = ["check_forecast_store"]


def check_forecast_store(path: Path, v: Verdict) -> None:
    import zarr

    from gfm.store import SCHEMA_VERSION

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
    foreign = foreign_files(files, {"", "runs"}, metas)
    if foreign:
        v.problems.append(foreign_line(foreign))
    try:
        g = zarr.open_group(str(path), mode="r")
        w, idx, seeds = g["weights"], g["runs/store_index"], g["runs/dataset_seed"]
    except Exception as exc:  # noqa: BLE001
        v.problems.append(f"arrays weights, runs/store_index, runs/dataset_seed not all readable ({type(exc).__name__})")
        return
    R, H, P = w.shape
    block = max(1, verdict.READ_BYTES // max(1, H * P * 4))
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
        v.problems.append(f"weights: non-finite forecasts of {runs_text(index[nonfinite])} (store runs)")
    elif n_draws:
        try:
            draws = g["samples"][:]  # (run, draw, param): the final horizon only, small beside the weights
        except Exception as exc:  # noqa: BLE001
            v.problems.append(f"samples: chunk data unreadable ({type(exc).__name__})")
            return
        bad = ~np.isfinite(draws.reshape(len(draws), -1)).all(axis=1)
        if bad.any():
            v.problems.append(f"samples: non-finite draws of {runs_text(index[np.flatnonzero(bad)])} (store runs)")
    v.summary = (f"model {attrs.get('model')}, {R} runs x {H} horizons x {P} params"
                 + (f", {n_draws} draws per run" if n_draws else ""))
