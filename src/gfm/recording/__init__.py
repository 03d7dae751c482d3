"""Trajectories from outside the generate stage, and a fitted forecaster inside a user's own loop: a training
loop recorded (recorder, with capture: what is read from torch, and append: adding a run; ``gfm.record``),
many runs recorded into one store (runset, runset_write: ``gfm.record_runs``), runs imported from arrays
(importer, import_meta, import_source: ``gfm import``), a recorded store declared to the pipeline and taken in
(declare: ``gfm declare``, ``gfm rechunk``, generate's intake) and jump-ahead training in a user's loop (jump:
``gfm.jump_ahead``).

May import: gfm.base, gfm.core, gfm.artifacts, gfm.config, gfm.store, gfm.tasks, gfm.forecasters.
"""
