"""scikit-learn's bundled 8x8 digits (no download): 1797 images, 64 pixels scaled to [0, 1], 10 classes."""

from __future__ import annotations

from functools import lru_cache

import torch

from gfm.config import DigitsConfig
from gfm.tasks.base import Task, mlp_layout, mlp_module

__all__ = ["DigitsTask", "load_digits_tensors"]


@lru_cache(maxsize=1)
def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as (x (1797, 64) float32 in [0, 1], y (1797,) int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target, dtype=torch.int64)


class DigitsTask(Task):
    cfg: DigitsConfig
    classification = True

    def __init__(self, cfg: DigitsConfig):
        super().__init__(cfg)
        self.dims = [64, *cfg.hidden, 10]
        self.layout = mlp_layout(self.dims)

    def sample_data(self, gen):
        x_all, y_all = load_digits_tensors()
        idx = torch.randperm(x_all.shape[0], generator=gen)[: self.cfg.n_samples]
        return x_all[idx], y_all[idx]

    def build_module(self):
        return mlp_module(self.dims)
