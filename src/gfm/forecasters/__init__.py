"""Forecasters: GFM, its ablation, sequence and classical baselines, behind one interface (base.py).

Importing this package fills the registry ``FORECASTERS`` (name in params -> class).
"""

# Importing a module registers its forecasters (@register).
from gfm.forecasters import (  # noqa: E402, F401  (baselines)
    classical,
    gfm,  # noqa: E402, F401  (gfm, gfm_plain)
    sequence,
)
from gfm.forecasters.base import (
    FORECASTERS,
    Forecaster,
    ForecasterError,
    ModelFileError,
    Trajectories,
    load_forecaster,
    make_forecaster,
    register,
)

__all__ = [
    "FORECASTERS", "Forecaster", "ForecasterError", "ModelFileError", "Trajectories", "load_forecaster",
    "make_forecaster", "register",
]
