"""One interface for every forecaster (docs/architecture.md §4), a registry, and pickle-free save/load.

Usage::

    fc = make_forecaster("linear", {}, prefix_end=20, horizons=[40, 60, 200])
    fc.fit(train, val, rng=torch.Generator().manual_seed(0))      # Trajectories of whole runs
    pred = fc.forecast(test.prefix(20), horizons=[40, 60, 200])    # (run, horizon, param)
    fc.save("data/models/mlp_regression/sgd/linear")              # weights.safetensors + config.json
    fc2 = load_forecaster("data/models/mlp_regression/sgd/linear")

Step indices (``prefix_end``, ``horizons``) count *recorded* steps: index j is optimizer step
j * record_every. A forecaster is built for one prefix length and one set of horizons (sequence models learn
exactly that mapping); ``forecast`` accepts any subset of the fitted horizons and refuses a prefix shorter
than it needs.

Saved models hold only ``config.json`` and ``weights.safetensors``: a model pulled from a shared DVC remote
cannot run code. ``load_forecaster`` refuses unknown kinds, non-float32 tensors, oversized headers and
tensor names that are not plain identifiers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gfm.errors import GFMError
from gfm.outputs import MODEL, discard_temp, open_temp_dir, replace_output

__all__ = [
    "Trajectories", "Forecaster", "FORECASTERS", "register", "make_forecaster", "load_forecaster",
    "ForecasterError", "ModelFileError", "FORMAT", "FORMAT_VERSION",
]

FORMAT = "gfm-forecaster"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a safetensors header larger than this is refused unread
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class ForecasterError(GFMError, ValueError):
    """Bad forecaster name, config or input (e.g. a prefix shorter than the model needs)."""


class ModelFileError(GFMError, ValueError):
    """A saved model directory is missing, malformed or unsafe."""


@dataclass
class Trajectories:
    """Recorded trajectories of N runs, as torch tensors (float32).

    Attributes:
        weights: (run, record, param).
        lr: (run, record) learning rate in force for the update leaving each record.
        states: optimizer state arrays by name, each (run, record, param) (may be empty).
        hyper: per-run hyper-parameters by name, each (run,) (``lr`` already includes the task's lr_scale).
        optimizer: a name of ``gfm.optimizers.STATE_NAMES`` (``sgd``, ``momentum``, ``adam``, ...).
        record_every: optimizer steps between records.
        steps: total optimizer steps of a full run (m); record j is at time t = j * record_every / steps.
        run_ids: (run,) positions of these runs in their store (for bookkeeping).
        layout: the tensors of the flat parameter vector (the store's layout), when known.
    """

    weights: torch.Tensor
    lr: torch.Tensor
    optimizer: str
    record_every: int
    steps: int
    states: dict[str, torch.Tensor] = field(default_factory=dict)
    hyper: dict[str, torch.Tensor] = field(default_factory=dict)
    run_ids: np.ndarray | None = None
    layout: tuple[Any, ...] | None = None  # gfm.layout.ParamSpec, in flat-vector order

    @property
    def n_runs(self) -> int:
        return self.weights.shape[0]

    @property
    def n_records(self) -> int:
        return self.weights.shape[1]

    @property
    def n_params(self) -> int:
        return self.weights.shape[2]

    def prefix(self, k: int) -> Trajectories:
        """Records 0..k (inclusive) only: what a forecaster may see at test time."""
        if not 0 <= k < self.n_records:
            raise ForecasterError(f"prefix end {k} outside the recorded steps 0..{self.n_records - 1}")
        return dataclasses.replace(
            self, weights=self.weights[:, : k + 1], lr=self.lr[:, : k + 1],
            states={n: s[:, : k + 1] for n, s in self.states.items()})

    def select(self, runs: np.ndarray | Sequence[int]) -> Trajectories:
        """A subset of runs."""
        idx = torch.as_tensor(np.asarray(runs, dtype=np.int64))
        return dataclasses.replace(
            self, weights=self.weights[idx], lr=self.lr[idx], states={n: s[idx] for n, s in self.states.items()},
            hyper={n: h[idx] for n, h in self.hyper.items()},
            run_ids=None if self.run_ids is None else self.run_ids[np.asarray(runs)])

    def to(self, device: torch.device | str) -> Trajectories:
        return dataclasses.replace(
            self, weights=self.weights.to(device), lr=self.lr.to(device),
            states={n: s.to(device) for n, s in self.states.items()},
            hyper={n: h.to(device) for n, h in self.hyper.items()})

    @classmethod
    def from_store(cls, store: Any, runs: Sequence[int] | np.ndarray, *, records: int | None = None) -> Trajectories:
        """Read runs ``runs`` (store positions) of a :class:`~gfm.store.TrajectoryStore`, optionally only the
        first ``records`` records (a prefix read touches only the first chunk rows)."""
        from gfm.store import read_runs

        runs = np.asarray(runs, dtype=np.int64)
        stop = store.n_records if records is None else records

        def read(arr):
            return torch.from_numpy(read_runs(arr, runs, stop))

        return cls(
            weights=read(store.weights), lr=read(store.lr), optimizer=store.optimizer["name"],
            record_every=store.record_every, steps=int(store.attrs["task"]["steps"]),
            states={n: read(store.state(n)) for n in store.state_names},
            hyper={n: torch.from_numpy(v[runs].astype(np.float32)) for n, v in store.hyper.items()},
            run_ids=runs, layout=store.layout)


class Forecaster:
    """Base class. Subclasses define ``Config`` (a frozen dataclass), ``fit`` and ``_forecast``, and list
    their learned tensors in ``state_tensors`` / ``load_state_tensors`` (an ``nn.Module`` does this for free
    via :attr:`module`).

    ``min_prefix`` is the number of records (0..k) the model needs to see. ``neural`` marks models trained
    by gradient descent on a network big enough to want a GPU (the train stage gives them ``device``'s
    accelerator and Snakemake a ``gpu`` resource); closed-form and tiny models set it False and run on CPU.
    ``on_epoch``, when set (the train stage sets it for progress bars), is called with each epoch's log row.
    ``closed_form`` marks models whose ``fit`` learns nothing from the runs (it only checks them): the train
    stage then streams the store block by block instead of reading the train runs into memory.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = dataclasses.make_dataclass("EmptyConfig", [], frozen=True)
    min_prefix: int = 1
    neural: ClassVar[bool] = True
    closed_form: ClassVar[bool] = False

    def __init__(self, config: Any = None, *, prefix_end: int, horizons: Sequence[int]):
        self.config = config if config is not None else self.Config()
        self.prefix_end = int(prefix_end)
        self.horizons = tuple(int(h) for h in horizons)
        if not self.horizons or any(h <= self.prefix_end for h in self.horizons):
            raise ForecasterError(f"horizons {list(self.horizons)} must be non-empty and after the prefix end "
                                  f"{self.prefix_end}")
        self.module: torch.nn.Module | None = None
        self.extra: dict[str, Any] = {}  # small JSON-able fitted values (normalisation constants, ...)
        self.on_epoch: Callable[[dict[str, float]], None] | None = None

    # --- to implement ----------------------------------------------------------------------------------
    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        """Learn from whole training runs; use ``val`` only for model selection / early stopping.

        Returns:
            One dict per epoch (e.g. ``{"epoch": 3, "train_loss": ..., "val_loss": ...}``); empty if nothing
            is trained.
        """
        return []

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.module is None else {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.module is not None:
            self.module.load_state_dict(tensors, strict=True)
        elif tensors:
            raise ModelFileError(f"{self.name}: unexpected tensors {sorted(tensors)[:5]}")

    # --- what a run must carry (checked by gfm.forecasters.trained before forecasting) ----------------
    def states_needed(self) -> tuple[str, ...]:
        """Optimizer state arrays (``Trajectories.states``) this fitted model reads from a prefix."""
        return ()

    def hyper_needed(self) -> tuple[str, ...]:
        """Per-run hyper-parameters (``Trajectories.hyper``) this fitted model reads from a prefix."""
        return ()

    def fixed_n_params(self) -> int | None:
        """The parameter count this fitted model can only forecast (None: any network size)."""
        return None

    # --- front door ------------------------------------------------------------------------------------
    @torch.no_grad()
    def forecast(self, prefix: Trajectories, *, horizons: Sequence[int]) -> torch.Tensor:
        """Weights at each horizon.

        Args:
            prefix: trajectories whose records 0..prefix_end are known (later records are ignored).
            horizons: record indices, a subset of the fitted horizons.

        Returns:
            (run, len(horizons), param) float32.

        Raises:
            ForecasterError: prefix too short or a horizon the model was not fitted for.
        """
        horizons = tuple(int(h) for h in horizons)
        if prefix.n_records < self.prefix_end + 1:
            raise ForecasterError(f"{self.name}: needs records 0..{self.prefix_end} "
                                  f"({self.prefix_end + 1} records); the prefix has {prefix.n_records}")
        unknown = [h for h in horizons if h not in self.horizons]
        if unknown:
            raise ForecasterError(f"{self.name}: horizons {unknown} were not fitted; fitted: {list(self.horizons)}")
        if self.module is not None:
            self.module.eval()
        # _forecast always gets distinct horizons in increasing order (what an ODE solver's time grid needs);
        # the caller's order and repeats are restored here.
        ordered = tuple(sorted(set(horizons)))
        out = self._forecast(prefix.prefix(self.prefix_end), ordered)
        assert out.shape == (prefix.n_runs, len(ordered), prefix.n_params), f"{self.name}: bad shape {tuple(out.shape)}"
        if ordered != horizons:
            out = out[:, [ordered.index(h) for h in horizons]]
        return out.float()

    # --- sampled forecasts (gfm.uncertainty scores them) ----------------------------------------------
    def n_samples(self) -> int:
        """Draws per run :meth:`sample_final` gives by default (0: this fitted model forecasts points only)."""
        return 0

    def _sample_final(self, prefix: Trajectories, horizon: int, n: int, seed: int) -> torch.Tensor:
        raise ForecasterError(f"{self.name}: this fitted model forecasts points, not samples")

    @torch.no_grad()
    def sample_final(self, prefix: Trajectories, *, horizon: int, n: int, seed: int) -> torch.Tensor:
        """``n`` draws from the predictive distribution of each run's weights at ``horizon``: (run, n, param)
        float32. A run's draws depend only on ``seed`` and its run id, not on which runs share the call."""
        if prefix.n_records < self.prefix_end + 1:
            raise ForecasterError(f"{self.name}: needs records 0..{self.prefix_end}; the prefix has {prefix.n_records}")
        if int(horizon) not in self.horizons or n < 1:
            raise ForecasterError(f"{self.name}: horizon {horizon} / draws {n}: expected a fitted horizon "
                                  f"{list(self.horizons)} and at least one draw")
        if self.module is not None:
            self.module.eval()
        out = self._sample_final(prefix.prefix(self.prefix_end), int(horizon), int(n), int(seed))
        assert out.shape == (prefix.n_runs, n, prefix.n_params), f"{self.name}: bad shape {tuple(out.shape)}"
        return out.float()

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``weights.safetensors`` to ``directory`` atomically (temp dir + rename)."""
        directory = Path(directory)
        tmp = open_temp_dir(directory, MODEL)  # refuses a directory that is not an earlier model (gfm.outputs)
        try:
            self._save_into(tmp, directory)
        except BaseException:
            discard_temp(tmp)
            raise
        replace_output(tmp, directory, MODEL)
        return directory

    def _save_into(self, tmp: Path, directory: Path) -> None:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.name,
                "config": _to_jsonable(self.config), "prefix_end": self.prefix_end,
                "horizons": list(self.horizons), "extra": self.extra}
        tensors = self.state_tensors()
        for k in tensors:
            if not _NAME_RE.match(k):
                raise ModelFileError(f"{self.name}: tensor name {k!r} is not a plain identifier")
        save_file({k: v.float() for k, v in tensors.items()}, str(tmp / "weights.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        keep = [p for p in ("train_log.csv",) if (directory / p).is_file()]
        for p in keep:
            shutil.copy2(directory / p, tmp / p)


FORECASTERS: dict[str, type[Forecaster]] = {}


def register(cls: type[Forecaster]) -> type[Forecaster]:
    """Class decorator: add a forecaster to the registry under ``cls.name``."""
    if not cls.name or cls.name in FORECASTERS:
        raise ValueError(f"forecaster name {cls.name!r} missing or registered twice")
    FORECASTERS[cls.name] = cls
    return cls


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    return obj


def _lookup(kind: str) -> type[Forecaster]:
    import gfm.forecasters  # noqa: F401  (fills the registry)

    if not isinstance(kind, str) or kind not in FORECASTERS:
        raise ForecasterError(f"unknown forecaster {kind!r}; expected one of {', '.join(sorted(FORECASTERS))}")
    return FORECASTERS[kind]


def make_forecaster(kind: str, config: dict[str, Any] | Any = None, *, prefix_end: int,
                    horizons: Sequence[int]) -> Forecaster:
    """Build a registered forecaster from a name and a plain config mapping (validated)."""
    from gfm.schema import build

    cls = _lookup(kind)
    if config is None or isinstance(config, dict):
        problems: list[str] = []
        cfg = build(cls.Config, dict(config or {}), kind, problems)
        if problems:
            raise ForecasterError("; ".join(problems))
    else:
        cfg = config
    return cls(cfg, prefix_end=prefix_end, horizons=horizons)


_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _check_safetensors_header(path: Path, root: Path | None = None) -> dict[str, tuple[int, ...]]:
    """Check a safetensors file before any tensor is read; return its tensor shapes by name.

    Refused (``ModelFileError`` naming the file): not a regular file or a link leaving ``root``; a length
    field past the end of the file or above :data:`MAX_HEADER_BYTES`; a header that is not a JSON object
    (a list, a number, nesting deeper than ``gfm.inputs.MAX_JSON_DEPTH``); tensor names that are not plain
    identifiers; dtypes other than F32; shapes that are not lists of non-negative integers; data offsets that
    do not match the shape, overlap or do not cover the data exactly (a truncated or padded file)."""
    import stat

    from gfm.inputs import parse_json, regular_file

    regular_file(path, root, error=ModelFileError)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFileError(f"{path}: not a regular file")
        size = st.st_size
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ModelFileError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise ModelFileError(f"{path}: safetensors header of {n} bytes is larger than allowed "
                                     f"({min(MAX_HEADER_BYTES, size - 8)})")
            text = f.read(n)
    finally:
        os.close(fd)
    header = parse_json(text, f"{path}: safetensors header", error=ModelFileError)
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: safetensors header must be a JSON object; got a {type(header).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise ModelFileError(f"{path}: safetensors __metadata__ must map strings to strings")
            continue
        if not _NAME_RE.match(name):
            raise ModelFileError(f"{path}: tensor name {name!r:.80} is not a plain identifier")
        if not isinstance(info, dict):
            raise ModelFileError(f"{path}: tensor {name!r} must be described by an object")
        if info.get("dtype") != "F32":
            raise ModelFileError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r:.40}; expected F32")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ModelFileError(f"{path}: tensor {name!r} has shape {shape!r:.60}; expected non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_is_int, offsets))
                or not 0 <= offsets[0] <= offsets[1] or offsets[1] - offsets[0] != 4 * math.prod(shape)):
            raise ModelFileError(f"{path}: tensor {name!r} has data_offsets {offsets!r:.60}; expected "
                                 f"[begin, begin + {4 * math.prod(shape)}] for shape {shape}")
        shapes[name] = tuple(shape)
        spans.append(tuple(offsets))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise ModelFileError(f"{path}: tensor data overlap or leave gaps (at byte {begin}, expected {end})")
        end = stop
    if end != size - 8 - n:
        raise ModelFileError(f"{path}: tensor data end at byte {end} but the file holds {size - 8 - n} data bytes "
                             "(truncated or padded)")
    return shapes


def _nonfinite_numbers(obj: Any, where: str = "extra") -> list[str]:
    """Paths of non-finite numbers in a config's fitted values (JSON allows NaN and Infinity)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nonfinite_numbers(v, f"{where}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _nonfinite_numbers(v, f"{where}[{i}]")]
    return []


def load_forecaster(directory: str | Path) -> Forecaster:
    """Load a forecaster saved by :meth:`Forecaster.save`, refusing anything unexpected.

    Everything ``gfm check`` asks of a model directory is checked here, so a stage never forecasts with a
    model that check refuses: both files regular and inside the directory, config JSON bounded in size and
    depth, safetensors header (see :func:`_check_safetensors_header`), tensors of exactly the shapes the
    model builds, every tensor and fitted value finite.

    Raises:
        ModelFileError: missing files, wrong format, unsafe, misshapen or non-finite tensors or names.
        ForecasterError: unknown kind or invalid config.
    """
    from safetensors import SafetensorError

    from gfm.inputs import file_problem, read_json

    directory = Path(directory)
    problem = file_problem(directory, want_dir=True)
    if problem:
        raise ModelFileError(f"{directory}: model directory is {problem}")
    cfg_path, w_path = directory / "config.json", directory / "weights.safetensors"
    for p in (cfg_path, w_path):
        problem = file_problem(p, directory)
        if problem == "missing":
            raise ModelFileError(f"{p}: missing (a model directory holds config.json and weights.safetensors)")
        if problem:
            raise ModelFileError(f"{p}: {problem}")
    meta = read_json(cfg_path, limit=MAX_HEADER_BYTES, root=directory, error=ModelFileError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ModelFileError(f"{cfg_path}: not a {FORMAT} v{FORMAT_VERSION} config")
    kind = meta.get("kind")
    if not isinstance(kind, str):
        raise ModelFileError(f"{cfg_path}: 'kind' must be a string")
    prefix_end, horizons, extra = meta.get("prefix_end"), meta.get("horizons"), meta.get("extra") or {}
    if not _is_int(prefix_end) or not isinstance(horizons, list) or not all(map(_is_int, horizons)):
        raise ModelFileError(f"{cfg_path}: 'prefix_end' must be an integer and 'horizons' a list of integers")
    if not isinstance(extra, dict):
        raise ModelFileError(f"{cfg_path}: 'extra' must be a mapping")
    bad_extra = _nonfinite_numbers(extra)
    if bad_extra:
        raise ModelFileError(f"{cfg_path}: fitted values {', '.join(bad_extra[:5])} are not finite; re-run the "
                             "train stage")
    if not isinstance(meta.get("config") or {}, dict):
        raise ModelFileError(f"{cfg_path}: 'config' must be a mapping")
    _check_safetensors_header(w_path, directory)
    fc = make_forecaster(kind, meta.get("config") or {}, prefix_end=prefix_end, horizons=horizons)
    fc.extra = dict(extra)
    try:
        fc.load_state_tensors(load_file(str(w_path)))
    except (RuntimeError, KeyError, ValueError, TypeError, SafetensorError) as exc:
        if isinstance(exc, GFMError):
            raise
        # e.g. a tensor of the wrong shape or a missing one: torch's message, first line, names it
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2]) if first else type(exc).__name__
        raise ModelFileError(f"{w_path}: tensors do not fit a {kind!r} model ({detail[:300]})") from None
    bad = sorted(n for n, t in fc.state_tensors().items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise ModelFileError(f"{w_path}: tensors {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold "
                             "non-finite values (NaN or Inf); re-run the train stage")
    return fc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
