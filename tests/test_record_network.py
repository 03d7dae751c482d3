"""gfm.record's network attribute (activation, loss) and held-out evaluation data, and gfm check of both."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import gfm
import gfm.store.eval_data
from gfm.base.errors import StoreSchemaError
from gfm.core.network import ACTIVATIONS, Network, read_activation
from gfm.recording.capture import RecordError
from gfm.tools.check import check_path

_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU,
            "elu": nn.ELU, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}


class CustomNet(nn.Module):
    """Linear layers whose activation only forward says."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class MySequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) * 2


def tanh_net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))


# --- reading the activation from a module ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_store_activation_is_read_from_its_default_module(name):
    net = nn.Sequential(nn.Linear(2, 3), _MODULES[name](), nn.Linear(3, 3), _MODULES[name](), nn.Linear(3, 1))
    assert read_activation(net) == name


@pytest.mark.parametrize("net,expected", [
    (nn.Linear(3, 1), "identity"),
    (nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(4, 3), nn.ReLU()), nn.Linear(3, 1)), "relu"),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 1)), "relu"),
    (nn.Sequential(nn.Linear(4, 3), nn.GELU(approximate="tanh"), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Linear(4, 3), nn.LeakyReLU(0.2), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Linear(4, 3), nn.ELU(alpha=0.5), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Linear(4, 3), nn.Softplus(beta=2), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)), None),  # mixed
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1), nn.Sigmoid()), None),  # after the last layer
    (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Dropout(0.1), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)), None),
    (nn.Sequential(nn.Flatten(start_dim=0), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)), None),
    (MySequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)), None),  # its own forward
    (CustomNet(), None),
], ids=lambda v: v if isinstance(v, str | None) else type(v).__name__)
def test_the_activation_is_read_only_where_the_code_says_it_exactly(net, expected):
    assert read_activation(net) == expected


def test_a_hook_makes_the_activation_unreadable():
    net = tanh_net()
    net[1].register_forward_hook(lambda m, i, o: o * 2)
    assert read_activation(net) is None


# --- gfm.record's network attribute ------------------------------------------------------------------------------
def data(seed: int = 0, n: int = 32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, x.sum(1, keepdim=True) * 0.5


def record(path, model, *, steps: int = 4, mode: str = "w", **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data()
    with gfm.record(path, model, opt, mode=mode, **kw) as rec:
        for _ in range(steps):
            loss = (model(x) - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss)
    return path


def network_attr(path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["network"]


def test_a_tanh_sequential_is_recorded_as_tanh_and_the_store_checks_clean(tmp_path):
    path = record(tmp_path / "t.zarr", tanh_net(), loss="mse")
    assert network_attr(path) == {"activation": "tanh", "loss": "mse"}
    assert gfm.open_trajectories(path).network == Network("tanh", "mse")
    (verdict,) = check_path(path)
    assert verdict.problems == []


def test_a_custom_module_is_null_unless_its_activation_is_given(tmp_path):
    assert network_attr(record(tmp_path / "a.zarr", CustomNet())) == {"activation": None, "loss": None}
    given = record(tmp_path / "b.zarr", CustomNet(), activation="tanh", loss="mse")
    assert network_attr(given) == {"activation": "tanh", "loss": "mse"}


def test_a_given_activation_that_contradicts_the_module_is_refused(tmp_path):
    net = tanh_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.raises(RecordError, match="activation='relu', but the model .* applies tanh"):
        gfm.record(tmp_path / "s.zarr", net, opt, activation="relu")
    assert network_attr(record(tmp_path / "same.zarr", tanh_net(), activation="tanh"))["activation"] == "tanh"
    with pytest.raises(RecordError, match="activation='swish'; expected one of relu, tanh"):
        gfm.record(tmp_path / "s.zarr", CustomNet(), opt, activation="swish")
    with pytest.raises(RecordError, match="loss='hinge'; expected one of mse"):
        gfm.record(tmp_path / "s.zarr", net, opt, loss="hinge")
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.partial").exists()


def test_an_appended_run_must_have_the_stores_network(tmp_path):
    path = record(tmp_path / "s.zarr", CustomNet(), activation="tanh", loss="mse")
    record(path, CustomNet(), mode="a", activation="tanh", loss="mse")
    for kw in ({"activation": "sigmoid", "loss": "mse"}, {"activation": "tanh"}, {}):
        with pytest.raises(RecordError, match="network .* differs from the store's"):
            record(path, CustomNet(), mode="a", **kw)
    assert gfm.open_trajectories(path).n_runs == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_a_store_written_before_the_network_attribute_takes_runs_of_an_unknown_network(tmp_path):
    path = record(tmp_path / "s.zarr", CustomNet())
    meta = json.loads((path / "zarr.json").read_text())
    del meta["attributes"]["network"]
    (path / "zarr.json").write_text(json.dumps(meta))
    record(path, CustomNet(), mode="a")
    same_names = nn.Sequential(OrderedDict(a=nn.Linear(2, 4), act=nn.Tanh(), b=nn.Linear(4, 1)))
    with pytest.raises(RecordError, match="written before stores recorded their network"):
        record(path, same_names, mode="a")
    assert gfm.open_trajectories(path).n_runs == 2


# --- held-out evaluation data ------------------------------------------------------------------------------------
def test_eval_data_is_stored_per_run_in_store_order_and_read_back(tmp_path):
    x0, y0 = torch.randn(10, 2), torch.randn(10)
    x1, y1 = np.random.default_rng(0).normal(size=(10, 2)), np.random.default_rng(1).normal(size=10)
    path = record(tmp_path / "e.zarr", tanh_net(), loss="mse", eval_data=(x0, y0))
    record(path, tanh_net(), mode="a", loss="mse", eval_data=(x1, y1))
    g = zarr.open_group(path, mode="r")
    assert g["eval/x"].shape == (2, 10, 2) and g["eval/x"].dtype == np.float32 and g["eval/y"].dtype == np.float32
    ts = gfm.open_trajectories(path)
    x, y = ts.eval_data([1, 0])
    np.testing.assert_array_equal(x, np.stack([x1.astype(np.float32), x0.numpy()]))
    np.testing.assert_array_equal(y, np.stack([y1.astype(np.float32), y0.numpy()]))
    (verdict,) = check_path(path)
    assert verdict.problems == [] and "evaluation data 10 samples a run" in verdict.summary


def test_class_labels_are_int64(tmp_path):
    path = record(tmp_path / "c.zarr", tanh_net(), loss="cross_entropy",
                  eval_data=(torch.randn(6, 2), torch.tensor([0, 1, 2, 1, 0, 0], dtype=torch.int32)))
    g = zarr.open_group(path, mode="r")
    assert g["eval/y"].dtype == np.int64 and g["eval/y"][0].tolist() == [0, 1, 2, 1, 0, 0]


def test_appends_must_match_the_stores_eval_data(tmp_path):
    with_eval = record(tmp_path / "e.zarr", tanh_net(), eval_data=(torch.randn(10, 2), torch.randn(10)))
    without = record(tmp_path / "n.zarr", tanh_net())
    cases = [(with_eval, None, "holds evaluation data for every run; this run has none"),
             (without, (torch.randn(10, 2), torch.randn(10)), "holds evaluation data for no run; this run has eval_data"),
             (with_eval, (torch.randn(11, 2), torch.randn(11)), r"x \(11, 2\) with float32 targets; the store holds x \(10, 2\)"),
             (with_eval, (torch.randn(10, 2), torch.arange(10)), "with int64 targets; the store holds x .* float32")]
    for path, eval_data, message in cases:
        with pytest.raises(RecordError, match=message):
            record(path, tanh_net(), mode="a", eval_data=eval_data)
    assert [gfm.open_trajectories(p).n_runs for p in (with_eval, without)] == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.zarr", "n.zarr"]


@pytest.mark.parametrize("eval_data,loss,message", [
    (torch.randn(5, 2), None, "expected a pair"),
    ((torch.randn(5, 2), torch.randn(4)), None, r"y has shape \(4,\); expected \(5,\)"),
    ((torch.randn(5), torch.randn(5)), None, r"x has shape \(5,\); expected \(sample, \*input_shape\)"),
    ((torch.zeros(0, 2), torch.zeros(0)), None, "every size >= 1"),
    ((torch.randn(5, 2), torch.randn(5, 1)), None, r"y has shape \(5, 1\)"),
    ((torch.tensor([[1.0, float("nan")]] * 5), torch.randn(5)), None, "x holds NaN or Inf"),
    ((np.full((5, 2), 1e300), np.zeros(5)), None, "x holds NaN or Inf"),
    ((torch.randn(5, 2), torch.tensor([1.0, 2, 3, float("inf"), 5])), None, "y holds NaN or Inf"),
    ((torch.arange(10).reshape(5, 2), torch.randn(5)), None, "x has dtype kind 'i'; expected floats"),
    ((torch.randn(5, 2), torch.tensor([True] * 5)), None, "y has dtype kind 'b'"),
    ((torch.randn(5, 2), torch.tensor([0, 1, -1, 0, 1])), None, "class labels below 0"),
    ((torch.randn(5, 2), torch.randn(5)), "cross_entropy", "y holds floats but the loss is cross_entropy"),
    ((torch.randn(5, 2), torch.arange(5)), "mse", "y holds integers but the loss is mse"),
    ((np.array([["a", "b"]] * 5), np.zeros(5)), None, "dtype <U1; expected real numbers"),
])
def test_bad_eval_data_is_refused_before_training(tmp_path, eval_data, loss, message):
    net = tanh_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with pytest.raises(RecordError, match=message):
        gfm.record(tmp_path / "s.zarr", net, opt, loss=loss, eval_data=eval_data)


def test_eval_data_past_the_size_bound_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(gfm.store.eval_data, "MAX_EVAL_BYTES", 1000)
    net = tanh_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    gfm.record(tmp_path / "ok.zarr", net, opt, eval_data=(torch.randn(125, 2), torch.randn(125)))
    with pytest.raises(RecordError, match=r"x has shape \(126, 2\): 1,008 bytes as float32, more than"):
        gfm.record(tmp_path / "s.zarr", net, opt, eval_data=(torch.randn(126, 2), torch.randn(126)))


# --- gfm check ---------------------------------------------------------------------------------------------------
def edit_attrs(path, **changes) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"].update(changes)
    (path / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("value,message", [
    ({"activation": "swish", "loss": None}, "activation 'swish'; expected one of relu"),
    ({"activation": "tanh", "loss": "hinge"}, "loss 'hinge'; expected one of mse"),
    ({"activation": "tanh"}, "expected {activation: <name or null>, loss: <name or null>}"),
    ("tanh", "expected {activation"),
])
def test_check_and_every_reader_refuse_a_bad_network_attribute(tmp_path, value, message):
    path = record(tmp_path / "s.zarr", tanh_net())
    edit_attrs(path, network=value)
    (verdict,) = check_path(path)
    assert any("attribute network" in p and message in p for p in verdict.problems), verdict.problems
    with pytest.raises(StoreSchemaError, match="attribute network"):
        gfm.open_trajectories(path)


def test_check_refuses_eval_data_that_contradicts_the_loss_or_is_not_finite(tmp_path):
    path = record(tmp_path / "s.zarr", tanh_net(), loss="mse", eval_data=(torch.randn(6, 2), torch.randn(6)))
    edit_attrs(path, network={"activation": "tanh", "loss": "cross_entropy"})
    (verdict,) = check_path(path)
    assert verdict.problems == ["array eval/y holds floats but the loss is cross_entropy, which reads integer class "
                                "labels"]
    edit_attrs(path, network={"activation": "tanh", "loss": "mse"})
    x = zarr.open_group(path, mode="r+")["eval/x"]
    x[0, 3, 1] = np.nan
    (verdict,) = check_path(path)
    assert len(verdict.problems) == 1 and verdict.problems[0].startswith("eval/x, eval/y: 1 runs (0) hold non-finite")


def test_check_refuses_eval_arrays_of_the_wrong_shape(tmp_path):
    path = record(tmp_path / "s.zarr", tanh_net(), eval_data=(torch.randn(6, 2), torch.randn(6)))
    meta = json.loads((path / "eval" / "y" / "zarr.json").read_text())
    meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, 5], [1, 5]
    (path / "eval" / "y" / "zarr.json").write_text(json.dumps(meta))
    (verdict,) = check_path(path)
    assert "array eval/y is (1, 5); expected (1, 6) (run, sample), as eval/x" in verdict.problems
