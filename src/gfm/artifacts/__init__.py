"""What the pipeline writes to disk and reads back, whatever the format: the ownership marker and what a stage
may replace (outputs, output_contents), the bounded, structural reading of any input (inputs), which files of
a Zarr store are its own (zarr_files), a model's refusal of a store (refusals) and what ``gfm check`` says
about one artifact (verdict). Each format's own reader, writer and check live with the format (gfm.store, the
stages, gfm.forecasters.model_files) and build on these.

May import: gfm.base.
"""
