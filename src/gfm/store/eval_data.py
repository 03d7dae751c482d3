"""A store's held-out evaluation data: the inputs and targets each run's network was meant to be judged on.

Why in the store: the training loss of forecast weights is only meaningful on the run's own data. Generated
stores rebuild it from their task and dataset seed; a recorded or imported run's data exists nowhere else, so
``gfm.record(..., eval_data=(x, y))`` and ``gfm import`` (npz members ``eval_x``, ``eval_y``) keep it beside
the weights:

    eval/x   (run, sample, *input_shape)   float32
    eval/y   (run, sample)                 float32 (regression targets) or int64 (class labels >= 0)

in the store's run order, the same sample count and input shape for every run. A store holds it for every run
or for none. The checks here are shared by the recorder, the importer and ``gfm check`` so that the three
cannot disagree on what is valid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["MAX_EVAL_BYTES", "EVAL_ARRAYS", "eval_arrays", "shape_problem", "value_problem", "labels_problem",
           "layout_problems"]

MAX_EVAL_BYTES = 256 << 20
"""Most bytes of one run's ``eval/x`` (as float32): held-out data for judging a small network, not a data set
store; a bound also keeps a wrong argument (a whole image set, a misplaced axis) from filling the disk."""

EVAL_ARRAYS = ("eval/x", "eval/y")
_Y_DTYPES = {"f": "float32", "i": "int64", "u": "int64"}
_INT64_MAX = int(np.iinfo(np.int64).max)


def labels_problem(y_kind: str, loss: str | None) -> str | None:
    """Targets of dtype kind ``y_kind`` against the store's loss: cross-entropy reads class labels, the squared
    losses read numbers; an unknown loss (None) takes either."""
    if loss == "cross_entropy" and y_kind == "f":
        return "y holds floats but the loss is cross_entropy, which reads integer class labels"
    if loss in ("mse", "least_squares") and y_kind in "iu":
        return f"y holds integers but the loss is {loss}, which reads float targets"
    return None


def shape_problem(x_shape: tuple[int, ...], x_kind: str, y_shape: tuple[int, ...], y_kind: str,
                  loss: str | None) -> str | None:
    """Why one run's x and y (shapes and dtype kinds, no run axis) are not evaluation data, or None."""
    if x_kind != "f":
        return f"x has dtype kind {x_kind!r}; expected floats"
    if y_kind not in _Y_DTYPES:
        return f"y has dtype kind {y_kind!r}; expected floats (regression) or integers (class labels)"
    if len(x_shape) < 2 or 0 in x_shape:
        return f"x has shape {tuple(x_shape)}; expected (sample, *input_shape) with every size >= 1"
    if tuple(y_shape) != tuple(x_shape[:1]):
        return f"y has shape {tuple(y_shape)}; expected ({x_shape[0]},): one target per sample of x"
    if math.prod(x_shape) * 4 > MAX_EVAL_BYTES:
        return (f"x has shape {tuple(x_shape)}: {math.prod(x_shape) * 4:,} bytes as float32, more than the "
                f"{MAX_EVAL_BYTES >> 20} MiB a run's evaluation data may hold")
    return labels_problem(y_kind, loss)


def value_problem(x: np.ndarray, y: np.ndarray) -> str | None:
    """Why the values of x (float32) and y (float32 or int64 of any source integer type) are not usable, or
    None: every value finite, labels from 0 to 2**63 - 1."""
    if not np.isfinite(x).all():
        return "x holds NaN or Inf (after conversion to float32)"
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        return "y holds NaN or Inf (after conversion to float32)"
    if y.dtype.kind in "iu" and y.size and (int(y.min()) < 0 or int(y.max()) > _INT64_MAX):
        return "y holds class labels below 0 or past 2**63 - 1"
    return None


def _numpy(value: Any, name: str, error: type[Exception]) -> np.ndarray:
    """A tensor (detached, on the CPU, low-precision floats widened) or an array-like as a NumPy array."""
    import torch

    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_complex():
            raise error(f"eval_data {name}: a complex tensor; expected real numbers")
        return (t.float() if t.is_floating_point() else t).numpy()
    try:
        a = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise error(f"eval_data {name}: not an array ({exc})") from None
    if a.dtype.kind not in "fiub":
        raise error(f"eval_data {name}: dtype {a.dtype}; expected real numbers")
    return a


def eval_arrays(eval_data: Any, loss: str | None, error: type[Exception] = ValueError) -> tuple[np.ndarray, np.ndarray]:
    """One run's ``eval_data=(x, y)`` as the store keeps it: x float32 (sample, *input_shape), y float32 or
    int64 (sample,); refused with ``error`` naming what is wrong."""
    if not isinstance(eval_data, tuple | list) or len(eval_data) != 2:
        raise error(f"eval_data: got {type(eval_data).__name__}; expected a pair (x, y) of tensors or arrays")
    x, y = (_numpy(v, name, error) for v, name in zip(eval_data, ("x", "y")))
    problem = shape_problem(x.shape, x.dtype.kind, y.shape, y.dtype.kind, loss)
    if problem:
        raise error(f"eval_data: {problem}")
    if y.dtype.kind in "iu" and y.size and (int(y.min()) < 0 or int(y.max()) > _INT64_MAX):
        raise error("eval_data: y holds class labels below 0 or past 2**63 - 1")
    with np.errstate(over="ignore"):  # a float64 past float32's range becomes Inf, refused below
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        y_out = np.ascontiguousarray(y, dtype=_Y_DTYPES[y.dtype.kind])
    problem = value_problem(x32, y_out)
    if problem:
        raise error(f"eval_data: {problem}")
    return x32, y_out


def layout_problems(metas: dict[str, dict], n_runs: int, loss: str | None) -> list[str]:
    """The ``zarr.json`` of ``eval/x`` and ``eval/y`` (dtype already checked) against each other and the run
    count (``gfm check`` and every stage that opens the store)."""
    x, y = (tuple(metas[name]["shape"]) for name in EVAL_ARRAYS)
    if len(x) < 3 or x[0] != n_runs or 0 in x[1:]:
        return [f"array eval/x is {x}; expected (run={n_runs}, sample, *input_shape) with every size >= 1"]
    if y != x[:2]:
        return [f"array eval/y is {y}; expected {x[:2]} (run, sample), as eval/x"]
    problem = labels_problem("f" if metas["eval/y"]["data_type"] == "float32" else "i", loss)
    return [f"array eval/{problem}"] if problem else []
