"""gfm import: NumPy trajectories + metadata -> a store the rest of the pipeline reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT
from gfm.cli import main
from gfm.forecasters import Trajectories
from gfm.recording.import_meta import TrajectoryImportError
from gfm.recording.importer import import_trajectories
from gfm.stages import split as split_stage
from gfm.stages import train
from gfm.store.reader import open_trajectories

LAYOUT = [{"name": "0.weight", "shape": [4, 1]}, {"name": "0.bias", "shape": [4]},
          {"name": "2.weight", "shape": [1, 4]}, {"name": "2.bias", "shape": [1]}]


def momentum_runs(n_runs=12, steps=30, lr=0.05, mu=0.9, seed=0, params=13):
    """Heavy-ball runs on per-run quadratics 0.5 * sum h (w - c)^2: weights, buffers, losses."""
    rng = np.random.default_rng(seed)
    P = params
    h = rng.uniform(0.2, 2.0, (n_runs, P))
    c = rng.normal(size=(n_runs, P))
    w = rng.normal(size=(n_runs, P))
    b = np.zeros_like(w)
    W, B, L = [w.copy()], [b.copy()], []
    for _ in range(steps):
        L.append((0.5 * h * (w - c) ** 2).sum(1))
        b = mu * b + h * (w - c)
        w = w - lr * b
        W.append(w.copy())
        B.append(b.copy())
    L.append((0.5 * h * (w - c) ** 2).sum(1))
    return (np.stack(W, 1).astype(np.float32), np.stack(B, 1).astype(np.float32),
            np.stack(L, 1).astype(np.float32))


def test_npz_with_state_and_loss_round_trips(tmp_path):
    W, B, L = momentum_runs()
    np.savez(tmp_path / "runs.npz", weights=W, loss=L, state_momentum_buffer=B,
             dataset_seed=np.repeat([3, 4], 6))
    (tmp_path / "runs.meta.yaml").write_text(yaml.safe_dump(
        {"optimizer": {"name": "momentum", "lr": 0.05, "momentum": 0.9}, "layout": LAYOUT, "name": "quad"}))
    summary = import_trajectories(tmp_path / "runs.npz", tmp_path / "q.zarr")
    assert summary["runs"] == 12 and summary["records"] == 31 and summary["diverged"] == 0
    ts = open_trajectories(tmp_path / "q.zarr")
    np.testing.assert_array_equal(ts.weights[:], W)
    np.testing.assert_array_equal(ts.state("momentum_buffer")[:], B)
    np.testing.assert_array_equal(ts.loss[:], L)
    np.testing.assert_allclose(ts.lr[:], 0.05)
    assert ts.attrs["store"] == "quad-momentum" and ts.attrs["task"]["steps"] == 30
    assert [s.name for s in ts.layout] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    runs = ts.runs
    assert list(runs["dataset_seed"]) == [3] * 6 + [4] * 6 and list(runs["index"][:7]) == [0, 1, 2, 3, 4, 5, 0]
    np.testing.assert_allclose(runs["momentum"], 0.9)
    # the layout makes records loadable into the matching network
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    ts.load_into(net, run=2, step=30)
    assert torch.equal(net[2].bias.detach(), torch.from_numpy(W[2, 30, 12:]))


def test_npy_with_momentum_rebuilds_the_buffer_and_the_pipeline_trains_on_it(tmp_path, tiny_params):
    """Only weights given: lr and the momentum buffer are filled in; split and the train stage accept it."""
    W, B, _ = momentum_runs(n_runs=16, steps=40)
    np.save(tmp_path / "w.npy", W)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"optimizer": {"name": "momentum", "lr": 0.05}, "dataset_seed": [1] * 8 + [2] * 8}))
    assert main(["import", str(tmp_path / "w.npy"), str(tmp_path / "w.zarr"), "--meta", str(meta),
                 "--params", str(ROOT / "tests" / "params.tiny.yaml")]) == 0
    ts = open_trajectories(tmp_path / "w.zarr")
    np.testing.assert_allclose(ts.state("momentum_buffer")[:], B, rtol=1e-3, atol=1e-4)
    assert np.isnan(ts.loss[:]).all() and ts.attrs["loss_source"] == "none"
    assert ts.weights.chunks[1] == tiny_params.store.chunk_steps  # chunking came from --params
    result = split_stage.run(tiny_params.split, store=tmp_path / "w.zarr", out=tmp_path / "split.json")
    assert len(result["datasets"]["1"]["train"]) == 4 and not result["datasets"]["1"]["diverged"]
    # the train stage fits a forecaster on it like on a generated store (40 steps, prefix 8, horizons 16..40)
    summary = train.run(tiny_params, store_key="mlp_regression-sgd", model="linear", split=tmp_path / "split.json",
                        store=tmp_path / "w.zarr", out=tmp_path / "models" / "linear", progress=False)
    assert sorted(summary.seeds) == ["1", "2"]
    te = Trajectories.from_store(ts, result["datasets"]["2"]["test"])
    assert te.states["momentum_buffer"].shape == (2, 41, 13)


def test_refusals_name_the_problem(tmp_path):
    W, _, _ = momentum_runs(n_runs=2, steps=5)
    np.save(tmp_path / "w.npy", W)
    np.save(tmp_path / "flat.npy", W[0])

    def fails(meta, match, src="w.npy", **kw):
        with pytest.raises(TrajectoryImportError, match=match):
            import_trajectories(tmp_path / src, tmp_path / "x.zarr", meta=meta, **kw)

    fails({"optimizer": {"name": "lbfgs", "lr": 0.1}}, "optimizer.name: got 'lbfgs'; expected one of")
    fails({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}, "optimizer.momentum: not used by 'sgd'")
    fails({"optimizer": {"name": "sgd", "lr": [0.1, 0.2, 0.3]}}, "a list of 2 numbers")
    fails({"optimizer": {"name": "sgd", "lr": 0.1}, "layout": [{"name": "w", "shape": [3]}]}, "hold 3 values")
    fails({"optimizer": {"name": "sgd", "lr": 0.1}, "steps": 50}, "i.e. 5 optimizer steps")
    fails({"optimizer": {"name": "adam", "lr": 0.1}}, "no state_exp_avg array")
    fails({"optimizer": {"name": "sgd", "lr": 0.1}, "color": 1}, "unknown keys")
    fails({"optimizer": {"name": "sgd", "lr": 0.1}}, r"expected floats shaped \(run, step, param\)", src="flat.npy")
    fails(None, "no metadata file")
    # zeros only when asked for
    out = import_trajectories(tmp_path / "w.npy", tmp_path / "a.zarr",
                              meta={"optimizer": {"name": "adam", "lr": 0.1}, "missing_state": "zeros"})
    assert out["filled"]["state/exp_avg"].startswith("zeros")
    import_trajectories(tmp_path / "w.npy", tmp_path / "x.zarr", meta={"optimizer": {"name": "sgd", "lr": 0.1}})
    fails({"optimizer": {"name": "sgd", "lr": 0.1}}, "exists; pass --overwrite")
    # the CLI prints one line and exits 2
    assert main(["import", str(tmp_path / "w.npy"), str(tmp_path / "y.zarr")]) == 2


@pytest.mark.parametrize("meta,needle", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "expands to more than"),
    ("optimizer: {name: sgd, lr: 0.1}\noptimizer: {name: adam, lr: 0.1}\n", "key defined twice (lines 1 and 2)"),
    ("optimizer: {name: sgd, lr: 1e-3}\n" + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
])
def test_import_metadata_goes_through_the_bounded_loader(tmp_path, capsys, meta, needle):
    np.save(tmp_path / "w.npy", np.zeros((2, 5, 3), dtype=np.float32))
    (tmp_path / "w.meta.yaml").write_text(meta)
    assert main(["import", str(tmp_path / "w.npy"), str(tmp_path / "w.zarr")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err) < 600 and "Traceback" not in err
    assert not (tmp_path / "w.zarr").exists()
