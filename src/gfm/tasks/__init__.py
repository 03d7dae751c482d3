"""Tasks: a model family + data + loss, chosen by ``kind`` in params.

The kinds are listed once, in :data:`gfm.config.TASK_KINDS`: each kind's config class names the Task class
that runs it (``task_class``, ``"<module>:<class>"``), imported here by that name, so that reading params never
imports torch. The code dependencies of a stage that imports this package hold every module in it
(gfm.pipeline.closure counts a by-name import as one of any module of its package).
"""

from __future__ import annotations

import importlib

from gfm.config import TASK_KINDS, TaskConfig
from gfm.tasks.base import ParamSpec, Task

__all__ = ["task_class", "make_task", "Task", "ParamSpec"]


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
    return getattr(importlib.import_module(module), name)


def make_task(cfg: TaskConfig) -> Task:
    """The task object for a validated task config.

    Raises:
        ValueError: unknown kind, or one with no Task class.
    """
    return task_class(cfg.kind)(cfg)
