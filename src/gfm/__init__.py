"""gfm: learn how neural networks train (Gradient Flow Matching) and forecast where their weights end up.

The public API (``dir(gfm)`` lists it):

- ``gfm.record(path, model, optimizer, ...)``: record a training loop into a trajectory store.
- ``gfm.record_runs(path)``: record many runs of a loop into one store (``runs.record(model, optimizer, ...)``).
- ``gfm.open_trajectories(path)``: read a finished trajectory store.
- ``gfm.load_forecaster(model_dir, ...)``: a model written by the train stage, with what it was fitted on.
- ``gfm.forecast_run(model_dir, run, ...)``: load, then forecast one run, in one call.
- ``gfm.prefix_from_arrays(weights, ...)``: a run held as arrays, in the form a forecaster reads.
- ``gfm.jump_ahead(model, optimizer, forecaster, ...)``: jump ahead in a training loop with a fitted forecaster,
  each jump kept only if the held-out loss is not worse.

Each is imported on first use, so ``gfm validate`` and other light commands do not pay for torch and zarr.
"""

from gfm._version import __version__

__all__ = ["__version__", "open_trajectories", "record", "record_runs", "load_forecaster", "forecast_run",
           "prefix_from_arrays", "jump_ahead"]



def load_forecaster(model_dir, *, seed=None, store=None):
    """Load a model written by the train stage, with what it was fitted on (a ``TrainedForecaster``).

    Args:
        model_dir: one fit, ``data/models/<task>/<optimizer>/<model>/<seed>/``, or the model's directory with
            ``seed``.
        seed: the dataset seed whose fit to load, when ``model_dir`` is the model's directory.
        store: the trajectory store the model was trained on (default: the pipeline's store beside the model).

    Defined here, not re-exported, so that its name is its own: the reader of a bare model directory is
    ``gfm.forecasters.read_model``; this one is ``gfm.forecasters.trained.load`` (full documentation).
    """
    from gfm.forecasters.trained import load

    return load(model_dir, seed=seed, store=store)


def __getattr__(name):
    # Each name from the module that holds it under the same name, imported on first access.
    if name == "open_trajectories":
        from gfm.store.reader import open_trajectories

        return open_trajectories
    if name == "record":
        from gfm.recording.recorder import record

        return record
    if name == "record_runs":
        from gfm.recording.runset import record_runs

        return record_runs
    if name == "jump_ahead":
        from gfm.recording.jump import jump_ahead

        return jump_ahead
    if name in ("forecast_run", "prefix_from_arrays"):
        from gfm.forecasters import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'gfm' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
