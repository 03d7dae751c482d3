"""Forecasters: GFM, its ablation, sequence and classical baselines, behind one interface (base.py).

Importing this package fills the registry ``FORECASTERS`` (name in params -> class): it imports every module of
its own directory, and a module's ``@register`` classes register themselves, so a new forecaster is its module
(and its test) and nothing else.

May import: gfm.base, gfm.core, gfm.artifacts, gfm.config, gfm.store, gfm.flow, gfm.metrics.
"""

import importlib
import pkgutil

from gfm.forecasters.base import (
    FORECASTERS,
    Forecaster,
    ForecasterError,
    ModelFileError,
    StoreNotSupported,
    Trajectories,
    make_forecaster,
    register,
)
from gfm.forecasters.model_files import read_model, save_model
from gfm.forecasters.trained import (  # a trained model + what it was fitted on: gfm.load_forecaster
    Forecast,
    RunMismatchError,
    TrainedForecaster,
    TrainedOn,
    prefix_from_arrays,
)

# The names come from this package's own directory (pkgutil lists its modules), never from params or data: the
# one computed import tests/test_safety.py allows.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "FORECASTERS", "Forecaster", "ForecasterError", "ModelFileError", "StoreNotSupported", "Trajectories",
    "read_model", "save_model",
    "make_forecaster", "register", "Forecast", "RunMismatchError", "TrainedForecaster", "TrainedOn",
    "prefix_from_arrays",
]
