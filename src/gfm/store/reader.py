"""Reading a finished trajectory store (layout: :mod:`gfm.store.arrays`): :func:`open_trajectories` checks its
structure first (:func:`gfm.store.check.inspect_trajectory_store`), then gives typed, lazy access to its arrays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from gfm.artifacts.zarr_files import partial_path
from gfm.base.errors import StoreNotFoundError, StoreSchemaError
from gfm.core.layout import ParamSpec

if TYPE_CHECKING:  # torch is imported where it is used: `gfm split` and `gfm check` never pay for its import
    import torch

__all__ = ["read_runs", "TrajectoryStore", "open_trajectories"]

_NON_HYPER_FIELDS = {"dataset_seed", "index", "diverged", "lr_scale"}


def read_runs(arr: zarr.Array, runs: np.ndarray | list[int], stop: int | None = None) -> np.ndarray:
    """Rows ``runs`` (any order, repeats allowed) of a (run, step, ...) array, steps ``:stop``.

    Each stretch of consecutive run ids is read as one slice: zarr 3's orthogonal (fancy) selection on a
    sharded array was much slower (BENCHMARKS.md, "Forecaster training").
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



class TrajectoryStore:
    """Read-only typed view of a finished store. Array attributes return zarr arrays (index to read)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            hint = " (a .partial store is there: the writer did not finish)" if partial_path(self.path).exists() else ""
            raise StoreNotFoundError(f"{self.path}: no trajectory store here{hint}")
        # The structural level of `gfm check` (gfm.store.check): files, attributes and every array's metadata,
        # no chunk read. A stage never computes on a store that check refuses for its structure.
        from gfm.store.check import inspect_trajectory_store

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

    @property
    def network(self) -> Any:
        """The network's activation and loss (:func:`gfm.core.network.network_of`; a field None: not known)."""
        from gfm.core.network import network_of

        return network_of(self.attrs)

    @property
    def has_eval_data(self) -> bool:
        """Whether the store holds held-out evaluation data (``eval/x``, ``eval/y``: :mod:`gfm.store.eval_data`)."""
        return "eval/x" in self.group and "eval/y" in self.group

    # reads
    def eval_data(self, runs: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The held-out evaluation data of runs ``runs`` (store positions): x (run, sample, *input_shape)
        float32 and y (run, sample) float32 targets or int64 class labels.

        Raises:
            StoreSchemaError: the store holds none (:attr:`has_eval_data`) or a chunk does not decode.
        """
        if not self.has_eval_data:
            raise StoreSchemaError(f"{self.path}: the store holds no evaluation data (eval/x, eval/y)")
        return read_runs(self.group["eval/x"], runs), read_runs(self.group["eval/y"], runs)

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
