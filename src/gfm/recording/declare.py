"""Declaring a store to the pipeline and taking it in (:mod:`gfm.config.declared`'s module docstring): ``gfm declare``
writes its task and store entries into a params file (:func:`declare`), ``gfm generate`` checks it and copies it
into the pipeline's own path in the generated stores' chunk layout (:func:`intake`), and ``gfm rechunk``
rewrites any finished store in a chunk layout (:func:`rechunk`).
"""

from __future__ import annotations

from pathlib import Path

from gfm.base.errors import shorten
from gfm.base.schema import is_name
from gfm.config.declared import DeclareError, read_declared, root_attrs, store_digest

__all__ = ["declare_entries", "declare", "default_task_name", "intake", "rechunk"]

_PART_BYTES = 256 << 20  # weights and state read and written at once by intake


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
    from gfm.store.scan import check_problem

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
    trajectory store (replaced) or nothing (gfm.artifacts.outputs).

    Returns:
        ``{"store", "runs", "records", "params"}`` of the written store.
    """
    import shutil

    import numpy as np
    import zarr

    from gfm.store.reader import open_trajectories
    from gfm.store.writer import create_trajectory_store

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
    from gfm.store.scan import check_problem

    problem = check_problem(tmp)
    if problem:
        raise DeclareError(f"{out}: the written store fails gfm check ({problem}); nothing was put in place")


def default_task_name(path: str | Path) -> str:
    """A task name for the store at ``path``: its recorded task name when that is a params name, else the
    directory's stem with every other character replaced by ``_``."""
    name = str(root_attrs(Path(path)).get("task_name") or "")
    if not is_name(name) or name in ("recorded", "imported"):
        stem = Path(path).name.removesuffix(".zarr")
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in stem).strip("_") or "recorded"
        name = name if name[:1].isalpha() else f"run_{name}"
    return name


def declare(path: str | Path, *, params_path: str | Path, task: str | None = None,
            models: list[str] | None = None, write: bool = False) -> str:
    """Declare the store at ``path`` in the params file: the task and store entries (gfm.config.declared's module
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

    from gfm.base.atomic import write_text_atomic

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
        from gfm.base.params_yaml import parse_yaml
        from gfm.config import parse_params

        parse_params(parse_yaml(buf.getvalue()), source=str(params_path), root=root)

    write_text_atomic(params_path, buf.getvalue(), check=loads)
    return f"{params_path}: tasks.{name} and stores.{key} declare {entry['path']} (sha256 {entry['sha256'][:12]}...)"
