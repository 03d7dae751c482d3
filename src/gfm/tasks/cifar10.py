"""CIFAR-10 from a local copy of the official *binary* batches, with a small CNN.

Data: ``data_dir`` holds ``data_batch_1.bin`` ... ``data_batch_5.bin`` (the "CIFAR-10 binary version",
https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz, directory ``cifar-10-batches-bin/``). Each file is a
sequence of 3073-byte records: one label byte (0-9), then 1024 red, 1024 green and 1024 blue bytes of a
32x32 image in row-major order. The pickled "python version" is deliberately not read (no pickle anywhere).
Each run trains on its own random subset of ``n_samples`` training images, optionally average-pooled by
``downsample`` (2: 16x16 images, 4x cheaper), normalised with the usual per-channel mean and std.

Network (single run, ``build_module``)::

    Unflatten(3, S, S) -> [Conv2d(c_in, c, 3, padding=1) -> ReLU -> MaxPool2d(2)] per entry of ``channels``
                       -> Flatten -> Linear(c_last * (S / 2^n)^2, 10)

Stacked over R runs (``forward``), every convolution is one grouped convolution: the runs' images are
stacked along the channel axis, (batch, run * c_in, S, S), and the runs' kernels along the output axis,
(run * c_out, c_in, 3, 3), with ``groups = R``, so run r's kernels only see run r's channels. The final Linear
is a batched matmul. The gradient goes through autograd (``Task.manual_backward`` is False for this task).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gfm.base.errors import GFMError
from gfm.config import CIFAR10Config
from gfm.tasks.base import ParamSpec, Task, layout_from_shapes

__all__ = ["CIFAR10Task", "load_cifar10_binary", "RECORD_BYTES", "CifarDataError"]

RECORD_BYTES = 1 + 3 * 32 * 32
_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the CIFAR-10 training set
_STD = (0.2470, 0.2435, 0.2616)


class CifarDataError(GFMError, FileNotFoundError):
    """The CIFAR-10 binary batches are missing or malformed."""


@lru_cache(maxsize=2)
def load_cifar10_binary(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training image of ``data_dir/data_batch_*.bin``.

    Returns:
        x (image, 3, 32, 32) uint8 and y (image,) int64.

    Raises:
        CifarDataError: no batch files, or a file that is not a whole number of 3073-byte records, or a label
            outside 0..9.
    """
    root = Path(data_dir)
    files = sorted(root.glob("data_batch_*.bin"))
    if not files:
        raise CifarDataError(
            f"{root}: no data_batch_*.bin files. Download the binary version "
            "(https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz), extract it and point tasks.<name>.data_dir "
            "at its cifar-10-batches-bin/ directory (README: 'CIFAR-10')")
    parts = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % RECORD_BYTES:
            raise CifarDataError(f"{f}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records "
                                 "(is it the binary version, not the python one?)")
        parts.append(raw.reshape(-1, RECORD_BYTES))
    rec = np.concatenate(parts)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise CifarDataError(f"{root}: label {int(labels.max())} outside 0..9; not CIFAR-10 binary records")
    x = torch.from_numpy(np.ascontiguousarray(rec[:, 1:]).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels)


def _conv_layers(layout: tuple[ParamSpec, ...]) -> list[tuple[ParamSpec, ParamSpec]]:
    """(weight, bias) of each conv layer, then of the final Linear (last pair)."""
    return [(layout[i], layout[i + 1]) for i in range(0, len(layout), 2)]


class CIFAR10Task(Task):
    cfg: CIFAR10Config
    classification = True

    def __init__(self, cfg: CIFAR10Config):
        super().__init__(cfg)
        self.size = 32 // cfg.downsample
        self.module_template = self.build_module()
        self.layout = layout_from_shapes([(n, tuple(p.shape)) for n, p in self.module_template.named_parameters()])

    # --- per run -------------------------------------------------------------------------------------
    def sample_data(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n_samples`` random training images of one run: x (sample, 3 * S * S) float32, y (sample,) int64."""
        x_all, y_all = load_cifar10_binary(str(Path(self.cfg.data_dir).expanduser().resolve()))
        if self.cfg.n_samples > x_all.shape[0]:
            raise CifarDataError(f"tasks.*.n_samples: got {self.cfg.n_samples}; {self.cfg.data_dir} holds only "
                                 f"{x_all.shape[0]} training images")
        idx = torch.randperm(x_all.shape[0], generator=gen)[: self.cfg.n_samples]
        x = x_all[idx].float().div_(255.0)
        if self.cfg.downsample > 1:
            x = F.avg_pool2d(x, self.cfg.downsample)
        mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_STD).view(1, 3, 1, 1)
        # flat rows, like every other task: the generator gathers minibatches as (run * sample, features)
        return ((x - mean) / std).reshape(x.shape[0], -1).contiguous(), y_all[idx].clone()

    def init_weights(self, gen: torch.Generator) -> torch.Tensor:
        """Conv2d/Linear's own init: U(±1/sqrt(fan_in)) with fan_in = in_channels * k * k (or in_features),
        scaled like the other tasks by ``init.dist`` and ``init.scale``."""
        parts, fan_in = [], 1
        for spec in self.layout:
            if len(spec.shape) > 1:
                fan_in = math.prod(spec.shape[1:])
            dist = self.cfg.init.dist
            if dist == "default":
                t = (torch.rand(spec.shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)
            elif dist == "uniform":
                t = (torch.rand(spec.shape, generator=gen) * 2 - 1) * math.sqrt(3.0 / fan_in)
            elif dist == "normal":
                t = torch.randn(spec.shape, generator=gen) / math.sqrt(fan_in)
            else:  # unit_uniform
                t = torch.rand(spec.shape, generator=gen)
            parts.append((t * self.cfg.init.scale).reshape(-1))
        return torch.cat(parts)

    def build_module(self) -> nn.Module:
        layers: list[nn.Module] = [nn.Unflatten(1, (3, self.size, self.size))]
        c_in, s = 3, self.size
        for c in self.cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, s = c, s // 2
        layers += [nn.Flatten(), nn.Linear(c_in * s * s, 10)]
        return nn.Sequential(*layers)

    # --- stacked -------------------------------------------------------------------------------------
    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(run, param), (run, batch, 3 * S * S) -> logits (run, batch, 10)."""
        R, B = theta.shape[0], x.shape[1]
        S = self.size
        # (batch, run * 3, S, S): run r's channels are r*3 .. r*3+2
        h = x.reshape(R, B, 3, S, S).transpose(0, 1).reshape(B, R * 3, S, S)
        layers = _conv_layers(self.layout)
        for w_spec, b_spec in layers[:-1]:
            c_out, c_in, k, _ = w_spec.shape
            W = theta[:, w_spec.offset : w_spec.offset + w_spec.size].reshape(R * c_out, c_in, k, k)
            b = theta[:, b_spec.offset : b_spec.offset + b_spec.size].reshape(R * c_out)
            h = F.max_pool2d(F.relu(F.conv2d(h, W, b, padding=1, groups=R)), 2)
        # (batch, run, c * s * s) in Flatten's (channel, row, column) order -> (run, batch, features)
        h = h.reshape(B, R, -1).transpose(0, 1)
        w_spec, b_spec = layers[-1]
        W = theta[:, w_spec.offset : w_spec.offset + w_spec.size].view(R, *w_spec.shape)  # (run, 10, features)
        b = theta[:, b_spec.offset : b_spec.offset + b_spec.size].view(R, 1, -1)
        return torch.baddbmm(b, h, W.transpose(1, 2))
