"""Synthetic MLP tasks: regression (LFD-2's "neural network" protocol) and Gaussian-class classification."""

from __future__ import annotations

import torch

from gfm.config import MLPClassificationConfig, MLPRegressionConfig
from gfm.tasks.base import Task, mlp_layout, mlp_module

__all__ = ["MLPRegressionTask", "MLPClassificationTask"]


class MLPRegressionTask(Task):
    cfg: MLPRegressionConfig

    def __init__(self, cfg: MLPRegressionConfig):
        super().__init__(cfg)
        self.dims = [cfg.dim, *cfg.hidden, 1]
        self.layout = mlp_layout(self.dims)

    def sample_data(self, gen):
        x = torch.randn(self.cfg.n_samples, self.cfg.dim, generator=gen)
        w_star = torch.randn(self.cfg.dim, generator=gen)
        y = x @ w_star
        if self.cfg.target == "sin":
            y = torch.sin(2 * y)
        if self.cfg.noise:
            y = y + self.cfg.noise * torch.randn(self.cfg.n_samples, generator=gen)
        return x, y

    def build_module(self):
        return mlp_module(self.dims)


class MLPClassificationTask(Task):
    cfg: MLPClassificationConfig
    classification = True

    def __init__(self, cfg: MLPClassificationConfig):
        super().__init__(cfg)
        self.dims = [cfg.dim, *cfg.hidden, cfg.classes]
        self.layout = mlp_layout(self.dims)

    def sample_data(self, gen):
        c = self.cfg
        means = torch.randn(c.classes, c.dim, generator=gen) * c.separation
        y = torch.randint(0, c.classes, (c.n_samples,), generator=gen)
        x = means[y] + torch.randn(c.n_samples, c.dim, generator=gen)
        return x, y

    def build_module(self):
        return mlp_module(self.dims)
