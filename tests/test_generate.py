"""The stacked generator is exactly R independent torch.optim runs, deterministic, and flags divergence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from benchmarks.reference import train_reference

from conftest import DEVICES, ROOT, TINY
from gfm.config import OptimizerConfig, Range, ScheduleConfig, load_params, parse_params
from gfm.stages import generate
from gfm.stages.generate import simulate
from gfm.stages.runs import run_ids, setup_run
from gfm.store.reader import open_trajectories
from gfm.tasks import make_task

DEFAULT = load_params(ROOT / "params.yaml")


def max_diff_vs_reference(task, opt, task_name, n_runs=6, seed=0, device="cpu"):
    setups = [setup_run(task, opt, seed, r, task_name=task_name) for r in run_ids([1, 2], n_runs // 2)]
    rec = simulate(task, opt, setups, device=torch.device(device))
    diffs = []
    for i, s in enumerate(setups):
        ref = train_reference(task, opt, s)
        diffs.append(np.abs(ref["weights"] - rec["weights"][i]).max())
        np.testing.assert_allclose(rec["loss"][i], ref["loss"], rtol=1e-4, atol=1e-6)
    return max(diffs), rec


@pytest.mark.parametrize("store", [
    "mlp_regression-sgd", "mlp_regression-momentum", "mlp_regression-adam", "mlp_regression-rmsprop",
    "least_squares_3d_gd-sgd", "least_squares_1d_sgd-sgd",
])
def test_stacked_equals_independent_torch_optim_runs(store):
    spec, task_cfg = DEFAULT.lookup_store(store)
    assert task_cfg.steps == 200
    diff, rec = max_diff_vs_reference(make_task(task_cfg), spec.optimizer, spec.task)
    assert diff <= 1e-5, diff
    assert rec["weights"].shape[1] == 201
    # the runs really trained (a frozen generator would also match a frozen reference)
    assert np.all(rec["loss"][:, -1] < rec["loss"][:, 0])


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "rmsprop"])
def test_equivalence_on_digits_classification_with_schedule_and_sampled_hyper(name):
    _, task_cfg = DEFAULT.lookup_store(f"digits-{name}")
    task_cfg = dataclasses.replace(task_cfg, steps=200, n_samples=96, batch_size=32)
    opt = OptimizerConfig(name=name, lr=Range(0.002, 0.02, log=True), weight_decay=1e-3,
                          schedule=ScheduleConfig(kind="cosine", min_ratio=0.1))
    diff, rec = max_diff_vs_reference(make_task(task_cfg), opt, "digits", n_runs=4)
    assert diff <= 1e-5, diff
    assert len(set(np.round(rec["lr"][:, 0], 8))) == 4  # hyper-parameters really differ per run


def test_run_does_not_depend_on_its_block(tiny_params):
    """A run's trajectory is the same whether trained with 2 or 8 others (blocks can be redone)."""
    spec, task_cfg = tiny_params.lookup_store("mlp_regression-adam")
    task = make_task(task_cfg)
    setups = [setup_run(task, spec.optimizer, 0, r, task_name=spec.task) for r in run_ids([1], 8)]
    big = simulate(task, spec.optimizer, setups, device=torch.device("cpu"))
    small = simulate(task, spec.optimizer, setups[5:7], device=torch.device("cpu"))
    np.testing.assert_allclose(big["weights"][5:7], small["weights"], rtol=0, atol=1e-6)


def _array_bytes(path, name):
    return {p.relative_to(path / name): p.read_bytes() for p in sorted((path / name).rglob("*")) if p.is_file()}


def test_same_params_give_byte_identical_weights(tiny_params, tmp_path):
    a = generate.run(tiny_params, "mlp_regression-sgd", out=tmp_path / "a.zarr", progress=False)
    generate.run(tiny_params, "mlp_regression-sgd", out=tmp_path / "b.zarr", progress=False)
    assert a.n_runs == 24
    for name in ("weights", "loss", "final"):
        assert _array_bytes(tmp_path / "a.zarr", name) == _array_bytes(tmp_path / "b.zarr", name)


def test_diverging_runs_are_flagged_and_the_stage_completes(tmp_path):
    data = __import__("yaml").safe_load(TINY.read_text())
    data["stores"]["mlp_regression-sgd"]["optimizer"]["lr"] = {"low": 0.01, "high": 30.0, "log": True}
    params = parse_params(data)
    summary = generate.run(params, "mlp_regression-sgd", out=tmp_path / "d.zarr", progress=False)
    ts = open_trajectories(tmp_path / "d.zarr")
    div = ts.runs["diverged"]
    assert 0 < div.sum() < ts.n_runs, div
    assert summary.n_diverged == div.sum()
    w = ts.weights[:]
    assert np.all(np.isfinite(w[~div]))
    assert not np.all(np.isfinite(w[div].reshape(div.sum(), -1)), axis=None)


@pytest.mark.gpu
@pytest.mark.skipif("cuda" not in DEVICES, reason="needs CUDA")
def test_cuda_generation_matches_cpu():
    spec, task_cfg = DEFAULT.lookup_store("mlp_regression-adam")
    task = make_task(task_cfg)
    setups = [setup_run(task, spec.optimizer, 0, r, task_name=spec.task) for r in run_ids([1], 16)]
    cpu = simulate(task, spec.optimizer, setups, device=torch.device("cpu"))
    gpu = simulate(task, spec.optimizer, setups, device=torch.device("cuda"))
    np.testing.assert_allclose(gpu["weights"], cpu["weights"], rtol=1e-4, atol=1e-5)
