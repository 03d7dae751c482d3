"""What a saved forecaster's fitted values (``config.json``'s ``extra``: normalisation constants, the training
runs' optimizer and length, a network shape) must hold.

Each forecaster class declares its own in :meth:`~gfm.forecasters.base.Forecaster.fitted_schema`, and
:func:`gfm.forecasters.model_files.read_model` (so every stage, the Python API and ``gfm check``) refuses
a model whose values do not fit it, naming each one: a string where a scale belongs, a missing key or a run
length of 0 would otherwise surface as a traceback, or a division by zero, only when the model forecasts.

A schema is a :class:`Value` (a test and what it expects), a ``dict`` (a mapping holding at least these keys;
keys it does not name are kept and not checked), :class:`ListOf`, :class:`MapOf` or :class:`Maybe` (a key that
may be absent or null).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gfm.artifacts.inputs import is_int
from gfm.base.errors import shorten

__all__ = ["Value", "ListOf", "MapOf", "Maybe", "Schema", "fitted_problems", "NUMBER", "POSITIVE", "NON_NEGATIVE",
           "COUNT", "NON_NEGATIVE_INT", "MAPPING", "OPTIMIZER"]


@dataclass(frozen=True)
class Value:
    """One value: ``test`` says whether it fits, ``expected`` says what fits (for the message)."""

    test: Callable[[Any], bool]
    expected: str


@dataclass(frozen=True)
class ListOf:
    """A list of items fitting ``item``: exactly ``length`` of them when given, else at least ``min_length``."""

    item: Schema
    length: int | None = None
    min_length: int = 0


@dataclass(frozen=True)
class MapOf:
    """A mapping from strings to values fitting ``item``."""

    item: Schema


@dataclass(frozen=True)
class Maybe:
    """A key that may be absent or null; when present it fits ``schema``."""

    schema: Schema


Schema = Value | ListOf | MapOf | Maybe | dict


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _optimizer(x: Any) -> bool:
    from gfm.core.optimizers import STATE_NAMES

    return isinstance(x, str) and x in STATE_NAMES


NUMBER = Value(_finite, "a finite number")
POSITIVE = Value(lambda x: _finite(x) and x > 0, "a positive number")
NON_NEGATIVE = Value(lambda x: _finite(x) and x >= 0, "a number >= 0")
COUNT = Value(lambda x: is_int(x) and x >= 1, "an integer >= 1")
NON_NEGATIVE_INT = Value(lambda x: is_int(x) and x >= 0, "an integer >= 0")
MAPPING = Value(lambda x: isinstance(x, dict), "a mapping")
OPTIMIZER = Value(_optimizer, "an optimizer name of gfm.core.optimizers (sgd, momentum, nesterov, adam, ...)")


def _expected(schema: Schema) -> str:
    if isinstance(schema, Value):
        return schema.expected
    if isinstance(schema, Maybe):
        return _expected(schema.schema)
    if isinstance(schema, ListOf):
        n = f"{schema.length} " if schema.length is not None else ""
        return f"a list of {n}items, each {_expected(schema.item)}"
    if isinstance(schema, MapOf):
        return f"a mapping of names to {_expected(schema.item)}"
    return f"a mapping with keys {', '.join(schema)}"


def fitted_problems(value: Any, schema: Schema, where: str = "extra") -> list[str]:
    """One line per value under ``where`` that does not fit ``schema`` (empty: it fits)."""
    if isinstance(schema, Maybe):
        return [] if value is None else fitted_problems(value, schema.schema, where)
    if isinstance(schema, Value):
        return [] if schema.test(value) else [f"{where} is {shorten(value, 40)}; expected {schema.expected}"]
    if isinstance(schema, ListOf):
        ok = isinstance(value, list) and (len(value) == schema.length if schema.length is not None
                                          else len(value) >= schema.min_length)
        if not ok:
            return [f"{where} is {shorten(value, 40)}; expected {_expected(schema)}"
                    + ("" if schema.length is not None or not schema.min_length else f" (at least {schema.min_length})")]
        return [p for i, item in enumerate(value) for p in fitted_problems(item, schema.item, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where} is {shorten(value, 40)}; expected {_expected(schema)}"]
    if isinstance(schema, MapOf):
        return [p for k, item in value.items() for p in fitted_problems(item, schema.item, f"{where}.{k}")]
    out = []
    for key, sub in schema.items():
        if key not in value and not isinstance(sub, Maybe):
            out.append(f"{where}.{key} is missing; expected {_expected(sub)}")
        elif key in value:
            out += fitted_problems(value[key], sub, f"{where}.{key}")
    return out
