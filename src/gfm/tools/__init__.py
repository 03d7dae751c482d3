"""The tool commands around the stages: ``gfm check`` (check: finds the artifacts under a path and hands each
to its format's check), ``gfm workspace`` (workspace: a preset run in a directory of its own) and the page
``dvc plots`` draws without network access (plots_page).

May import: gfm.base, gfm.artifacts, gfm.config, gfm.store, gfm.forecasters, gfm.stages, gfm.pipeline,
gfm.drivers.
"""
