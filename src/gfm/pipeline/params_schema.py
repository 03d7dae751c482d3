"""The JSON schema Snakemake checks params.yaml against (workflow/schemas/params.schema.json), generated from the
params dataclasses (gfm.config) and their registries: the task kinds, the optimizers and the keys each reads.

    gfm schema --write workflow/schemas/params.schema.json

Each field gives its type, its bounds (``spec(ge=...)``), its doc and the keywords of a rule its type cannot
say (``spec(json_schema=...)``); a task's fields depend on its ``kind`` and an optimizer's keys on its ``name``,
written as ``if``/``then`` branches. The schema never gives a ``default``: Snakemake's ``validate`` writes
defaults into ``config``, which would change the params trigger of every job. It is the first gate only:
the cross-section checks (names that must refer to something, sizes against ``limits:``) and the options of
``models:`` entries run in ``gfm validate`` and every stage.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, Union

from gfm.config import TASK_KINDS, OptimizerConfig, Params, Range, TaskConfig
from gfm.core.optimizers import SPECS
from gfm.pipeline import stage
from gfm.pipeline.generated import generated_kind

__all__ = ["params_schema", "render_params_schema", "HEADER", "SCHEMA_PATH", "PARAMS_SCHEMA"]

SCHEMA_PATH = "workflow/schemas/params.schema.json"

HEADER = ('{"$comment": "Generated from the params dataclasses (src/gfm/config) by `gfm schema --write '
          f'{SCHEMA_PATH}`: edit them, not this file.",\n')
PARAMS_SCHEMA = generated_kind("generated params schema", HEADER, "gfm schema")

# Stages every study runs: DVC refuses a stage whose params keys are missing from params.yaml, so their sections
# must be written out, though Params gives them defaults; and the rules read `device` as it is (resources).
_ALWAYS_RUN = ("generate", "split")
_READ_BY_RULES = ("device",)

# Classes written once under $defs, where every field that takes one refers to it.
_SHARED = (Range,)


def _bounds(meta: dict) -> dict:
    return {name: meta[key] for key, name in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"),
                                             ("lt", "exclusiveMaximum")) if meta.get(key) is not None}


def type_schema(tp: Any, meta: dict) -> dict:
    """The JSON schema of annotation ``tp``; ``meta`` are the field's ``spec`` constraints, which apply to a
    list's items and a union's members as :func:`gfm.base.schema.build` applies them."""
    origin = typing.get_origin(tp)
    if tp is Any:  # checked by its owner (a forecaster's own Config)
        return {}
    if origin in (Union, types.UnionType):
        parts = [type_schema(a, meta) for a in typing.get_args(tp)]
        if all(set(p) == {"type"} for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"anyOf": parts}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", **_bounds(meta)}
    if tp is float:
        return {"type": "number", **_bounds(meta)}
    if tp is str:
        return {"type": "string"}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin in (list, tuple):
        out = {"type": "array", "items": type_schema(typing.get_args(tp)[0], meta)}
        return {**out, "minItems": 1} if meta.get("nonempty") else out
    if origin is dict:
        out = {"type": "object", "additionalProperties": type_schema(typing.get_args(tp)[1], {})}
        return {**out, "minProperties": 1} if meta.get("nonempty") else out
    if tp in _SHARED:
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if dataclasses.is_dataclass(tp):
        return class_schema(tp)
    raise TypeError(f"no JSON schema for annotation {tp!r}")  # a config class using a type added since


def _fields(cls: type) -> dict[str, dict]:
    """Each init field of dataclass ``cls`` as its JSON schema: type, bounds, extra keywords, doc."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = dict(f.metadata)
        out[f.name] = {**type_schema(hints[f.name], meta), **meta.get("json_schema", {})}
        if meta.get("doc"):
            out[f.name]["description"] = meta["doc"]
    return out


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def class_schema(cls: type) -> dict:
    """The JSON schema of config dataclass ``cls``: its fields and nothing else; a task by its kind, an
    optimizer by its name (their ``_dispatch``)."""
    if cls is TaskConfig:
        return _task_schema()
    out: dict = {"type": "object", "additionalProperties": False}
    if _required(cls):
        out["required"] = _required(cls)
    out["properties"] = _fields(cls)
    if cls is OptimizerConfig:
        out["allOf"] = [_branch("name", name, {"propertyNames": {"enum": ["name", *sorted(spec.params_keys),
                                                                           "schedule"]}})
                        for name, spec in SPECS.items()]
    return out


def _branch(tag: str, value: str, then: dict) -> dict:
    return {"if": {"required": [tag], "properties": {tag: {"const": value}}}, "then": then}


def _task_schema() -> dict:
    """Every task's common fields, and per kind the fields that kind adds or bounds otherwise; the keys a task
    may have are its kind's fields."""
    common = _fields(TaskConfig)
    branches = []
    for kind, cls in TASK_KINDS.items():
        own = {name: s for name, s in _fields(cls).items() if name != "kind" and common.get(name) != s}
        then: dict = {"propertyNames": {"enum": [f.name for f in dataclasses.fields(cls) if f.init]}}
        if [r for r in _required(cls) if r != "kind"]:
            then["required"] = [r for r in _required(cls) if r != "kind"]
        if own:
            then["properties"] = own
        branches.append(_branch("kind", kind, then))
    return {"type": "object", "required": ["kind"], "properties": {**common, "kind": {"enum": list(TASK_KINDS)}},
            "allOf": branches}


def _file_sections() -> list[str]:
    """The sections params.yaml must write out (:data:`_ALWAYS_RUN`, :data:`_READ_BY_RULES`), in Params order."""
    keys = {k.split(".")[0] for name in _ALWAYS_RUN for k in stage(name).params} | set(_READ_BY_RULES)
    return [f.name for f in dataclasses.fields(Params) if f.name in keys]


def params_schema() -> dict:
    """The schema of a params file, as plain data."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "Shape of params.yaml, checked by Snakemake when the workflow loads. The checks across "
                           "sections (names that must refer to something, sizes against limits:) and the options "
                           "of models: entries run in `gfm validate` and every stage CLI.",
            **class_schema(Params), "required": _file_sections(),
            "$defs": {cls.__name__: class_schema(cls) for cls in _SHARED}}


# --- the file -------------------------------------------------------------------------------------------------
_WIDTH = 118


def _json(value: Any, indent: int, used: int) -> str:
    """``value`` as JSON, on one line where it fits in :data:`_WIDTH` columns after ``used`` of them."""
    flat = json.dumps(value, ensure_ascii=False)
    if len(flat) + used <= _WIDTH or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k)}: {_json(v, indent + 1, indent + len(json.dumps(k)) + 3)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    return "[\n" + ",\n".join(f"{pad}{_json(v, indent + 1, indent + 1)}" for v in value) + "\n" + " " * indent + "]"


def render_params_schema() -> str:
    """The schema as the checked-in file: JSON, which Snakemake reads before trying YAML (its YAML reader is
    what a schema this size would cost at every start: BENCHMARKS.md, "Snakemake's start"), its first line the
    generated-by marker (a ``$comment``, which JSON schema ignores), objects that fit on a line written on
    one."""
    body = _json(params_schema(), 0, 0)
    return HEADER + body.removeprefix("{\n") + "\n"
