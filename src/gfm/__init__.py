"""gfm: learn how neural networks train (Gradient Flow Matching) and forecast where their weights end up."""

from gfm._version import __version__

__all__ = ["__version__", "open_trajectories", "record", "load_forecaster", "forecast_run", "prefix_from_arrays"]

# Forecasting a run with a trained model (gfm.forecasters.trained); not named ``forecast``: gfm.forecast is the
# forecast stage's module, and importing it would shadow the function.
_FORECASTING = {"load_forecaster": "load", "forecast_run": "forecast_run", "prefix_from_arrays": "prefix_from_arrays"}


def __getattr__(name):
    # Lazy, so `gfm validate` and other light commands do not pay for importing torch and zarr.
    if name == "open_trajectories":
        from gfm.store import open_trajectories

        return open_trajectories
    if name == "record":
        from gfm.recorder import record

        return record
    if name in _FORECASTING:
        from gfm.forecasters import trained

        return getattr(trained, _FORECASTING[name])
    raise AttributeError(f"module 'gfm' has no attribute {name!r}")
