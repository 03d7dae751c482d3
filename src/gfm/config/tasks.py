"""Params sections for tasks: the fields every task has (``tasks.<name>``) and one subclass per ``kind``, with the
network's sizes computed from the config alone (no torch)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from gfm.base.errors import shorten
from gfm.base.schema import spec


@dataclass(frozen=True)
class InitConfig:
    """Initial weights. ``default`` is PyTorch's nn.Linear init (U(±1/sqrt(fan_in)) for weight and bias);
    ``normal`` N(0, 1/fan_in) and ``uniform`` U(±sqrt(3/fan_in)) have the same variance as each other;
    ``unit_uniform`` is U(0, 1) (the LFD-2 least-squares protocol). Every draw is multiplied by ``scale``."""

    dist: Literal["default", "normal", "uniform", "unit_uniform"] = "default"
    scale: float = spec(1.0, gt=0)


@dataclass(frozen=True)
class TaskConfig:
    """Fields every task has. ``kind`` picks the model family, data and loss."""

    kind: str
    # The class that builds this kind's network, data and loss, as "<module>:<class>", named rather than imported
    # so that reading params never imports torch (gfm.tasks.task_class finds it); "" where there is none to build.
    task_class: ClassVar[str] = ""
    runs_per_dataset: int = spec(200, ge=1, doc="runs (trajectories) per dataset seed")
    steps: int = spec(200, ge=1, doc="optimizer steps per run")
    record_every: int = spec(1, ge=1, doc="record weights every k optimizer steps")
    batch_size: int = spec(64, ge=0, doc="minibatch size; 0 = full batch (gradient descent)")
    n_samples: int = spec(100, ge=1, doc="training samples per run")
    init: InitConfig = dataclasses.field(default_factory=InitConfig)

    @classmethod
    def _dispatch(cls, data, path, problems):
        kind = data.get("kind")
        if not isinstance(kind, str) or kind not in TASK_KINDS:
            problems.append(f"{path}.kind: got {shorten(kind)}; expected one of {', '.join(sorted(TASK_KINDS))}")
            return None
        return TASK_KINDS[kind]

    def _check(self):
        out = []
        if self.steps % self.record_every:
            out.append(("record_every", f"got {self.record_every}; expected a divisor of steps ({self.steps})"))
        if self.batch_size > self.n_samples:
            out.append(("batch_size", f"got {self.batch_size}; expected at most n_samples ({self.n_samples})"))
        return out

    @property
    def n_records(self) -> int:
        """Recorded points per run: step 0 (initialisation) and every ``record_every`` steps after it."""
        return self.steps // self.record_every + 1

    # Sizes, from the config alone (no torch): the parameter count must equal the task's layout
    # (gfm.tasks.make_task(cfg).n_params; tests/test_config.py checks every kind).
    def layer_dims(self) -> list[int]:
        """Widths of the network's layers, input first (an MLP's ``dims``)."""
        raise NotImplementedError

    def n_params(self) -> int:
        """Length of the flat parameter vector (one run's weights)."""
        dims = self.layer_dims()
        return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))

    def input_width(self) -> int:
        """Features of one training sample."""
        return self.layer_dims()[0]

    def activation_width(self) -> int:
        """Values one sample produces in a forward pass (every layer's output), for memory estimates."""
        return sum(self.layer_dims()[1:])


@dataclass(frozen=True)
class LeastSquaresConfig(TaskConfig):
    """LFD-2 least squares: X ~ N(0, I) (n_samples x dim), w* ~ N(0, I), y = X w* (+ noise);
    loss 0.5 * sum over the batch of (x.w - y)^2; no bias."""

    kind: Literal["least_squares"] = "least_squares"
    task_class: ClassVar[str] = "gfm.tasks.least_squares:LeastSquaresTask"
    dim: int = spec(1, ge=1)
    noise: float = spec(0.0, ge=0)
    lr_scale: Literal["none", "inverse_lambda_max"] = spec(
        "none", doc="inverse_lambda_max: lr is divided by the largest eigenvalue of X^T X (LFD-2 GD)")

    def layer_dims(self) -> list[int]:
        return [self.dim, 1]

    def n_params(self) -> int:  # weight (1, dim), no bias
        return self.dim


@dataclass(frozen=True)
class MLPRegressionConfig(TaskConfig):
    """MLP dim -> hidden... -> 1 with ReLU, MSE. Data X ~ N(0, I); target y = X w* (``linear``, w* ~ N(0, I))
    or sin(2 X w*) (``sin``), plus Gaussian noise."""

    kind: Literal["mlp_regression"] = "mlp_regression"
    task_class: ClassVar[str] = "gfm.tasks.mlp:MLPRegressionTask"
    dim: int = spec(1, ge=1)
    hidden: list[int] = spec([10], nonempty=True, ge=1)
    target: Literal["linear", "sin"] = "linear"
    noise: float = spec(0.0, ge=0)

    def layer_dims(self) -> list[int]:
        return [self.dim, *self.hidden, 1]


@dataclass(frozen=True)
class MLPClassificationConfig(TaskConfig):
    """Synthetic Gaussian classes: class means ~ N(0, separation^2 I), samples N(mean, I);
    MLP dim -> hidden... -> classes with ReLU, cross-entropy."""

    kind: Literal["mlp_classification"] = "mlp_classification"
    task_class: ClassVar[str] = "gfm.tasks.mlp:MLPClassificationTask"
    dim: int = spec(2, ge=1)
    classes: int = spec(3, ge=2)
    hidden: list[int] = spec([16], nonempty=True, ge=1)
    separation: float = spec(2.0, gt=0)

    def layer_dims(self) -> list[int]:
        return [self.dim, *self.hidden, self.classes]


@dataclass(frozen=True)
class DigitsConfig(TaskConfig):
    """scikit-learn's bundled 8x8 digits (1797 images, pixels / 16); each run trains on its own random
    subset of ``n_samples`` images; MLP 64 -> hidden... -> 10, cross-entropy."""

    kind: Literal["digits"] = "digits"
    task_class: ClassVar[str] = "gfm.tasks.digits:DigitsTask"
    hidden: list[int] = spec([16], nonempty=True, ge=1)
    n_samples: int = spec(256, ge=1, le=1797)

    def layer_dims(self) -> list[int]:
        return [64, *self.hidden, 10]


@dataclass(frozen=True)
class CIFAR10Config(TaskConfig):
    """CIFAR-10 from the official binary batches (``data_dir``/data_batch_*.bin, never the pickled version);
    each run trains on its own random subset of ``n_samples`` images, average-pooled by ``downsample``; a CNN
    of 3x3 conv -> ReLU -> 2x2 max-pool per entry of ``channels``, then Linear -> 10, cross-entropy."""

    kind: Literal["cifar10"] = "cifar10"
    task_class: ClassVar[str] = "gfm.tasks.cifar10:CIFAR10Task"
    data_dir: str = spec("data/cifar10/cifar-10-batches-bin", doc="directory holding data_batch_1.bin ... _5.bin")
    n_samples: int = spec(512, ge=1, le=50000)
    channels: list[int] = spec([8, 16], nonempty=True, ge=1, doc="output channels of each conv block")
    downsample: int = spec(2, ge=1, le=32, doc="average-pool images by this factor first (2: 16x16)")

    def layer_dims(self) -> list[int]:
        """Input features, each conv block's output (before pooling), the 10 logits."""
        size = 32 // self.downsample
        dims = [3 * size * size]
        for c in self.channels:
            dims.append(c * size * size)
            size //= 2
        return [*dims, 10]

    def n_params(self) -> int:
        size, c_in, n = 32 // self.downsample, 3, 0
        for c in self.channels:  # 3x3 conv with bias, then a 2x2 max-pool
            n += c_in * c * 9 + c
            c_in, size = c, size // 2
        return n + c_in * size * size * 10 + 10  # Linear -> 10

    def _check(self):
        out = super()._check()
        if 32 % self.downsample:
            out.append(("downsample", f"got {self.downsample}; expected a divisor of 32 (1, 2, 4, ...)"))
        elif (32 // self.downsample) % 2 ** len(self.channels):
            out.append(("channels", f"got {len(self.channels)} conv blocks; {32 // self.downsample}x"
                                    f"{32 // self.downsample} images cannot be max-pooled by 2 that many times"))
        return out


SHA256_PATTERN = "^[0-9a-f]{64}$"


@dataclass(frozen=True, kw_only=True)  # kw_only: required fields after the base class's defaults
class RecordedConfig(TaskConfig):
    """A store recorded from a user's own training loop (``gfm.record``) or imported (``gfm import``), declared
    by its path: the pipeline takes it in instead of generating one (gfm.config.declared). Its network, optimizer,
    recording interval, loss and activation are the store's own; ``gfm declare`` writes this entry.

    ``runs_per_dataset``, ``steps`` and ``record_every`` are not written in params: they are read from the store
    when the params file is loaded (``runs_per_dataset`` = the fewest runs of any dataset seed), so every check
    that needs a size sees the store's, and ``n_params`` is its layout's."""

    kind: Literal["recorded"] = "recorded"
    # no task_class: the store is taken in, never trained; evaluate rebuilds its network from what the store
    # records (gfm.tasks.recorded.recorded_task)
    path: str = spec(doc="the store (a .zarr directory), relative to the workspace root")
    sha256: str = spec(doc="content hash of the store (gfm declare writes it); a changed store is refused "
                           "until it is declared again, and its change re-runs its stages under DVC",
                       json_schema={"pattern": SHA256_PATTERN})
    n_layout_params: int = spec(0, ge=0, doc="read from the store, never written: its parameter count")
    root: str = spec(".", doc="set when params are loaded, never written: the directory `path` is relative to")

    @property
    def source(self) -> str:
        """The store's path as this process opens it (``path`` below the params file's directory)."""
        return self.path if self.path.startswith("/") else f"{self.root.rstrip('/')}/{self.path}"

    def n_params(self) -> int:
        return self.n_layout_params

    def layer_dims(self) -> list[int]:  # only the cost estimates of generation and jump-ahead read it
        return [1, self.n_layout_params]

    def _check(self):
        out = super()._check()
        if not re.fullmatch(SHA256_PATTERN, self.sha256):
            out.append(("sha256", f"got {shorten(self.sha256, 70)}; expected 64 lowercase hex digits (run "
                                  f"`gfm declare {self.path}` to write it)"))
        return out


# The one list of task kinds: params' `kind` -> its config class, which names its Task class (task_class).
TASK_KINDS: dict[str, type[TaskConfig]] = {c.kind: c for c in (  # type: ignore[misc]  (each kind's default)
    LeastSquaresConfig, MLPRegressionConfig, MLPClassificationConfig, DigitsConfig, CIFAR10Config, RecordedConfig)}

