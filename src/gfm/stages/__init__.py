"""The pipeline stages that compute, one module each (``gfm <stage>`` calls its ``run``): generate (with runs:
the per-run randomness it shares with accelerate and evaluate), split, train (with train_fit: one dataset
seed's fit, tuning: the fair-comparison protocol, and train_index: a store's index of trained models),
forecast (with forecast_check: ``gfm check`` of its output), evaluate, generalize and accelerate. The report
and the headline, which show what these compute, are in gfm.report. A stage's code dependencies are the import
closure of its module (gfm.pipeline.closure).

May import: gfm.base, gfm.core, gfm.artifacts, gfm.config, gfm.store, gfm.tasks, gfm.flow, gfm.forecasters,
gfm.metrics, gfm.recording and gfm.pipeline (paths). Never the report, the tools or the command line.
"""
