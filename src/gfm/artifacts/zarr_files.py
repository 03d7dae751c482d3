"""Which files under a trajectory store are its own: the Zarr metadata and chunk keys of its arrays, and the
writer's bookkeeping (the lock file, the done-markers of finished blocks) inside a ``<store>.partial``."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["DONE_DIR", "LOCK_FILE", "SNAKEMAKE_STAMP", "partial_path", "foreign_files_on_disk", "is_chunk_key",
           "chunk_grid", "present_chunks", "missing_chunks", "chunk_counts", "chunk_record_problems"]

DONE_DIR = ".blocks_done"  # marker files of finished blocks inside a partial store
LOCK_FILE = ".writer.lock"  # inside the partial store; a POSIX lock on it marks the live writer
SNAKEMAKE_STAMP = ".snakemake_timestamp"  # Snakemake touches it inside directory() outputs


def partial_path(path: str | Path) -> Path:
    """Where a store is built before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def is_chunk_key(meta: dict, key: str) -> bool:
    """``key`` (relative to an array's directory) names a chunk (or shard) inside the array's chunk grid;
    True for any key of a grid or key encoding this code does not model (never discard what is not understood).
    Canonical indices only (ASCII digits, no leading zeros): zarr never reads ``c/01``, so it is not the array's."""
    try:
        shape, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        name = enc["name"]
        sep = (enc.get("configuration") or {}).get("separator", "/" if name == "default" else ".")
        if meta["chunk_grid"]["name"] != "regular" or name not in ("default", "v2") or len(chunk) != len(shape):
            return True
        grid = [math.ceil(s / c) for s, c in zip(shape, chunk)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError):
        return True
    if name == "default":
        if not shape:
            return key == "c"
        if not key.startswith("c" + sep):
            return False
        key = key[2:]
    elif not shape:
        return key == "0"
    parts = key.split(sep)
    return len(parts) == len(grid) and all(
        p.isascii() and p.isdigit() and str(int(p)) == p and int(p) < n for p, n in zip(parts, grid))


# --- completeness records (attribute ``chunks``) -----------------------------------------------------------
# zarr writes no file for a chunk equal to the array's fill value and reads a missing chunk as that value, so a
# deleted chunk file reads as zeros (or NaN) without complaint. A store that records how many chunk files each
# array holds lets a reader tell a lost file from a never-written one by listing files, reading no chunk.
def chunk_grid(meta: dict) -> tuple[list[int], Callable[[tuple[int, ...]], str]]:
    """Chunks per dimension of a checked array's ``zarr.json``, and the file key of a chunk's coordinates."""
    shape, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
    enc = meta["chunk_key_encoding"]
    sep = (enc.get("configuration") or {}).get("separator", "/" if enc["name"] == "default" else ".")
    prefix = ("c" + sep) if enc["name"] == "default" else ""
    grid = [math.ceil(s / c) for s, c in zip(shape, chunk, strict=True)]
    if not shape:
        return grid, lambda _: "c" if enc["name"] == "default" else "0"
    return grid, lambda coords: prefix + sep.join(map(str, coords))


def present_chunks(name: str, meta: dict, files: dict[str, int] | list[str]) -> set[str]:
    """Keys of the chunk files of array ``name`` among ``files`` (paths relative to the store root)."""
    head = name + "/"
    return {rel[len(head):] for rel in files
            if rel.startswith(head) and rel != head + "zarr.json" and is_chunk_key(meta, rel[len(head):])}


def missing_chunks(name: str, meta: dict, files: dict[str, int] | list[str], limit: int = 5) -> tuple[int, list[str]]:
    """The number of chunks in the grid of array ``name`` and the first ``limit`` chunk keys with no file.
    Walks the grid only until ``limit`` are found past the files present, so a huge declared grid costs no
    more than the store's own listing."""
    grid, key = chunk_grid(meta)
    n = math.prod(grid)
    present = present_chunks(name, meta, files)
    missing: list[str] = []
    for coords in itertools.product(*map(range, grid)):
        if key(coords) not in present:
            missing.append(key(coords))
            if len(missing) == limit:
                break
    return n, missing


def chunk_counts(path: str | Path) -> dict[str, int]:
    """The completeness record of the store at ``path``: the chunk files each of its arrays holds, by the
    array's path (listing only; a writer's leftover temporary files are not chunk keys and not counted)."""
    root = Path(path)
    counts: dict[str, int] = {}
    for dirpath, dirs, _ in os.walk(root):
        dirs.sort()
        d = Path(dirpath)
        try:
            meta = json.loads((d / "zarr.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("node_type") != "array":
            continue
        dirs[:] = []  # below an array there are only its chunk files
        name = d.relative_to(root).as_posix()
        files = [Path(p, f).relative_to(root).as_posix() for p, _, fs in os.walk(d) for f in fs]
        counts[name] = len(present_chunks(name, meta, files))
    return dict(sorted(counts.items()))


def chunk_record_problems(record: dict, metas: dict[str, dict], files: dict[str, int], redo: str) -> list[str]:
    """Where the completeness ``record`` and the chunk files of the arrays ``metas`` disagree: an array with
    fewer (or more) chunk files than recorded, naming the chunks of its grid with no file, and an array the
    record does not list. ``redo`` ends each line (what re-creates the store)."""
    problems = []
    for name, meta in metas.items():
        want = record.get(name)
        if want is None:
            problems.append(f"array {name} is not in the completeness record (attribute chunks); {redo}")
            continue
        have = len(present_chunks(name, meta, files))
        if have == want:
            continue
        n, missing = missing_chunks(name, meta, files)
        if have < want and missing:
            problems.append(f"array {name}: chunk{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing "
                            f"({have} chunk files, {want} recorded; a missing chunk would read as its fill "
                            f"value); {redo}")
        else:
            problems.append(f"array {name}: {have} chunk files, attribute chunks records {want!r:.40} (of {n} in "
                            f"its grid); {redo}")
    return problems


def foreign_files_on_disk(path: str | Path) -> list[Path]:
    """Files under the Zarr store ``path`` (finished or partial) that are not the store's own, sorted.

    A store's own files are the ``zarr.json`` of its root and of every group and array below it, the chunk
    (or shard) keys inside each array's chunk grid, and at the root the writer's bookkeeping (``.writer.lock``,
    ``.blocks_done/<n>.done``) and Snakemake's ``.snakemake_timestamp``. Everything else is foreign: the
    ``*.partial`` temporary file of a chunk write that was killed, stray or planted files, links. Pure: reads
    only ``zarr.json`` files and directory entries. Used by a resumed writer (foreign files are discarded, so
    a resumed store is byte-identical to an uninterrupted one) and by stages deciding whether an output is
    theirs to replace (:mod:`gfm.artifacts.outputs`); ``gfm check`` judges a listing by the same chunk-key rule
    (:func:`gfm.artifacts.inputs.foreign_files_in_listing`).
    """
    root = Path(path)
    found: list[Path] = []

    def meta_of(d: Path) -> dict | None:
        f = d / "zarr.json"
        if not f.is_file() or f.is_symlink():
            return None
        try:
            meta = json.loads(f.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return meta if isinstance(meta, dict) and meta.get("node_type") in ("group", "array") else None

    def everything(d: Path) -> None:
        for dirpath, dirs, files in os.walk(d):
            found.extend(Path(dirpath, n) for n in files)
            found.extend(Path(dirpath, n) for n in dirs if os.path.islink(os.path.join(dirpath, n)))

    def node(d: Path, meta: dict | None, at_root: bool) -> None:
        for child in d.iterdir():
            name = child.name
            if name == "zarr.json" and meta is not None and child.is_file() and not child.is_symlink():
                continue
            if at_root and (name in (LOCK_FILE, SNAKEMAKE_STAMP) and child.is_file() and not child.is_symlink()):
                continue
            if at_root and name == DONE_DIR and child.is_dir() and not child.is_symlink():
                for m in child.iterdir():
                    if not (m.suffix == ".done" and m.stem.isdigit() and m.is_file() and not m.is_symlink()):
                        everything(m) if m.is_dir() and not m.is_symlink() else found.append(m)
                continue
            if child.is_symlink() or not child.is_dir():
                if meta is not None and meta.get("node_type") == "array" and not child.is_symlink() \
                        and is_chunk_key(meta, name):
                    continue
                found.append(child)
                continue
            if meta is not None and meta.get("node_type") == "array":  # chunk key directories (c/0/1/...)
                for dirpath, dirs, files in os.walk(child):
                    for n in files + [x for x in dirs if os.path.islink(os.path.join(dirpath, x))]:
                        f = Path(dirpath, n)
                        if f.is_symlink() or not is_chunk_key(meta, f.relative_to(d).as_posix()):
                            found.append(f)
                continue
            sub = meta_of(child) if meta is not None and meta.get("node_type") == "group" else None
            if sub is None:
                everything(child)
            else:
                node(child, sub, at_root=False)

    if root.is_dir() and not root.is_symlink():
        node(root, meta_of(root), at_root=True)
    return sorted(found)

