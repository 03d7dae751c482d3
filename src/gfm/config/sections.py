"""Params sections for stores and stages: ``stores:``, ``store:``, ``generate:``, ``split:``, ``forecast:``,
``train:``, ``evaluate:``, ``report:``, ``generalize:``, ``accelerate:`` and ``limits:``. Each checks its own
fields; checks across sections live in :mod:`gfm.config.validation`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gfm.base.schema import NAME_PATTERN, keys_matching, spec
from gfm.config.optimizer import OptimizerConfig, OptimizerName
from gfm.core.optimizers import OPTIMIZER_NAMES

# A store key is its task's name and its optimizer's.
STORE_KEY_PATTERN = f"{NAME_PATTERN}-({'|'.join(OPTIMIZER_NAMES)})"


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
                                    doc="NumPy SeedSequence entries, stored as int64: 0 <= seed < 2**63",
                                    json_schema={"uniqueItems": True})
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
    test: float = spec(0.25, ge=0, le=1, json_schema={"exclusiveMinimum": 0})  # 0: refused by _check, with why

    def _check(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-9:
            return [("test", f"train + val + test = {total:g}; expected 1")]
        if self.test == 0:  # (a fraction too small to give one run is reported per task, at runs_per_dataset)
            return [("test", "got 0: no test runs, and the forecast and evaluate stages score test runs only; "
                             "expected a fraction > 0")]
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
    ``threshold`` (paired over dataset seeds; gfm.metrics.stats)."""

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
    tolerance: float = spec(0.05, ge=0, lt=1, doc="relative change of a headline number that another machine's "
                            "round-off can cause; a verdict whose interval ends that close to its threshold "
                            "is 'unstable' (README, Reproducibility)")

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

    stores: dict[str, AccelerateStore] = spec({}, doc="<task>-<optimizer>: {task, optimizer}; empty = stage off",
                                              json_schema=keys_matching(STORE_KEY_PATTERN))
    models: list[str] = spec([], doc="forecasters making the jumps; each must be trained on every listed store")
    every: int = spec(20, ge=1, doc="K: optimizer steps between jump attempts (a multiple of record_every)")
    horizons: list[int] = spec([200], nonempty=True, ge=1, doc="candidate jump targets (forecast.horizons entries)")
    holdout: int = spec(64, ge=1, doc="held-out samples per run deciding whether a jump is kept")
    measure: int = spec(256, ge=1, doc="other held-out samples per run on which the time to plain training's "
                                       "final loss is measured (never decide a jump)")
    runs: int = spec(10, ge=0, doc="test runs per dataset seed (0 = all)")
    budget: int = spec(0, ge=0, doc="optimizer steps per run (0 = the task's steps)")
    state_after_jump: Literal["keep", "reset"] = spec("keep", doc="optimizer state of a run that jumped")
    timing: bool = spec(True, doc="report wall-clock (false: outputs are byte-reproducible)")


GiB = 2**30


@dataclass(frozen=True)
class LimitsConfig:
    """What one store and one forecaster may cost, checked by `gfm validate` and every stage before anything runs.
    The defaults fit a laptop as well as a cluster node: a study that needs more says so by raising a limit here.
    Estimates are float32 and uncompressed (docs/architecture.md §6); see :func:`estimate_store` and, for the
    forecasters, ``Forecaster.size_estimate`` (an order of magnitude)."""

    max_params: int = spec(10_000_000, ge=1, doc="parameters of one task's network")
    max_run_steps: int = spec(10_000_000, ge=1, doc="optimizer steps of one run (tasks.*.steps, accelerate.budget)")
    max_total_steps: int = spec(10_000_000_000, ge=1, doc="runs x steps of one store (time)")
    max_block_bytes: int = spec(8 * GiB, ge=1, doc="memory of one write block (store.shard_runs runs at once)")
    max_store_bytes: int = spec(200 * GiB, ge=1, doc="uncompressed size of one store")
    max_model_params: int = spec(100_000_000, ge=1, doc="learned parameters of one forecaster (models.*)")
    max_model_bytes: int = spec(8 * GiB, ge=1, doc="training memory of one forecaster: parameters, gradients, "
                                                   "optimizer state and one batch's activations (an estimate)")

