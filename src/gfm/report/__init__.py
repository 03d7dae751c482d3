"""What the pipeline shows: the report stage (summary: ``reports/summary.md``; its HTML page: html; its
figures: figures; the paired comparisons behind its claims: comparisons; the training protocol: protocol; the
jump-ahead table: accelerate_table) and the headline stage (headline: what DVC shows).

May import: gfm.base, gfm.artifacts, gfm.config, gfm.metrics and gfm.pipeline (paths). Never a computing stage
(it reads their outputs from disk) and never torch.
"""
