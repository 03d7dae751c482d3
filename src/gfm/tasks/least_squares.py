"""LFD-2 least squares (docs/methods.md §2): X ~ N(0, I), w* ~ N(0, I), y = X w*; loss 0.5 * sum (x.w - y)^2."""

from __future__ import annotations

import torch
from torch import nn

from gfm.config import LeastSquaresConfig
from gfm.tasks.base import Task, layout_from_shapes

__all__ = ["LeastSquaresTask"]


class LeastSquaresTask(Task):
    cfg: LeastSquaresConfig

    def __init__(self, cfg: LeastSquaresConfig):
        super().__init__(cfg)
        self.layout = layout_from_shapes([("weight", (1, cfg.dim))])

    def sample_data(self, gen):
        x = torch.randn(self.cfg.n_samples, self.cfg.dim, generator=gen)
        w_star = torch.randn(self.cfg.dim, generator=gen)
        y = x @ w_star
        if self.cfg.noise:
            y = y + self.cfg.noise * torch.randn(self.cfg.n_samples, generator=gen)
        return x, y

    def lr_scale(self, x, y):
        if self.cfg.lr_scale == "inverse_lambda_max":
            # LFD-2 GD: lr = base / lambda_max(X^T X), so every run contracts at the same relative speed.
            return 1.0 / float(torch.linalg.eigvalsh((x.T @ x).double()).max())
        return 1.0

    def build_module(self):
        return nn.Linear(self.cfg.dim, 1, bias=False)

    def forward(self, theta, x):
        return torch.bmm(x, theta.unsqueeze(-1))  # (run, batch, 1)

    def loss_from_output(self, out, y):
        return 0.5 * (out.squeeze(-1) - y).pow(2).sum(1)
