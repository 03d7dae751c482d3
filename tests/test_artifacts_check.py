"""Every kind of artifact the pipeline writes passes `gfm check` (exit 0, one `ok` line each): generate,
import (each documented input form: the README's weights-only .npy, .npy + --meta JSON, .npz with loss / lr /
state / dataset_seed, .npz without state under `missing_state: zeros`, a layout), gfm.record (new store,
appended run, with and without an `evaluate` callable), split, train, forecast, evaluate and report.

A writer whose output `gfm check` refuses is a bug in one of the two; this file pins them to each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gfm.cli import main
from gfm.config import SplitConfig
from gfm.forecasters.model_files import save_model
from gfm.stages import split as split_stage
from gfm.tools.check import check_path
from test_hostile_inputs import closed_params  # noqa: F401  (params file: the tiny study's closed-form models)
from test_import import momentum_runs
from test_reliability import staged  # noqa: F401  (module fixture: split/train/forecast/evaluate/report)


def _assert_clean(path: Path, *kinds: str) -> list[str]:
    verdicts = check_path(path)
    lines = [line for v in verdicts for line in v.lines()]
    assert verdicts and all(v.ok for v in verdicts), "\n".join(lines)
    for kind in kinds:
        assert any(f"({kind}" in line for line in lines), (kind, lines)
    return lines


# --- generate ---------------------------------------------------------------------------------------------
def test_generated_stores_check_clean(tiny_store, tiny_params, tmp_path):
    from gfm.stages import generate

    lines = _assert_clean(tiny_store, "trajectory store")
    assert "optimizer adam" in lines[0]
    sgd = tmp_path / "sgd.zarr"  # an optimizer without state arrays
    generate.run(tiny_params, "mlp_regression-sgd", out=sgd, progress=False)
    assert "optimizer sgd" in _assert_clean(sgd, "trajectory store")[0]
    (sgd / ".snakemake_timestamp").touch()  # what `gfm adopt` (snakemake --touch) leaves in a directory output
    _assert_clean(sgd, "trajectory store")


# --- import -----------------------------------------------------------------------------------------------
def _readme_weights(path: Path) -> Path:
    """The README's first example: `np.cumsum(np.random.randn(20, 41, 13) * .01, 1)` saved as float32."""
    w = np.cumsum(np.random.default_rng(0).standard_normal((20, 41, 13)) * 0.01, 1)
    np.save(path, w.astype("f4"))
    return path


def _momentum_runs(n_runs=8, steps=12, params=5, lr=0.05, mu=0.9):
    return momentum_runs(n_runs=n_runs, steps=steps, lr=lr, mu=mu, seed=1, params=params)


def test_the_readme_import_example_checks_clean(tmp_path, closed_params, capsys):  # noqa: F811
    """Weights only (`loss_source: none`): the loss is NaN by design and check accepts it only there."""
    _readme_weights(tmp_path / "w.npy")
    (tmp_path / "w.meta.yaml").write_text(
        "optimizer: {name: momentum, lr: 0.01, momentum: 0.9}\n"
        "dataset_seed: [1,1,1,1,1,1,1,1,1,1,2,2,2,2,2,2,2,2,2,2]\n")
    out = tmp_path / "imported" / "w.zarr"
    assert main(["import", str(tmp_path / "w.npy"), str(out), "--params", str(closed_params)]) == 0
    assert main(["info", str(out)]) == 0
    assert '"loss_recorded": false' in capsys.readouterr().out
    assert "no loss recorded" in _assert_clean(out, "trajectory store")[0]
    # the README goes on to split it: that artifact checks clean too
    split_stage.run(SplitConfig(), store=out, out=tmp_path / "w.split.json")
    _assert_clean(tmp_path / "w.split.json", "split")


IMPORT_FORMS = {
    "npy + --meta JSON (sgd, per-run lr)": (
        lambda d: (np.save(d / "w.npy", _momentum_runs()[0]), d / "w.npy")[1],
        {"optimizer": {"name": "sgd", "lr": [0.01 * (i + 1) for i in range(8)]}, "dataset_seed": 3}),
    "npz with loss, lr, momentum state and dataset seeds": (
        lambda d: (np.savez(d / "r.npz", weights=(r := _momentum_runs())[0], loss=r[2], state_momentum_buffer=r[1],
                            lr=np.full(r[2].shape, 0.05, np.float32), dataset_seed=np.repeat([4, 5], 4)),
                   d / "r.npz")[1],
        {"optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.9}, "name": "quad",
         "layout": [{"name": "a", "shape": [2, 2]}, {"name": "b", "shape": [1]}]}),
    "npz weights + loss, adam state as zeros": (
        lambda d: (np.savez(d / "a.npz", weights=(r := _momentum_runs())[0], loss=r[2]), d / "a.npz")[1],
        {"optimizer": {"name": "adam", "lr": 0.001}, "missing_state": "zeros", "record_every": 2, "steps": 24}),
    "npy with a diverged run (NaN weights)": (
        lambda d: (np.save(d / "w.npy", np.where(np.arange(8)[:, None, None] == 2, np.nan, _momentum_runs()[0])),
                   d / "w.npy")[1],
        {"optimizer": {"name": "rmsprop", "lr": 0.01}, "missing_state": "zeros"}),
}


@pytest.mark.parametrize("form", list(IMPORT_FORMS))
def test_every_import_form_checks_clean(form, tmp_path):
    make, meta = IMPORT_FORMS[form]
    src = make(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out.zarr"
    assert main(["import", str(src), str(out), "--meta", str(tmp_path / "meta.json")]) == 0
    _assert_clean(out, "trajectory store")


# --- gfm.record ---------------------------------------------------------------------------------------------
def _loop(path: Path, *, optimizer: str, mode: str = "w", evaluate: bool = True, seed: int = 0) -> None:
    import gfm

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    opt = (torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "momentum"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    x, y = torch.randn(16, 2), torch.randn(16, 1)

    def full_loss():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x), y).item()

    with gfm.record(path, model, opt, every=1, mode=mode, dataset_seed=seed % 2,
                    evaluate=full_loss if evaluate else None, chunk_steps=4) as rec:
        for _ in range(10):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)


def test_recorded_stores_check_clean(tmp_path):
    path = tmp_path / "rec.zarr"
    _loop(path, optimizer="momentum")
    _assert_clean(path, "trajectory store")
    _loop(path, optimizer="momentum", mode="a", seed=1)  # a second run appended to the finished store
    assert "2 runs" in _assert_clean(path, "trajectory store")[0]
    minibatch = tmp_path / "adam.zarr"  # no evaluate: the minibatch loss of each step is stored
    _loop(minibatch, optimizer="adam", evaluate=False)
    _assert_clean(minibatch, "trajectory store")


# --- split, train, forecast, evaluate, report ---------------------------------------------------------------
def test_every_stage_output_of_a_run_checks_clean(staged):  # noqa: F811
    _, root, sp = staged
    lines = _assert_clean(root, "split", "trained models", "forecast store", "metrics", "report", "csv")
    assert all(": ok (" in line for line in lines)
    for model in ("last_value", "linear"):  # each seed's model directory on its own, as forecast loads it
        _assert_clean(root / "models" / model / "1", "model")


def test_a_saved_neural_model_checks_clean(tiny_store, tmp_path):
    """What the train stage saves for a learned model (Forecaster.save of a fitted LSTM): tensors to check."""
    import dataclasses

    from gfm.forecasters import FORECASTERS, Trajectories, make_forecaster
    from gfm.store.reader import open_trajectories

    fields = {f.name for f in dataclasses.fields(FORECASTERS["lstm"].Config)}
    short = {k: v for k, v in {"steps": 2, "eval_every": 1, "max_epochs": 1}.items() if k in fields}
    traj = Trajectories.from_store(open_trajectories(tiny_store), list(range(12)))
    fc = make_forecaster("lstm", {"hidden": 4, **short}, prefix_end=8, horizons=[16, 24, 32, 40])
    fc.fit(traj.select(range(8)), traj.select(range(8, 12)), rng=torch.Generator().manual_seed(0))
    d = save_model(fc, tmp_path / "lstm")
    assert "ok (model: lstm" in _assert_clean(d, "model")[0]
    assert "header sound" in _assert_clean(d / "weights.safetensors", "safetensors")[0]
