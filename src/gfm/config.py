"""Typed params: one frozen dataclass per ``params.yaml`` section, validated once at load.

``load_params(path)`` reads YAML with the safe loader, builds :class:`Params` and raises
:class:`~gfm.errors.ParamsError` listing every problem as ``key.path: got X; expected Y``.
The same file is Snakemake's ``configfile:`` and DVC's params file (docs/architecture.md §6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gfm.errors import ParamsError, shorten
from gfm.params_yaml import YAMLRefused, parse_yaml, read_params_text
from gfm.schema import build, spec

__all__ = [
    "Range", "ScheduleConfig", "OptimizerConfig", "InitConfig", "TaskConfig", "LeastSquaresConfig",
    "MLPRegressionConfig", "MLPClassificationConfig", "DigitsConfig", "CIFAR10Config", "StoreSpec", "StoreLayoutConfig",
    "GenerateConfig", "SplitConfig", "ForecastConfig", "TrainConfig", "EvaluateConfig", "ReportConfig", "ClaimSpec", "PairSpec", "GeneralizeConfig", "AccelerateConfig", "AccelerateStore", "LimitsConfig", "Params", "load_params", "parse_params", "config_hash",
    "OPTIMIZER_NAMES", "TASK_KINDS", "OPTIMIZER_STATE_ARRAYS", "StoreEstimate", "estimate_store",
]

OptimizerName = Literal["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"]
OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")


@dataclass(frozen=True)
class Range:
    """A hyper-parameter drawn per run, uniformly in [low, high] (log-uniformly if ``log``)."""

    low: float
    high: float
    log: bool = False

    def _check(self):
        out = []
        if self.high < self.low:
            out.append(("high", f"got {shorten(self.high)}; expected a value >= low ({shorten(self.low)})"))
        if self.log and self.low <= 0:
            out.append(("low", f"got {self.low!r}; a log range needs low > 0"))
        return out


Hyper = float | Range


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule, as a multiplier of the base lr at optimizer step k (0-based)."""

    kind: Literal["constant", "cosine", "step"] = "constant"
    step_size: int = spec(50, ge=1, doc="step: multiply by gamma every step_size steps")
    gamma: float = spec(0.5, gt=0, le=1)
    min_ratio: float = spec(0.0, ge=0, le=1, doc="cosine: floor as a fraction of the base lr")


# How many (run, param) state arrays each optimizer carries and records (gfm.optimizers.STATE_NAMES; a test
# checks the two agree). Kept here so that validating params never imports torch.
OPTIMIZER_STATE_ARRAYS: dict[str, int] = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adam": 2, "adamw": 2}

# Which hyper-parameters each optimizer reads; any other key is a mistake worth reporting (gfm.optimizers.
# HYPER_NAMES lists the same names without eps; a test checks the two agree).
_OPTIMIZER_KEYS = {
    "sgd": {"lr", "weight_decay"},
    "momentum": {"lr", "momentum", "weight_decay"},
    "nesterov": {"lr", "momentum", "weight_decay"},
    "adam": {"lr", "beta1", "beta2", "eps", "weight_decay"},
    "adamw": {"lr", "beta1", "beta2", "eps", "weight_decay"},
    "rmsprop": {"lr", "alpha", "eps", "weight_decay"},
}


@dataclass(frozen=True)
class OptimizerConfig:
    """An optimizer and its hyper-parameters (PyTorch conventions: heavy-ball or Nesterov momentum, Adam with
    bias correction and L2 weight decay, AdamW with decoupled weight decay, RMSprop with smoothing ``alpha``;
    update rules in gfm.optimizers). Each hyper-parameter is a number or a per-run Range."""

    name: OptimizerName
    lr: Hyper = spec(ge=0)
    momentum: Hyper = spec(0.9, ge=0, lt=1)
    beta1: Hyper = spec(0.9, ge=0, lt=1)
    beta2: Hyper = spec(0.999, ge=0, lt=1)
    alpha: Hyper = spec(0.99, ge=0, lt=1)
    eps: float = spec(1e-8, gt=0)
    weight_decay: Hyper = spec(0.0, ge=0)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)

    @classmethod
    def _dispatch(cls, data, path, problems):
        name = data.get("name")
        if isinstance(name, str) and name in _OPTIMIZER_KEYS:  # a list here must be a problem, not a crash
            allowed = _OPTIMIZER_KEYS[name] | {"name", "schedule"}
            for key in data:
                if key not in allowed and key in {f.name for f in dataclasses.fields(cls)}:
                    problems.append(f"{path}.{key}: not used by optimizer {name!r}; "
                                    f"it reads {', '.join(sorted(allowed - {'name'}))}")
        return cls

    def hyper(self) -> dict[str, Hyper]:
        """The hyper-parameters this optimizer reads, by name."""
        return {k: getattr(self, k) for k in sorted(_OPTIMIZER_KEYS[self.name])}


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


TASK_KINDS: dict[str, type[TaskConfig]] = {
    "least_squares": LeastSquaresConfig,
    "mlp_regression": MLPRegressionConfig,
    "mlp_classification": MLPClassificationConfig,
    "digits": DigitsConfig,
    "cifar10": CIFAR10Config,
}


@dataclass(frozen=True)
class StoreSpec:
    """One trajectory store of the study: a task trained with one optimizer."""

    task: str
    optimizer: OptimizerConfig
    models: list[str] | None = spec(None, doc="forecasters trained on this store (default: train.models)")


@dataclass(frozen=True)
class StoreLayoutConfig:
    """Zarr chunking. A shard holds ``shard_runs`` whole runs and is the unit of writing (one generation
    block, one file); inner chunks of ``chunk_runs`` x ``chunk_steps`` x all parameters are the unit of
    reading."""

    chunk_runs: int = spec(8, ge=1)
    chunk_steps: int = spec(32, ge=1)
    shard_runs: int = spec(256, ge=1)
    cname: Literal["zstd", "lz4", "lz4hc", "blosclz", "zlib"] = "zstd"
    clevel: int = spec(3, ge=0, le=9)
    shuffle: Literal["noshuffle", "shuffle", "bitshuffle"] = "shuffle"

    def _check(self):
        if self.shard_runs % self.chunk_runs:
            return [("shard_runs", f"got {self.shard_runs}; expected a multiple of chunk_runs ({self.chunk_runs})")]
        return []


@dataclass(frozen=True)
class GenerateConfig:
    """Trajectory generation."""

    dataset_seeds: list[int] = spec([1, 2, 3, 4, 5], nonempty=True, ge=0, lt=2**63,
                                    doc="NumPy SeedSequence entries, stored as int64: 0 <= seed < 2**63")
    progress: bool = True

    def _check(self):
        if len(set(self.dataset_seeds)) != len(self.dataset_seeds):
            return [("dataset_seeds", f"got {list(self.dataset_seeds)}; expected distinct seeds")]
        return []


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of each dataset's runs for train / val / test, taken in run order (LFD-2: 0-99, 100-149,
    150-199 of 200)."""

    train: float = spec(0.5, ge=0, le=1)
    val: float = spec(0.25, ge=0, le=1)
    test: float = spec(0.25, ge=0, le=1)

    def _check(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            return [("test", f"train + val + test = {total:g}; expected 1")]
        return []


@dataclass(frozen=True)
class ForecastConfig:
    """What forecasters see and predict, in recorded-step indices (LFD-2: observe 0..20, predict 40..200)."""

    prefix_end: int = spec(20, ge=1, doc="observe recorded steps 0..prefix_end")
    horizons: list[int] = spec([40, 60, 80, 100, 120, 140, 160, 180, 200], nonempty=True, ge=1)

    def _check(self):
        out = []
        if any(h <= self.prefix_end for h in self.horizons):
            out.append(("horizons", f"got {list(self.horizons)}; every horizon must be > prefix_end ({self.prefix_end})"))
        if list(self.horizons) != sorted(set(self.horizons)):
            out.append(("horizons", f"got {list(self.horizons)}; expected strictly increasing"))
        return out


@dataclass(frozen=True)
class BudgetConfig:
    """The budget and stopping rule of every learned forecaster: one rule for all of them (a fair bench).
    The train stage writes these into each learned model's options; ``models:`` entries may not set them."""

    steps: int = spec(400, ge=1, le=10_000_000, doc="optimizer updates per fit")
    eval_every: int = spec(25, ge=1, doc="updates between validation scores (weight MSE of the val forecasts)")
    patience: int = spec(4, ge=1, doc="validation scores without improvement before stopping")


@dataclass(frozen=True)
class TuningConfig:
    """Validation-only search over each learned model's options, the same number of trials for every model."""

    trials: int = spec(0, ge=0, le=1000, doc="option sets tried per learned model and store (0 = no search)")
    dataset_seed: int | None = spec(None, doc="the dataset seed whose train/val runs the trials use (default: the "
                                              "first of generate.dataset_seeds); the choice is reused for every seed")
    space: dict[str, dict[str, list[Any]]] = spec({}, doc="model name -> option -> values to draw from")


@dataclass(frozen=True)
class TrainConfig:
    """Forecaster training: which models every store gets, the seed of their randomness, the shared budget and
    the tuning protocol."""

    seed: int = spec(0, ge=0, lt=2**63)
    models: list[str] = spec([], doc="names from `models:` trained for every store")
    budget: BudgetConfig = dataclasses.field(default_factory=BudgetConfig)
    tuning: TuningConfig = dataclasses.field(default_factory=TuningConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    """Scoring forecasts (evaluate stage)."""

    trajectory_params: int = spec(4, ge=1, doc="parameters of one test run drawn in the trajectory plot")


@dataclass(frozen=True)
class ClaimSpec:
    """A claim checked by the report on ``report.target_task``: final-step MSE of ``model`` / ``baseline`` <
    ``threshold`` (paired over dataset seeds; gfm.stats)."""

    model: str
    baseline: str
    threshold: float = spec(gt=0, doc="the claim is ratio < threshold, e.g. 0.7 = at least 30% below")
    text: str = spec("", doc="the claim as the report prints it (default: '<model> / <baseline> < <threshold>')")

    def _check(self):
        return [("baseline", f"got {self.baseline!r}; a claim compares two different models")] \
            if self.model == self.baseline else []


@dataclass(frozen=True)
class ReportConfig:
    """The generated report (reports/summary.md + .html)."""

    title: str = "GFM pipeline: forecasting final weights from the first steps of training"
    target_task: str = spec("mlp_regression", doc="task on which the paper's claims are checked")
    claims: list[ClaimSpec] = spec([], doc="claims checked on target_task's stores (reports/claims.json)")
    level: float = spec(0.95, gt=0, lt=1, doc="confidence level of the paired intervals")

    def check_models(self, models) -> list[tuple[str, str]]:
        """Claims naming a model that ``models:`` does not define (called by Params._check)."""
        return [(f"report.claims[{i}].{end}", f"got {getattr(c, end)!r}; expected one of "
                                              f"{', '.join(sorted(models)) or '(none defined in models:)'}")
                for i, c in enumerate(self.claims) for end in ("model", "baseline") if getattr(c, end) not in models]


@dataclass(frozen=True)
class PairSpec:
    """Train on ``source``'s runs, forecast ``target``'s test runs (store keys with the same optimizer)."""

    source: str
    target: str


@dataclass(frozen=True)
class GeneralizeConfig:
    """Cross-architecture / cross-initialisation experiments (stage generalize)."""

    models: list[str] = spec([], doc="models to transfer; each must be trained on both stores of every pair")
    pairs: list[PairSpec] = spec([])


@dataclass(frozen=True)
class AccelerateStore:
    """A store of the jump-ahead experiment (task and optimizer name repeated so DVC can build its paths)."""

    task: str
    optimizer: OptimizerName


@dataclass(frozen=True)
class AccelerateConfig:
    """Jump-ahead training (stage accelerate): every ``every`` optimizer steps, jump to a forecast when the
    held-out loss does not get worse."""

    stores: dict[str, AccelerateStore] = spec({}, doc="<task>-<optimizer>: {task, optimizer}; empty = stage off")
    models: list[str] = spec([], doc="forecasters making the jumps; each must be trained on every listed store")
    every: int = spec(20, ge=1, doc="K: optimizer steps between jump attempts (a multiple of record_every)")
    horizons: list[int] = spec([200], nonempty=True, ge=1, doc="candidate jump targets (forecast.horizons entries)")
    holdout: int = spec(64, ge=1, doc="held-out samples per run deciding whether a jump is kept")
    runs: int = spec(10, ge=0, doc="test runs per dataset seed (0 = all)")
    budget: int = spec(0, ge=0, doc="optimizer steps per run (0 = the task's steps)")
    state_after_jump: Literal["keep", "reset"] = spec("keep", doc="optimizer state of a run that jumped")
    timing: bool = spec(True, doc="report wall-clock (false: outputs are byte-reproducible)")


GiB = 2**30


@dataclass(frozen=True)
class LimitsConfig:
    """What one store may cost, checked by `gfm validate` and every stage before anything runs. The defaults fit a
    laptop as well as a cluster node: a study that needs more says so by raising a limit here. Estimates are
    float32 and uncompressed (docs/architecture.md §6); see :func:`estimate_store`."""

    max_params: int = spec(10_000_000, ge=1, doc="parameters of one task's network")
    max_run_steps: int = spec(10_000_000, ge=1, doc="optimizer steps of one run (tasks.*.steps, accelerate.budget)")
    max_total_steps: int = spec(10_000_000_000, ge=1, doc="runs x steps of one store (time)")
    max_block_bytes: int = spec(8 * GiB, ge=1, doc="memory of one write block (store.shard_runs runs at once)")
    max_store_bytes: int = spec(200 * GiB, ge=1, doc="uncompressed size of one store")


@dataclass(frozen=True)
class StoreEstimate:
    """What generating one store costs (uncompressed float32), from the params alone."""

    runs: int            # runs of the store (dataset seeds x runs_per_dataset)
    block_runs: int      # runs of one write block: min(store.shard_runs, runs)
    records: int         # recorded points per run
    params: int          # parameters per run
    arrays: int          # (run, record, param) arrays: weights + the optimizer's state arrays
    record_bytes: int    # one block's recorded arrays
    work_bytes: int      # one block's data, batch orders, activations and live weights/state
    store_bytes: int     # the whole store's recorded arrays
    total_steps: int     # runs x steps

    @property
    def block_bytes(self) -> int:
        return self.record_bytes + self.work_bytes


def estimate_store(task: TaskConfig, optimizer: str, n_seeds: int, shard_runs: int) -> StoreEstimate:
    """Memory of one generation block (gfm.generate.simulate: records preallocated as (run, record, param)
    float32 for the weights and each optimizer state array, the runs' data and its per-epoch gather, the int64
    batch orders, a forward pass over every sample) and the size of the whole store. Python integers: no
    overflow whatever the params say."""
    runs = n_seeds * task.runs_per_dataset
    block = min(shard_runs, runs)
    T, P, S = task.n_records, task.n_params(), OPTIMIZER_STATE_ARRAYS[optimizer]
    N, B = task.n_samples, task.batch_size
    epochs = math.ceil(task.steps / math.ceil(N / B)) if B else 0
    data = 3 * N * (task.input_width() + 1) * 4            # x, y; the flat view and one epoch's gather
    orders = 2 * epochs * N * 8                            # epoch orders and their row indices (int64)
    acts = 2 * N * task.activation_width() * 4             # forward cache + backward, all samples
    live = (3 + S) * P * 4 + 2 * (task.steps + 1) * 4      # weights, gradient, update, state; lr and loss rows
    per_run_records = T * P * 4 * (1 + S) + 2 * T * 4      # + loss and lr per record
    return StoreEstimate(runs=runs, block_runs=block, records=T, params=P, arrays=1 + S,
                         record_bytes=block * per_run_records, work_bytes=block * (data + orders + acts + live),
                         store_bytes=runs * per_run_records, total_steps=runs * task.steps)


def _size(n: float) -> str:
    """Bytes as text: 37.2 GiB, 512.0 MiB, 12 KiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}" if n < 10**6 * scale else f"{n / scale:.2e} {unit}"
    return f"{int(n)} B"


def _count(n: int) -> str:
    """A count as text: 97,000,000; 1.0e+30 when it would be longer than 15 digits."""
    return f"{n:,}" if n < 10**15 else f"{float(n):.1e}" if n < 10**300 else "more than 1e300"


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    seed: int = spec(0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    generate: GenerateConfig = dataclasses.field(default_factory=GenerateConfig)
    store: StoreLayoutConfig = dataclasses.field(default_factory=StoreLayoutConfig)
    limits: LimitsConfig = dataclasses.field(default_factory=LimitsConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    tasks: dict[str, TaskConfig] = spec({}, nonempty=True)
    stores: dict[str, StoreSpec] = spec({}, nonempty=True)
    forecast: ForecastConfig = dataclasses.field(default_factory=ForecastConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    models: dict[str, Any] = spec({}, doc="name -> {kind: <forecaster>, **its options}")
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    generalize: GeneralizeConfig = dataclasses.field(default_factory=GeneralizeConfig)
    accelerate: AccelerateConfig = dataclasses.field(default_factory=AccelerateConfig)
    report: ReportConfig = dataclasses.field(default_factory=ReportConfig)

    def _check(self):
        out = []
        for key, st in self.stores.items():
            if st.task not in self.tasks:
                out.append((f"stores.{key}.task", f"got {shorten(st.task)}; expected one of {', '.join(sorted(self.tasks))}"))
            expected = f"{st.task}-{st.optimizer.name}"
            if key != expected:
                out.append((f"stores.{key}", f"store keys are '<task>-<optimizer>'; expected {expected!r}"))
        for name in self.tasks:
            if not name.replace("_", "").isalnum() or not name[:1].isalpha():
                out.append((f"tasks.{name}", "task names use letters, digits and '_' and start with a letter"))
        for name, m in self.models.items():
            if not name.replace("_", "").isalnum() or not name[:1].isalpha():
                out.append((f"models.{name}", "model names use letters, digits and '_' and start with a letter"))
            if not isinstance(m, dict) or not isinstance(m.get("kind"), str):
                out.append((f"models.{name}", f"got {shorten(m)}; expected a mapping with a 'kind' (a forecaster name)"))
        for i, name in enumerate(self.train.models):
            if name not in self.models:
                out.append((f"train.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(self.models)) or '(none defined in models:)'}"))
        for name in self.train.tuning.space:
            if name not in self.models:
                out.append((f"train.tuning.space.{name}", f"expected a name from models: ({', '.join(sorted(self.models)) or '(none)'})"))
        seed = self.train.tuning.dataset_seed
        if seed is not None and seed not in self.generate.dataset_seeds:
            out.append(("train.tuning.dataset_seed", f"got {seed}; expected one of generate.dataset_seeds "
                                                     f"({list(self.generate.dataset_seeds)})"))
        for key, st in self.stores.items():
            for i, name in enumerate(st.models or ()):
                if name not in self.models:
                    out.append((f"stores.{key}.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(self.models)) or '(none)'}"))
        for i, pair in enumerate(self.generalize.pairs):
            for end in ("source", "target"):
                if getattr(pair, end) not in self.stores:
                    out.append((f"generalize.pairs[{i}].{end}", f"got {getattr(pair, end)!r}; expected a key of stores"))
            if pair.source in self.stores and pair.target in self.stores:
                a, b = self.stores[pair.source], self.stores[pair.target]
                if a.optimizer.name != b.optimizer.name:
                    out.append((f"generalize.pairs[{i}]", f"source uses {a.optimizer.name}, target {b.optimizer.name}; "
                                                          "a pair must share the optimizer"))
                for name in self.generalize.models:
                    for key in (pair.source, pair.target):
                        msg = (f"{name!r} is not trained on store {key!r} (add it to train.models or that "
                               "store's models)")
                        if name not in self.store_models(key) and ("generalize.models", msg) not in out:
                            out.append(("generalize.models", msg))
        out += self.report.check_models(self.models)
        for i, name in enumerate(self.generalize.models):
            if name not in self.models:
                out.append((f"generalize.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(self.models)) or '(none)'}"))
        for key, ast in self.accelerate.stores.items():
            where = f"accelerate.stores.{key}"
            if key not in self.stores:
                out.append((where, f"expected a key of stores ({', '.join(sorted(self.stores))})"))
                continue
            st = self.stores[key]
            if (ast.task, ast.optimizer) != (st.task, st.optimizer.name):
                out.append((where, f"got {{task: {ast.task}, optimizer: {ast.optimizer}}}; the store is "
                                   f"{{task: {st.task}, optimizer: {st.optimizer.name}}}"))
            elif st.task in self.tasks and self.accelerate.every % self.tasks[st.task].record_every:  # (a missing task is reported at stores.<key>.task)
                out.append(("accelerate.every", f"got {self.accelerate.every}; expected a multiple of "
                                                f"tasks.{st.task}.record_every ({self.tasks[st.task].record_every})"))
            for name in self.accelerate.models:
                if name in self.models and name not in self.store_models(key):
                    out.append(("accelerate.models", f"{name!r} is not trained on store {key!r} (add it to "
                                                     "train.models or that store's models)"))
        for i, name in enumerate(self.accelerate.models):
            if name not in self.models:
                out.append((f"accelerate.models[{i}]", f"got {shorten(name)}; expected one of {', '.join(sorted(self.models)) or '(none)'}"))
        bad = [h for h in self.accelerate.horizons if h not in self.forecast.horizons]
        if self.accelerate.stores and bad:
            out.append(("accelerate.horizons", f"got {bad}; expected entries of forecast.horizons "
                                               f"({list(self.forecast.horizons)})"))
        trained = [(key, st.task) for key, st in self.stores.items() if st.task in self.tasks and self.store_models(key)]
        if trained:  # forecasters need every horizon recorded on every store they are trained on
            key, name = min(trained, key=lambda kt: self.tasks[kt[1]].n_records)
            last = self.tasks[name].n_records - 1
            if self.forecast.horizons[-1] > last:
                out.append(("forecast.horizons", f"last horizon {self.forecast.horizons[-1]} is beyond the last recorded "
                                                 f"step of task {name!r} ({last}), which store {key!r} trains models on"))
        out += self._reference_problems()
        out += self._size_problems()
        return out

    def _reference_problems(self) -> list[tuple[str, str]]:
        """Names that must refer to something (beyond stores -> tasks and the model lists above)."""
        out = []
        trained_tasks = sorted({st.task for st in self.stores.values() if st.task in self.tasks})
        if self.stores and self.report.target_task not in trained_tasks:  # (no stores: reported as such)
            out.append(("report.target_task", f"got {shorten(self.report.target_task)}; expected a task some store "
                                              f"trains: {', '.join(trained_tasks) or '(none)'}"))
        lists = [("train.models", self.train.models), ("generalize.models", self.generalize.models),
                 ("accelerate.models", self.accelerate.models), ("accelerate.horizons", self.accelerate.horizons),
                 *((f"stores.{k}.models", st.models or ()) for k, st in self.stores.items())]
        for where, names in lists:
            repeated = sorted({n for n in names if list(names).count(n) > 1}, key=str)
            if repeated:
                out.append((where, f"{shorten(repeated)} listed more than once; list each once"))
        fractions = {"train": self.split.train, "val": self.split.val, "test": self.split.test}
        for name in sorted({st.task for key, st in self.stores.items() if st.task in self.tasks}):
            n = self.tasks[name].runs_per_dataset
            n_train, n_val = int(round(self.split.train * n)), int(round(self.split.val * n))
            counts = {"train": n_train, "val": n_val, "test": n - n_train - n_val}
            empty = [part for part, frac in fractions.items() if frac > 0 and counts[part] <= 0]
            if empty:
                out.append((f"tasks.{name}.runs_per_dataset",
                            f"got {n}; the split ({self.split.train:g} / {self.split.val:g} / {self.split.test:g}) "
                            f"leaves no {' or '.join(empty)} runs per dataset seed; raise it"))
        return out

    def _size_problems(self) -> list[tuple[str, str]]:
        """What would run out of memory, disk or time, from estimates (refused before anything runs)."""
        lim, out = self.limits, []
        for name, task in self.tasks.items():
            n = task.n_params()
            if n > lim.max_params:
                out.append((f"tasks.{name}", f"the network has {_count(n)} parameters, above limits.max_params = "
                                             f"{_count(lim.max_params)}; use a smaller network or raise the limit"))
            if task.steps > lim.max_run_steps:
                out.append((f"tasks.{name}.steps", f"got {_count(task.steps)}; above limits.max_run_steps = "
                                                   f"{_count(lim.max_run_steps)}; lower it or raise the limit"))
        for key, st in self.stores.items():
            task = self.tasks.get(st.task)
            if task is None or task.n_params() > lim.max_params:
                continue
            e = estimate_store(task, st.optimizer.name, len(self.generate.dataset_seeds), self.store.shard_runs)
            shape = (f"{_count(e.block_runs)} runs x {_count(e.records)} records x {_count(e.params)} params x 4 B x "
                     f"{e.arrays} array{'s' if e.arrays > 1 else ''}")
            if e.block_bytes > lim.max_block_bytes:
                more = f" or tasks.{st.task}.n_samples" if e.work_bytes > e.record_bytes else ""
                out.append((f"stores.{key}", f"a write block needs {_size(e.block_bytes)} ({shape} = "
                                             f"{_size(e.record_bytes)}, plus {_size(e.work_bytes)} of data and working "
                                             f"memory), above limits.max_block_bytes = {_size(lim.max_block_bytes)}; "
                                             f"lower store.shard_runs{more} or raise the limit"))
            if e.store_bytes > lim.max_store_bytes:
                out.append((f"stores.{key}", f"the store needs {_size(e.store_bytes)} uncompressed ({_count(e.runs)} runs x "
                                             f"{_count(e.records)} records x {_count(e.params)} params x 4 B x {e.arrays}), "
                                             f"above limits.max_store_bytes = {_size(lim.max_store_bytes)}; lower "
                                             f"tasks.{st.task}.runs_per_dataset or steps, raise record_every, or raise "
                                             "the limit"))
            if e.total_steps > lim.max_total_steps:
                out.append((f"stores.{key}", f"{_count(e.runs)} runs x {_count(task.steps)} steps = "
                                             f"{_count(e.total_steps)} optimizer steps, above limits.max_total_steps = "
                                             f"{_count(lim.max_total_steps)}; lower tasks.{st.task}.runs_per_dataset "
                                             "or steps, or raise the limit"))
        acc = self.accelerate
        if acc.budget > lim.max_run_steps:
            out.append(("accelerate.budget", f"got {_count(acc.budget)}; above limits.max_run_steps = "
                                             f"{_count(lim.max_run_steps)}; lower it or raise the limit"))
        for key, ast in acc.stores.items():
            task = self.tasks.get(ast.task)
            if task is None or key not in self.stores or task.n_params() > lim.max_params:
                continue
            runs = (acc.runs or task.runs_per_dataset)  # per dataset seed, one stacked job each
            budget = acc.budget or task.steps
            need = runs * ((task.n_samples + acc.holdout) * (task.input_width() + 1) * 4 * 3
                           + 2 * (task.n_samples + acc.holdout) * task.activation_width() * 4
                           + (budget + 1) * 4 * 2 + (4 + OPTIMIZER_STATE_ARRAYS[ast.optimizer]) * task.n_params() * 4)
            if need > lim.max_block_bytes:
                out.append((f"accelerate.stores.{key}", f"a jump-ahead job needs {_size(need)} ({_count(runs)} runs x "
                                                        f"{_count(task.n_samples + acc.holdout)} samples, "
                                                        f"{_count(budget)} steps), above limits.max_block_bytes = "
                                                        f"{_size(lim.max_block_bytes)}; lower accelerate.runs or "
                                                        "holdout, or raise the limit"))
        return out

    def store_models(self, key: str) -> list[str]:
        """Forecasters trained on store ``key``: its own ``models`` list, else ``train.models``."""
        st = self.stores[key]
        return list(self.train.models if st.models is None else st.models)

    def lookup_store(self, key: str) -> tuple[StoreSpec, TaskConfig]:
        """The store spec and its task for a store key ``<task>-<optimizer>``."""
        if key not in self.stores:
            raise ParamsError(f"stores.{key}: no such store; expected one of {', '.join(sorted(self.stores))}")
        st = self.stores[key]
        return st, self.tasks[st.task]


_REQUIRED = {"tasks": "a mapping of task names to tasks", "stores": "a mapping of store keys to stores (at least "
                                                                     "one: a study with no store has nothing to run)"}


def parse_params(data: Any, *, source: str = "params") -> Params:
    """Validate a parsed params mapping, sizes included (``limits:``); raise ParamsError listing every problem."""
    problems: list[str] = []
    if isinstance(data, dict):
        problems += [f"{key}: missing; expected {what}" for key, what in _REQUIRED.items() if key not in data]
    try:
        params = build(Params, data, "", problems)
    except RecursionError:  # only from data built in Python: load_params bounds the nesting of files
        problems.append("<top>: nested too deeply to be params")
    if problems:
        raise ParamsError(problems, source=source)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file: YAML through :func:`gfm.params_yaml.parse_yaml` (the safe loader with
    bounded aliases and nesting, duplicate keys refused, ``1e-5`` read as a number), then :func:`parse_params`."""
    path = Path(path)
    try:
        data = parse_yaml(read_params_text(path))
    except FileNotFoundError:
        raise ParamsError(f"file not found: {path}", source=str(path)) from None
    except YAMLRefused as exc:
        raise ParamsError(exc.problems, source=str(path)) from None
    except OSError as exc:  # unreadable: permissions, an I/O error
        raise ParamsError(f"cannot read the file ({shorten(exc.strerror or exc, 120, quote=False)})",
                          source=str(path)) from None
    return parse_params(data, source=str(path))


def config_hash(obj: Any) -> str:
    """Stable short hash of a (nested) config, for matching a partial store to the params that started it."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (dataclasses and tuples -> dicts and lists), JSON-serialisable."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
