"""Adding a recorded run to a finished store (``gfm.record(..., mode="a")``): the grown store is built beside the
old one (its files hard-linked, the new run added) and swapped in, so the store at the path is at every moment
the old one or the grown one, never half of each (:mod:`gfm.recording.recorder`'s module docstring).

A run that cannot join the store (layout, optimizer, ``every``, network, evaluation data, number of records) is
refused: on entry to its block for what is known before training (:func:`check_joinable`), and again when it
is added.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from gfm.artifacts.output_contents import MARKER_FILE
from gfm.artifacts.outputs import TRAJECTORY_STORE, open_temp_dir, remove_output
from gfm.base.errors import GFMError, StoreSchemaError, shorten
from gfm.core.network import network_of
from gfm.recording.capture import RecordError
from gfm.store.arrays import SCHEMA_VERSION
from gfm.store.durable import exchange_paths, fsync_tree, link_store, remove_partial
from gfm.store.one_run import append_run

if TYPE_CHECKING:
    from gfm.recording.recorder import Recorder

__all__ = ["check_joinable", "append_fields", "finish_append", "swap_in", "restore_previous"]


def _append_hook(stage: str) -> None:
    """No-op; tests replace it to act inside an append (``"staged"``: the grown store is complete beside the
    old one; ``"swapped"``: the two are swapped, the old one not yet removed)."""


def check_joinable(rec: Recorder) -> None:
    """Refuse a run that cannot join the store at the path for what is known before training: layout,
    optimizer, ``every``, network, evaluation data (checked when the block is entered, so a mismatch costs
    no training, and again when the run is added; the number of records is checked then). A store written
    before stores recorded their network reads as not knowing it (``gfm.core.network.network_of``)."""
    path = rec.path
    try:
        main = zarr.open_group(path, mode="r")
        attrs = dict(main.attrs)
    except Exception:  # noqa: BLE001 - not a store at all: append_fields refuses it with the reason
        return
    if attrs.get("schema_version") != SCHEMA_VERSION or attrs.get("complete") is not True:
        return
    mine = json.loads(json.dumps(rec.store_attrs(1)))
    for key, label in (("layout", "parameter layout"), ("state_names", "optimizer state")):
        if attrs.get(key) != mine[key]:
            raise RecordError(f"{path}: this run's {label} ({mine[key]!r:.120}) differs from the "
                              f"store's ({attrs.get(key)!r:.120}); runs of one store must match")
    opt, task = attrs.get("optimizer") or {}, attrs.get("task") or {}
    if opt.get("name") != rec.opt_name or task.get("record_every") != rec.every:
        raise RecordError(f"{path}: store holds {shorten(opt.get('name'), 40)} runs recorded every "
                          f"{shorten(task.get('record_every'), 40)} steps; this run is {rec.opt_name} every "
                          f"{rec.every}")
    try:
        theirs = network_of(attrs)
    except ValueError as exc:
        raise RecordError(f"{path}: {exc}") from None
    if theirs != rec.network:
        old = "" if "network" in attrs else " (the store was written before stores recorded their network)"
        raise RecordError(f"{path}: this run's network {rec.network.as_attr()} differs from the store's "
                          f"{theirs.as_attr()}{old}; runs of one store must match (activation=, loss=)")
    held = "eval" in main
    if held != (rec.eval is not None):
        raise RecordError(f"{path}: the store holds evaluation data for {'every' if held else 'no'} run; this "
                          f"run {'has none (pass eval_data=)' if held else 'has eval_data'}; a store holds it "
                          "for every run or for none")
    if held:
        x, y = rec.eval
        want = (main["eval/x"].shape[1:], str(main["eval/y"].dtype))
        if (x.shape, str(y.dtype)) != want:
            raise RecordError(f"{path}: this run's eval_data is x {x.shape} with {y.dtype} targets; the store "
                              f"holds x {want[0]} with {want[1]} targets for every run")


def append_fields(rec: Recorder, T: int, loss: np.ndarray) -> tuple[dict[str, np.ndarray], list[int]]:
    """The per-run fields of the new run and the store's dataset seeds with it; refused when the store at
    the path is not a finished store this run can join."""
    main = zarr.open_group(rec.path, mode="r")
    attrs = dict(main.attrs)
    if attrs.get("schema_version") != SCHEMA_VERSION or attrs.get("complete") is not True:
        raise StoreSchemaError(f"{rec.path}: not a finished trajectory store of schema {SCHEMA_VERSION}")
    check_joinable(rec)
    if attrs.get("n_records") != T:
        raise RecordError(f"{rec.path}: this run's number of records ({T}) differs from the store's "
                          f"({attrs.get('n_records')!r:.40}); runs of one store must match")
    seeds = main["runs/dataset_seed"][:]
    fields = rec.run_fields(loss, int((seeds == rec.dataset_seed).sum()))
    missing = set(fields) ^ {name for name, _ in main["runs"].arrays()}
    if missing:
        raise RecordError(f"{rec.path}: per-run fields differ ({sorted(missing)}); runs of one store must "
                          "use the same optimizer")
    return fields, sorted({*map(int, seeds), rec.dataset_seed})


def finish_append(rec: Recorder, g: zarr.Group, T: int, loss: np.ndarray) -> None:
    """Add the recorded run to the store at the path: the grown store is built beside it and swapped in,
    so the store at the path is at every moment the old one or the grown one (module docstring)."""
    try:
        fields, seeds = append_fields(rec, T, loss)
    except GFMError:  # this run cannot join the store: its recording goes, the store stays as it was
        remove_partial(rec.tmp)
        raise
    staged = open_temp_dir(rec.path, TRAJECTORY_STORE, suffix=".append.partial")  # a leftover: removed
    link_store(rec.path, staged)
    append_run(zarr.open_group(staged, mode="r+"), g, loss=loss, fields=fields, dataset_seeds=seeds,
               chunk_steps=rec.chunk_steps)
    # a store carries its ownership marker in its root attributes (linked in above), not in a marker file
    (staged / MARKER_FILE).unlink()
    fsync_tree(staged)  # the swap must not outrun the new run's files to the disk
    _append_hook("staged")
    swap_in(staged, rec.path, rec.previous)
    _append_hook("swapped")
    shutil.rmtree(staged)  # the old store now
    remove_partial(rec.tmp)


def swap_in(staged: Path, path: Path, previous: Path) -> None:
    """Put the grown store ``staged`` at ``path`` and the old store at ``staged`` (``previous``: where the old
    store waits where the two cannot be swapped in one step)."""
    if exchange_paths(staged, path):
        return
    # No one-step swap here: for the instant between the two renames nothing is at the path, and the old
    # store waits at ``previous``, where the next recorder of the path finds it (restore_previous).
    remove_output(previous, TRAJECTORY_STORE)  # a leftover of an earlier swap, or nothing
    os.rename(path, previous)
    os.rename(staged, path)
    os.rename(previous, staged)


def restore_previous(path: Path, previous: Path) -> None:
    """Undo what a recorder killed inside the two-rename swap left (:mod:`gfm.recording.recorder`'s module docstring):
    the old store back at ``path`` if the new one never got there, else the old one (at ``previous``) removed.
    Runs under the writer's lock."""
    if not previous.exists():
        pass
    elif not path.exists() and not path.is_symlink():
        os.rename(previous, path)
    else:
        remove_output(previous, TRAJECTORY_STORE)
    if not path.exists():
        raise RecordError(f"{path}: no store to add a run to (mode='a'); record the first run with "
                          "mode='w'")
