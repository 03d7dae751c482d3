"""Declared stores: a store recorded from a user's own training loop (``gfm.record``) or imported (``gfm
import``), named in params by its path and run through the pipeline like a generated store.

A declared store is a task of kind ``recorded`` (``tasks.<name>: {kind: recorded, path, sha256}``) with one
store entry that names its optimizer (``stores.<name>-<optimizer>: {task: <name>, optimizer: {name: ...}}``).
Everything else is read from the store: its network and activation, loss, optimizer hyper-parameters,
recording interval, runs and dataset seeds. ``gfm declare`` writes the two entries.

The content hash in params is how both drivers see a changed store: DVC re-runs the store's stages when the
params entry changes, and every command that loads params refuses a store whose content no longer matches
the hash it was declared with (:func:`source_problems`), so a re-recorded store is never forecast from stale
outputs. Snakemake also has the store as an input of its ``generate`` job.

``gfm generate`` takes a declared store in (:func:`gfm.recording.declare.intake`): it is checked (``gfm check``'s rules),
and copied into the pipeline's own path in the generated stores' layout (``store.chunk_runs`` runs per chunk,
so a stage reads many runs per call, where the recorder wrote one run per chunk).

This module reads what params needs of a declared store; :mod:`gfm.recording.declare` declares one and takes it in.
Torch-free and light: params loading calls :func:`source_problems`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfm.artifacts.zarr_files import LOCK_FILE
from gfm.base.errors import GFMError, shorten

__all__ = ["DeclaredStore", "store_digest", "root_attrs", "read_declared", "source_problems", "DeclareError"]

_SKIP = {LOCK_FILE}  # a writer's lock file: not content (gfm.artifacts.zarr_files counts it as the store's own)
_READ = 1 << 20
class DeclareError(GFMError, ValueError):
    """A declared store is missing, unfinished or not what its params entry says."""


@dataclass(frozen=True)
class DeclaredStore:
    """What params needs to know of a declared store, read from its attributes and run fields."""

    path: Path
    optimizer: str
    n_runs: int
    n_records: int
    record_every: int
    n_params: int
    runs_per_seed: dict[int, int]
    source: str

    @property
    def steps(self) -> int:
        return (self.n_records - 1) * self.record_every


def store_digest(path: str | Path) -> str:
    """SHA-256 of a store directory's content: every file's relative path, size and bytes, in sorted path
    order (the writer's lock file excepted). Equal stores hash equal on any machine."""
    root = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _SKIP)
    for f in files:
        rel = f.relative_to(root).as_posix().encode()
        h.update(len(rel).to_bytes(8, "little") + rel + f.stat().st_size.to_bytes(8, "little"))
        with f.open("rb") as fh:
            while chunk := fh.read(_READ):
                h.update(chunk)
    return h.hexdigest()


def root_attrs(path: Path) -> dict[str, Any]:
    """The root attributes of the store at ``path``, read from its zarr.json (no zarr, no check)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        raise DeclareError(f"{path}: not a trajectory store (no zarr.json); record one with gfm.record or "
                           "gfm import")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise DeclareError(f"{path}/zarr.json: unreadable ({shorten(exc, 100, quote=False)})") from None
    attrs = data.get("attributes") if isinstance(data, dict) else None
    if not isinstance(attrs, dict):
        raise DeclareError(f"{path}: not a trajectory store (its zarr.json has no attributes)")
    return attrs


def read_declared(path: str | Path) -> DeclaredStore:
    """The facts params needs of the store at ``path``.

    Raises:
        DeclareError: no store there, an unfinished one, or one without the attributes a trajectory store has.
    """
    path = Path(path)
    if not path.is_dir():
        raise DeclareError(f"{path}: no store there; record one with gfm.record or gfm import, then "
                           f"`gfm declare {path}`")
    attrs = root_attrs(path)
    if attrs.get("complete") is not True:
        raise DeclareError(f"{path}: an unfinished store (its writer did not finish); record it again")
    try:
        task, opt = attrs["task"], attrs["optimizer"]
        facts = dict(optimizer=str(opt["name"]), n_runs=int(attrs["n_runs"]), n_records=int(attrs["n_records"]),
                     record_every=int(task["record_every"]), n_params=int(attrs["n_params"]),
                     source=str(attrs.get("source", task.get("kind", "?"))))
    except (KeyError, TypeError, ValueError) as exc:
        raise DeclareError(f"{path}: not a trajectory store (attribute {shorten(exc, 40, quote=False)} missing or "
                           "malformed)") from None
    if min(facts["n_runs"], facts["n_records"], facts["record_every"], facts["n_params"]) < 1:
        raise DeclareError(f"{path}: a store of {facts['n_runs']} runs x {facts['n_records']} records x "
                           f"{facts['n_params']} params; nothing to forecast")
    import numpy as np
    import zarr

    try:
        seeds = zarr.open_array(path / "runs" / "dataset_seed", mode="r")[:]
    except Exception as exc:  # noqa: BLE001 - any unreadable array is the same problem for the user
        raise DeclareError(f"{path}: runs/dataset_seed unreadable ({shorten(exc, 100, quote=False)})") from None
    values, counts = np.unique(np.asarray(seeds), return_counts=True)
    return DeclaredStore(path=path, runs_per_seed={int(v): int(c) for v, c in zip(values, counts)}, **facts)


def source_problems(data: Mapping[str, Any], root: Path) -> list[str]:
    """Read every declared store of a parsed params mapping, fill in what params takes from it (in place:
    ``runs_per_dataset``, ``steps``, ``record_every``, ``n_layout_params`` of its task), and return one line per
    problem: a store that is missing, unfinished or changed since it was declared, a key the store decides
    written in params, a store entry whose optimizer is not the store's."""
    tasks, stores = data.get("tasks"), data.get("stores")
    if not isinstance(tasks, dict):
        return []
    problems = []
    for name, entry in tasks.items():
        if not isinstance(entry, dict) or entry.get("kind") != "recorded":
            continue
        where = f"tasks.{shorten(name, 60, quote=False)}"
        for key in ("runs_per_dataset", "steps", "record_every", "n_layout_params", "root", "batch_size",
                    "n_samples", "init"):
            if key in entry:
                problems.append(f"{where}.{key}: a recorded task takes it from its store; remove it")
        rel = entry.get("path")
        if not isinstance(rel, str) or not rel:
            continue  # reported by the loader (missing or not a string)
        path = Path(rel) if os.path.isabs(rel) else root / rel
        try:
            facts = read_declared(path)
        except DeclareError as exc:
            problems.append(f"{where}.path: {exc}")
            continue
        digest = store_digest(path)
        if isinstance(entry.get("sha256"), str) and entry["sha256"] != digest:
            problems.append(f"{where}.sha256: the store at {rel} changed since it was declared (content hash "
                            f"{digest[:12]}..., params say {shorten(entry['sha256'], 16, quote=False)}); check it, "
                            f"then `gfm declare {rel} --task {name} --write` accepts it")
        entry.update(runs_per_dataset=min(facts.runs_per_seed.values()), steps=facts.steps,
                     record_every=facts.record_every, n_layout_params=facts.n_params, root=str(root))
        for key, st in (stores or {}).items():
            opt = st.get("optimizer") if isinstance(st, dict) else None
            if isinstance(st, dict) and st.get("task") == name and isinstance(opt, dict) \
                    and opt.get("name") != facts.optimizer:
                problems.append(f"stores.{shorten(key, 60, quote=False)}.optimizer.name: got "
                                f"{shorten(opt.get('name'), 20)}; the store at {rel} holds {facts.optimizer} runs")
    return problems
