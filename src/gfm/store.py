"""The trajectory store (docs/architecture.md §2): plain Zarr v3, one per (task, optimizer).

Layout (R runs, T recorded steps, P parameters)::

    weights         (run, step, param) float32   step 0 = initialisation
    loss            (run, step)        float32   full training-set loss at each recorded step
    lr              (run, step)        float32   learning rate in force for the update leaving that step
    state/<name>    (run, step, param) float32   optimizer state after the updates up to that step
    final/weights   (run, param)       float32   = weights[:, -1], so "final step of all runs" reads R x P
    final/loss      (run,)             float32
    runs/<field>    (run,)             per-run seed, dataset seed, index, hyper-parameters, ``diverged``
    eval/x, eval/y  (run, sample, ...) optional held-out evaluation data of recorded and imported runs
                                       (:mod:`gfm.eval_data`)

Every array is chunked so that each file belongs to exactly one block of ``shard_runs`` runs: a block is
the unit of generation and of durability (a killed writer redoes only unfinished blocks). ``weights`` and
``state/*`` are sharded (one file per block); the inner chunks (``chunk_runs`` x ``chunk_steps`` x P) are the
unit of reading, so "first k steps of all runs" touches only the first ceil(k / chunk_steps) chunk rows.

A store is written under ``<path>.partial`` and renamed into place only when complete; the root attributes
carry ``schema_version``, ``complete``, the generating config, the parameter layout, package versions, the
ownership marker of :mod:`gfm.outputs` (``gfm_output``) and the completeness record ``chunks`` (the chunk
files each array holds, :func:`gfm.store_files.chunk_counts`). Every chunk of the arrays that are not sharded
(``loss``, ``lr``, ``final/*``, ``runs/*``) is written even when it equals the fill value, which zarr skips by
default: a per-run field's fill is 0, so a chunk file that went missing would read as "not diverged", a weight
decay of 0, run index 0. With every chunk written and counted, readers refuse a store whose files disagree with
the record (:mod:`gfm.store_check`). The sharded ``weights`` and ``state/*`` are written as before (their fill
is NaN and record 0 of every run is data, so every shard is written); their shard files are counted too.

Three modules: this one writes (:func:`create_trajectory_store` for generate and import, :func:`create_run_group`
and :func:`append_run` for :mod:`gfm.recorder`), :mod:`gfm.store_reader` reads and :mod:`gfm.store_files` tells
a store's own files from foreign ones; the names of all three are importable from here.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from gfm.config import StoreLayoutConfig
from gfm.errors import StoreLockedError
from gfm.layout import ParamSpec
from gfm.store_files import _DONE_DIR, _LOCK_FILE, chunk_counts, foreign_files_on_disk, partial_path
from gfm.store_reader import TrajectoryStore, open_trajectories, read_runs

__all__ = [
    "SCHEMA_VERSION", "read_runs", "StoreWriter", "TrajectoryStore", "create_trajectory_store", "open_trajectories",
    "partial_path", "foreign_files_on_disk", "compressor", "create_run_group", "finish_run_group",
    "append_run", "lock_partial", "link_store", "exchange_paths", "all_chunks", "add_eval_arrays",
    "create_eval_arrays",
]

SCHEMA_VERSION = 1


def compressor(chunks: StoreLayoutConfig) -> BloscCodec:
    """The Blosc codec of every array of a store, from the params section ``store:``."""
    return BloscCodec(cname=chunks.cname, clevel=chunks.clevel, shuffle=chunks.shuffle)


_ALL_CHUNKS = {"write_empty_chunks": True}  # a chunk equal to the fill value is written too (module docstring)


def all_chunks(arr: zarr.Array) -> zarr.Array:
    """``arr`` writing every chunk it is given, even one equal to its fill value (module docstring). A sharded
    array is returned as it is: written this way its shards would also hold their all-NaN inner chunks, which
    would change the bytes of every store's weights."""
    return arr if arr.shards is not None else arr.with_config(_ALL_CHUNKS)


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
        self.write_rows(self.block_range(b).start, arrays)
        self.mark_done(b)

    def write_rows(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write every array's rows from run ``start`` on: a whole block, or a part of one when a block is too
        large to hold in memory at once (gfm import); :meth:`mark_done` then marks the block durable."""
        for name, value in arrays.items():
            all_chunks(self.group[name])[start : start + len(value)] = value

    def mark_done(self, b: int) -> None:
        """Flush the written block ``b`` to disk and mark it durable (a resumed writer skips it)."""
        _fsync_tree(self.tmp)
        marker_dir = self.tmp / _DONE_DIR
        marker_dir.mkdir(exist_ok=True)
        (marker_dir / f"{b:06d}.done").touch()
        _fsync_tree(marker_dir)

    def finish(self, verify: Callable[[Path], object] | None = None) -> Path:
        """Mark complete, drop the block markers and rename ``.partial`` into place (atomic on one fs).

        ``verify`` (gfm import: ``gfm check``'s rules) is called with the flagged ``.partial`` store before
        the rename; it refuses by raising, which unflags the store and leaves it where it is.

        The writer's lock is held until the store is in place: a POSIX lock belongs to the open file, and the
        rename moves the lock file along with the store, so a second writer started at any moment before the
        rename is refused (it can neither reuse this flagged store nor remove what the rename puts in place),
        and one started after it finds no partial store and starts a new one. The lock file is removed from
        the finished store only after the rename; a writer killed in between leaves an empty ``.writer.lock``
        in it, which :func:`foreign_files_on_disk` counts as the store's own.
        """
        from gfm.outputs import TRAJECTORY_STORE, replace_output

        missing = set(range(self.n_blocks)) - self.done_blocks()
        if missing:
            raise RuntimeError(f"cannot finish {self.path}: blocks {sorted(missing)} were not written")
        # the record before the flag: a store flagged complete always says what complete means
        self.group.attrs["chunks"] = chunk_counts(self.tmp)
        self.group.attrs["complete"] = True
        shutil.rmtree(self.tmp / _DONE_DIR, ignore_errors=True)
        if verify is not None:
            try:
                verify(self.tmp)
            except BaseException:
                self.group.attrs["complete"] = False
                raise
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
    holding the writer's lock file (:func:`_lock_writer` creates it first), or a Zarr group whose root
    attributes carry the trajectory-store marker (gfm.outputs; :func:`create_run_group` writes it with the
    group). Anything else at that path, a Zarr store of someone else included, is refused untouched."""
    from gfm.outputs import TRAJECTORY_STORE, OutputError

    if not tmp.exists() and not tmp.is_symlink():
        return
    if tmp.is_dir() and not tmp.is_symlink():
        entries = {c.name for c in tmp.iterdir()}
        lock = tmp / _LOCK_FILE
        if not entries or (lock.is_file() and not lock.is_symlink()) \
                or TRAJECTORY_STORE.marked_as(tmp) == TRAJECTORY_STORE.name:
            return
    what = "is a symbolic link" if tmp.is_symlink() else "is not a directory" if not tmp.is_dir() else \
        f"holds {len(list(tmp.iterdir()))} entries, no {_LOCK_FILE} and no trajectory-store marker"
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
    from gfm.outputs import TRAJECTORY_STORE, claim_output, marked

    path = claim_output(path, TRAJECTORY_STORE)  # a store (to be replaced) or nothing: refused before any write
    tmp = partial_path(path)
    _claim_partial(tmp)
    n_params = layout[-1].offset + layout[-1].size
    block = min(chunks.shard_runs, n_runs)
    attrs = marked(TRAJECTORY_STORE, {
        **attrs, "schema_version": SCHEMA_VERSION, "complete": False,
        "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in layout],
        "n_runs": n_runs, "n_records": n_records, "n_params": n_params, "block_runs": block})
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
            # "complete" and "chunks": a writer killed inside finish(), between the record and the rename
            kept = {k: v for k, v in group.attrs.items() if k != "chunks"}
            if {**kept, "complete": False} == attrs:
                # A writer killed inside zarr's own write of a chunk leaves its temporary file (`*.partial`)
                # beside the chunk; any such file would be renamed into the finished store. Only the store's
                # own files are kept, so a resumed store is byte-identical to an uninterrupted one.
                for f in foreign_files_on_disk(tmp):
                    f.unlink()
                return StoreWriter(path, group, n_runs, block, lock)
        except Exception:  # noqa: BLE001 - any unreadable leftover is simply rebuilt
            pass
    _empty(tmp, keep=_LOCK_FILE)  # not rmtree: the lock file must stay the one we hold
    group = zarr.open_group(tmp, mode="a", zarr_format=3)
    comp = compressor(chunks)
    step_chunk = min(chunks.chunk_steps, n_records)
    padded_steps = math.ceil(n_records / step_chunk) * step_chunk
    run_chunk = math.gcd(chunks.chunk_runs, block)  # a shard must hold whole chunks (12 runs, chunks of 8 -> 4)
    for name in ("weights", *(f"state/{s}" for s in state_names)):
        group.create_array(name, shape=(n_runs, n_records, n_params), dtype="float32",
                           chunks=(run_chunk, step_chunk, n_params), shards=(block, padded_steps, n_params),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step", "param"))
    for name in ("loss", "lr"):
        group.create_array(name, shape=(n_runs, n_records), dtype="float32", chunks=(block, n_records),
                           compressors=comp, fill_value=np.nan, dimension_names=("run", "step"), config=_ALL_CHUNKS)
    group.create_array("final/weights", shape=(n_runs, n_params), dtype="float32", chunks=(block, n_params),
                       compressors=comp, fill_value=np.nan, dimension_names=("run", "param"), config=_ALL_CHUNKS)
    group.create_array("final/loss", shape=(n_runs,), dtype="float32", chunks=(block,), compressors=comp,
                       fill_value=np.nan, dimension_names=("run",), config=_ALL_CHUNKS)
    for name, dtype in run_fields.items():
        group.create_array(f"runs/{name}", shape=(n_runs,), dtype=dtype, chunks=(block,), compressors=comp,
                           fill_value=0, dimension_names=("run",), config=_ALL_CHUNKS)
    group.attrs.update(attrs)
    return StoreWriter(path, group, n_runs, block, lock)



def lock_partial(path: str | Path) -> int:
    """Take the writer's lock of the store at ``path`` (the ``.writer.lock`` in ``<path>.partial``, the lock
    ``gfm generate`` takes) and return its descriptor; closing it releases the lock. Refused with
    :class:`StoreLockedError` while another process holds it, and with ``OutputError`` when the partial path
    holds something that is not a writer's leftover."""
    path = Path(path)
    tmp = partial_path(path)
    _claim_partial(tmp)
    return _lock_writer(tmp, path)


def link_store(src: Path, dst: Path) -> None:
    """Fill the directory ``dst`` with the files of the store ``src`` (its writer's lock file left out) as hard
    links, or copies where the file system has none. Sharing the files is safe because zarr never writes into
    a file: it writes a new one beside it and renames it over the old name (``zarr.storage._local``), so a
    write through ``dst`` replaces ``dst``'s entry and leaves ``src``'s file as it was."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(exist_ok=True)
        for name in files:
            if rel == Path(".") and name == _LOCK_FILE:
                continue
            try:
                os.link(Path(dirpath, name), dst / rel / name)
            except OSError:  # no hard links here (or across devices): a copy is as good, only slower
                shutil.copy2(Path(dirpath, name), dst / rel / name)


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``): a reader
    of either path sees the old directory or the new one, never none. False, with nothing changed, where the
    system or the file system cannot (not Linux, an old libc, NFS and some other file systems)."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


# --- one run at a time (gfm.recorder) -----------------------------------------------------------------------
# A recorded run does not know its length in advance: its arrays grow along the step axis, one chunk of
# ``chunk_steps`` records per write, and a finished one-run store is then renamed into place or appended to a
# store of earlier runs. Chunks hold one run each (no shards), with the codec of the ``store:`` defaults.
def create_run_group(tmp: Path, *, n_params: int, state_names: tuple[str, ...], chunk_steps: int,
                     chunks: StoreLayoutConfig | None = None) -> zarr.Group:
    """An empty one-run store at ``tmp``, marked as a trajectory store from its first write (a writer's
    leftover there is replaced; anything else is refused). The writer's lock file there (:func:`lock_partial`)
    is kept: it must stay the file the caller holds."""
    from gfm.outputs import TRAJECTORY_STORE, marked

    if tmp.exists() or tmp.is_symlink():
        _claim_partial(tmp)  # a writer's leftover, or refused untouched
        _empty(tmp, keep=_LOCK_FILE)
    # mode "a" on the emptied directory: zarr's mode "w" would remove the whole directory, lock file included
    g = zarr.open_group(tmp, mode="a", zarr_format=3)
    g.attrs.update(marked(TRAJECTORY_STORE, {}))
    comp = compressor(chunks or StoreLayoutConfig())
    P, C = n_params, chunk_steps
    for name in ("weights", *(f"state/{s}" for s in state_names)):
        g.create_array(name, shape=(1, 0, P), dtype="float32", chunks=(1, C, P), compressors=comp,
                       fill_value=np.nan, dimension_names=("run", "step", "param"))
    for name in ("loss", "lr"):
        g.create_array(name, shape=(1, 0), dtype="float32", chunks=(1, C), compressors=comp,
                       fill_value=np.nan, dimension_names=("run", "step"), config=_ALL_CHUNKS)
    return g


def create_eval_arrays(g: zarr.Group, *, n_runs: int, x_shape: tuple[int, ...], y_dtype: str, run_chunk: int,
                       chunks: StoreLayoutConfig | None = None) -> None:
    """Empty ``eval/x`` (run, sample, *input_shape) float32 and ``eval/y`` (run, sample) ``y_dtype`` in ``g``
    (held-out evaluation data, :mod:`gfm.eval_data`), ``run_chunk`` runs a chunk, every chunk written."""
    comp = compressor(chunks or StoreLayoutConfig())
    dims = ("run", "sample", *(f"input_{i}" for i in range(len(x_shape) - 1)))
    g.create_array("eval/x", shape=(n_runs, *x_shape), dtype="float32", chunks=(run_chunk, *x_shape),
                   compressors=comp, fill_value=np.nan, dimension_names=dims, config=_ALL_CHUNKS)
    g.create_array("eval/y", shape=(n_runs, x_shape[0]), dtype=y_dtype, chunks=(run_chunk, x_shape[0]),
                   compressors=comp, fill_value=0, dimension_names=("run", "sample"), config=_ALL_CHUNKS)


def add_eval_arrays(g: zarr.Group, x: np.ndarray, y: np.ndarray, chunks: StoreLayoutConfig | None = None) -> None:
    """Put one run's held-out evaluation data (:mod:`gfm.eval_data`, already validated) into the one-run store
    ``g``: ``eval/x`` (1, sample, *input_shape) and ``eval/y`` (1, sample), one chunk per run."""
    create_eval_arrays(g, n_runs=1, x_shape=x.shape, y_dtype=str(y.dtype), run_chunk=1, chunks=chunks)
    all_chunks(g["eval/x"])[0] = x
    all_chunks(g["eval/y"])[0] = y


def finish_run_group(g: zarr.Group, tmp: Path, path: Path, *, loss: np.ndarray, fields: dict[str, np.ndarray],
                     attrs: dict[str, Any], chunks: StoreLayoutConfig | None = None) -> None:
    """Complete the one-run store ``g`` at ``tmp`` (final weights and loss, per-run fields, ``attrs``) and
    rename it to ``path``, replacing only a trajectory store there (gfm.outputs)."""
    from gfm.outputs import TRAJECTORY_STORE, replace_output

    comp = compressor(chunks or StoreLayoutConfig())
    T, P = g["weights"].shape[1:]
    g.create_array("final/weights", data=g["weights"][:, T - 1], chunks=(1, P), compressors=comp,
                   dimension_names=("run", "param"), config=_ALL_CHUNKS)
    g.create_array("final/loss", data=loss[None, -1], chunks=(1,), compressors=comp, dimension_names=("run",),
                   config=_ALL_CHUNKS)
    for k, v in fields.items():
        g.create_array(f"runs/{k}", data=v, chunks=(1,), compressors=comp, dimension_names=("run",),
                       config=_ALL_CHUNKS)
    attrs = json.loads(json.dumps(attrs))
    complete = attrs.pop("complete", None)  # the record before the flag, as StoreWriter.finish
    g.attrs.update({**attrs, "chunks": chunk_counts(tmp)})
    if complete is not None:
        g.attrs["complete"] = complete
    replace_output(tmp, path, TRAJECTORY_STORE, keep_tmp_on_refusal=True)


def append_run(main: zarr.Group, g: zarr.Group, *, loss: np.ndarray, fields: dict[str, np.ndarray],
               dataset_seeds: list[int], chunk_steps: int) -> None:
    """Add the one-run store ``g`` as the last run of the finished store ``main`` (same layout, optimizer state,
    number of records and evaluation data shapes: the caller checks). ``main`` is flagged incomplete while it
    grows."""
    R, T, P = int(main.attrs["n_runs"]), *g["weights"].shape[1:]
    main.attrs["complete"] = False  # readers refuse the store while it grows
    for name in ("weights", *(f"state/{s}" for s in main.attrs["state_names"])):
        arr = all_chunks(main[name])
        arr.resize((R + 1, T, P))
        for s in range(0, T, chunk_steps):  # bounded memory: one chunk of one run at a time
            arr[R, s : s + chunk_steps] = g[name][0, s : s + chunk_steps]
    for name in ("loss", "lr"):
        arr = all_chunks(main[name])
        arr.resize((R + 1, T))
        arr[R] = g[name][0]
    arr = all_chunks(main["final/weights"])
    arr.resize((R + 1, P))
    arr[R] = g["weights"][0, T - 1]
    arr = all_chunks(main["final/loss"])
    arr.resize((R + 1,))
    arr[R] = loss[-1]
    for k, v in fields.items():
        arr = all_chunks(main[f"runs/{k}"])
        arr.resize((R + 1,))
        arr[R] = v[0]
    if "eval" in g:  # held-out evaluation data (gfm.eval_data): the caller checked both stores hold it alike
        for name in ("eval/x", "eval/y"):
            arr = all_chunks(main[name])
            arr.resize((R + 1, *arr.shape[1:]))
            arr[R] = g[name][0]
    main.attrs.update({"n_runs": R + 1, "dataset_seeds": dataset_seeds})
    # the record of the grown store (its files counted, not those of the store it grew from), then the flag
    main.attrs.update({"chunks": chunk_counts(main.store.root), "complete": True})
