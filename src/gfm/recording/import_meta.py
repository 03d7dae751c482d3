"""The metadata of ``gfm import`` (:mod:`gfm.recording.importer`'s module docstring: the keys, their defaults), read from
its file (YAML with the params loader's bounds, or JSON) and validated against the source arrays' shapes,
refusing with ``gfm check``'s own rules what a store could not hold."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gfm.base.errors import GFMError, shorten
from gfm.base.schema import is_name
from gfm.core.network import ACTIVATIONS, LOSSES, Network
from gfm.core.optimizers import HYPER_DEFAULTS, HYPER_NAMES
from gfm.tasks.base import ParamSpec, layout_from_shapes

__all__ = ["TrajectoryImportError", "ImportMeta", "INT64_MAX", "default_meta_path", "load_meta_file", "read_meta"]

# Defaults of hyper-parameters the metadata may leave out: gfm.core.optimizers.HYPER_DEFAULTS (config's defaults).
# Defaults of hyper-parameters the metadata may leave out: gfm.core.optimizers.HYPER_DEFAULTS (config's defaults).
_META_KEYS = {"optimizer", "record_every", "steps", "layout", "dataset_seed", "name", "missing_state", "activation",
              "loss"}
INT64_MAX = int(np.iinfo(np.int64).max)
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


def load_meta_file(path: Path) -> dict[str, Any]:
    from gfm.artifacts.inputs import MAX_JSON_DEPTH, json_depth, parse_json, read_bytes
    from gfm.base.params_yaml import YAMLRefused, parse_yaml

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
    top = INT64_MAX // (n_steps - 1)  # steps = (records - 1) * record_every must be an int64
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
    return int(value) if _is_int(value) and 0 <= value <= INT64_MAX else None


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
