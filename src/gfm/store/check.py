"""The structural check of a trajectory store (layout: :mod:`gfm.store.arrays`), shared by every stage that opens
one (:func:`gfm.store.reader.open_trajectories`) and by ``gfm check``: schema version, completion flag, attributes
(sizes, layout adding up to ``n_params``, optimizer state names, task record_every / steps, the ``network``
attribute where there is one: :func:`gfm.core.network.network_problem`), the optional evaluation arrays' shapes
against each other and the loss (:mod:`gfm.store.eval_data`), and every array's
``zarr.json`` against them: shape, dtype (float32 data), regular chunk grid, only codecs of
:data:`gfm.artifacts.inputs.KNOWN_CODECS`. No data chunk is read. Files that are not the store's own
(:func:`gfm.artifacts.inputs.foreign_files_in_listing`) are listed for ``gfm check``; they do not stop a stage (zarr
never reads them).

``gfm check`` then decodes every chunk, a bounded block of runs at a time (:mod:`gfm.store.scan`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gfm.artifacts.inputs import (
    MAX_JSON_BYTES,
    array_meta_problems,
    chunk_file_limit,
    file_problem,
    foreign_files_in_listing,
    is_int,
    listed,
    read_json,
    tree_problems,
)
from gfm.artifacts.zarr_files import chunk_record_problems
from gfm.base.errors import StoreError, StoreIncompleteError, StoreSchemaError, shorten

__all__ = ["StoreInspection", "inspect_trajectory_store", "first_problem", "attr_problems"]

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
              and isinstance(spec.get("shape"), list) and all(is_int(n) and n > 0 for n in spec["shape"])
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


def attr_problems(attrs: dict) -> list[str]:
    from gfm.core.optimizers import STATE_NAMES

    sizes = {k: attrs.get(k) for k in ("n_runs", "n_records", "n_params", "block_runs")}
    bad = [k for k, n in sizes.items() if not is_int(n) or n < 1]
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
    if (not isinstance(task, dict) or not isinstance(task.get("kind"), str) or not is_int(task.get("record_every"))
            or task["record_every"] < 1 or not is_int(task.get("steps"))
            or task["steps"] != (sizes["n_records"] - 1) * task["record_every"]):
        problems.append(f"attribute task must hold kind, record_every >= 1 and steps = (n_records - 1) * "
                        f"record_every; got {task!r:.120}")
    if not isinstance(attrs.get("store"), str):
        problems.append("attribute store (the store's key) must be a string")
    if "network" in attrs:
        from gfm.core.network import network_problem

        bad = network_problem(attrs["network"])
        if bad:
            problems.append(f"attribute network {shorten(attrs['network'], 80)}: {bad}")
    return problems


def _run_block_problems(meta: dict, files: dict[str, int], n_runs: int) -> list[str]:
    """The declared run count against the weights' chunk files present. Record 0 of every run is its initial
    weights, never the fill value, so every block of runs along the run axis has at least one chunk file; a
    block with none means lost files or edited sizes (``n_runs`` raised in the metadata), and reading on would
    decode fill values for runs that are not there (minutes for a 1 KB edit)."""
    from gfm.artifacts.zarr_files import is_chunk_key

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
    from gfm.store.arrays import SCHEMA_VERSION

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
    p += attr_problems(attrs)
    if p:
        return out
    R, T, P = attrs["n_runs"], attrs["n_records"], attrs["n_params"]
    expected: dict[str, tuple[tuple[int, ...] | None, str | set[str]]] = {
        "weights": ((R, T, P), "float32"), "loss": ((R, T), "float32"), "lr": ((R, T), "float32"),
        "final/weights": ((R, P), "float32"), "final/loss": ((R,), "float32"),
        "runs/dataset_seed": ((R,), "int64"), "runs/index": ((R,), "int64"), "runs/diverged": ((R,), "bool"),
        **{f"state/{s}": ((R, T, P), "float32") for s in attrs["state_names"]}}
    if (path / "eval").exists() or (path / "eval").is_symlink():  # held-out data (gfm.store.eval_data): both arrays
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
            p.append(listed(big, "chunk files larger than their chunk can encode to (refused unread)"))
        p += _run_block_problems(out.arrays["weights"], files, R)
        p += _record_problems(out, files)
        out.foreign = foreign_files_in_listing(files, {"", "final", "runs", "state", "eval"}, out.arrays)
    return out


def _eval_problems(out: StoreInspection) -> list[str]:
    """The evaluation arrays' shapes against each other, the run count and the store's loss."""
    from gfm.core.network import network_of
    from gfm.store.eval_data import layout_problems

    return layout_problems(out.arrays, out.attrs["n_runs"], network_of(out.attrs).loss)


def _record_problems(out: StoreInspection, files: dict[str, int]) -> list[str]:
    """The completeness record (attribute ``chunks``, :mod:`gfm.store.arrays`) against the chunk files present: a
    per-run field's fill value is 0, so without it a lost chunk file reads as "not diverged", run index 0. A
    store without the record predates it and is read as before (``gfm check`` says so in its summary)."""
    record = out.attrs.get("chunks")
    if record is None:
        out.recorded = False
        return []
    redo = "the store lost files or was edited; re-create it (gfm generate, gfm.record or gfm import)"
    if not isinstance(record, dict) or not all(isinstance(k, str) and is_int(n) and n >= 0
                                               for k, n in record.items()):
        return [f"attribute chunks {shorten(record, 80)}: expected the chunk files of each array by name"]
    stray = [shorten(k, 60, quote=False) for k in sorted(set(record) - set(out.arrays))]
    if stray:
        return [listed(stray, "attribute chunks records arrays the store does not hold") + f"; {redo}"]
    return chunk_record_problems(record, out.arrays, files, redo)
