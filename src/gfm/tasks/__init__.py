"""Tasks: a model family + data + loss, chosen by ``kind`` in params.

The kinds are listed once, in :data:`gfm.config.TASK_KINDS`: each kind's config class names the Task class
that runs it (``task_class``, ``"<module>:<class>"``), so that reading params never imports torch. This package
imports every module of its own directory, and :func:`task_class` finds the named class among them.

May import: gfm.base, gfm.core, gfm.config.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from gfm.config import TASK_KINDS, TaskConfig
from gfm.tasks.base import ParamSpec, Task

__all__ = ["task_class", "make_task", "Task", "ParamSpec"]

# The names come from this package's own directory (pkgutil lists its modules), never from params or data.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def task_class(kind: str) -> type[Task]:
    """The Task class of task kind ``kind``.

    Raises:
        ValueError: an unknown kind, or one with no Task class to build (a recorded store's).
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(TASK_KINDS)}")
    module, _, name = TASK_KINDS[kind].task_class.partition(":")
    if not module:
        raise ValueError(f"task kind {kind!r} has no Task class to build: its runs are taken in from a store "
                         "(gfm.tasks.recorded rebuilds the network a store records)")
    cls = getattr(sys.modules.get(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):  # a config naming a class this package lacks
        raise ValueError(f"task kind {kind!r}: its config names {TASK_KINDS[kind].task_class!r}, which is not "
                         f"a Task class of {__name__}")
    return cls


def make_task(cfg: TaskConfig) -> Task:
    """The task object for a validated task config.

    Raises:
        ValueError: unknown kind, or one with no Task class.
    """
    return task_class(cfg.kind)(cfg)
