"""What a training run is, independent of files and stages: the optimizers' update rules, written once
(optimizers), where each tensor sits in the flat parameter vector (layout) and the network's activation and
loss (network).

May import: gfm.base. Torch is imported where an update rule runs, never when the package is imported.
"""
