"""The numbers the stages compute and the report reads: what one model's entry in a metrics JSON holds
(model_entries), paired comparisons over dataset seeds (stats), the scores of sampled forecasts (uncertainty)
and what the jump-ahead experiment reports (accelerate_summary).

May import: gfm.base, gfm.artifacts. Torch-free: the report and the headline read metrics without it.
"""
