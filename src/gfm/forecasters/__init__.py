"""Forecasters: GFM, its ablation, sequence and classical baselines, behind one interface (base.py).

Importing this package fills the registry ``FORECASTERS`` (name in params -> class).
"""

# Importing a module registers its forecasters (@register).
from gfm.forecasters import (  # noqa: E402, F401  (baselines)
    classical,
    conditioned,  # noqa: E402, F401  (lstm_z)
    function_field,  # noqa: E402, F401  (gfm_function)
    gfm,  # noqa: E402, F401  (gfm, gfm_plain)
    sequence,
)
from gfm.forecasters.base import (
    FORECASTERS,
    Forecaster,
    ForecasterError,
    ModelFileError,
    StoreNotSupported,
    Trajectories,
    make_forecaster,
    read_model,
    register,
)
from gfm.forecasters.trained import (  # noqa: E402  (a trained model + what it was fitted on: gfm.load_forecaster)
    Forecast,
    RunMismatchError,
    TrainedForecaster,
    TrainedOn,
    prefix_from_arrays,
)

__all__ = [
    "FORECASTERS", "Forecaster", "ForecasterError", "ModelFileError", "StoreNotSupported", "Trajectories",
    "read_model",
    "make_forecaster", "register", "Forecast", "RunMismatchError", "TrainedForecaster", "TrainedOn",
    "prefix_from_arrays",
]
