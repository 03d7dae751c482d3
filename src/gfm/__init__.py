"""gfm: learn how neural networks train (Gradient Flow Matching) and forecast where their weights end up."""

from gfm._version import __version__

__all__ = ["__version__", "open_trajectories", "record"]


def __getattr__(name):
    # Lazy, so `gfm validate` and other light commands do not pay for importing torch and zarr.
    if name == "open_trajectories":
        from gfm.store import open_trajectories

        return open_trajectories
    if name == "record":
        from gfm.recorder import record

        return record
    raise AttributeError(f"module 'gfm' has no attribute {name!r}")
