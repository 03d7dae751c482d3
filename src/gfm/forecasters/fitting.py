"""The training recipe every learned forecaster shares, and the template for direct per-parameter models.

Fair comparison: every learned forecaster (LSTM, Transformer, WNN, Introspection, LFD-2 and every GFM
variant) trains under the same budget and the same stopping rule, set once for all of them by
``train.budget`` in params.yaml (the train stage writes it into each model's ``steps``, ``eval_every`` and
``patience``):

* **budget**: ``steps`` optimizer updates (AdamW, cosine decay to 5% of ``lr`` over the budget, gradient
  norm clipped at ``grad_clip``). Updates, not samples, are the unit because a "sample" means a different
  thing to each model (an LSTM row is one parameter's whole prefix, a GFM sample is one (run, time) point of
  every parameter): the number of parameter updates is what all of them spend.
* **validation score**: every ``eval_every`` updates the model forecasts its validation runs from their
  prefix and is scored by the weight MSE averaged over the forecast horizons (:func:`val_scores`), the same
  quantity for every model, in weight units (not each model's own loss).
* **early stopping** (:class:`EarlyStopping`): the best-scoring state is kept, training stops after
  ``patience`` scores without improvement, and the best state is restored.

:func:`fit_module` is this recipe, the one training loop: a learned forecaster gives it its module and the
loss of one update (drawing its own minibatch from the fit's generator), and keeps its own forecast.
:class:`DirectForecaster` is the shared shape of the learned baselines: build per-parameter inputs from the
prefix, predict every horizon at once, decode back to weights. Subclasses override ``_build``, ``_inputs`` and, when their target differs from the default
residual ``(w_h - w_K) / s_h``, ``_targets`` and ``_decode``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gfm.base.schema import spec
from gfm.forecasters.base import Forecaster, ForecasterError, Trajectories
from gfm.forecasters.features import decode_residual, fit_scales, residual_targets, scales_schema

__all__ = ["FitOptions", "BUDGET_KEYS", "AdamW", "EarlyStopping", "make_optimizer", "val_scores", "validation",
           "best_val_loss", "fit_module", "RowBatches", "seeded", "DirectForecaster", "predict_rows"]

Rows = tuple[torch.Tensor, ...]

#: Options of every learned forecaster that ``train.budget`` sets for all of them at once.
BUDGET_KEYS = ("steps", "eval_every", "patience")


@dataclass(frozen=True)
class FitOptions:
    """Optimisation and early-stopping options of every learned forecaster (its ``Config`` extends this class and
    overrides a default or a doc where its own differs)."""

    lr: float = spec(3e-3, gt=0, doc="AdamW learning rate (cosine-decayed to 5% over the budget)")
    weight_decay: float = spec(0.0, ge=0, doc="AdamW weight decay")
    batch_size: int = spec(256, ge=1, doc="rows (run x parameter) per minibatch")
    grad_clip: float = spec(1.0, gt=0, doc="gradient-norm clip")
    steps: int = spec(400, ge=1, doc="optimizer updates: the budget (the train stage sets it from train.budget, as "
                                     "for every learned model)")
    eval_every: int = spec(25, ge=1, doc="updates between validation scores (one logged 'epoch')")
    patience: int = spec(4, ge=1, doc="stop after this many validation scores without improvement")


class AdamW:
    """AdamW (decoupled weight decay, bias-corrected moments; torch.optim.AdamW's defaults) with the learning
    rate decayed on a cosine from ``lr`` to ``eta_min`` over ``steps`` updates, as ``CosineAnnealingLR`` does.

    Why not ``torch.optim.AdamW``: constructing any ``torch.optim`` optimizer imports ``torch._dynamo``, 1-3 s
    of CPU per process on the 2-core machine, and every learned train job of the default study (about 110)
    would pay it for fits of a few seconds. The update is the same arithmetic (tests/test_tuning.py compares
    the two to 1e-6 over 50 steps).
    """

    def __init__(self, params, *, lr: float, weight_decay: float, steps: int, eta_min_ratio: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr0, self.eta_min, self.steps = lr, lr * eta_min_ratio, max(int(steps), 1)
        self.wd, (self.b1, self.b2), self.eps = weight_decay, betas, eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def lr(self) -> float:
        """The learning rate of the next update: cosine over the budget (CosineAnnealingLR's closed form)."""
        return self.eta_min + (self.lr0 - self.eta_min) * (1 + math.cos(math.pi * min(self.t, self.steps) / self.steps)) / 2

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.lr()
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            p.mul_(1 - lr * self.wd)
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)

    def skip(self) -> None:
        """An update that was not taken (a non-finite gradient) still advances the schedule."""
        self.t += 1


def make_optimizer(params, *, lr: float, weight_decay: float, steps: int) -> AdamW:
    """The one optimiser recipe of every learned model: AdamW, cosine decay to 5% of ``lr`` over ``steps``."""
    return AdamW(params, lr=lr, weight_decay=weight_decay, steps=steps)


class EarlyStopping:
    """Keep the best-scoring state of ``module``; say when ``patience`` scores in a row did not improve it."""

    def __init__(self, module: nn.Module, patience: int):
        self.module, self.patience = module, patience
        self.best, self.best_state, self.since, self.best_step = math.inf, None, 0, 0

    def update(self, score: float, step: int) -> bool:
        """Record one validation score (NaN/inf never improve); True when training should stop."""
        if math.isfinite(score) and score < self.best:
            self.best, self.since, self.best_step = score, 0, step
            self.best_state = copy.deepcopy(self.module.state_dict())
        else:
            self.since += 1
        return self.since >= self.patience

    def restore(self) -> None:
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)


@torch.no_grad()
def val_scores(fc: Forecaster, val: Trajectories) -> dict[str, float]:
    """Weight MSE of ``fc``'s forecasts of the validation runs: averaged over the fitted horizons
    (``val_loss``, the early-stopping score) and at the last horizon (``val_final_mse``, the tuning score).
    Non-finite forecasts score ``inf``."""
    pred = fc._forecast(val.prefix(fc.prefix_end), tuple(fc.horizons))
    err = (pred.double() - val.weights[:, list(fc.horizons)].double().to(pred.device)).pow(2).mean((0, 2))
    mean, final = float(err.mean()), float(err[-1])
    return {"val_loss": mean if math.isfinite(mean) else math.inf,
            "val_final_mse": final if math.isfinite(final) else math.inf}


def seeded(build: Callable[[], nn.Module], rng: torch.Generator) -> nn.Module:
    """Build a module whose initial weights depend only on ``rng`` (not on torch's global RNG state). The seed
    is drawn on the generator's own device, so that a build under ``torch.device("meta")`` (a shape-only dry
    run: :func:`gfm.forecasters.model_files.read_model`) still draws it."""
    seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def validation(fc: Forecaster, val: Trajectories) -> Callable[[], dict[str, float]] | None:
    """The early-stopping score of ``fc`` on the validation runs (:func:`val_scores`); None when there are none
    (then :func:`fit_module` keeps the last state)."""
    return (lambda: val_scores(fc, val)) if val.n_runs else None


def best_val_loss(log: list[dict[str, float]]) -> float | None:
    """The best validation score of a fit's log, as a model's ``extra`` keeps it: None when no score was finite."""
    best = log[-1]["best_val_loss"]
    return best if math.isfinite(best) else None


def fit_module(module: nn.Module, step_loss: Callable[[int], torch.Tensor], score: Callable[[], dict[str, float]] | None,
               opts: FitOptions, *, on_epoch: Callable[[dict], None] | None = None) -> list[dict[str, float]]:
    """The training loop of every learned forecaster: minimise ``step_loss`` under the shared recipe.

    Args:
        module: the model (its parameters are optimised; it is left holding the best state, in eval mode).
        step_loss: the loss of update ``step`` (1, 2, ...); it draws its own minibatch from the model's generator.
        score: validation scores of the current module (:func:`validation`); None when there are no validation
            runs (then the last state is kept).
        opts: budget, stopping rule and optimiser options.
        on_epoch: called with each log row (progress bars).

    Returns:
        One dict per validation score: ``epoch`` (score index), ``step`` (updates so far), ``train_loss`` (mean
        since the last score), ``val_loss``, ``val_final_mse``, ``skipped`` (non-finite updates not taken so
        far), ``best_val_loss``, ``seconds``.
    """
    optim = make_optimizer(module.parameters(), lr=opts.lr, weight_decay=opts.weight_decay, steps=opts.steps)
    stopper = EarlyStopping(module, opts.patience)
    log: list[dict[str, float]] = []
    running: list[float] = []
    skipped, start = 0, time.perf_counter()
    for step in range(1, opts.steps + 1):
        module.train()
        loss = step_loss(step)
        optim.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(module.parameters(), opts.grad_clip)
        if torch.isfinite(norm):
            optim.step()
            running.append(float(loss.detach()))
        else:  # never poison the weights with a non-finite update (e.g. a rare sqrt(0) in an adaptive rule's backward)
            skipped += 1
            optim.skip()
        if step % opts.eval_every and step != opts.steps:
            continue
        module.eval()
        row = {"epoch": len(log) + 1, "step": step, "train_loss": sum(running) / max(len(running), 1),
               "val_loss": math.nan, "val_final_mse": math.nan, "skipped": skipped}
        running = []
        if score is not None:
            row.update(score())
        stop = score is not None and stopper.update(row["val_loss"], step)
        row["best_val_loss"] = stopper.best if math.isfinite(stopper.best) else math.nan
        row["seconds"] = round(time.perf_counter() - start, 4)
        log.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if stop:
            break
    stopper.restore()
    module.eval()
    return log


class RowBatches:
    """Minibatches of row tensors in a random order, reshuffled once every row has been seen: the minibatches of
    :class:`DirectForecaster`. The first order is drawn here, before the first update."""

    def __init__(self, rows: Rows, batch_size: int, rng: torch.Generator):
        self.rows, self.n, self.batch_size, self.rng = rows, rows[0].shape[0], batch_size, rng
        if self.n == 0:
            raise ForecasterError("no training rows: every training run of this dataset diverged or none were given")
        self.order, self.cursor = torch.randperm(self.n, generator=rng), 0

    def next(self) -> Rows:
        if self.cursor >= self.n:
            self.order, self.cursor = torch.randperm(self.n, generator=self.rng), 0
        idx = self.order[self.cursor : self.cursor + self.batch_size].to(self.rows[0].device)
        self.cursor += self.batch_size
        return tuple(r[idx] for r in self.rows)


@torch.no_grad()
def predict_rows(module: nn.Module, inputs: Rows, *, chunk: int = 16384) -> torch.Tensor:
    """``module(*inputs)`` in chunks of rows (bounded memory at forecast time)."""
    n = inputs[0].shape[0]
    outs = [module(*(x[s : s + chunk] for x in inputs)) for s in range(0, n, chunk)]
    return torch.cat(outs) if outs else torch.zeros(0)


class DirectForecaster(Forecaster):
    """Per-parameter model trained with MSE to output the weight at every horizon directly.

    Rows are (run, parameter) pairs; the default target is the global-scaled displacement from the last
    observed weight, ``(w_h - w_K) / s_h``, so an all-zero output is the last-value forecast.
    """

    Config = FitOptions

    # --- hooks -----------------------------------------------------------------------------------------
    def _build(self) -> nn.Module:
        raise NotImplementedError

    def _inputs(self, prefix: Trajectories) -> Rows:
        """Model inputs from records 0..K: a tuple of (run * param, ...) tensors."""
        raise NotImplementedError

    def _targets(self, traj: Trajectories) -> torch.Tensor:
        return residual_targets(traj, self.prefix_end, self.horizons, self.extra["scales"])

    def _decode(self, out: torch.Tensor, prefix: Trajectories, columns: Sequence[int]) -> torch.Tensor:
        return decode_residual(out, prefix, columns, self.extra["scales"])

    def _aux(self, prefix: Trajectories) -> Rows:
        """Extra per-row tensors the loss needs but the module does not see (default: none)."""
        return ()

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, aux: Rows) -> torch.Tensor:
        return torch.mean((pred - target) ** 2)

    # --- template --------------------------------------------------------------------------------------
    def _check_fit_inputs(self, train: Trajectories, val: Trajectories) -> None:
        need = max(self.horizons) + 1
        for name, t in (("train", train), ("val", val)):
            if t.n_records < need:
                raise ForecasterError(f"{self.name}: {name} runs have {t.n_records} records; fitting horizons "
                                      f"up to {max(self.horizons)} needs {need}")
        if train.n_runs == 0:
            raise ForecasterError(f"{self.name}: no training runs")

    def fit(self, train: Trajectories, val: Trajectories, *, rng: torch.Generator) -> list[dict[str, float]]:
        self._check_fit_inputs(train, val)
        self.extra = {"scales": fit_scales(train, self.prefix_end, self.horizons)}
        device = train.weights.device
        self.module = seeded(self._build, rng).to(device)
        k = self.prefix_end

        def rows(t: Trajectories) -> tuple[Rows, int]:  # layout: (*module inputs, *aux, target)
            p = t.prefix(k)
            inputs = self._inputs(p)
            return (*inputs, *self._aux(p), self._targets(t)), len(inputs)

        rows_tr, n_in = rows(train)
        module = self.module
        batches = RowBatches(rows_tr, self.config.batch_size, rng)

        def step_loss(_step: int) -> torch.Tensor:
            batch = batches.next()
            return self._loss(module(*batch[:n_in]), batch[-1], batch[n_in:-1])

        return fit_module(module, step_loss, validation(self, val), self.config, on_epoch=self.on_epoch)

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        if self.module is None or "scales" not in self.extra:
            raise ForecasterError(f"{self.name}: not fitted (call fit or load a saved model first)")
        device = next(self.module.parameters()).device
        prefix = prefix.to(device)
        out = predict_rows(self.module, self._inputs(prefix))
        columns = [self.horizons.index(h) for h in horizons]
        return self._decode(out, prefix, columns).cpu()

    def fitted_schema(self) -> dict:
        return {"scales": scales_schema(len(self.horizons))}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            raise ForecasterError(f"{self.name}: nothing to save before fit")
        return super().state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        # A loaded model gets its module built from the saved config; the tensors then overwrite its init.
        self.module = seeded(self._build, torch.Generator().manual_seed(0))
        super().load_state_tensors(tensors)
        self.module.eval()
