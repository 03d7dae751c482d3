"""Tasks: a model family + data + loss, chosen by ``kind`` in params."""

from __future__ import annotations

from gfm.config import TaskConfig
from gfm.tasks.base import ParamSpec, Task
from gfm.tasks.cifar10 import CIFAR10Task
from gfm.tasks.digits import DigitsTask
from gfm.tasks.least_squares import LeastSquaresTask
from gfm.tasks.mlp import MLPClassificationTask, MLPRegressionTask

__all__ = ["TASKS", "make_task", "Task", "ParamSpec"]

TASKS: dict[str, type[Task]] = {
    "least_squares": LeastSquaresTask,
    "mlp_regression": MLPRegressionTask,
    "mlp_classification": MLPClassificationTask,
    "digits": DigitsTask,
    "cifar10": CIFAR10Task,
}


def make_task(cfg: TaskConfig) -> Task:
    """The task object for a validated task config.

    Raises:
        ValueError: unknown kind.
    """
    if cfg.kind not in TASKS:
        raise ValueError(f"unknown task kind {cfg.kind!r}; expected one of {sorted(TASKS)}")
    return TASKS[cfg.kind](cfg)
