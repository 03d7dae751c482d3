"""``gfm import``: trajectories recorded elsewhere (NumPy arrays) -> a normal trajectory store.

Usage::

    gfm import runs.npz data/imported/runs.zarr                    # metadata from runs.meta.yaml (or .json)
    gfm import weights.npy out.zarr --meta meta.json --params params.yaml   # chunking from params' `store:`

Input:

* ``.npy``: the weights alone, shaped (run, step, param) (memory-mapped, streamed block by block);
* ``.npz``: ``weights`` (run, step, param) and optionally ``loss`` (run, step), ``lr`` (run, step),
  ``state_<name>`` (run, step, param) for the optimizer's state (``momentum_buffer``, ``exp_avg``,
  ``exp_avg_sq``, ``square_avg``), ``dataset_seed`` (run,) and held-out evaluation data ``eval_x`` (run,
  sample, *input_shape) floats with ``eval_y`` (run, sample) float targets or integer class labels (both or
  neither; stored as ``eval/x``, ``eval/y``, :mod:`gfm.eval_data`), each in C order (what ``np.savez`` writes for
  an ordinary array). Only each array's header is read up front; the data is streamed out of the archive
  as the store is written, a part of a block of runs at a time (at most ``PART_BYTES`` of weights and
  state), so memory holds a part, whatever the arrays expand to.

Step s of the arrays is optimizer step ``s * record_every``; step 0 is the initialisation.

Metadata (YAML, safe loader, or JSON)::

    optimizer: {name: momentum, lr: 0.01, momentum: 0.9}   # sgd | momentum | nesterov | adam | adamw | rmsprop; a hyper-parameter
                                                            # is a number or a list with one value per run
    record_every: 1            # optional (1)
    steps: 200                 # optional ((n_step - 1) * record_every); must equal it
    layout:                    # optional: the tensors of the flat vector, in order (default one tensor
      - {name: 0.weight, shape: [10, 1]}                   # "weights" of shape [param]); load_into uses it
      - {name: 0.bias, shape: [10]}
    dataset_seed: 0            # optional: one seed for all runs, or a list (overridden by the npz array)
    name: imported             # optional: the store's task name (key <name>-<optimizer>)
    missing_state: error       # optional: error | zeros, when the optimizer has state and the npz lacks it
    activation: tanh           # optional: the activation between the layers (gfm.network.ACTIVATIONS), null
    loss: mse                  # optional: the training loss (mse | cross_entropy | least_squares), null

``activation`` and ``loss`` go into the store's root attribute ``network`` (absent = null = not known): a
forecaster that rebuilds the network's function (``gfm_function``) refuses a store whose activation is not
known rather than assume one. A ``.npy`` source carries no evaluation data.

Missing pieces are filled the way the rest of the pipeline expects, and said so in the store's attributes:
``lr`` = the run's ``lr`` at every step; a missing momentum buffer is reconstructed exactly from the weights
when ``record_every`` is 1 (momentum: w_k = w_{k-1} - lr_{k-1} b_k; nesterov: w_k = w_{k-1} - lr_{k-1}
((1 + mu) b_k - mu b_{k-1}) from b_0 = 0, the start of training); other missing state is an error unless
``missing_state: zeros``; a missing ``loss`` is NaN (``loss_source: none``), and then ``diverged`` only looks
at the weights (and state).

Why NaN for a loss that was not recorded: any number would be a lie that evaluate would score as a training
loss; NaN cannot be mistaken for one, and the attribute ``loss_source: none`` tells readers (and ``gfm
check``, which accepts NaN loss only under that attribute, and then requires it to be NaN everywhere) that
no loss exists. The forecasters never read the loss.

Hostile inputs: the source is opened only if it is a regular file; an array header naming an object dtype is
refused, never unpickled; every array's dtype, shape and byte size are checked before a value is read, and
the metadata file is read bounded in size and nesting depth (``gfm.inputs``). What ``gfm check`` would refuse
in the store (a layout of negative, zero or non-integer sizes, tensor names it does not accept or that repeat,
a non-integer ``steps``) is refused before anything is written; the written store is then checked with
``gfm check``'s own rules before it is flagged complete and put in place, and removed if it fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from gfm._version import __version__
from gfm.config import StoreLayoutConfig
from gfm.errors import GFMError, shorten
from gfm.eval_data import shape_problem, value_problem
from gfm.network import ACTIVATIONS, LOSSES, Network
from gfm.optimizers import HYPER_DEFAULTS, HYPER_NAMES, SPECS, STATE_NAMES, momentum_buffer_from_weights
from gfm.schema import is_name
from gfm.tasks.base import ParamSpec, layout_from_shapes

__all__ = ["TrajectoryImportError", "ImportMeta", "read_meta", "import_trajectories", "default_meta_path",
           "momentum_buffer_from_weights"]

# Defaults of hyper-parameters the metadata may leave out: gfm.optimizers.HYPER_DEFAULTS (config's defaults).
_META_KEYS = {"optimizer", "record_every", "steps", "layout", "dataset_seed", "name", "missing_state", "activation",
              "loss"}
_INT64_MAX = int(np.iinfo(np.int64).max)
PART_BYTES = 64 << 20
"""Most weights and optimizer state an import holds in memory at once (as float32), in whole inner chunks of
runs; the source is read as it is written, a part of a block at a time."""
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")  # what gfm check accepts (store_check._layout_problems)


class TrajectoryImportError(GFMError, ValueError):
    """The source arrays or their metadata cannot be imported; the message names the bad value."""


@dataclass(frozen=True)
class ImportMeta:
    """Validated metadata of an import."""

    optimizer: str
    hyper: dict[str, np.ndarray]  # name -> (run,) float64, including eps
    record_every: int
    steps: int
    layout: tuple[ParamSpec, ...]
    dataset_seed: np.ndarray  # (run,) int64
    name: str
    missing_state: str
    network: Network = Network(None, None)


def default_meta_path(src: Path) -> Path | None:
    """``runs.npz`` -> the first of ``runs.meta.yaml``, ``runs.meta.yml``, ``runs.meta.json`` that exists."""
    for ext in (".meta.yaml", ".meta.yml", ".meta.json"):
        p = src.with_name(src.stem + ext)
        if p.is_file():
            return p
    return None


def _load_meta_file(path: Path) -> dict[str, Any]:
    from gfm.inputs import MAX_JSON_DEPTH, json_depth, parse_json, read_bytes
    from gfm.params_yaml import YAMLRefused, parse_yaml

    if not path.exists() and not path.is_symlink():
        raise TrajectoryImportError(f"{path}: metadata file not found")
    raw = read_bytes(path, 1 << 20, error=TrajectoryImportError)  # metadata is a few lines
    if path.suffix == ".json":
        data = parse_json(raw, str(path), error=TrajectoryImportError)
    else:
        try:  # the params loader: alias expansion, nesting and duplicate keys are bounded there too
            data = parse_yaml(raw.decode("utf-8"), max_depth=MAX_JSON_DEPTH)
        except UnicodeDecodeError:
            raise TrajectoryImportError(f"{path}: not UTF-8 text") from None
        except YAMLRefused as exc:
            raise TrajectoryImportError(f"{path}: {exc}") from None
        if json_depth(data) > MAX_JSON_DEPTH:
            raise TrajectoryImportError(f"{path}: YAML nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(data, dict):
        raise TrajectoryImportError(f"{path}: expected a mapping with at least `optimizer: {{name: ..., lr: ...}}`")
    return data


def read_meta(data: dict[str, Any], *, n_runs: int, n_steps: int, n_params: int, source: str = "meta") -> ImportMeta:
    """Validate metadata against the array shapes.

    Raises:
        TrajectoryImportError: unknown keys, bad optimizer or hyper-parameters, layout or steps that do not fit.
    """
    unknown = set(data) - _META_KEYS
    if unknown:  # keys of any type (YAML): sorted as text
        raise TrajectoryImportError(f"{source}: unknown keys {shorten(sorted(unknown, key=str))}; expected some of "
                                    f"{sorted(_META_KEYS)}")
    opt = data.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("name"), str) or opt["name"] not in HYPER_NAMES:
        raise TrajectoryImportError(f"{source}: optimizer.name: got "
                                    f"{shorten(opt.get('name') if isinstance(opt, dict) else opt)}; "
                                    f"expected one of {', '.join(sorted(HYPER_NAMES))}")
    name = opt["name"]
    allowed = {*HYPER_NAMES[name], "eps", "name"}
    extra = set(opt) - allowed
    if extra:
        raise TrajectoryImportError(f"{source}: optimizer.{shorten(sorted(extra, key=str)[0], quote=False)}: not used "
                                    f"by {name!r}; it reads {', '.join(sorted(allowed - {'name'}))}")
    if "lr" not in opt:
        raise TrajectoryImportError(f"{source}: optimizer.lr is required")
    hyper = {}
    for key in (*HYPER_NAMES[name], "eps"):
        value = opt.get(key, HYPER_DEFAULTS.get(key))
        hyper[key] = _per_run(value, n_runs, _rate)
        if hyper[key] is None:
            raise TrajectoryImportError(f"{source}: optimizer.{key}: got {shorten(value)}; expected a finite number "
                                        f">= 0, or a list of {n_runs} numbers (one per run), each finite and >= 0")
    every = data.get("record_every", 1)
    top = _INT64_MAX // (n_steps - 1)  # steps = (records - 1) * record_every must be an int64
    if not _is_int(every) or not 1 <= every <= top:
        raise TrajectoryImportError(f"{source}: record_every: got {shorten(every)}; expected an integer from 1 to "
                                    f"{top}")
    steps = data.get("steps", (n_steps - 1) * every)
    if not _is_int(steps) or steps != (n_steps - 1) * every:
        raise TrajectoryImportError(f"{source}: steps: got {shorten(steps)}; the arrays hold {n_steps} records every "
                                    f"{every} steps, i.e. {(n_steps - 1) * every} optimizer steps: expected that "
                                    "integer, or no steps key")
    layout = _layout(data.get("layout", [{"name": "weights", "shape": [n_params]}]), n_params, source)
    seed_value = data.get("dataset_seed", 0)
    seeds = _per_run(seed_value, n_runs, _seed)
    if seeds is None:
        raise TrajectoryImportError(f"{source}: dataset_seed: got {shorten(seed_value)}; expected an integer >= 0 or "
                                    f"a list of {n_runs} (one per run), each at most 2**63 - 1")
    missing_state = data.get("missing_state", "error")
    if missing_state not in ("error", "zeros"):
        raise TrajectoryImportError(f"{source}: missing_state: got {shorten(missing_state)}; expected error or zeros")
    store_name = data.get("name", "imported")
    if not isinstance(store_name, str) or not is_name(store_name):
        raise TrajectoryImportError(f"{source}: name: got {shorten(store_name)}; use letters, digits and '_', "
                                    "starting with a letter")
    network = {}
    for key, names in (("activation", ACTIVATIONS), ("loss", LOSSES)):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or value not in names):
            raise TrajectoryImportError(f"{source}: {key}: got {shorten(value)}; expected one of {', '.join(names)}, "
                                        "or null (not known)")
        network[key] = value
    return ImportMeta(name, hyper, every, steps, layout, seeds, store_name, missing_state, Network(**network))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _rate(value: Any) -> float | None:
    """A hyper-parameter: a finite number >= 0 (not a bool, a string or a number too large for a float)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seed(value: Any) -> int | None:
    """A dataset seed: an integer from 0 to 2**63 - 1 (they are int64 arrays and directory names)."""
    return int(value) if _is_int(value) and 0 <= value <= _INT64_MAX else None


def _per_run(value: Any, n_runs: int, one) -> np.ndarray | None:
    """(run,) values from one value or a list of ``n_runs`` of them, each through ``one`` (``_rate``: float64,
    ``_seed``: int64); None when the list has another length or ``one`` refuses an item."""
    if isinstance(value, list):
        parsed = [one(v) for v in value] if len(value) == n_runs else [None]
    else:
        parsed = [one(value)] * n_runs
    if any(v is None for v in parsed):
        return None
    return np.asarray(parsed, dtype=np.float64 if one is _rate else np.int64)


def _layout(data: Any, n_params: int, source: str) -> tuple[ParamSpec, ...]:
    """The tensors of the flat vector, refused with the rules of ``gfm check`` (store_check._layout_problems):
    a non-empty list of ``{name, shape}``, names unique and of letters, digits, '_' and '.', sizes integers >= 1
    adding up to the number of parameters."""
    if not isinstance(data, list) or not data:
        raise TrajectoryImportError(f"{source}: layout: got {shorten(data)}; expected a non-empty list of "
                                    "{name, shape} mappings")
    named, seen, total = [], {}, 0
    for i, t in enumerate(data):
        if not isinstance(t, dict) or set(t) != {"name", "shape"}:
            raise TrajectoryImportError(f"{source}: layout[{i}]: got {shorten(t)}; expected a mapping of exactly "
                                        "name and shape")
        name, shape = t["name"], t["shape"]
        if not isinstance(name, str) or _TENSOR_NAME.fullmatch(name) is None:
            raise TrajectoryImportError(f"{source}: layout[{i}].name: got {shorten(name)}; expected letters, digits, "
                                        "'_' and '.', not starting with '.' (e.g. 0.weight)")
        if name in seen:
            raise TrajectoryImportError(f"{source}: layout[{i}].name: {name!r} is also the name of layout[{seen[name]}]; "
                                        "tensor names must be unique")
        seen[name] = i
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 1 for n in shape):
            raise TrajectoryImportError(f"{source}: layout[{i}].shape: got {shorten(shape)}; expected a list of "
                                        "integers >= 1")
        total += math.prod(shape)
        if total > n_params:  # also stops products of huge numbers early
            break
        named.append((name, tuple(int(n) for n in shape)))
    if total != n_params:
        held = f"more than {n_params}" if total > n_params else str(total)
        raise TrajectoryImportError(f"{source}: layout: its tensors hold {held} values; the arrays have {n_params} "
                                    "parameters")
    return layout_from_shapes(named)


class _Array:
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


def _read_member(src: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> _Array:
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
    return _Array(src, name, shape, dtype, archive=archive, member=info, offset=offset)


def _open_source(src: Path) -> tuple[dict[str, _Array], zipfile.ZipFile | None]:
    """The source arrays by name (``weights``, optional ``loss``, ``lr``, ``state/<name>``, ``dataset_seed``),
    headers only, and the open archive of a ``.npz`` (the caller closes it)."""
    from gfm.inputs import file_problem

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
            return {"weights": _Array(src, "weights", w.shape, w.dtype, mapped=w)}, None
        archive = zipfile.ZipFile(src)
        out: dict[str, _Array] = {}
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
def import_trajectories(src: str | Path, dest: str | Path, *, meta: str | Path | dict | None = None,
                        chunks: StoreLayoutConfig | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the trajectories of ``src`` as a trajectory store at ``dest``.

    Args:
        src: a ``.npy`` (weights) or ``.npz`` file, see the module docstring.
        dest: the ``.zarr`` store to create.
        meta: metadata file path or mapping (default: ``<src stem>.meta.yaml|.yml|.json`` beside ``src``).
        chunks: Zarr chunking (default: ``StoreLayoutConfig()``, the defaults of params' ``store:``).
        overwrite: replace an existing store at ``dest``.

    Returns:
        A summary: runs, records, params, optimizer, what was filled in, seconds.

    Raises:
        TrajectoryImportError: unreadable source, bad shapes or metadata, an existing ``dest``, or a written
            store that ``gfm check`` would refuse (then nothing is put at ``dest``).
    """
    t0 = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise TrajectoryImportError(f"{dest} exists; pass --overwrite to replace it")
    arrays, archive = _open_source(src)
    try:
        summary = _import(src, dest, arrays, meta, chunks)
    finally:
        for a in arrays.values():
            a.close()
        if archive is not None:
            archive.close()
    return {**summary, "seconds": round(time.perf_counter() - t0, 3)}


def _check_arrays(src: Path, arrays: dict[str, _Array], R: int, T: int) -> None:
    """Shapes and dtypes of every array (headers only)."""
    for key, want in (("loss", (R, T)), ("lr", (R, T)), ("dataset_seed", (R,))):
        if key in arrays and arrays[key].shape != want:
            raise TrajectoryImportError(f"{src}: {key}: got shape {arrays[key].shape}; expected {want}")
    for key, a in arrays.items():
        if key.startswith("eval/"):
            continue  # _check_eval
        kinds = "iu" if key == "dataset_seed" else "f"
        if a.dtype.kind not in kinds:
            raise TrajectoryImportError(f"{src}: {key}: got dtype {shorten(str(a.dtype), quote=False)}; expected "
                                        f"{'integers' if kinds == 'iu' else 'floats'}")


def _check_eval(src: Path, arrays: dict[str, _Array], R: int, loss: str | None) -> None:
    """The evaluation arrays' shapes and dtypes (headers only): both or neither, one (sample, *input_shape)
    and one (sample,) per run, with the rules of gfm.record's ``eval_data`` (:mod:`gfm.eval_data`)."""
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


_EVAL_CHUNK_BYTES = 8 << 20  # most bytes of eval/x in one chunk (whole runs, at least one)


def _write_eval(src: Path, writer: Any, arrays: dict[str, _Array], rows: range, chunk_runs: int) -> None:
    """Copy the evaluation data of the runs ``rows`` into the store, a chunk of runs at a time, refusing
    non-finite inputs or targets and negative labels as they stream past."""
    x_src, y_src = arrays["eval/x"], arrays["eval/y"]
    for start in range(rows.start, rows.stop, chunk_runs):
        stop = min(start + chunk_runs, rows.stop)
        with np.errstate(over="ignore"):  # past float32's range becomes Inf, refused below
            x = np.asarray(x_src.rows(start, stop), dtype=np.float32)
            y_raw = y_src.rows(start, stop)
            if y_raw.dtype.kind in "iu" and y_raw.size and (int(y_raw.min()) < 0 or int(y_raw.max()) > _INT64_MAX):
                raise TrajectoryImportError(f"{src}: eval_y: runs {start}..{stop - 1} hold class labels below 0 or "
                                            "past 2**63 - 1")
            y = np.asarray(y_raw, dtype=np.float32 if y_raw.dtype.kind == "f" else np.int64)
        problem = value_problem(x, y)
        if problem:
            raise TrajectoryImportError(f"{src}: eval data of runs {start}..{stop - 1}: {problem}")
        writer.write_rows(start, {"eval/x": x, "eval/y": y})


def _eval_chunk_runs(x: _Array, block: int) -> int:
    """Runs per chunk of ``eval/x``: the most whole runs within :data:`_EVAL_CHUNK_BYTES` that divide a block
    of the store (so that no chunk belongs to two blocks), at least one."""
    per_run = max(1, math.prod(x.shape[1:]) * 4)
    return max(d for d in range(1, block + 1) if block % d == 0 and (d == 1 or d * per_run <= _EVAL_CHUNK_BYTES))


def _source_seeds(src: Path, arrays: dict[str, _Array], R: int) -> np.ndarray | None:
    """The ``dataset_seed`` array (run,) as int64, refused outside 0..2**63 - 1; None when there is none."""
    if "dataset_seed" not in arrays:
        return None
    seeds = arrays["dataset_seed"].rows(0, R)
    if (seeds < 0).any() or (seeds > _INT64_MAX).any():
        raise TrajectoryImportError(f"{src}: dataset_seed: negative values or values past 2**63 - 1; dataset seeds "
                                    "are integers from 0 to 2**63 - 1")
    return seeds.astype(np.int64)


def _check_lr(src: Path, lr: _Array, R: int, T: int) -> None:
    """Refuse non-finite or negative learning rates before anything is written (``gfm check`` refuses them in
    every run, diverged or not), reading a block of runs at a time."""
    block = max(1, PART_BYTES // (T * lr.dtype.itemsize))
    for start in range(0, R, block):
        rows = lr.rows(start, min(start + block, R))
        bad = ~(np.isfinite(rows) & (rows >= 0)).all(axis=1)
        if bad.any():
            raise TrajectoryImportError(f"{src}: lr: runs {(start + np.flatnonzero(bad)[:5]).tolist()} hold "
                                        "non-finite or negative learning rates")


def _import(src: Path, dest: Path, arrays: dict[str, _Array], meta: str | Path | dict | None,
            chunks: StoreLayoutConfig | None) -> dict[str, Any]:
    from gfm.store import create_eval_arrays, create_trajectory_store

    if "weights" not in arrays:
        raise TrajectoryImportError(f"{src}: no 'weights' array")
    W = arrays["weights"]
    if W.ndim != 3 or W.shape[1] < 2 or 0 in W.shape or W.dtype.kind != "f":
        raise TrajectoryImportError(f"{src}: weights: got {shorten(str(W.dtype), quote=False)} shape {W.shape}; expected floats "
                                    "shaped (run, step, param) with at least 2 steps")
    R, T, P = W.shape
    if isinstance(meta, dict):
        meta_data, meta_src = meta, "meta"
    else:
        meta_path = Path(meta) if meta is not None else default_meta_path(src)
        if meta_path is None:
            raise TrajectoryImportError(f"{src}: no metadata file; write {src.stem}.meta.yaml beside it or pass --meta")
        meta_data, meta_src = _load_meta_file(meta_path), str(meta_path)
    m = read_meta(meta_data, n_runs=R, n_steps=T, n_params=P, source=meta_src)
    _check_arrays(src, arrays, R, T)
    _check_eval(src, arrays, R, m.network.loss)
    given_seeds = _source_seeds(src, arrays, R)
    if "lr" in arrays:
        _check_lr(src, arrays["lr"], R, T)
    seeds = given_seeds if given_seeds is not None else m.dataset_seed
    state_names = STATE_NAMES[m.optimizer]
    unexpected = sorted(k for k in arrays if k.startswith("state/") and k[6:] not in state_names)
    if unexpected:
        raise TrajectoryImportError(f"{src}: {unexpected[0]} is not state of {m.optimizer} (it keeps {list(state_names) or 'none'})")
    filled: dict[str, str] = {}
    for s in state_names:
        key = f"state/{s}"
        if key in arrays:
            if arrays[key].shape != W.shape:
                raise TrajectoryImportError(f"{src}: state_{s}: got shape {arrays[key].shape}; expected {W.shape}")
        elif SPECS[m.optimizer].state_from_weights is not None and m.record_every == 1:  # momentum, nesterov
            filled[key] = "reconstructed from the weights (record_every 1)"
        elif m.missing_state == "zeros":
            filled[key] = "zeros (missing_state: zeros)"
        else:
            raise TrajectoryImportError(f"{src}: no state_{s} array: the {m.optimizer} state cannot be recovered from the "
                               "weights; add it to the npz, or set `missing_state: zeros` in the metadata (an "
                               "optimizer-aware forecaster will then start from zero state)")
    if "lr" not in arrays:
        filled["lr"] = "the run's lr at every step"
    if "loss" not in arrays:
        filled["loss"] = "NaN (no loss given)"

    chunks = chunks or StoreLayoutConfig()
    if R < chunks.shard_runs and R % min(chunks.chunk_runs, R):
        # store.py makes a store of fewer runs than shard_runs one shard of R runs, which zarr can only split
        # into inner chunks of a divisor of R: take the largest divisor <= chunk_runs
        chunk_runs = max(d for d in range(1, min(chunks.chunk_runs, R) + 1) if R % d == 0)
        chunks = dataclasses.replace(chunks, chunk_runs=chunk_runs, shard_runs=R)
    hyper_names = [*HYPER_NAMES[m.optimizer], "eps"]
    run_fields = {"dataset_seed": np.dtype("int64"), "index": np.dtype("int64"), "lr_scale": np.dtype("float64"),
                  "diverged": np.dtype("bool"), **{h: np.dtype("float64") for h in hyper_names}}
    index = np.zeros(R, dtype=np.int64)  # position of each run among the runs of its dataset seed
    for d in np.unique(seeds):
        index[seeds == d] = np.arange(int((seeds == d).sum()))
    attrs = {
        "store": f"{m.name}-{m.optimizer}", "task_name": m.name, "seed": None,
        "dataset_seeds": sorted(int(d) for d in np.unique(seeds)),
        "task": {"kind": "imported", "steps": m.steps, "record_every": m.record_every},
        "optimizer": {"name": m.optimizer, **{h: (float(m.hyper[h][0]) if np.all(m.hyper[h] == m.hyper[h][0])
                                                  else "per run") for h in hyper_names},
                      "schedule": {"kind": "imported"}},
        "state_names": list(state_names), "source": f"gfm import {src.name}", "filled": filled,
        "loss_source": "none" if "loss" not in arrays else "imported", "network": m.network.as_attr(),
        "versions": {"gfm": __version__, "numpy": np.__version__, "zarr": __import__("zarr").__version__},
    }
    _refuse_what_check_refuses(src, attrs, m.layout, R, T, P)
    writer = create_trajectory_store(dest, n_runs=R, n_records=T, layout=m.layout, state_names=state_names,
                                     run_fields=run_fields, chunks=chunks, attrs=attrs, resume=False)
    part = _part_runs(T, P, len(state_names), chunks.chunk_runs)
    has_eval = "eval/x" in arrays
    try:
        if has_eval:
            eval_runs = _eval_chunk_runs(arrays["eval/x"], writer.block_runs)
            create_eval_arrays(writer.group, n_runs=R, x_shape=arrays["eval/x"].shape[1:], run_chunk=eval_runs,
                               y_dtype="float32" if arrays["eval/y"].dtype.kind == "f" else "int64", chunks=chunks)
        for b in range(writer.n_blocks):
            rows = writer.block_range(b)
            for start in range(rows.start, rows.stop, part):
                sub = range(start, min(start + part, rows.stop))
                writer.write_rows(start, _block(arrays, m, filled, seeds, index, sub, T))
            if has_eval:
                _write_eval(src, writer, arrays, rows, eval_runs)
            writer.mark_done(b)
        n_diverged = int(writer.group["runs/diverged"][:].sum())
        writer.finish(verify=lambda tmp: _verify(tmp, dest))
    except BaseException as exc:
        # what this import wrote is of no use to anyone (an import never resumes): gone, lock released
        writer.release()
        shutil.rmtree(writer.tmp, ignore_errors=True)
        if isinstance(exc, (OSError, EOFError, zipfile.BadZipFile, zlib.error)):  # the archive, past its headers
            raise TrajectoryImportError(f"{src}: not a readable NumPy file ({type(exc).__name__}: "
                                        f"{shorten(str(exc), 160, quote=False)})") from None
        raise
    return {"store": str(dest), "runs": R, "records": T, "params": P, "optimizer": m.optimizer,
            "diverged": n_diverged, "filled": filled, "network": m.network.as_attr(),
            "eval_samples": int(arrays["eval/x"].shape[1]) if has_eval else 0}


def _part_runs(T: int, P: int, n_state: int, chunk_runs: int) -> int:
    """Runs read and written at once: whole inner chunks of runs (``chunk_runs``, so no chunk is written
    twice) holding at most :data:`PART_BYTES` of weights and state, and at least one chunk of runs. A block
    (shard) that fits is written in one piece, as ``gfm generate`` writes it."""
    per_run = T * P * 4 * (1 + n_state)
    return max(1, PART_BYTES // (per_run * chunk_runs)) * chunk_runs


def _block(arrays: dict[str, _Array], m: ImportMeta, filled: dict[str, str], seeds: np.ndarray,
           index: np.ndarray, rows: range, T: int) -> dict[str, np.ndarray]:
    """Every array's values for the runs ``rows``: read from the source, or filled in as ``filled`` says."""
    state_names = STATE_NAMES[m.optimizer]
    hyper_names = [*HYPER_NAMES[m.optimizer], "eps"]
    sl = slice(rows.start, rows.stop)
    w = np.asarray(arrays["weights"].rows(rows.start, rows.stop), dtype=np.float32)  # (block, step, param)
    lr = (np.asarray(arrays["lr"].rows(rows.start, rows.stop), dtype=np.float32) if "lr" in arrays
          else np.repeat(m.hyper["lr"][sl, None], T, axis=1).astype(np.float32))
    loss = (np.asarray(arrays["loss"].rows(rows.start, rows.stop), dtype=np.float32) if "loss" in arrays
            else np.full((len(rows), T), np.nan, dtype=np.float32))
    block = {"weights": w, "loss": loss, "lr": lr, "final/weights": w[:, -1], "final/loss": loss[:, -1]}
    rebuilt = {}
    if any(v.startswith("reconstructed") for v in filled.values()):
        rebuilt = SPECS[m.optimizer].state_from_weights(w, lr, {h: m.hyper[h][sl] for h in hyper_names})
    for s in state_names:
        key = f"state/{s}"
        if key in arrays:
            block[key] = np.asarray(arrays[key].rows(rows.start, rows.stop), dtype=np.float32)
        elif key in filled and filled[key].startswith("reconstructed"):
            block[key] = rebuilt[s]
        else:
            block[key] = np.zeros_like(w)
    finite = np.isfinite(w).reshape(len(rows), -1).all(1)
    if "loss" in arrays:
        finite &= np.isfinite(loss).all(1)
    for s in state_names:  # a run whose state is not finite cannot be forecast from: flag it like check does
        finite &= np.isfinite(block[f"state/{s}"]).reshape(len(rows), -1).all(1)
    block.update({"runs/dataset_seed": seeds[sl], "runs/index": index[sl], "runs/lr_scale": np.ones(len(rows)),
                  "runs/diverged": ~finite, **{f"runs/{h}": m.hyper[h][sl] for h in hyper_names}})
    return block


def _refuse_what_check_refuses(src: Path, attrs: dict[str, Any], layout: tuple[ParamSpec, ...], R: int, T: int,
                               P: int) -> None:
    """The attributes the store will have, through ``gfm check``'s rules for them, before anything is written
    (read_meta refuses each case with a more precise message first; this keeps the two from drifting)."""
    from gfm.store_check import _attr_problems

    planned = {**attrs, "layout": [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in layout],
               "n_runs": R, "n_records": T, "n_params": P, "block_runs": 1}
    problems = _attr_problems(json.loads(json.dumps(planned)))
    if problems:
        raise TrajectoryImportError(f"{src}: gfm check would refuse the store: {problems[0]}")


def _verify(tmp: Path, dest: Path) -> None:
    """``gfm check`` of the written store, before it is put in place (every chunk decoded, a bounded block of
    runs at a time)."""
    from gfm.store_check import check_problem

    problem = check_problem(tmp)
    if problem:
        raise TrajectoryImportError(f"{dest}: the written store fails gfm check ({problem}); nothing was put in place")
