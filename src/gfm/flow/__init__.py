"""The flow-matching core: conditional path (path.py), field networks and the optimizer-aware velocity
(field.py), and an ODE sampler over torchdiffeq (solver.py).

May import: gfm.base, gfm.core.
"""

from gfm.flow.field import BoundedMLP, CoordinateField, JointField, bound, optimizer_velocity
from gfm.flow.path import T_SAMPLING, PathSample, PiecewiseLinearPath, sample_segments
from gfm.flow.solver import FIXED_STEP, SOLVERS, sample

__all__ = [
    "BoundedMLP", "CoordinateField", "JointField", "bound", "optimizer_velocity",
    "PathSample", "PiecewiseLinearPath", "sample_segments", "T_SAMPLING",
    "FIXED_STEP", "SOLVERS", "sample",
]
