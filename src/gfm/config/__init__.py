"""Typed params: one frozen dataclass per ``params.yaml`` section, validated once at load.

``load_params(path)`` reads YAML with the safe loader, builds :class:`Params` and raises
:class:`~gfm.base.errors.ParamsError` listing every problem as ``key.path: got X; expected Y``.
The same file is Snakemake's ``configfile:`` and DVC's params file (docs/architecture.md §6).

One module per concern: :mod:`~gfm.config.optimizer` and :mod:`~gfm.config.tasks` (the sections runs are built
from), :mod:`~gfm.config.sections` (stores and stages), :mod:`~gfm.config.params` (the whole file),
:mod:`~gfm.config.validation` (checks across sections), :mod:`~gfm.config.sizes` (what a store costs) and
:mod:`~gfm.config.loader` (YAML in, Params out).

May import: gfm.base, gfm.core (the optimizers' registry) and gfm.artifacts (a declared store's files).
"""

from __future__ import annotations

from gfm.config.loader import config_hash, load_params, parse_params, to_dict
from gfm.config.optimizer import (
    OPTIMIZER_KEYS as OPTIMIZER_KEYS,  # tests check it against gfm.core.optimizers
)
from gfm.config.optimizer import (
    OPTIMIZER_NAMES,
    OPTIMIZER_STATE_ARRAYS,
    Hyper,
    OptimizerConfig,
    OptimizerName,
    Range,
    ScheduleConfig,
)
from gfm.config.params import Params
from gfm.config.sections import (
    AccelerateConfig,
    AccelerateStore,
    BudgetConfig,
    ClaimSpec,
    EvaluateConfig,
    ForecastConfig,
    GeneralizeConfig,
    GenerateConfig,
    LimitsConfig,
    PairSpec,
    ReportConfig,
    SplitConfig,
    StoreLayoutConfig,
    StoreSpec,
    TrainConfig,
    TuningConfig,
)
from gfm.config.sizes import StoreEstimate, estimate_store
from gfm.config.tasks import (
    TASK_KINDS,
    CIFAR10Config,
    DigitsConfig,
    InitConfig,
    LeastSquaresConfig,
    MLPClassificationConfig,
    MLPRegressionConfig,
    TaskConfig,
)

__all__ = [
    "Range", "Hyper", "OptimizerName", "ScheduleConfig", "OptimizerConfig", "InitConfig", "TaskConfig",
    "LeastSquaresConfig", "MLPRegressionConfig", "MLPClassificationConfig", "DigitsConfig", "CIFAR10Config",
    "StoreSpec", "StoreLayoutConfig", "GenerateConfig", "SplitConfig", "ForecastConfig", "BudgetConfig",
    "TuningConfig", "TrainConfig", "EvaluateConfig", "ReportConfig", "ClaimSpec", "PairSpec", "GeneralizeConfig",
    "AccelerateConfig", "AccelerateStore", "LimitsConfig", "Params", "load_params", "parse_params", "config_hash",
    "to_dict", "OPTIMIZER_NAMES", "TASK_KINDS", "OPTIMIZER_STATE_ARRAYS", "StoreEstimate", "estimate_store",
]
