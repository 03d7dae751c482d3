"""Forecasters: GFM, its ablation, sequence and classical baselines, behind one interface (base.py).

Importing this package fills the registry ``FORECASTERS`` (name in params -> class).
"""

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
