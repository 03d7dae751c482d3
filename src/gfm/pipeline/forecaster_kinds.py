"""Which forecaster kinds train on a GPU, read from the forecasters' source without importing them.

A train job asks Snakemake for a GPU when its forecaster is ``neural`` (the class attribute of
:class:`gfm.forecasters.base.Forecaster`; the train stage gives such models ``device``'s accelerator).
Importing the forecasters to ask them would import torch into Snakemake, so the attribute is read from the
source: every ``@register`` class of the forecasters' package, its ``name`` and its ``neural``, set in its body
or inherited from a base class of that package (``Forecaster`` sets the default). tests/test_train_stage.py
checks the answer against the imported registry.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

__all__ = ["neural_kinds"]

FORECASTERS_DIR = Path(__file__).resolve().parent.parent / "forecasters"


def _literal(cls: ast.ClassDef, attr: str):
    """The constant that ``cls``'s body assigns to ``attr`` (``attr = value`` or ``attr: T = value``), else None."""
    for node in cls.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign):
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name) and target.id == attr:
            if not isinstance(node.value, ast.Constant):
                raise ValueError(f"gfm.forecasters: {cls.name}.{attr} must be a literal (Snakemake reads it from the "
                                 "source, gfm.pipeline.forecaster_kinds)")
            return node.value.value
    return None


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr for b in cls.bases if isinstance(b, (ast.Name, ast.Attribute))]


def _neural(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> bool:
    """``cls.neural``: its own, else the first base's that says (depth first, as single inheritance resolves)."""
    own = _literal(cls, "neural")
    if own is not None:
        return bool(own)
    for base in _base_names(cls):
        if base in classes:
            return _neural(classes[base], classes)
    raise ValueError(f"gfm.forecasters: {cls.name} neither sets `neural` nor inherits it from a class of the package")


@cache
def neural_kinds(folder: Path = FORECASTERS_DIR) -> frozenset[str]:
    """The ``name`` of every registered forecaster whose ``neural`` is True (the kinds a GPU may train)."""
    classes: dict[str, ast.ClassDef] = {}
    for file in sorted(folder.glob("*.py")):
        for node in ast.parse(file.read_text(), filename=str(file)).body:
            if isinstance(node, ast.ClassDef):
                if node.name in classes:  # bases are found by name: one name, one class
                    raise ValueError(f"gfm.forecasters: class {node.name} is defined twice ({file.name} and another "
                                     "module); give one another name")
                classes[node.name] = node
    kinds = {}
    for cls in classes.values():
        if any(isinstance(d, ast.Name) and d.id == "register" for d in cls.decorator_list):
            name = _literal(cls, "name")
            if not isinstance(name, str):
                raise ValueError(f"gfm.forecasters: the registered class {cls.name} sets no `name` in its body")
            kinds[name] = _neural(cls, classes)
    return frozenset(name for name, neural in kinds.items() if neural)
