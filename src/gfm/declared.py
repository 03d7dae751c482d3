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

``gfm generate`` takes a declared store in (:func:`intake`): it is checked (``gfm check``'s rules), and copied
into the pipeline's own path in the generated stores' layout (``store.chunk_runs`` runs per chunk, so a stage
reads many runs per call, where the recorder wrote one run per chunk).

Torch-free: params loading calls :func:`source_problems`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfm.errors import GFMError, shorten
from gfm.schema import is_name

__all__ = ["DeclaredStore", "store_digest", "read_declared", "source_problems", "declare_entries", "declare",
           "default_task_name", "intake", "rechunk", "DeclareError"]

_SKIP = {".writer.lock"}  # a writer's lock file: not content (gfm.store_files counts it as the store's own)
_READ = 1 << 20
_PART_BYTES = 256 << 20  # weights and state read and written at once by intake


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


def _attrs(path: Path) -> dict[str, Any]:
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
    attrs = _attrs(path)
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


def declare_entries(path: str | Path, *, task: str, root: Path, models: list[str] | None = None
                    ) -> tuple[str, dict, str, dict]:
    """The params entries that declare the store at ``path``: ``(task name, task entry, store key, store
    entry)``; the path is written relative to ``root`` when it lies below it."""
    path = Path(path)
    facts = read_declared(path)
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(path.resolve())
    entry = {"kind": "recorded", "path": rel, "sha256": store_digest(path)}
    store = {"task": task, "optimizer": {"name": facts.optimizer}}
    if models is not None:
        store["models"] = list(models)
    return task, entry, f"{task}-{facts.optimizer}", store


def intake(params, key: str, *, out: Path) -> dict:
    """Take the declared store of ``key`` in: check it (``gfm check``'s rules, and its hash against params),
    then write it at ``out`` in the generated stores' chunk layout (``params.store``), with its own
    attributes, its held-out evaluation data, and where it came from (attribute ``declared``).

    Returns:
        ``{"store", "runs", "records", "params", "source"}`` of the written store.
    """
    from gfm.store_check import check_problem

    spec, task_cfg = params.lookup_store(key)
    if task_cfg.kind != "recorded":
        raise DeclareError(f"stores.{key}: task {spec.task!r} is generated, not declared")
    src = Path(task_cfg.source)
    if src.resolve() == Path(out).resolve():
        raise DeclareError(f"tasks.{spec.task}.path: {task_cfg.path} is the pipeline's own path for this store; "
                           "keep recorded stores elsewhere (e.g. data/recorded/)")
    if store_digest(src) != task_cfg.sha256:
        raise DeclareError(f"{src}: changed since it was declared; `gfm declare {task_cfg.path} --task {spec.task} "
                           "--write` accepts it")
    problem = check_problem(src)
    if problem:
        raise DeclareError(f"{src}: fails gfm check ({problem})")
    done = rechunk(src, out, chunks=params.store,
                   attrs={"declared": {"path": task_cfg.path, "sha256": task_cfg.sha256, "task": spec.task},
                          "store": key})
    return {**done, "source": task_cfg.path}


def rechunk(src: str | Path, out: str | Path, *, chunks, attrs: dict | None = None) -> dict:
    """Write the finished trajectory store ``src`` at ``out`` in the chunk layout ``chunks`` (a
    :class:`~gfm.config.StoreLayoutConfig`: ``chunk_runs`` runs per chunk, ``shard_runs`` per write block), with
    every array's values, its root attributes (``attrs`` added) and its held-out evaluation data; checked with
    ``gfm check``'s rules before it is put in place, and nothing left behind on failure. ``out`` may hold only a
    trajectory store (replaced) or nothing (gfm.outputs).

    Returns:
        ``{"store", "runs", "records", "params"}`` of the written store.
    """
    import shutil

    import numpy as np
    import zarr

    from gfm.store import create_trajectory_store
    from gfm.store_reader import open_trajectories

    src, out = Path(src), Path(out)
    if src.resolve() == out.resolve():
        raise DeclareError(f"{out}: is the store to rewrite; write it elsewhere")
    ts = open_trajectories(src)
    keep = {k: v for k, v in ts.attrs.items()
            if k not in ("schema_version", "complete", "layout", "n_runs", "n_records", "n_params", "block_runs",
                         "chunks", "gfm_output")}
    src_group = zarr.open_group(src, mode="r")
    run_fields = {name: np.dtype(arr.dtype) for name, arr in src_group["runs"].arrays()}
    writer = create_trajectory_store(out, n_runs=ts.n_runs, n_records=ts.n_records, layout=ts.layout,
                                     state_names=ts.state_names, run_fields=run_fields, chunks=chunks,
                                     attrs={**keep, **(attrs or {})}, resume=False)
    extra = sorted(name for name, _ in src_group["eval"].arrays()) if "eval" in src_group else []
    try:
        for name in extra:  # the held-out data, one row per run like every per-run array
            arr = src_group[f"eval/{name}"]
            writer.group.create_array(f"eval/{name}", shape=arr.shape, dtype=arr.dtype,
                                      chunks=(min(writer.block_runs, arr.shape[0]), *arr.shape[1:]),
                                      fill_value=0, dimension_names=arr.metadata.dimension_names)
        per_run = ts.n_records * ts.n_params * 4 * (1 + len(ts.state_names))
        part = max(1, _PART_BYTES // (per_run * chunks.chunk_runs)) * chunks.chunk_runs
        for b in range(writer.n_blocks):  # a bounded part of a block at a time, whole chunks of runs each
            rows = writer.block_range(b)
            for start in range(rows.start, rows.stop, part):
                sl = slice(start, min(start + part, rows.stop))
                arrays = {"weights": ts.weights[sl], "loss": ts.loss[sl], "lr": ts.lr[sl],
                          **{f"state/{s}": ts.state(s)[sl] for s in ts.state_names},
                          "final/weights": src_group["final/weights"][sl], "final/loss": src_group["final/loss"][sl],
                          **{f"runs/{n}": src_group[f"runs/{n}"][sl] for n in run_fields},
                          **{f"eval/{n}": src_group[f"eval/{n}"][sl] for n in extra}}
                writer.write_rows(start, arrays)
            writer.mark_done(b)
        writer.finish(verify=lambda tmp: _verify(tmp, out))
    except BaseException:
        writer.release()
        shutil.rmtree(writer.tmp, ignore_errors=True)
        raise
    return {"store": str(out), "runs": ts.n_runs, "records": ts.n_records, "params": ts.n_params}


def _verify(tmp: Path, out: Path) -> None:
    from gfm.store_check import check_problem

    problem = check_problem(tmp)
    if problem:
        raise DeclareError(f"{out}: the written store fails gfm check ({problem}); nothing was put in place")


def default_task_name(path: str | Path) -> str:
    """A task name for the store at ``path``: its recorded task name when that is a params name, else the
    directory's stem with every other character replaced by ``_``."""
    name = str(_attrs(Path(path)).get("task_name") or "")
    if not is_name(name) or name in ("recorded", "imported"):
        stem = Path(path).name.removesuffix(".zarr")
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in stem).strip("_") or "recorded"
        name = name if name[:1].isalpha() else f"run_{name}"
    return name


def declare(path: str | Path, *, params_path: str | Path, task: str | None = None,
            models: list[str] | None = None, write: bool = False) -> str:
    """Declare the store at ``path`` in the params file: the task and store entries (gfm.declared's module
    docstring), added, or updated where the task already declares a store (a new hash or path).

    With ``write``, params_path is rewritten in place (all at once; its comments and order kept) and then
    loaded as every stage loads it, so a declaration the params refuse is never left behind. Without it, the
    entries are returned as YAML to paste and nothing is written.

    Raises:
        DeclareError: the store is not declarable, or the name is taken by a generated task or another store.
    """
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    from gfm.atomic import write_text_atomic

    params_path = Path(params_path)
    root = params_path.resolve().parent
    task = task or default_task_name(path)
    if not is_name(task):
        raise DeclareError(f"--task {task!r}: task names use ASCII letters, digits and '_' and start with a letter")
    name, entry, key, store = declare_entries(path, task=task, root=root, models=models)
    editor = YAML(typ="rt")  # ruamel's round trip: keeps comments and order; builds plain data, never objects
    editor.preserve_quotes = True
    editor.width = 4096  # one line per entry: a 64-digit hash is never folded

    def flow(d: dict) -> CommentedMap:
        m = CommentedMap(d)
        m.fa.set_flow_style()
        return m

    if not write:
        buf = io.StringIO()
        editor.dump({"tasks": {name: flow(entry)}, "stores": {key: flow({**store, "optimizer": flow(store["optimizer"])})}},
                  buf)
        return buf.getvalue()
    try:
        text = params_path.read_text()
    except OSError as exc:
        raise DeclareError(f"{params_path}: cannot read ({shorten(exc.strerror or exc, 80, quote=False)})") from None
    doc = editor.load(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), dict) or not isinstance(doc.get("stores"), dict):
        raise DeclareError(f"{params_path}: expected a params file with `tasks:` and `stores:` mappings")
    old = doc["tasks"].get(name)
    if old is not None and (not isinstance(old, dict) or old.get("kind") != "recorded"):
        raise DeclareError(f"tasks.{name}: already a generated task; choose another name with --task")
    for k, st in doc["stores"].items():
        if isinstance(st, dict) and st.get("task") == name and k != key:
            raise DeclareError(f"stores.{k}: already declares task {name!r} with another optimizer; choose "
                               "another name with --task")
    if old is None:
        doc["tasks"][name] = flow(entry)
    else:
        old["path"], old["sha256"] = entry["path"], entry["sha256"]
    if key not in doc["stores"]:
        doc["stores"][key] = flow({**store, "optimizer": flow(store["optimizer"])})
    elif models is not None:
        doc["stores"][key]["models"] = list(models)
    buf = io.StringIO()
    editor.dump(doc, buf)

    def loads() -> None:  # the new text as every stage will read it: refused before it replaces the file
        from gfm.config import parse_params
        from gfm.params_yaml import parse_yaml

        parse_params(parse_yaml(buf.getvalue()), source=str(params_path), root=root)

    write_text_atomic(params_path, buf.getvalue(), check=loads)
    return f"{params_path}: tasks.{name} and stores.{key} declare {entry['path']} (sha256 {entry['sha256'][:12]}...)"
