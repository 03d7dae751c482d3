"""The trajectory store (docs/architecture.md §2): plain Zarr v3, one per (task, optimizer).

Layout (R runs, T recorded steps, P parameters)::

    weights         (run, step, param) float32   step 0 = initialisation
    loss            (run, step)        float32   full training-set loss at each recorded step
    lr              (run, step)        float32   learning rate in force for the update leaving that step
    state/<name>    (run, step, param) float32   optimizer state after the updates up to that step
    final/weights   (run, param)       float32   = weights[:, -1], so "final step of all runs" reads R x P
    final/loss      (run,)             float32
    runs/<field>    (run,)             per-run seed, dataset seed, index, hyper-parameters, ``diverged``

Every array is chunked so that each file belongs to exactly one block of ``shard_runs`` runs: a block is
the unit of generation and of durability (a killed writer redoes only unfinished blocks). ``weights`` and
``state/*`` are sharded (one file per block); the inner chunks (``chunk_runs`` x ``chunk_steps`` x P) are the
unit of reading, so "first k steps of all runs" touches only the first ceil(k / chunk_steps) chunk rows.

A store is written under ``<path>.partial`` and renamed into place only when complete; the root attributes
carry ``schema_version``, ``complete``, the generating config, the parameter layout and package versions.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gfm.config import StoreLayoutConfig
from gfm.errors import StoreLockedError, StoreNotFoundError, StoreSchemaError
from gfm.layout import ParamSpec

if TYPE_CHECKING:  # torch is imported where it is used: `gfm split` and `gfm check` never need it (~1 s)
    import torch

__all__ = [
    "SCHEMA_VERSION", "read_runs", "StoreWriter", "TrajectoryStore", "create_trajectory_store", "open_trajectories",
    "partial_path", "foreign_files",
]

SCHEMA_VERSION = 1
_DONE_DIR = ".blocks_done"
_LOCK_FILE = ".writer.lock"  # inside the partial store; a POSIX lock on it marks the live writer
_NON_HYPER_FIELDS = {"dataset_seed", "index", "diverged", "lr_scale"}  # marker files of finished blocks inside a partial store


def read_runs(arr: zarr.Array, runs: np.ndarray | list[int], stop: int | None = None) -> np.ndarray:
    """Rows ``runs`` (any order, repeats allowed) of a (run, step, ...) array, steps ``:stop``.

    Each stretch of consecutive run ids is read as one slice: zarr 3's orthogonal (fancy) selection on a
    sharded array was ~30x slower here (150 of 200 digits runs: 25 s vs 0.8 s).
    """
    runs = np.asarray(runs, dtype=np.int64)
    order = np.argsort(runs, kind="stable")
    sorted_runs = runs[order]
    if sorted_runs.size == 0:
        shape = (0, *arr.shape[1:]) if stop is None or arr.ndim < 2 else (0, min(stop, arr.shape[1]), *arr.shape[2:])
        return np.zeros(shape, dtype=arr.dtype)
    breaks = np.flatnonzero(np.diff(sorted_runs) != 1) + 1
    cols = (slice(None, stop),) if arr.ndim > 1 else ()
    try:
        parts = [arr[(slice(int(seg[0]), int(seg[-1]) + 1), *cols)] for seg in np.split(sorted_runs, breaks)]
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode: one line naming array and runs
        raise StoreSchemaError(f"{arr.store_path}: runs {int(sorted_runs[0])}..{int(sorted_runs[-1])}: chunk "
                               f"data unreadable ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    return np.ascontiguousarray(np.concatenate(parts)[np.argsort(order, kind="stable")])


def partial_path(path: str | Path) -> Path:
    """Where a store is built before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


_STAMP = ".snakemake_timestamp"  # Snakemake touches it inside directory() outputs


def _chunk_key_ok(meta: dict, key: str) -> bool:
    """``key`` (relative to an array's directory) names a chunk (or shard) inside the array's chunk grid;
    True for any key of a grid or key encoding this code does not model (never discard what is not understood)."""
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


def foreign_files(path: str | Path) -> list[Path]:
    """Files under the Zarr store ``path`` (finished or partial) that are not the store's own, sorted.

    A store's own files are the ``zarr.json`` of its root and of every group and array below it, the chunk
    (or shard) keys inside each array's chunk grid, and at the root the writer's bookkeeping (``.writer.lock``,
    ``.blocks_done/<n>.done``) and Snakemake's ``.snakemake_timestamp``. Everything else is foreign: the
    ``*.partial`` temporary file of a chunk write that was killed, stray or planted files, links. Pure: reads
    only ``zarr.json`` files and directory entries. Used by a resumed writer (foreign files are discarded, so
    a resumed store is byte-identical to an uninterrupted one), by stages deciding whether an output is theirs
    to replace (:mod:`gfm.outputs`) and by ``gfm check``.
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
            if at_root and (name in (_LOCK_FILE, _STAMP) and child.is_file() and not child.is_symlink()):
                continue
            if at_root and name == _DONE_DIR and child.is_dir() and not child.is_symlink():
                for m in child.iterdir():
                    if not (m.suffix == ".done" and m.stem.isdigit() and m.is_file() and not m.is_symlink()):
                        everything(m) if m.is_dir() and not m.is_symlink() else found.append(m)
                continue
            if child.is_symlink() or not child.is_dir():
                if meta is not None and meta.get("node_type") == "array" and not child.is_symlink() \
                        and _chunk_key_ok(meta, name):
                    continue
                found.append(child)
                continue
            if meta is not None and meta.get("node_type") == "array":  # chunk key directories (c/0/1/...)
                for dirpath, dirs, files in os.walk(child):
                    for n in files + [x for x in dirs if os.path.islink(os.path.join(dirpath, x))]:
                        f = Path(dirpath, n)
                        if f.is_symlink() or not _chunk_key_ok(meta, f.relative_to(d).as_posix()):
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


def _finish_hook(stage: str, writer: StoreWriter) -> None:
    """No-op; tests replace it to act inside :meth:`StoreWriter.finish` (``"flagged"``: the store is flagged
    complete and flushed, not yet renamed; ``"renamed"``: renamed, the lock still held)."""


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the directories themselves, so a finished block survives a crash."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f == _LOCK_FILE:  # closing any descriptor of a POSIX-locked file drops the lock: never touch it
                continue
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class StoreWriter:
    """Writes a store block by block under its ``.partial`` path; :meth:`finish` renames it into place."""

    path: Path
    group: zarr.Group
    n_runs: int
    block_runs: int
    lock_fd: int | None = None

    @property
    def tmp(self) -> Path:
        return partial_path(self.path)

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_runs / self.block_runs)

    def block_range(self, b: int) -> range:
        return range(b * self.block_runs, min((b + 1) * self.block_runs, self.n_runs))

    def done_blocks(self) -> set[int]:
        if self.group.attrs.get("complete") is True:  # killed inside finish(): every block is written
            return set(range(self.n_blocks))
        d = self.tmp / _DONE_DIR
        return {int(p.stem) for p in d.glob("*.done")} if d.is_dir() else set()

    def write_block(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        """Write block ``b`` (every array's rows for runs ``block_range(b)``), then mark it durable."""
        rows = self.block_range(b)
        sl = slice(rows.start, rows.stop)
        for name, value in arrays.items():
            self.group[name][sl] = value
        _fsync_tree(self.tmp)
        marker_dir = self.tmp / _DONE_DIR
        marker_dir.mkdir(exist_ok=True)
        (marker_dir / f"{b:06d}.done").touch()
        _fsync_tree(marker_dir)

    def finish(self) -> Path:
        """Mark complete, drop the block markers and rename ``.partial`` into place (atomic on one fs).

        The writer's lock is held until the store is in place: a POSIX lock belongs to the open file, and the
        rename moves the lock file along with the store, so a second writer started at any moment before the
        rename is refused (it can neither reuse this flagged store nor remove what the rename puts in place),
        and one started after it finds no partial store and starts a new one. The lock file is removed from
        the finished store only after the rename; a writer killed in between leaves an empty ``.writer.lock``
        in it, which :func:`foreign_files` counts as the store's own.
        """
        from gfm.outputs import TRAJECTORY_STORE, replace_output

        missing = set(range(self.n_blocks)) - self.done_blocks()
        if missing:
            raise RuntimeError(f"cannot finish {self.path}: blocks {sorted(missing)} were not written")
        self.group.attrs["complete"] = True
        shutil.rmtree(self.tmp / _DONE_DIR, ignore_errors=True)
        _fsync_tree(self.tmp)
        _finish_hook("flagged", self)
        # an old store at the path is removed only if it is a trajectory store (gfm.outputs); anything else
        # there is refused and the flagged partial store is kept, so a re-run after moving it away only renames
        replace_output(self.tmp, self.path, TRAJECTORY_STORE, keep_tmp_on_refusal=True)
        _fsync_dir(self.path.parent)
        _finish_hook("renamed", self)
        (self.path / _LOCK_FILE).unlink(missing_ok=True)
        _fsync_dir(self.path)
        self.release()
        return self.path

    def release(self) -> None:
        """Drop the writer's lock (closing its descriptor); :meth:`finish` does it once the store is in place."""
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_writer(tmp: Path, path: Path) -> int:
    """Take the writer's lock of a partial store, or refuse: two writers of one store would overwrite each
    other's blocks and race to rename. A POSIX lock (``lockf``) is released by the kernel when its process
    dies, so a SIGKILLed writer never leaves a stale lock; within one process it can be re-taken (an
    interrupted run resumed in the same interpreter).

    The lock is only good if the file it is on is still the one at ``tmp``: a writer finishing between our
    open and our lock renames the file away with its store (or removes it). Then the lock guards nothing here,
    so it is dropped and the lock at ``tmp`` is taken again (a new partial store if the old one is gone)."""
    for _ in range(5):
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # renamed away between the mkdir and the open
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreLockedError(f"{path}: another process is writing this store (it holds {tmp / _LOCK_FILE}); "
                                   "wait for it to finish, or stop it and re-run to resume") from None
        mine = os.fstat(fd)
        try:
            there = os.stat(tmp / _LOCK_FILE)
        except FileNotFoundError:
            there = None
        if there is not None and (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            return fd
        os.close(fd)
    raise StoreLockedError(f"{path}: another process keeps finishing and restarting this store ({tmp}); "
                           "wait for it to finish")


def _claim_partial(tmp: Path) -> None:
    """A leftover ``<store>.partial`` is reused or emptied only if it is a writer's: an empty directory, one
    holding the writer's lock file, or a Zarr group. Anything else at that path is refused untouched."""
    from gfm.outputs import OutputError

    if not tmp.exists() and not tmp.is_symlink():
        return
    if tmp.is_dir() and not tmp.is_symlink():
        entries = {c.name for c in tmp.iterdir()}
        if not entries or _LOCK_FILE in entries or (tmp / "zarr.json").is_file():
            return
    what = "is a symbolic link" if tmp.is_symlink() else "is not a directory" if not tmp.is_dir() else \
        f"holds {len(list(tmp.iterdir()))} entries and no {_LOCK_FILE} or zarr.json"
    raise OutputError(f"{tmp}: the store's partial path {what}, so it is not a leftover of a writer; refusing to "
                      "remove it (move it away or choose another output path)")


def _empty(directory: Path, *, keep: str) -> None:
    for child in directory.iterdir():
        if child.name == keep:
            continue
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def create_trajectory_store(path: str | Path, *, n_runs: int, n_records: int, layout: tuple[ParamSpec, ...],
                            state_names: tuple[str, ...], run_fields: dict[str, np.dtype],
                            chunks: StoreLayoutConfig, attrs: dict[str, Any],
                            resume: bool = True) -> StoreWriter:
    """Create (or resume) a store under ``<path>.partial``.

    Resuming keeps the finished blocks of an earlier, interrupted writer, but only if its attributes equal
    ``attrs`` (same config, same layout); anything else is wiped and started over.
    """
    from gfm.outputs import TRAJECTORY_STORE, claim_output

    path = claim_output(path, TRAJECTORY_STORE)  # a store (to be replaced) or nothing: refused before any write
    tmp = partial_path(path)
    _claim_partial(tmp)
    n_params = layout[-1].offset + layout[-1].size
    block = min(chunks.shard_runs, n_runs)
    attrs = {**attrs, "schema_version": SCHEMA_VERSION, "complete": False,
             "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in layout],
             "n_runs": n_runs, "n_records": n_records, "n_params": n_params, "block_runs": block}
    attrs = json.loads(json.dumps(attrs))  # normalise tuples etc. exactly as zarr will store them
    lock = _lock_writer(tmp, path)
    try:
        return _open_writer(path, tmp, lock, n_runs=n_runs, n_records=n_records, n_params=n_params, block=block,
                            state_names=state_names, run_fields=run_fields, chunks=chunks, attrs=attrs,
                            resume=resume)
    except BaseException:
        os.close(lock)
        raise


def _open_writer(path: Path, tmp: Path, lock: int, *, n_runs: int, n_records: int, n_params: int, block: int,
                 state_names: tuple[str, ...], run_fields: dict[str, np.dtype], chunks: StoreLayoutConfig,
                 attrs: dict[str, Any], resume: bool) -> StoreWriter:
    if resume and (tmp / "zarr.json").is_file():
        try:
            group = zarr.open_group(tmp, mode="r+")
            # "complete": a writer killed inside finish(), between the flag and the rename
            if {**dict(group.attrs), "complete": False} == attrs:
                # A writer killed inside zarr's own write of a chunk leaves its temporary file (`*.partial`)
                # beside the chunk; any such file would be renamed into the finished store. Only the store's
                # own files are kept, so a resumed store is byte-identical to an uninterrupted one.
                for f in foreign_files(tmp):
                    f.unlink()
                return StoreWriter(path, group, n_runs, block, lock)
        except Exception:  # noqa: BLE001 - any unreadable leftover is simply rebuilt
            pass
    _empty(tmp, keep=_LOCK_FILE)  # not rmtree: the lock file must stay the one we hold
    group = zarr.open_group(tmp, mode="a", zarr_format=3)
    comp = BloscCodec(cname=chunks.cname, clevel=chunks.clevel, shuffle=chunks.shuffle)
    step_chunk = min(chunks.chunk_steps, n_records)
    padded_steps = math.ceil(n_records / step_chunk) * step_chunk
    run_chunk = math.gcd(chunks.chunk_runs, block)  # a shard must hold whole chunks (12 runs, chunks of 8 -> 4)
    for name in ("weights", *(f"state/{s}" for s in state_names)):
        group.create_array(name, shape=(n_runs, n_records, n_params), dtype="float32",
                           chunks=(run_chunk, step_chunk, n_params), shards=(block, padded_steps, n_params),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step", "param"))
    for name in ("loss", "lr"):
        group.create_array(name, shape=(n_runs, n_records), dtype="float32", chunks=(block, n_records),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step"))
    group.create_array("final/weights", shape=(n_runs, n_params), dtype="float32", chunks=(block, n_params),
                       compressors=comp, fill_value=np.nan, dimension_names=("run", "param"))
    group.create_array("final/loss", shape=(n_runs,), dtype="float32", chunks=(block,), compressors=comp,
                       fill_value=np.nan, dimension_names=("run",))
    for name, dtype in run_fields.items():
        group.create_array(f"runs/{name}", shape=(n_runs,), dtype=dtype, chunks=(block,), compressors=comp,
                           fill_value=0, dimension_names=("run",))
    group.attrs.update(attrs)
    return StoreWriter(path, group, n_runs, block, lock)


class TrajectoryStore:
    """Read-only typed view of a finished store. Array attributes return zarr arrays (index to read)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            hint = " (a .partial store is there: the writer did not finish)" if partial_path(self.path).exists() else ""
            raise StoreNotFoundError(f"{self.path}: no trajectory store here{hint}")
        # The structural level of `gfm check` (gfm.inputs): files, attributes and every array's metadata, no
        # chunk read. A stage never computes on a store that check refuses for its structure.
        from gfm.inputs import inspect_trajectory_store

        inspection = inspect_trajectory_store(self.path)
        inspection.raise_first()
        try:
            self.group = zarr.open_group(self.path, mode="r")
            for name in inspection.arrays:  # zarr's own parse of each checked zarr.json (cheap, no chunks)
                self.group[name]
        except Exception as exc:  # noqa: BLE001
            raise StoreSchemaError(f"{self.path}: not a readable Zarr group ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        self.attrs = dict(self.group.attrs)
        self.layout = tuple(ParamSpec(d["name"], tuple(d["shape"]), d["offset"]) for d in self.attrs["layout"])

    # arrays
    @property
    def weights(self) -> zarr.Array:
        return self.group["weights"]

    @property
    def loss(self) -> zarr.Array:
        return self.group["loss"]

    @property
    def lr(self) -> zarr.Array:
        return self.group["lr"]

    def state(self, name: str) -> zarr.Array:
        return self.group[f"state/{name}"]

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["state_names"])

    @property
    def runs(self) -> dict[str, np.ndarray]:
        """Per-run fields, read whole (they are R numbers each)."""
        try:
            g = self.group["runs"]
            return {name: arr[:] for name, arr in sorted(g.arrays())}
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode: one line naming the store
            raise StoreSchemaError(f"{self.path}: runs/*: chunk data unreadable ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None

    @property
    def hyper(self) -> dict[str, np.ndarray]:
        """Per-run optimizer hyper-parameters (``lr`` includes the task's lr_scale), each (run,)."""
        return {k: v for k, v in self.runs.items() if k not in _NON_HYPER_FIELDS}

    @property
    def n_runs(self) -> int:
        return int(self.attrs["n_runs"])

    @property
    def n_records(self) -> int:
        return int(self.attrs["n_records"])

    @property
    def n_params(self) -> int:
        return int(self.attrs["n_params"])

    @property
    def record_every(self) -> int:
        return int(self.attrs["task"]["record_every"])

    @property
    def optimizer(self) -> dict[str, Any]:
        return self.attrs["optimizer"]

    # reads
    def prefix(self, k: int, runs: Any = slice(None)) -> np.ndarray:
        """Recorded steps 0..k (inclusive) of the selected runs: (run, k + 1, param)."""
        if not 0 <= k < self.n_records:
            raise ValueError(f"prefix end {k} outside the recorded steps 0..{self.n_records - 1}")
        return self.weights[runs, : k + 1]

    def final(self, runs: Any = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """Final weights (run, param) and final loss (run,)."""
        return self.group["final/weights"][runs], self.group["final/loss"][runs]

    def iter_blocks(self, *, block_runs: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Stream whole runs in blocks (bounded memory): yields (run slice, weights (run, step, param))."""
        block = block_runs or int(self.attrs["block_runs"])
        for start in range(0, self.n_runs, block):
            sl = slice(start, min(start + block, self.n_runs))
            yield sl, self.weights[sl]

    def unflatten(self, flat: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat (param,) vector -> {tensor name: tensor} following the layout."""
        import torch

        t = torch.as_tensor(np.asarray(flat, dtype=np.float32))
        return {s.name: t[s.offset : s.offset + s.size].reshape(s.shape).clone() for s in self.layout}

    def load_into(self, module: torch.nn.Module, run: int, step: int) -> torch.nn.Module:
        """Load the weights of ``run`` at recorded step index ``step`` into ``module`` (strict)."""
        module.load_state_dict(self.unflatten(self.weights[run, step]), strict=True)
        return module


def open_trajectories(path: str | Path) -> TrajectoryStore:
    """Open a finished trajectory store for reading.

    Raises:
        StoreNotFoundError: nothing at ``path``.
        StoreIncompleteError: the store has no completion flag.
        StoreSchemaError: unreadable or another schema version.
    """
    return TrajectoryStore(path)
