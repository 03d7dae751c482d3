"""The structural check of a trajectory store (layout: :mod:`gfm.store`), shared by every stage that opens one
(:func:`gfm.store_reader.open_trajectories`) and by ``gfm check``: schema version, completion flag, attributes
(sizes, layout adding up to ``n_params``, optimizer state names, task record_every / steps, the ``network``
attribute where there is one: :func:`gfm.network.network_problem`), the optional evaluation arrays' shapes
against each other and the loss (:mod:`gfm.eval_data`), and every array's
``zarr.json`` against them: shape, dtype (float32 data), regular chunk grid, only codecs of
:data:`gfm.inputs.KNOWN_CODECS`. No data chunk is read. Files that are not the store's own
(:func:`gfm.inputs.foreign_files_in_listing`) are listed for ``gfm check``; they do not stop a stage (zarr
never reads them).

``gfm check`` (:func:`check_trajectory_store`) then decodes every chunk, a bounded block of runs at a time
(evaluation data included: finite inputs and targets, class labels >= 0).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gfm import verdict
from gfm.errors import StoreError, StoreIncompleteError, StoreSchemaError, shorten
from gfm.inputs import (
    MAX_JSON_BYTES,
    _is_int,
    _listed,
    array_meta_problems,
    chunk_file_limit,
    file_problem,
    foreign_files_in_listing,
    read_json,
    tree_problems,
)
from gfm.store_files import chunk_record_problems
from gfm.verdict import Verdict, foreign_line, runs_text

__all__ = ["StoreInspection", "inspect_trajectory_store", "first_problem", "check_trajectory_store",
           "check_problem"]

_RUN_FIELD_DTYPES = {"bool", "int32", "int64", "float32", "float64"}


@dataclass
class StoreInspection:
    """What :func:`inspect_trajectory_store` found: problems (empty = the stages may read it), the type of
    error the first problem raises, and what was read on the way."""

    path: Path
    problems: list[str] = field(default_factory=list)
    error: type[StoreError] = StoreSchemaError
    attrs: dict | None = None
    arrays: dict[str, dict] = field(default_factory=dict)  # relative path -> zarr.json of each own array
    foreign: list[str] = field(default_factory=list)  # files that are not the store's (not fatal)
    recorded: bool = True  # False: written before stores recorded their chunk files (attribute chunks)

    def raise_first(self) -> None:
        if self.problems:
            raise self.error(first_problem(self.path, self.problems))


def first_problem(path: Path, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more problems: gfm check {path})" if len(problems) > 1 else ""
    return f"{path}: {problems[0]}{more}"


def _layout_problems(layout: Any, n_params: int) -> list[str]:
    if not isinstance(layout, list) or not layout:
        return ["attribute layout must be a non-empty list"]
    offset, seen = 0, {}
    for i, spec in enumerate(layout):
        ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str)
              and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.]*", spec["name"]) is not None
              and isinstance(spec.get("shape"), list) and all(_is_int(n) and n > 0 for n in spec["shape"])
              and spec.get("offset") == offset)
        if not ok:
            return [f"layout[{i}] must be {{name, shape, offset}} with offset {offset} (the sum of the sizes "
                    f"before it); got {spec!r:.120}"]
        if spec["name"] in seen:  # load_into would put two tensors under one name
            return [f"layout[{i}] is named {spec['name']!r:.80} like layout[{seen[spec['name']]}]; tensor names "
                    "must be unique"]
        seen[spec["name"]] = i
        offset += math.prod(spec["shape"])
    return [] if offset == n_params else [f"layout covers {offset} parameters; n_params is {n_params}"]


def _attr_problems(attrs: dict) -> list[str]:
    from gfm.optimizers import STATE_NAMES

    sizes = {k: attrs.get(k) for k in ("n_runs", "n_records", "n_params", "block_runs")}
    bad = [k for k, n in sizes.items() if not _is_int(n) or n < 1]
    if bad:
        return [f"attributes {', '.join(bad)} must be positive integers"]
    problems = _layout_problems(attrs.get("layout"), sizes["n_params"])
    opt = attrs.get("optimizer")
    name = opt.get("name") if isinstance(opt, dict) else None
    if name not in STATE_NAMES:
        return [*problems, f"optimizer.name {name!r:.40}; expected one of {', '.join(sorted(STATE_NAMES))}"]
    if attrs.get("state_names") != list(STATE_NAMES[name]):
        problems.append(f"state_names {attrs.get('state_names')!r:.80}; optimizer {name} keeps {list(STATE_NAMES[name])}")
    task = attrs.get("task")
    if (not isinstance(task, dict) or not isinstance(task.get("kind"), str) or not _is_int(task.get("record_every"))
            or task["record_every"] < 1 or not _is_int(task.get("steps"))
            or task["steps"] != (sizes["n_records"] - 1) * task["record_every"]):
        problems.append(f"attribute task must hold kind, record_every >= 1 and steps = (n_records - 1) * "
                        f"record_every; got {task!r:.120}")
    if not isinstance(attrs.get("store"), str):
        problems.append("attribute store (the store's key) must be a string")
    if "network" in attrs:
        from gfm.network import network_problem

        bad = network_problem(attrs["network"])
        if bad:
            problems.append(f"attribute network {shorten(attrs['network'], 80)}: {bad}")
    return problems


def _run_block_problems(meta: dict, files: dict[str, int], n_runs: int) -> list[str]:
    """The declared run count against the weights' chunk files present. Record 0 of every run is its initial
    weights, never the fill value, so every block of runs along the run axis has at least one chunk file; a
    block with none means lost files or edited sizes (``n_runs`` raised in the metadata), and reading on would
    decode fill values for runs that are not there (minutes for a 1 KB edit)."""
    from gfm.store_files import is_chunk_key

    rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    enc = meta.get("chunk_key_encoding") or {}
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc.get("name", "default") == "default" else ".")
    head = "c" + sep if enc.get("name", "default") == "default" else ""
    present = set()
    for rel in files:
        key = rel.removeprefix("weights/")
        if key != rel and key != "zarr.json" and is_chunk_key(meta, key) and key.startswith(head):
            present.add(key[len(head):].split(sep, 1)[0])
    want = -(-n_runs // rows)
    if len(present) >= want:
        return []
    return [f"array weights: n_runs {n_runs:,} needs {want:,} blocks of {rows} runs, but chunk files hold "
            f"{len(present):,} (record 0 of every run is data, never the fill value): chunk files are missing or "
            "the declared sizes were edited; refused before reading"]


def inspect_trajectory_store(path: str | Path, *, tree: bool = True) -> StoreInspection:
    """Structural check of a trajectory store: no data chunk is read (see the module docstring).

    Args:
        path: the ``.zarr`` directory.
        tree: also walk its files (links, special files, chunk sizes, foreign files).
    """
    from gfm.store import SCHEMA_VERSION

    path = Path(path)
    out = StoreInspection(path)
    p = out.problems
    where = file_problem(path, want_dir=True)
    if where:
        p.append(f"store directory is {where}")
        return out
    files: dict[str, int] = {}
    if tree:
        unsafe, files = tree_problems(path)
        if unsafe:
            p += unsafe
            return out
    try:
        root = read_json(path / "zarr.json", limit=MAX_JSON_BYTES, root=path, error=StoreSchemaError)
    except StoreSchemaError as exc:
        p.append(f"zarr.json is not readable JSON ({str(exc).removeprefix(str(path / 'zarr.json') + ': ')})")
        return out
    attrs = root.get("attributes") if isinstance(root, dict) else None
    if not isinstance(root, dict) or root.get("node_type") != "group" or not isinstance(attrs, dict):
        p.append("zarr.json is not a Zarr group with attributes")
        return out
    out.attrs = attrs
    if attrs.get("schema_version") != SCHEMA_VERSION:
        p.append(f"schema_version {attrs.get('schema_version')!r:.40}; this code reads {SCHEMA_VERSION}")
        return out
    if attrs.get("complete") is not True:
        out.error = StoreIncompleteError
        p.append("store is not complete (no completion flag); re-run the generate stage")
        return out
    p += _attr_problems(attrs)
    if p:
        return out
    R, T, P = attrs["n_runs"], attrs["n_records"], attrs["n_params"]
    expected: dict[str, tuple[tuple[int, ...] | None, str | set[str]]] = {
        "weights": ((R, T, P), "float32"), "loss": ((R, T), "float32"), "lr": ((R, T), "float32"),
        "final/weights": ((R, P), "float32"), "final/loss": ((R,), "float32"),
        "runs/dataset_seed": ((R,), "int64"), "runs/index": ((R,), "int64"), "runs/diverged": ((R,), "bool"),
        **{f"state/{s}": ((R, T, P), "float32") for s in attrs["state_names"]}}
    if (path / "eval").exists() or (path / "eval").is_symlink():  # held-out data (gfm.eval_data): both arrays
        expected.update({"eval/x": (None, "float32"), "eval/y": (None, {"float32", "int64"})})
    runs_dir = path / "runs"
    if runs_dir.is_dir():
        for e in sorted(os.scandir(runs_dir), key=lambda e: e.name):
            if f"runs/{e.name}" not in expected and (runs_dir / e.name / "zarr.json").is_file():
                expected[f"runs/{e.name}"] = ((R,), _RUN_FIELD_DTYPES)
    for name, (shape, dtype) in expected.items():
        meta_path = path / name / "zarr.json"
        if not meta_path.is_file():
            p.append(f"array {name} is missing")
            continue
        try:
            meta = read_json(meta_path, limit=1 << 20, root=path, error=StoreSchemaError)
        except StoreSchemaError as exc:
            p.append(f"{name}/zarr.json: {str(exc).removeprefix(str(meta_path) + ': ')}")
            continue
        bad = array_meta_problems(meta, f"array {name}", shape, dtype)
        if bad:
            p += bad
        else:
            out.arrays[name] = meta
    if not p and "eval/x" in out.arrays:
        p += _eval_problems(out)
    for group in ("final", "runs", "state", "eval"):
        meta_path = path / group / "zarr.json"
        if meta_path.is_file():
            try:
                meta = read_json(meta_path, limit=1 << 20, root=path, error=StoreSchemaError)
            except StoreSchemaError as exc:
                p.append(f"{group}/zarr.json: {str(exc).removeprefix(str(meta_path) + ': ')}")
                continue
            if not isinstance(meta, dict) or meta.get("node_type") != "group":
                p.append(f"{group}/zarr.json is not a Zarr group")
    if tree and not p:
        big = []
        for name, meta in out.arrays.items():
            limit = chunk_file_limit(meta)
            big += [f"{rel} ({size} bytes > {limit})" for rel, size in files.items()
                    if rel.startswith(name + "/") and rel != f"{name}/zarr.json" and size > limit]
        if big:
            p.append(_listed(big, "chunk files larger than their chunk can encode to (refused unread)"))
        p += _run_block_problems(out.arrays["weights"], files, R)
        p += _record_problems(out, files)
        out.foreign = foreign_files_in_listing(files, {"", "final", "runs", "state", "eval"}, out.arrays)
    return out


def _eval_problems(out: StoreInspection) -> list[str]:
    """The evaluation arrays' shapes against each other, the run count and the store's loss."""
    from gfm.eval_data import layout_problems
    from gfm.network import network_of

    return layout_problems(out.arrays, out.attrs["n_runs"], network_of(out.attrs).loss)


def _record_problems(out: StoreInspection, files: dict[str, int]) -> list[str]:
    """The completeness record (attribute ``chunks``, :mod:`gfm.store`) against the chunk files present: a
    per-run field's fill value is 0, so without it a lost chunk file reads as "not diverged", run index 0. A
    store without the record predates it and is read as before (``gfm check`` says so in its summary)."""
    record = out.attrs.get("chunks")
    if record is None:
        out.recorded = False
        return []
    redo = "the store lost files or was edited; re-create it (gfm generate, gfm.record or gfm import)"
    if not isinstance(record, dict) or not all(isinstance(k, str) and _is_int(n) and n >= 0
                                               for k, n in record.items()):
        return [f"attribute chunks {shorten(record, 80)}: expected the chunk files of each array by name"]
    stray = [shorten(k, 60, quote=False) for k in sorted(set(record) - set(out.arrays))]
    if stray:
        return [_listed(stray, "attribute chunks records arrays the store does not hold") + f"; {redo}"]
    return chunk_record_problems(record, out.arrays, files, redo)


# --- gfm check: the structure as above, then every chunk decoded ------------------------------------------
def check_trajectory_store(path: Path, v: Verdict) -> None:
    import zarr

    # Structure first, with the stages' own rules (above): files, attributes, array metadata.
    inspection = inspect_trajectory_store(path)
    v.problems += inspection.problems
    if inspection.foreign:
        v.problems.append(foreign_line(inspection.foreign))
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
        fields = {name: g[f"runs/{name}"][:] for name in sorted(g["runs"].array_keys())}
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode
        v.problems.append(f"runs/*: chunk data unreadable ({type(exc).__name__})")
        return
    v.problems += _run_field_problems(fields, attrs)
    no_loss = attrs.get("loss_source") == "none"
    _check_trajectory_data(arrays, diverged, R, T, P, v, loss_recorded=not no_loss)
    has_eval = "eval/x" in inspection.arrays
    if has_eval:
        _check_eval_data(g, R, v)
    v.summary = (f"{R} runs x {T} records x {P} params, optimizer {opt}, {int(diverged.sum())} diverged, "
                 f"{'no loss recorded (loss_source none), ' if no_loss else ''}"
                 f"{'evaluation data ' + str(inspection.arrays['eval/x']['shape'][1]) + ' samples a run, ' if has_eval else ''}"
                 "every chunk read"
                 f"{'' if inspection.recorded else ', written before stores recorded their chunk files'}")


def _check_eval_data(g, R: int, v: Verdict) -> None:
    """Every chunk of ``eval/x`` and ``eval/y``, a bounded block of runs at a time: inputs and targets finite,
    class labels >= 0 (gfm.eval_data)."""
    from gfm.eval_data import value_problem

    x_arr, y_arr = g["eval/x"], g["eval/y"]
    block = max(1, verdict.READ_BYTES // max(1, math.prod(x_arr.shape[1:]) * 4))
    bad: list[int] = []
    for start in range(0, R, block):
        stop = min(start + block, R)
        try:
            x, y = x_arr[start:stop], y_arr[start:stop]
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode is the verdict
            v.problems.append(f"eval runs {start}..{stop - 1}: chunk data unreadable ({type(exc).__name__})")
            continue
        bad += [start + i for i in range(stop - start) if value_problem(x[i], y[i])]
    if bad:
        v.problems.append(f"eval/x, eval/y: {runs_text(np.asarray(bad))} hold non-finite inputs or targets, or "
                          "negative class labels")


def _run_field_problems(fields: dict[str, np.ndarray], attrs: dict) -> list[str]:
    """Per-run fields that cannot be what was recorded. Their arrays are filled with 0; a store written before
    the completeness record (:func:`_record_problems`) holds no file for a chunk equal to the fill value (a
    block of runs none of which diverged, a weight decay of 0), so a missing chunk there cannot be told from the
    files: it reads as 0, which is refused where 0 is never a recorded value: a dataset seed the store does not
    list (every writer lists its runs' seeds in ``dataset_seeds``) and a learning rate of 0."""
    problems = [f"runs/{name} holds non-finite values" for name, a in fields.items()
                if not np.isfinite(np.asarray(a, dtype=np.float64)).all()]
    seeds = attrs.get("dataset_seeds")
    if "dataset_seed" in fields and isinstance(seeds, list):
        stray = np.flatnonzero(~np.isin(fields["dataset_seed"], np.asarray(seeds, dtype=np.int64)))
        if stray.size:
            problems.append(f"runs/dataset_seed: {runs_text(stray)} hold seeds the store does not list in "
                            f"dataset_seeds {shorten(seeds, 60)} (a missing chunk reads as 0)")
    if "lr" in fields:
        zero = np.flatnonzero(np.asarray(fields["lr"]) == 0)
        if zero.size:
            problems.append(f"runs/lr: {runs_text(zero)} hold a learning rate of 0 (what a missing chunk reads as)")
    return problems


def _check_trajectory_data(arrays: dict, diverged: np.ndarray, R: int, T: int, P: int, v: Verdict, *,
                           loss_recorded: bool = True) -> None:
    """Decode every chunk, a bounded block of runs at a time, checking values as they stream past.

    ``loss_recorded`` False (attribute ``loss_source: none``: ``gfm import`` of weights without a loss) means
    the loss arrays hold NaN by design, the honest value for "not measured" (a made-up number would be
    scored by evaluate as if it were a loss); they must then hold nothing else."""
    n_state = sum(1 for n in arrays if n.startswith("state/"))
    block = max(1, verdict.READ_BYTES // (T * P * 4 * (1 + n_state)))
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
            v.problems.append(f"{name}: {runs_text(np.asarray(runs))} not flagged diverged hold {what}"
                              if name != "lr" else f"lr: {runs_text(np.asarray(runs))} hold {what} values")
    for name, runs in mismatch.items():
        if runs and name.startswith("loss"):
            v.problems.append(f"loss: {runs_text(np.asarray(runs))} hold values although the attributes say no "
                              "loss was recorded (loss_source none)")
        elif runs:
            v.problems.append(f"{name}: {runs_text(np.asarray(runs))} differ from the last recorded step")


def check_problem(path: Path) -> str | None:
    """The first problem ``gfm check`` finds in the trajectory store at ``path`` (every chunk decoded, a bounded
    block of runs at a time), as one line of at most 200 characters; None when it finds none. What the writers
    (gfm import, declared stores, gfm.record_runs) run on a store before they put it in place."""
    v = Verdict(path, "trajectory store")
    check_trajectory_store(path, v)
    return shorten(v.problems[0], 200, quote=False) if v.problems else None
