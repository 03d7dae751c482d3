"""gfm import: the metadata's activation and loss (root attribute ``network``) and the npz's evaluation data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gfm.core.network import Network
from gfm.recording.import_meta import TrajectoryImportError
from gfm.recording.importer import import_trajectories
from gfm.store.reader import open_trajectories
from gfm.tools.check import check_path

META = {"optimizer": {"name": "sgd", "lr": 0.1}}


def weights(n_runs: int = 5, steps: int = 6, params: int = 7) -> np.ndarray:
    return np.cumsum(np.random.default_rng(0).normal(size=(n_runs, steps, params)) * 0.01, 1).astype(np.float32)


def test_activation_and_loss_become_the_network_attribute(tmp_path):
    np.save(tmp_path / "w.npy", weights())
    out = import_trajectories(tmp_path / "w.npy", tmp_path / "a.zarr", meta={**META, "activation": "tanh", "loss": "mse"})
    assert out["network"] == {"activation": "tanh", "loss": "mse"} and out["eval_samples"] == 0
    assert open_trajectories(tmp_path / "a.zarr").network == Network("tanh", "mse")
    import_trajectories(tmp_path / "w.npy", tmp_path / "b.zarr", meta=META)
    attrs = json.loads((tmp_path / "b.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["network"] == {"activation": None, "loss": None}
    (verdict,) = check_path(tmp_path / "a.zarr")
    assert verdict.problems == []


@pytest.mark.parametrize("key,value,needle", [
    ("activation", "swish", "activation: got 'swish'; expected one of relu, tanh"),
    ("activation", 3, "activation: got 3"),
    ("loss", "hinge", "loss: got 'hinge'; expected one of mse, cross_entropy, least_squares, or null"),
])
def test_bad_activation_or_loss_is_refused_by_key(tmp_path, key, value, needle):
    np.save(tmp_path / "w.npy", weights())
    with pytest.raises(TrajectoryImportError, match=needle):
        import_trajectories(tmp_path / "w.npy", tmp_path / "x.zarr", meta={**META, key: value})
    assert not (tmp_path / "x.zarr").exists()


def test_npz_eval_data_is_stored_in_run_order(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 9, 2))
    y = rng.integers(0, 3, size=(5, 9)).astype(np.int32)
    np.savez(tmp_path / "r.npz", weights=weights(), eval_x=x, eval_y=y)
    out = import_trajectories(tmp_path / "r.npz", tmp_path / "r.zarr", meta={**META, "loss": "cross_entropy"})
    assert out["eval_samples"] == 9
    ts = open_trajectories(tmp_path / "r.zarr")
    got_x, got_y = ts.eval_data([4, 0])
    np.testing.assert_array_equal(got_x, x[[4, 0]].astype(np.float32))
    assert got_y.dtype == np.int64 and (got_y == y[[4, 0]]).all()
    (verdict,) = check_path(tmp_path / "r.zarr")
    assert verdict.problems == [] and "evaluation data 9 samples a run" in verdict.summary


@pytest.mark.parametrize("arrays,meta,needle", [
    ({"eval_x": np.zeros((5, 3, 2))}, {}, "eval_x without eval_y"),
    ({"eval_y": np.zeros((5, 3))}, {}, "eval_y without eval_x"),
    ({"eval_x": np.zeros((4, 3, 2)), "eval_y": np.zeros((4, 3))}, {}, "expected 5 runs first"),
    ({"eval_x": np.zeros((5, 3, 2)), "eval_y": np.zeros((5, 4))}, {}, r"eval_y has shape \(4,\); expected \(3,\)"),
    ({"eval_x": np.zeros((5, 3)), "eval_y": np.zeros((5, 3))}, {}, r"eval_x has shape \(3,\)"),
    ({"eval_x": np.zeros((5, 3, 2)), "eval_y": np.zeros((5, 3))}, {"loss": "cross_entropy"},
     "y holds floats but the loss is cross_entropy"),
    ({"eval_x": np.full((5, 3, 2), np.nan), "eval_y": np.zeros((5, 3))}, {}, "eval data of runs 0..4: x holds NaN"),
    ({"eval_x": np.zeros((5, 3, 2)), "eval_y": -np.ones((5, 3), dtype=np.int64)}, {},
     "eval_y: runs 0..4 hold class labels below 0"),
])
def test_bad_eval_data_is_refused_and_nothing_is_put_in_place(tmp_path, arrays, meta, needle):
    np.savez(tmp_path / "r.npz", weights=weights(), **arrays)
    with pytest.raises(TrajectoryImportError, match=needle):
        import_trajectories(tmp_path / "r.npz", tmp_path / "r.zarr", meta={**META, **meta})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]
