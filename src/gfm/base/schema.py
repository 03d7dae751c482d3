"""A small typed loader: builds frozen dataclasses from plain dicts and reports every problem by key path.

Why not pydantic: the params are a few dozen keys, the rules are simple (type, range, allowed names), and we
want one-line messages of the form ``tasks.mlp.steps: got -5; expected an integer >= 1`` with no extra
dependency. Field constraints live next to the field as ``field(metadata=...)`` via :func:`spec`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

from gfm.base.errors import shorten

__all__ = ["spec", "build", "describe_type", "NAME_PATTERN", "is_name", "keys_matching"]

_MISSING = dataclasses.MISSING
INT_BOUND = 2**63
"""Every integer field fits a signed 64-bit integer (NumPy, Zarr and torch store them as int64)."""

NAME_PATTERN = "[A-Za-z][A-Za-z0-9_]*"
"""What a task or model name may be: it becomes a path component and a Snakemake wildcard's value (the rules
constrain ``{task}`` and ``{model}`` with it, and the params schema the keys it names)."""


def is_name(name: str) -> bool:
    """Whether ``name`` may name a task or a model (:data:`NAME_PATTERN`: ASCII letters, digits and '_', a
    letter first)."""
    return re.fullmatch(NAME_PATTERN, name) is not None


def keys_matching(pattern: str) -> dict:
    """The JSON-schema keywords of a mapping whose keys match ``pattern`` (for ``spec(json_schema=...)``)."""
    return {"propertyNames": {"pattern": f"^{pattern}$"}}


def _show(value: Any) -> str:
    """A user value in a message: its repr, one line, at most 80 characters."""
    return shorten(value, 80)


def _key(key: Any) -> str:
    """A mapping key as a path component: at most 60 characters, one line."""
    return shorten(key, 60, quote=False) if isinstance(key, str) else shorten(key, 60)


def spec(default: Any = _MISSING, *, ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None, nonempty: bool = False, doc: str = "",
         json_schema: dict | None = None) -> Any:
    """A dataclass field with range constraints checked by :func:`build`.

    ``json_schema`` holds JSON-schema keywords for a rule the field's type cannot say and a ``_check`` or the
    cross-section checks enforce (distinct items, the names keys may take): the generated params schema
    (gfm.pipeline.params_schema) adds them to the field's own, so Snakemake refuses what they refuse."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty, "doc": doc, "json_schema": json_schema or {}}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_type(tp: Any) -> str:
    """Human-readable name of an annotation, used in error messages."""
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {describe_type(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return str(tp)


def _range_problem(value: Any, meta: dict) -> str | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    checks = {"ge": (">=", lambda b: value >= b), "gt": (">", lambda b: value > b),
              "le": ("<=", lambda b: value <= b), "lt": ("<", lambda b: value < b)}
    active = [(op, ok, meta[k]) for k, (op, ok) in checks.items() if meta.get(k) is not None]
    if all(ok(bound) for _, ok, bound in active):
        return None
    return "expected a value " + " and ".join(f"{op} {_bound_text(bound)}" for op, _, bound in active)


def _bound_text(bound: float) -> str:
    return "2**63" if bound == INT_BOUND else str(bound)


def _convert(value: Any, tp: Any, path: str, problems: list[str], meta: dict) -> Any:
    """Convert ``value`` to annotation ``tp``; append problems (never raise)."""
    origin = typing.get_origin(tp)
    if tp is Any:  # validated later by its owner (e.g. a forecaster's own Config)
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        # Try each option on a scratch problem list; accept the first that converts cleanly.
        for opt in options:
            scratch: list[str] = []
            out = _convert(value, opt, path, scratch, meta)
            if not scratch:
                return out
        if isinstance(value, dict):  # a mapping that matched no dataclass option: show that option's problems
            for opt in options:
                if dataclasses.is_dataclass(opt):
                    return _convert(value, opt, path, problems, meta)
        problems.append(f"{path}: got {_show(value)}; expected {describe_type(tp)}")
        return None
    if tp is type(None):
        if value is not None:
            problems.append(f"{path}: got {_show(value)}; expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: got {_show(value)}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, float) and value.is_integer() and abs(value) < INT_BOUND:
                hint = f" (write {int(value)}, without a decimal point or exponent)"
            problems.append(f"{path}: got {_show(value)}; expected an integer{hint}")
            return value
        if not -INT_BOUND <= value < INT_BOUND:
            problems.append(f"{path}: got {_show(value)}; expected an integer of at most 63 bits (below 2**63)")
            return value
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: got {_show(value)}; expected a number")
            return value
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range
            problems.append(f"{path}: got {_show(value)}; expected a finite number")
            return value
        if value != value or value in (float("inf"), float("-inf")):
            problems.append(f"{path}: got {_show(value)}; expected a finite number")
            return value
    elif tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: got {_show(value)}; expected a string")
            return value
    elif origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            problems.append(f"{path}: got {_show(value)}; expected one of {', '.join(map(repr, allowed))}")
        return value
    elif origin in (list, tuple):
        if not isinstance(value, list):
            problems.append(f"{path}: got {_show(value)}; expected {describe_type(tp)}")
            return value
        (item_tp,) = typing.get_args(tp)[:1]
        if meta.get("nonempty") and not value:
            problems.append(f"{path}: got an empty list; expected at least one item")
        items = [_convert(v, item_tp, f"{path}[{i}]", problems, meta) for i, v in enumerate(value)]
        return tuple(items)
    elif origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: got {_show(value)}; expected a mapping")
            return value
        _, val_tp = typing.get_args(tp)
        if meta.get("nonempty") and not value:
            problems.append(f"{path}: got an empty mapping; expected at least one entry")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                problems.append(f"{path}: key {_show(k)} is not a string")
                continue
            out[k] = _convert(v, val_tp, f"{path}.{_key(k)}", problems, {})
        return out
    elif dataclasses.is_dataclass(tp):
        return build(tp, value, path, problems)
    else:  # pragma: no cover - programming error in a config class
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    msg = _range_problem(value, meta)
    if msg:
        problems.append(f"{path}: got {_show(value)}; {msg}")
    return value


def build(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; problems are appended as ``key.path: message`` lines.

    A class may define ``_dispatch(data) -> cls`` (pick a subclass, e.g. by ``kind``) and ``_check(self) ->
    list[(key, message)]`` for cross-field rules.
    """
    if not isinstance(data, dict):
        problems.append(f"{path or '<top>'}: got {_show(data)}; expected a mapping")
        return None
    dispatch = getattr(cls, "_dispatch", None)
    if dispatch is not None:
        sub = dispatch(data, path, problems)
        if sub is None:
            return None
        cls = sub
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{_key(key)}: unknown key; allowed keys are {', '.join(sorted(fields))}")
    kwargs = {}
    n_before = len(problems)
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", problems, dict(f.metadata))
        elif f.default is _MISSING and f.default_factory is _MISSING:
            problems.append(f"{prefix}{name}: missing; expected {describe_type(hints[name])}")
    if len(problems) > n_before:
        return None
    obj = cls(**kwargs)
    for key, message in getattr(obj, "_check", lambda: [])():
        problems.append(f"{prefix}{key}: {message}")
    return obj
