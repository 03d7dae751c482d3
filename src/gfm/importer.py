"""``gfm import``: trajectories recorded elsewhere (NumPy arrays) -> a normal trajectory store.

Usage::

    gfm import runs.npz data/imported/runs.zarr                    # metadata from runs.meta.yaml (or .json)
    gfm import weights.npy out.zarr --meta meta.json --params params.yaml   # chunking from params' `store:`

Input:

* ``.npy``: the weights alone, shaped (run, step, param) (memory-mapped, streamed block by block);
* ``.npz``: ``weights`` (run, step, param) and optionally ``loss`` (run, step), ``lr`` (run, step),
  ``state_<name>`` (run, step, param) for the optimizer's state (``momentum_buffer``, ``exp_avg``,
  ``exp_avg_sq``, ``square_avg``) and ``dataset_seed`` (run,). Arrays are read with ``allow_pickle=False``.

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

Hostile inputs: the source is opened only if it is a regular file, with ``allow_pickle=False`` (an object
array is refused, never unpickled); every array's dtype and shape are checked before a value is converted,
and the metadata file is read bounded in size and nesting depth (``gfm.inputs``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfm._version import __version__
from gfm.config import StoreLayoutConfig
from gfm.errors import GFMError
from gfm.optimizers import HYPER_DEFAULTS, HYPER_NAMES, SPECS, STATE_NAMES, momentum_buffer_from_weights
from gfm.tasks.base import ParamSpec, layout_from_shapes

__all__ = ["TrajectoryImportError", "ImportMeta", "read_meta", "import_trajectories", "default_meta_path",
           "momentum_buffer_from_weights"]

# Defaults of hyper-parameters the metadata may leave out: gfm.optimizers.HYPER_DEFAULTS (config's defaults).
_META_KEYS = {"optimizer", "record_every", "steps", "layout", "dataset_seed", "name", "missing_state"}


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
    if unknown:
        raise TrajectoryImportError(f"{source}: unknown keys {sorted(unknown)}; expected some of {sorted(_META_KEYS)}")
    opt = data.get("optimizer")
    if not isinstance(opt, dict) or opt.get("name") not in HYPER_NAMES:
        raise TrajectoryImportError(f"{source}: optimizer.name: got {opt.get('name') if isinstance(opt, dict) else opt!r}; "
                           f"expected one of {', '.join(sorted(HYPER_NAMES))}")
    name = opt["name"]
    allowed = {*HYPER_NAMES[name], "eps", "name"}
    extra = set(opt) - allowed
    if extra:
        raise TrajectoryImportError(f"{source}: optimizer.{sorted(extra)[0]}: not used by {name!r}; it reads "
                           f"{', '.join(sorted(allowed - {'name'}))}")
    if "lr" not in opt:
        raise TrajectoryImportError(f"{source}: optimizer.lr is required")
    hyper = {}
    for key in (*HYPER_NAMES[name], "eps"):
        value = opt.get(key, HYPER_DEFAULTS.get(key))
        arr = np.asarray(value, dtype=np.float64) if isinstance(value, (int, float, list)) and not isinstance(
            value, bool) else None
        if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != n_runs):
            raise TrajectoryImportError(f"{source}: optimizer.{key}: got {value!r}; expected a number or a list of "
                               f"{n_runs} numbers (one per run)")
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise TrajectoryImportError(f"{source}: optimizer.{key}: got {value!r}; expected finite values >= 0")
        hyper[key] = np.broadcast_to(arr, (n_runs,)).copy()
    every = data.get("record_every", 1)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise TrajectoryImportError(f"{source}: record_every: got {every!r}; expected an integer >= 1")
    steps = data.get("steps", (n_steps - 1) * every)
    if steps != (n_steps - 1) * every:
        raise TrajectoryImportError(f"{source}: steps: got {steps!r}; the arrays hold {n_steps} records every {every} steps, "
                           f"i.e. {(n_steps - 1) * every} optimizer steps")
    layout_data = data.get("layout", [{"name": "weights", "shape": [n_params]}])
    try:
        layout = layout_from_shapes([(str(t["name"]), tuple(int(s) for s in t["shape"])) for t in layout_data])
    except (TypeError, KeyError, ValueError):
        raise TrajectoryImportError(f"{source}: layout: expected a list of {{name, shape}} mappings") from None
    size = sum(s.size for s in layout)
    if size != n_params:
        raise TrajectoryImportError(f"{source}: layout: its tensors hold {size} values; the arrays have {n_params} parameters")
    seed_value = data.get("dataset_seed", 0)
    seeds = _seeds(seed_value, n_runs)
    if seeds is None:
        raise TrajectoryImportError(f"{source}: dataset_seed: got {seed_value!r:.80}; expected an integer >= 0 or a "
                                    f"list of {n_runs} (one per run)")
    missing_state = data.get("missing_state", "error")
    if missing_state not in ("error", "zeros"):
        raise TrajectoryImportError(f"{source}: missing_state: got {missing_state!r}; expected error or zeros")
    store_name = str(data.get("name", "imported"))
    if not store_name.replace("_", "").isalnum() or not store_name[:1].isalpha():
        raise TrajectoryImportError(f"{source}: name: got {store_name!r}; use letters, digits and '_', starting with a letter")
    return ImportMeta(name, hyper, every, steps, layout, seeds, store_name, missing_state)


def _seeds(value: Any, n_runs: int) -> np.ndarray | None:
    """Dataset seeds (run,) int64 from an integer or a list of integers >= 0 (they become directory names)."""
    values = value if isinstance(value, list) else [value] * n_runs
    if len(values) != n_runs or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
                                        for v in values):
        return None
    return np.asarray(values, dtype=np.int64)


def _open_source(src: Path) -> dict[str, Any]:
    """The source arrays by name (``weights``, optional ``loss``, ``lr``, ``state/<name>``, ``dataset_seed``)."""
    from gfm.inputs import file_problem

    problem = file_problem(src)
    if problem == "missing":
        raise TrajectoryImportError(f"{src}: file not found")
    if problem:
        raise TrajectoryImportError(f"{src}: {problem}")
    try:
        if src.suffix == ".npy":
            return {"weights": np.load(src, mmap_mode="r", allow_pickle=False)}
        if src.suffix == ".npz":
            z = np.load(src, allow_pickle=False)
            out = {}
            for key in z.files:
                if key in ("weights", "loss", "lr", "dataset_seed"):
                    out[key] = z[key]
                elif key.startswith("state_"):
                    out["state/" + key.removeprefix("state_")] = z[key]
                else:
                    raise TrajectoryImportError(f"{src}: unknown array {key!r}; expected weights, loss, lr, dataset_seed or "
                                       "state_<name>")
            return out
    except (ValueError, OSError, EOFError) as exc:  # truncated, object dtype (never unpickled), not NumPy
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TrajectoryImportError(f"{src}: not a readable NumPy file ({first})") from None
    raise TrajectoryImportError(f"{src}: expected a .npy or .npz file")


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
        TrajectoryImportError: unreadable source, bad shapes or metadata, or an existing ``dest``.
    """
    from gfm.store import create_trajectory_store

    t0 = time.perf_counter()
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise TrajectoryImportError(f"{dest} exists; pass --overwrite to replace it")
    arrays = _open_source(src)
    if "weights" not in arrays:
        raise TrajectoryImportError(f"{src}: no 'weights' array")
    W = arrays["weights"]
    if W.ndim != 3 or W.shape[1] < 2 or 0 in W.shape or W.dtype.kind != "f":
        raise TrajectoryImportError(f"{src}: weights: got {W.dtype} shape {W.shape}; expected floats shaped "
                           "(run, step, param) with at least 2 steps")
    R, T, P = W.shape
    if isinstance(meta, dict):
        meta_data, meta_src = meta, "meta"
    else:
        meta_path = Path(meta) if meta is not None else default_meta_path(src)
        if meta_path is None:
            raise TrajectoryImportError(f"{src}: no metadata file; write {src.stem}.meta.yaml beside it or pass --meta")
        meta_data, meta_src = _load_meta_file(meta_path), str(meta_path)
    m = read_meta(meta_data, n_runs=R, n_steps=T, n_params=P, source=meta_src)
    for key, want in (("loss", (R, T)), ("lr", (R, T)), ("dataset_seed", (R,))):
        if key in arrays and arrays[key].shape != want:
            raise TrajectoryImportError(f"{src}: {key}: got shape {arrays[key].shape}; expected {want}")
    for key, a in arrays.items():
        kinds = "iu" if key == "dataset_seed" else "f"
        if a.dtype.kind not in kinds:
            raise TrajectoryImportError(f"{src}: {key}: got dtype {a.dtype}; expected "
                                        f"{'integers' if kinds == 'iu' else 'floats'}")
    if "dataset_seed" in arrays and (arrays["dataset_seed"] < 0).any():
        raise TrajectoryImportError(f"{src}: dataset_seed: negative values; dataset seeds are integers >= 0")
    if "lr" in arrays:
        bad = ~(np.isfinite(arrays["lr"]) & (arrays["lr"] >= 0)).all(axis=1)
        if bad.any():
            raise TrajectoryImportError(f"{src}: lr: runs {np.flatnonzero(bad)[:5].tolist()} hold non-finite or "
                                        "negative learning rates")
    seeds = arrays["dataset_seed"].astype(np.int64) if "dataset_seed" in arrays else m.dataset_seed
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
        "loss_source": "none" if "loss" not in arrays else "imported",
        "versions": {"gfm": __version__, "numpy": np.__version__, "zarr": __import__("zarr").__version__},
    }
    writer = create_trajectory_store(dest, n_runs=R, n_records=T, layout=m.layout, state_names=state_names,
                                     run_fields=run_fields, chunks=chunks, attrs=attrs, resume=False)
    for b in range(writer.n_blocks):
        rows = writer.block_range(b)
        sl = slice(rows.start, rows.stop)
        w = np.asarray(W[sl], dtype=np.float32)  # (block, step, param)
        lr = (np.asarray(arrays["lr"][sl], dtype=np.float32) if "lr" in arrays
              else np.repeat(m.hyper["lr"][sl, None], T, axis=1).astype(np.float32))
        loss = (np.asarray(arrays["loss"][sl], dtype=np.float32) if "loss" in arrays
                else np.full((len(rows), T), np.nan, dtype=np.float32))
        block = {"weights": w, "loss": loss, "lr": lr, "final/weights": w[:, -1], "final/loss": loss[:, -1]}
        rebuilt = {}
        if any(v.startswith("reconstructed") for v in filled.values()):
            rebuilt = SPECS[m.optimizer].state_from_weights(w, lr, {h: m.hyper[h][sl] for h in hyper_names})
        for s in state_names:
            key = f"state/{s}"
            if key in arrays:
                block[key] = np.asarray(arrays[key][sl], dtype=np.float32)
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
        writer.write_block(b, block)
    n_diverged = int(writer.group["runs/diverged"][:].sum())
    writer.finish()
    return {"store": str(dest), "runs": R, "records": T, "params": P, "optimizer": m.optimizer,
            "diverged": n_diverged, "filled": filled, "seconds": round(time.perf_counter() - t0, 3)}
