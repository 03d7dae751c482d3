"""gfm: learn how neural networks train (Gradient Flow Matching) and forecast where their weights end up."""

__version__ = "0.1.0"

from gfm.store import open_trajectories  # noqa: E402

__all__ = ["__version__", "open_trajectories"]
