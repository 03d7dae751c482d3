"""The source arrays of ``gfm import`` (:mod:`gfm.recording.importer`'s module docstring): a ``.npy`` memory-mapped, or the
members of a ``.npz`` streamed out of the archive; only the headers are read up front, every shape and dtype is
checked against them, and the values are read a part of a block of runs at a time (:data:`PART_BYTES`).
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from gfm.artifacts.inputs import file_problem
from gfm.base.errors import shorten
from gfm.recording.import_meta import INT64_MAX, TrajectoryImportError
from gfm.store.eval_data import shape_problem

__all__ = ["PART_BYTES", "SourceArray", "open_source", "check_arrays", "check_eval", "source_seeds", "check_lr",
           "part_runs"]

PART_BYTES = 64 << 20
"""Most weights and optimizer state an import holds in memory at once (as float32), in whole inner chunks of
runs; the source is read as it is written, a part of a block at a time."""


class SourceArray:
    """One source array: shape and dtype from its header, and its rows read a block at a time (a memory map
    of a ``.npy``; for a member of a ``.npz``, its stream out of the archive, read forward and reopened only
    to go back), so that no more than one block of it is ever in memory."""

    def __init__(self, src: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, *,
                 mapped: np.ndarray | None = None, archive: zipfile.ZipFile | None = None,
                 member: zipfile.ZipInfo | None = None, offset: int = 0):
        self.src, self.name, self.shape, self.dtype = src, name, shape, dtype
        self.mapped, self.archive, self.member, self.offset = mapped, archive, member, offset
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self._stream: IO[bytes] | None = None
        self._row = 0  # the row the stream reads next

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (a read-only array of the source dtype)."""
        if self.mapped is not None:
            return np.asarray(self.mapped[start:stop])
        if self._stream is None or start < self._row:
            self.close()
            self._stream = self.archive.open(self.member)
            self._stream.read(self.offset)  # the header, parsed in _read_header
            self._row = 0
        while self._row < start:  # skip forward without holding more than a block
            self._read(min(start - self._row, max(1, PART_BYTES // max(self.row_bytes, 1))))
        return self._read(stop - start)

    def _read(self, n: int) -> np.ndarray:
        want = n * self.row_bytes
        data = self._stream.read(want)
        if len(data) != want:
            raise TrajectoryImportError(f"{self.src}: {self.name}: the archive ends inside row {self._row + len(data) // max(self.row_bytes, 1)} "
                                        f"of {self.shape[0]}; the file is truncated")
        self._row += n
        return np.frombuffer(data, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _array_name(src: Path, member: str) -> str:
    key = member.removesuffix(".npy")
    if key in ("weights", "loss", "lr", "dataset_seed"):
        return key
    if key in ("eval_x", "eval_y"):
        return "eval/" + key.removeprefix("eval_")
    if key.startswith("state_"):
        return "state/" + key.removeprefix("state_")
    raise TrajectoryImportError(f"{src}: unknown array {shorten(key)}; expected weights, loss, lr, dataset_seed, "
                                "state_<name>, eval_x or eval_y")


def _read_member(src: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> SourceArray:
    """A ``.npz`` member's header (never its data): shape, dtype, order and size checked against each other."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise TrajectoryImportError(f"{src}: {name}: NumPy file format {version}; expected 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        raise TrajectoryImportError(f"{src}: not a readable NumPy file ({name} is an object array; those are "
                                    "never unpickled)")
    if dtype.itemsize == 0:
        raise TrajectoryImportError(f"{src}: {name}: got dtype {shorten(str(dtype), quote=False)}; expected numbers")
    if fortran and sum(n > 1 for n in shape) > 1:
        raise TrajectoryImportError(f"{src}: {name}: stored in Fortran order; save it in C order "
                                    "(np.ascontiguousarray) so that it can be read a block of runs at a time")
    size = offset + math.prod(shape) * dtype.itemsize
    if info.file_size != size:
        raise TrajectoryImportError(f"{src}: {name}: the archive holds {info.file_size} bytes for it; its header "
                                    f"(shape {shape}, {dtype}) needs {size}")
    return SourceArray(src, name, shape, dtype, archive=archive, member=info, offset=offset)


def open_source(src: Path) -> tuple[dict[str, SourceArray], zipfile.ZipFile | None]:
    """The source arrays by name (``weights``, optional ``loss``, ``lr``, ``state/<name>``, ``dataset_seed``),
    headers only, and the open archive of a ``.npz`` (the caller closes it)."""
    problem = file_problem(src)
    if problem == "missing":
        raise TrajectoryImportError(f"{src}: file not found")
    if problem:
        raise TrajectoryImportError(f"{src}: {problem}")
    if src.suffix not in (".npy", ".npz"):
        raise TrajectoryImportError(f"{src}: expected a .npy or .npz file")
    archive = None
    try:
        if src.suffix == ".npy":
            w = np.load(src, mmap_mode="r", allow_pickle=False)
            return {"weights": SourceArray(src, "weights", w.shape, w.dtype, mapped=w)}, None
        archive = zipfile.ZipFile(src)
        out: dict[str, SourceArray] = {}
        for info in archive.infolist():
            name = _array_name(src, info.filename)
            if name in out:
                raise TrajectoryImportError(f"{src}: two arrays named {shorten(info.filename)}; expected each once")
            out[name] = _read_member(src, archive, info, name)
        return out, archive
    except TrajectoryImportError:
        if archive is not None:
            archive.close()
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        # truncated, object dtype (never unpickled), not NumPy, an unknown compression, an encrypted member
        if archive is not None:
            archive.close()
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TrajectoryImportError(f"{src}: not a readable NumPy file ({first})") from None


def check_arrays(src: Path, arrays: dict[str, SourceArray], R: int, T: int) -> None:
    """Shapes and dtypes of every array (headers only)."""
    for key, want in (("loss", (R, T)), ("lr", (R, T)), ("dataset_seed", (R,))):
        if key in arrays and arrays[key].shape != want:
            raise TrajectoryImportError(f"{src}: {key}: got shape {arrays[key].shape}; expected {want}")
    for key, a in arrays.items():
        if key.startswith("eval/"):
            continue  # check_eval
        kinds = "iu" if key == "dataset_seed" else "f"
        if a.dtype.kind not in kinds:
            raise TrajectoryImportError(f"{src}: {key}: got dtype {shorten(str(a.dtype), quote=False)}; expected "
                                        f"{'integers' if kinds == 'iu' else 'floats'}")


def check_eval(src: Path, arrays: dict[str, SourceArray], R: int, loss: str | None) -> None:
    """The evaluation arrays' shapes and dtypes (headers only): both or neither, one (sample, *input_shape)
    and one (sample,) per run, with the rules of gfm.record's ``eval_data`` (:mod:`gfm.store.eval_data`)."""
    x, y = arrays.get("eval/x"), arrays.get("eval/y")
    if x is None and y is None:
        return
    if x is None or y is None:
        raise TrajectoryImportError(f"{src}: {'eval_x' if x is not None else 'eval_y'} without "
                                    f"{'eval_y' if x is not None else 'eval_x'}; evaluation data needs both")
    if x.shape[:1] != (R,) or y.shape[:1] != (R,):
        raise TrajectoryImportError(f"{src}: eval_x {x.shape} / eval_y {y.shape}: expected {R} runs first, as weights")
    problem = shape_problem(x.shape[1:], x.dtype.kind, y.shape[1:], y.dtype.kind, loss)
    if problem:
        raise TrajectoryImportError(f"{src}: eval_{problem} (each run's eval_x is (sample, *input_shape), its eval_y "
                                    "(sample,))")


def source_seeds(src: Path, arrays: dict[str, SourceArray], R: int) -> np.ndarray | None:
    """The ``dataset_seed`` array (run,) as int64, refused outside 0..2**63 - 1; None when there is none."""
    if "dataset_seed" not in arrays:
        return None
    seeds = arrays["dataset_seed"].rows(0, R)
    if (seeds < 0).any() or (seeds > INT64_MAX).any():
        raise TrajectoryImportError(f"{src}: dataset_seed: negative values or values past 2**63 - 1; dataset seeds "
                                    "are integers from 0 to 2**63 - 1")
    return seeds.astype(np.int64)


def check_lr(src: Path, lr: SourceArray, R: int, T: int) -> None:
    """Refuse non-finite or negative learning rates before anything is written (``gfm check`` refuses them in
    every run, diverged or not), reading a block of runs at a time."""
    block = max(1, PART_BYTES // (T * lr.dtype.itemsize))
    for start in range(0, R, block):
        rows = lr.rows(start, min(start + block, R))
        bad = ~(np.isfinite(rows) & (rows >= 0)).all(axis=1)
        if bad.any():
            raise TrajectoryImportError(f"{src}: lr: runs {(start + np.flatnonzero(bad)[:5]).tolist()} hold "
                                        "non-finite or negative learning rates")


def part_runs(T: int, P: int, n_state: int, chunk_runs: int) -> int:
    """Runs read and written at once: whole inner chunks of runs (``chunk_runs``, so no chunk is written
    twice) holding at most :data:`PART_BYTES` of weights and state, and at least one chunk of runs. A block
    (shard) that fits is written in one piece, as ``gfm generate`` writes it."""
    per_run = T * P * 4 * (1 + n_state)
    return max(1, PART_BYTES // (per_run * chunk_runs)) * chunk_runs
