"""Training loop with early stopping, and the template for direct multi-output per-parameter models.

:func:`fit_rows` trains any module on row tensors (Adam, shuffled minibatches drawn with the caller's
``torch.Generator``), evaluates the validation loss after every epoch, keeps the best state, stops after
``patience`` epochs without improvement and restores the best state. An "epoch" is at most
``epoch_batches`` minibatches: the default study has hundreds of small fits of 10^3-10^5 rows, and a fixed
number of optimizer steps per validation keeps every fit's cost predictable on a 2-core CPU.

:class:`DirectForecaster` is the shared shape of the learned baselines: build per-parameter inputs from the
prefix, predict every horizon at once, decode back to weights. Subclasses override ``_build``,
``_inputs`` and, when their target differs from the default residual ``(w_h - w_K) / s_h``, ``_targets``
and ``_decode``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gfm.forecasters.base import Forecaster, ForecasterError, Trajectories
from gfm.forecasters.features import decode_residual, fit_scales, residual_targets
from gfm.schema import spec

__all__ = ["FitOptions", "fit_rows", "seeded", "DirectForecaster", "predict_rows"]

Rows = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class FitOptions:
    """Optimisation and early-stopping options shared by every learned baseline."""

    lr: float = spec(3e-3, gt=0, doc="Adam learning rate")
    weight_decay: float = spec(0.0, ge=0)
    batch_size: int = spec(256, ge=1, doc="rows (run x parameter) per minibatch")
    max_epochs: int = spec(40, ge=1)
    epoch_batches: int = spec(8, ge=0, doc="minibatches per epoch (0 = one full pass over the rows)")
    patience: int = spec(6, ge=1, doc="stop after this many epochs without a lower validation loss")
    val_rows: int = spec(8192, ge=0, doc="validation rows scored per epoch (a fixed random subset; 0 = all)")


def seeded(build: Callable[[], nn.Module], rng: torch.Generator) -> nn.Module:
    """Build a module whose initial weights depend only on ``rng`` (not on torch's global RNG state)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=rng))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _take(rows: Rows, idx: torch.Tensor) -> Rows:
    idx = idx.to(rows[0].device)
    return tuple(r[idx] for r in rows)


@torch.no_grad()
def _mean_loss(loss_of: Callable[[Rows], torch.Tensor], rows: Rows, chunk: int) -> float:
    n = rows[0].shape[0]
    if n == 0:
        return float("nan")
    total = 0.0
    for start in range(0, n, chunk):
        part = tuple(r[start : start + chunk] for r in rows)
        total += float(loss_of(part)) * part[0].shape[0]
    return total / n


def fit_rows(module: nn.Module, loss_of: Callable[[Rows], torch.Tensor], train: Rows, val: Rows,
             opts: FitOptions, *, rng: torch.Generator,
             on_epoch: Callable[[dict], None] | None = None) -> list[dict[str, float]]:
    """Minimise ``loss_of(batch)`` over minibatches of ``train`` rows with early stopping on ``val``.

    Args:
        module: the model (its parameters are optimised; it is left holding the best state).
        loss_of: maps a tuple of row tensors (one minibatch, same layout as ``train``) to a scalar loss.
        train: tensors sharing their first (row) dimension, e.g. ``(inputs, targets)``.
        val: the same layout for validation rows (may have zero rows: then the last state is kept).
        opts: optimisation options.
        rng: CPU generator for minibatch order and the validation subset.
        on_epoch: called with each epoch's log row (progress bars).

    Returns:
        One dict per epoch: ``epoch, train_loss, val_loss, best_val_loss, seconds``.
    """
    n = train[0].shape[0]
    if n == 0:
        raise ForecasterError("no training rows: every training run of this dataset diverged or none were given")
    n_val = val[0].shape[0]
    if opts.val_rows and n_val > opts.val_rows:  # a fixed subset keeps each epoch's validation cheap
        val = _take(val, torch.randperm(n_val, generator=rng)[: opts.val_rows])
    optim = torch.optim.Adam(module.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    batches = -(-n // opts.batch_size)
    per_epoch = min(batches, opts.epoch_batches) if opts.epoch_batches else batches
    best, best_state, since, log = float("inf"), None, 0, []
    order, cursor = torch.randperm(n, generator=rng), 0
    start = time.perf_counter()
    for epoch in range(1, opts.max_epochs + 1):
        module.train()
        total = 0.0
        for _ in range(per_epoch):
            if cursor >= n:  # reshuffle once every row has been seen
                order, cursor = torch.randperm(n, generator=rng), 0
            idx = order[cursor : cursor + opts.batch_size]
            cursor += opts.batch_size
            loss = loss_of(_take(train, idx))
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += float(loss.detach())
        module.eval()
        val_loss = _mean_loss(loss_of, val, 8 * opts.batch_size)
        improved = val_loss < best
        if improved or best_state is None and val_loss != val_loss:
            best, since = (val_loss if improved else best), 0
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            since += 1
        row = {"epoch": epoch, "train_loss": total / per_epoch, "val_loss": val_loss, "best_val_loss": best,
               "seconds": round(time.perf_counter() - start, 4)}
        log.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if n_val and since >= opts.patience:
            break
    if n_val and best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return log


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
        rows_va = rows(val)[0] if val.n_runs else tuple(r[:0] for r in rows_tr)
        module = self.module

        def loss_of(batch: Rows) -> torch.Tensor:
            return self._loss(module(*batch[:n_in]), batch[-1], batch[n_in:-1])

        return fit_rows(module, loss_of, rows_tr, rows_va, self.config, rng=rng, on_epoch=self.on_epoch)

    def _forecast(self, prefix: Trajectories, horizons: tuple[int, ...]) -> torch.Tensor:
        if self.module is None or "scales" not in self.extra:
            raise ForecasterError(f"{self.name}: not fitted (call fit or load a saved model first)")
        device = next(self.module.parameters()).device
        prefix = prefix.to(device)
        out = predict_rows(self.module, self._inputs(prefix))
        columns = [self.horizons.index(h) for h in horizons]
        return self._decode(out, prefix, columns).cpu()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            raise ForecasterError(f"{self.name}: nothing to save before fit")
        return super().state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        # A loaded model gets its module built from the saved config; the tensors then overwrite its init.
        self.module = seeded(self._build, torch.Generator().manual_seed(0))
        super().load_state_tensors(tensors)
        self.module.eval()
