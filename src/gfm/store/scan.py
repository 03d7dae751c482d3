"""``gfm check`` of a trajectory store: the structure first, with the stages' own rules
(:func:`gfm.store.check.inspect_trajectory_store`), then every chunk decoded, a bounded block of runs at a time
(evaluation data included: finite inputs and targets, class labels >= 0), checking values as they stream past.
:func:`check_problem` is what the writers (gfm import, declared stores, gfm.record_runs) run on a store before
they put it in place.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gfm.artifacts import verdict
from gfm.artifacts.verdict import Verdict, foreign_line, runs_text
from gfm.base.errors import shorten
from gfm.store.check import inspect_trajectory_store

__all__ = ["check_trajectory_store", "check_problem"]


def check_trajectory_store(path: Path, v: Verdict) -> None:
    import zarr

    # Structure first, with the stages' own rules (above): files, attributes, array metadata.
    inspection = inspect_trajectory_store(path)
    v.problems += inspection.problems
    if inspection.foreign:
        v.problems.append(foreign_line(inspection.foreign))
    if inspection.problems:
        return
    attrs = inspection.attrs
    R, T, P = attrs["n_runs"], attrs["n_records"], attrs["n_params"]
    opt = attrs["optimizer"]["name"]
    try:
        g = zarr.open_group(str(path), mode="r")
        arrays = {name: g[name] for name in ("weights", "loss", "lr", "final/weights", "final/loss",
                                            "runs/diverged", *(f"state/{s}" for s in attrs["state_names"]))}
    except Exception as exc:  # noqa: BLE001 - any failure to open is the verdict
        v.problems.append(f"not a readable Zarr group ({type(exc).__name__})")
        return
    try:
        diverged = arrays["runs/diverged"][:].astype(bool)
        fields = {name: g[f"runs/{name}"][:] for name in sorted(g["runs"].array_keys())}
    except Exception as exc:  # noqa: BLE001 - a chunk that does not decode
        v.problems.append(f"runs/*: chunk data unreadable ({type(exc).__name__})")
        return
    v.problems += _run_field_problems(fields, attrs)
    no_loss = attrs.get("loss_source") == "none"
    _check_trajectory_data(arrays, diverged, R, T, P, v, loss_recorded=not no_loss)
    has_eval = "eval/x" in inspection.arrays
    if has_eval:
        _check_eval_data(g, R, v)
    v.summary = (f"{R} runs x {T} records x {P} params, optimizer {opt}, {int(diverged.sum())} diverged, "
                 f"{'no loss recorded (loss_source none), ' if no_loss else ''}"
                 f"{'evaluation data ' + str(inspection.arrays['eval/x']['shape'][1]) + ' samples a run, ' if has_eval else ''}"
                 "every chunk read"
                 f"{'' if inspection.recorded else ', written before stores recorded their chunk files'}")


def _check_eval_data(g, R: int, v: Verdict) -> None:
    """Every chunk of ``eval/x`` and ``eval/y``, a bounded block of runs at a time: inputs and targets finite,
    class labels >= 0 (gfm.store.eval_data)."""
    from gfm.store.eval_data import value_problem

    x_arr, y_arr = g["eval/x"], g["eval/y"]
    block = max(1, verdict.READ_BYTES // max(1, math.prod(x_arr.shape[1:]) * 4))
    bad: list[int] = []
    for start in range(0, R, block):
        stop = min(start + block, R)
        try:
            x, y = x_arr[start:stop], y_arr[start:stop]
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode is the verdict
            v.problems.append(f"eval runs {start}..{stop - 1}: chunk data unreadable ({type(exc).__name__})")
            continue
        bad += [start + i for i in range(stop - start) if value_problem(x[i], y[i])]
    if bad:
        v.problems.append(f"eval/x, eval/y: {runs_text(np.asarray(bad))} hold non-finite inputs or targets, or "
                          "negative class labels")


def _run_field_problems(fields: dict[str, np.ndarray], attrs: dict) -> list[str]:
    """Per-run fields that cannot be what was recorded. Their arrays are filled with 0; a store written before
    the completeness record (:func:`gfm.store.check.inspect_trajectory_store`) holds no file for a chunk equal to the fill value (a
    block of runs none of which diverged, a weight decay of 0), so a missing chunk there cannot be told from the
    files: it reads as 0, which is refused where 0 is never a recorded value: a dataset seed the store does not
    list (every writer lists its runs' seeds in ``dataset_seeds``) and a learning rate of 0."""
    problems = [f"runs/{name} holds non-finite values" for name, a in fields.items()
                if not np.isfinite(np.asarray(a, dtype=np.float64)).all()]
    seeds = attrs.get("dataset_seeds")
    if "dataset_seed" in fields and isinstance(seeds, list):
        stray = np.flatnonzero(~np.isin(fields["dataset_seed"], np.asarray(seeds, dtype=np.int64)))
        if stray.size:
            problems.append(f"runs/dataset_seed: {runs_text(stray)} hold seeds the store does not list in "
                            f"dataset_seeds {shorten(seeds, 60)} (a missing chunk reads as 0)")
    if "lr" in fields:
        zero = np.flatnonzero(np.asarray(fields["lr"]) == 0)
        if zero.size:
            problems.append(f"runs/lr: {runs_text(zero)} hold a learning rate of 0 (what a missing chunk reads as)")
    return problems


def _check_trajectory_data(arrays: dict, diverged: np.ndarray, R: int, T: int, P: int, v: Verdict, *,
                           loss_recorded: bool = True) -> None:
    """Decode every chunk, a bounded block of runs at a time, checking values as they stream past.

    ``loss_recorded`` False (attribute ``loss_source: none``: ``gfm import`` of weights without a loss) means
    the loss arrays hold NaN by design, the honest value for "not measured" (a made-up number would be
    scored by evaluate as if it were a loss); they must then hold nothing else."""
    n_state = sum(1 for n in arrays if n.startswith("state/"))
    block = max(1, verdict.READ_BYTES // (T * P * 4 * (1 + n_state)))
    nonfinite: dict[str, list[int]] = {}
    mismatch: dict[str, list[int]] = {}
    for start in range(0, R, block):
        sl = slice(start, min(start + block, R))
        where = f"runs {sl.start}..{sl.stop - 1}"
        try:
            w = arrays["weights"][sl]  # (run, step, param)
            loss, lr = arrays["loss"][sl], arrays["lr"][sl]
            fw, fl = arrays["final/weights"][sl], arrays["final/loss"][sl]
            states = {n: arrays[n][sl] for n in arrays if n.startswith("state/")}
        except Exception as exc:  # noqa: BLE001 - a chunk that does not decode is the verdict
            v.problems.append(f"{where}: chunk data unreadable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        ok = ~diverged[sl]
        runs = np.arange(sl.start, sl.stop)
        for name, a in (("weights", w), *((("loss", loss),) if loss_recorded else ()), *states.items()):
            bad = ok & ~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
            nonfinite.setdefault(name, []).extend(runs[bad].tolist())
        if not loss_recorded:
            held = ~np.isnan(loss).all(axis=1) | ~np.isnan(fl)
            mismatch.setdefault("loss (loss_source none)", []).extend(runs[held].tolist())
        bad_lr = ~np.isfinite(lr).all(axis=1) | (lr < 0).any(axis=1)
        nonfinite.setdefault("lr", []).extend(runs[bad_lr].tolist())
        for name, got, last in (("final/weights", fw, w[:, -1]), ("final/loss", fl, loss[:, -1])):
            same = (got == last) | (np.isnan(got) & np.isnan(last))
            bad = ~same.reshape(same.shape[0], -1).all(axis=1)
            mismatch.setdefault(name, []).extend(runs[bad].tolist())
    for name, runs in nonfinite.items():
        if runs:
            what = "non-finite or negative" if name == "lr" else "non-finite values (missing chunks read as NaN)"
            v.problems.append(f"{name}: {runs_text(np.asarray(runs))} not flagged diverged hold {what}"
                              if name != "lr" else f"lr: {runs_text(np.asarray(runs))} hold {what} values")
    for name, runs in mismatch.items():
        if runs and name.startswith("loss"):
            v.problems.append(f"loss: {runs_text(np.asarray(runs))} hold values although the attributes say no "
                              "loss was recorded (loss_source none)")
        elif runs:
            v.problems.append(f"{name}: {runs_text(np.asarray(runs))} differ from the last recorded step")


def check_problem(path: Path) -> str | None:
    """The first problem ``gfm check`` finds in the trajectory store at ``path`` (every chunk decoded, a bounded
    block of runs at a time), as one line of at most 200 characters; None when it finds none. What the writers
    (gfm import, declared stores, gfm.record_runs) run on a store before they put it in place."""
    v = Verdict(path, "trajectory store")
    check_trajectory_store(path, v)
    return shorten(v.problems[0], 200, quote=False) if v.problems else None
