"""The trajectory store: plain Zarr, self-describing, complete-or-refused, resumable by block."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr

from gfm.artifacts.zarr_files import partial_path
from gfm.base.errors import StoreIncompleteError, StoreNotFoundError, StoreSchemaError
from gfm.stages import generate
from gfm.store.arrays import SCHEMA_VERSION
from gfm.store.reader import open_trajectories
from gfm.tasks import make_task
from kill_helpers import interrupt_generate_at_block


def test_plain_zarr_reader_sees_the_layout(tiny_store):
    g = zarr.open_group(str(tiny_store), mode="r")  # no project code involved
    attrs = dict(g.attrs)
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["complete"] is True
    R, T, P = g["weights"].shape
    assert (R, T) == (24, 41) and P == attrs["n_params"]
    assert g["state/exp_avg"].shape == (R, T, P) and g["state/exp_avg_sq"].shape == (R, T, P)
    assert g["loss"].shape == g["lr"].shape == (R, T)
    assert g["final/weights"].shape == (R, P)
    assert g["weights"].metadata.dimension_names == ("run", "step", "param")
    assert sum(d["shape"][0] * (d["shape"][1] if len(d["shape"]) > 1 else 1) for d in attrs["layout"]) == P
    np.testing.assert_array_equal(g["final/weights"][:], g["weights"][:, -1])
    assert attrs["optimizer"]["name"] == "adam" and attrs["task"]["kind"] == "mlp_regression"


def test_layout_loads_any_step_back_into_the_network(tiny_store, tiny_params):
    """Only the layout attribute is needed to rebuild the weights: the loaded net reproduces the recorded loss."""
    from gfm.stages.runs import run_ids, setup_run

    ts = open_trajectories(tiny_store)
    spec, task_cfg = tiny_params.lookup_store("mlp_regression-adam")
    task = make_task(task_cfg)
    runs = run_ids(tiny_params.generate.dataset_seeds, task_cfg.runs_per_dataset)
    for run, step in [(0, 0), (3, 17), (23, ts.n_records - 1)]:
        setup = setup_run(task, spec.optimizer, tiny_params.seed, runs[run], task_name=spec.task)
        net = ts.load_into(task.build_module(), run=run, step=step)
        with torch.no_grad():
            loss = float(task.module_loss(net, setup.x, setup.y))
        assert loss == pytest.approx(float(ts.loss[run, step]), rel=1e-5)


def test_reads_for_the_three_patterns(tiny_store):
    ts = open_trajectories(tiny_store)
    assert ts.prefix(8).shape == (24, 9, ts.n_params)
    w, loss = ts.final()
    assert w.shape == (24, ts.n_params) and loss.shape == (24,)
    assert ts.weights[5].shape == (41, ts.n_params)
    blocks = list(ts.iter_blocks())
    assert sum(b.stop - b.start for b, _ in blocks) == 24 and len(blocks) == 3
    with pytest.raises(ValueError, match="outside the recorded steps"):
        ts.prefix(41)


def test_file_count_is_per_block_not_per_chunk(tiny_store):
    files = [p for p in tiny_store.rglob("*") if p.is_file()]
    arrays = 4 + 2 + 2 + 7  # weights, 2 states, loss, lr, final x2, runs/* (dataset_seed index lr_scale diverged + hyper)
    assert len(files) < 3 * (arrays + 6) + 30, len(files)


def test_missing_incomplete_and_foreign_stores_are_refused(tiny_store, tmp_path):
    with pytest.raises(StoreNotFoundError):
        open_trajectories(tmp_path / "nothing.zarr")
    half = tmp_path / "half.zarr"
    shutil.copytree(tiny_store, half)
    meta = json.loads((half / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (half / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreIncompleteError, match="not complete"):
        open_trajectories(half)
    meta["attributes"]["complete"] = True
    meta["attributes"]["schema_version"] = 99
    (half / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreSchemaError, match="schema_version 99"):
        open_trajectories(half)


def test_cli_on_half_written_store_exits_2(tiny_store, tmp_path):
    half = tmp_path / "half.zarr"
    shutil.copytree(tiny_store, half)
    meta = json.loads((half / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (half / "zarr.json").write_text(json.dumps(meta))
    from conftest import TINY

    for args in (["info", str(half)], ["split", "--params", str(TINY), "--in", str(half), "--out", str(tmp_path / "s.json")]):
        proc = subprocess.run([sys.executable, "-m", "gfm", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and "not complete" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "s.json").exists()


def test_interrupted_generation_resumes_finished_blocks(tiny_params, tmp_path, monkeypatch):
    """A writer that dies after its first block leaves only a .partial store; the rerun redoes only the
    missing blocks and the result is byte-identical to an uninterrupted run."""
    ref = tmp_path / "ref.zarr"
    generate.run(tiny_params, "mlp_regression-sgd", out=ref, progress=False)

    out = tmp_path / "out.zarr"
    real = generate.simulate
    interrupt_generate_at_block(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    assert not out.exists() and partial_path(out).exists()
    with pytest.raises(StoreNotFoundError, match="did not finish"):
        open_trajectories(out)

    monkeypatch.setattr(generate, "simulate", real)
    summary = generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    assert (summary.blocks_reused, summary.blocks_run) == (1, 2)
    assert not partial_path(out).exists()
    ref_files = {p.relative_to(ref): p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    out_files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert ref_files == out_files


def test_changed_params_do_not_resume_a_stale_partial(tiny_params, tmp_path, monkeypatch):
    import dataclasses

    out = tmp_path / "s.zarr"
    real = generate.simulate
    monkeypatch.setattr(generate, "simulate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        generate.run(tiny_params, "mlp_regression-sgd", out=out, progress=False)
    monkeypatch.setattr(generate, "simulate", real)
    other = dataclasses.replace(tiny_params, seed=7)
    summary = generate.run(other, "mlp_regression-sgd", out=out, progress=False)
    assert summary.blocks_reused == 0
    assert open_trajectories(out).attrs["seed"] == 7
