"""Reading params: YAML text -> :class:`~gfm.config.Params`, every problem listed at once; and the plain-data
view and hash of a config."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from gfm.base.errors import ParamsError, shorten
from gfm.base.params_yaml import YAMLRefused, parse_yaml, read_params_text
from gfm.base.schema import build
from gfm.config.params import Params

_REQUIRED = {"tasks": "a mapping of task names to tasks", "stores": "a mapping of store keys to stores (at least "
                                                                     "one: a study with no store has nothing to run)"}


def parse_params(data: Any, *, source: str = "params", root: str | Path = ".") -> Params:
    """Validate a parsed params mapping, sizes included (``limits:``); raise ParamsError listing every problem.

    Declared stores (tasks of kind ``recorded``) are read from their paths, relative to ``root`` (the
    workspace: the params file's directory), which gives them their sizes (gfm.config.declared)."""
    problems: list[str] = []
    if isinstance(data, dict):
        problems += [f"{key}: missing; expected {what}" for key, what in _REQUIRED.items() if key not in data]
        if isinstance(data.get("tasks"), dict) and any(
                isinstance(t, dict) and t.get("kind") == "recorded" for t in data["tasks"].values()):
            from gfm.config.declared import source_problems

            data = {**data, "tasks": copy.deepcopy(data["tasks"])}  # filled in from the stores, not the caller's
            problems += source_problems(data, Path(root))
    try:
        params = build(Params, data, "", problems)
    except RecursionError:  # only from data built in Python: load_params bounds the nesting of files
        problems.append("<top>: nested too deeply to be params")
    if problems:
        raise ParamsError(problems, source=source)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file: YAML through :func:`gfm.base.params_yaml.parse_yaml` (the safe loader with
    bounded aliases and nesting, duplicate keys refused, ``1e-5`` read as a number), then :func:`parse_params`."""
    path = Path(path)
    try:
        data = parse_yaml(read_params_text(path))
    except FileNotFoundError:
        raise ParamsError(f"file not found: {path}", source=str(path)) from None
    except YAMLRefused as exc:
        raise ParamsError(exc.problems, source=str(path)) from None
    except OSError as exc:  # unreadable: permissions, an I/O error
        raise ParamsError(f"cannot read the file ({shorten(exc.strerror or exc, 120, quote=False)})",
                          source=str(path)) from None
    return parse_params(data, source=str(path), root=path.parent)


def config_hash(obj: Any) -> str:
    """Stable short hash of a (nested) config, for matching a partial store to the params that started it."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (dataclasses and tuples -> dicts and lists), JSON-serialisable."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
