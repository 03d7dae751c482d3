"""gfm_function: the function-space gradient field (src/gfm/forecasters/function_field.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gfm.core.layout import layout_from_shapes
from gfm.core.network import ACTIVATIONS, Network
from gfm.forecasters.base import (
    ForecasterError,
    StoreNotSupported,
    Trajectories,
    make_forecaster,
)
from gfm.forecasters.function_net import FunctionField, mlp_apply, mlp_shape
from gfm.forecasters.model_files import read_model, save_model
from margins import at_least, fit_rng
from stage_helpers import first_seed_runs

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_layout(n_in: int, hidden: int, n_out: int):
    return layout_from_shapes([("0.weight", (hidden, n_in)), ("0.bias", (hidden,)),
                               ("2.weight", (n_out, hidden)), ("2.bias", (n_out,))])


def field_for(layout, probes: int = 7, basis: int = 2, seed: int = 0) -> FunctionField:
    shape = mlp_shape(layout)
    g = torch.Generator().manual_seed(seed)
    f = FunctionField(shape, torch.randn(probes, shape.n_in, generator=g, dtype=torch.float64),
                      torch.randn(probes, shape.n_out, basis, generator=g, dtype=torch.float64), 1e-3,
                      activation="relu")
    return f.double()


# the torch.nn module of every activation a store may name, with its default options
_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU,
            "elu": nn.ELU, "softplus": nn.Softplus, "leaky_relu": nn.LeakyReLU, "identity": nn.Identity}


def test_every_store_activation_has_its_module_here():
    assert sorted(_MODULES) == sorted(ACTIVATIONS)


def sequential(dims: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b)] + ([_MODULES[activation]()] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers).double()


def flat(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("activation", list(_MODULES))
def test_mlp_apply_matches_torch_module(activation):
    """mlp_apply with a store's activation computes what nn.Sequential with that module computes."""
    torch.manual_seed(0)
    net = sequential([3, 5, 4, 2], activation)
    shape = mlp_shape(layout_from_shapes([(n, tuple(p.shape)) for n, p in net.named_parameters()]))
    x = torch.randn(11, 3, dtype=torch.float64)
    assert torch.allclose(mlp_apply(shape, flat(net), x, activation), net(x), atol=1e-12)
    if activation != "relu":  # the activation is not decoration: ReLU gives another function
        assert not torch.allclose(mlp_apply(shape, flat(net), x, "relu"), net(x), atol=1e-6)


@pytest.mark.parametrize("activation", list(_MODULES))
def test_surrogate_is_the_data_loss_gradient_when_probes_are_the_data(activation):
    """With the probes at the training inputs, equal weights and h = the targets, the surrogate is exactly
    the full-batch MSE gradient of the network with the store's activation (autograd through nn.Sequential):
    the field's structure holds the true gradient field, for every activation it may be given."""
    torch.manual_seed(1)
    net = sequential([1, 6, 5, 1], activation)
    layout = layout_from_shapes([(n, tuple(p.shape)) for n, p in net.named_parameters()])
    x = torch.randn(20, 1, dtype=torch.float64)
    y = 0.7 * x
    loss = (net(x) - y).pow(2).mean()
    true = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])
    field = FunctionField(mlp_shape(layout), x.clone(), y[:, :, None].clone(), 1e-3, activation=activation).double()
    with torch.no_grad():
        field.logc.fill_(float(np.log(np.e - 1)))   # softplus -> 1: weights 1/P, the mean over the data
    got = field.surrogate(flat(net), torch.ones(1, dtype=torch.float64))
    assert torch.allclose(got, true, atol=1e-12)


def test_an_unknown_activation_name_is_refused():
    with pytest.raises(ForecasterError, match="activation 'swish'"):
        FunctionField(mlp_shape(mlp_layout(1, 3, 1)), torch.zeros(2, 1), torch.zeros(2, 1, 1), 1e-3,
                      activation="swish")


def test_surrogate_permutes_with_the_hidden_units():
    """Permute the hidden units of the network (rows of layer 1, columns of layer 2): the surrogate
    gradient permutes the same way."""
    layout = mlp_layout(2, 5, 3)
    field = field_for(layout)
    w = torch.randn(4, 5 * 2 + 5 + 3 * 5 + 3, dtype=torch.float64)
    z = torch.randn(4, 2, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])

    def permute(v):
        w1, b1 = v[:, :10].reshape(4, 5, 2), v[:, 10:15]
        w2, b2 = v[:, 15:30].reshape(4, 3, 5), v[:, 30:]
        return torch.cat([w1[:, perm].flatten(1), b1[:, perm], w2[:, :, perm].flatten(1), b2], 1)

    assert torch.allclose(field.surrogate(permute(w), z), permute(field.surrogate(w, z)), atol=1e-12)


def test_code_inference_recovers_the_generating_code():
    """Gradients made by the field itself with a known code z: the prefix least squares gives z back."""
    layout = mlp_layout(1, 4, 1)
    field = field_for(layout, probes=9, basis=2)
    with torch.no_grad():
        field.log_ridge.fill_(-30.0)
    w = torch.randn(3, 6, 13, dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64)
    g = field.surrogate(w, z[:, None].expand(-1, 6, -1))
    assert torch.allclose(field.infer_code(w, g), z, atol=1e-6)


@pytest.mark.parametrize("layout", [layout_from_shapes([("w", (3,))]),
                                    layout_from_shapes([("0.weight", (4, 2)), ("0.bias", (3,))]),
                                    layout_from_shapes([("a.weight", (4, 2)), ("a.bias", (4,)),
                                                        ("b.weight", (1, 5)), ("b.bias", (1,))])])
def test_non_mlp_layouts_are_refused_by_name(layout):
    with pytest.raises(StoreNotSupported, match="not an MLP"):
        mlp_shape(layout)


@pytest.fixture(scope="module")
def tiny_runs(tiny_store, tiny_split):
    """Train / val / test Trajectories of the tiny mlp_regression-adam store, first dataset seed."""
    return first_seed_runs(tiny_store, tiny_split)


def fitted(tiny_params, runs, **options):
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    fc = make_forecaster("gfm_function", {"steps": 60, "eval_every": 20, "patience": 3, "probes": 16,
                                          "batch_size": 8, **options}, prefix_end=K, horizons=hz)
    log = fc.fit(runs["train"], runs["val"], rng=fit_rng(0))
    return fc, log


def test_fit_beats_last_value_on_validation_runs_and_round_trips(tiny_params, tiny_runs, tmp_path):
    fc, log = fitted(tiny_params, tiny_runs)
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    val = tiny_runs["val"]
    lv = float((val.weights[:, K] - val.weights[:, hz[-1]]).pow(2).mean())
    at_least("gfm_function_val_vs_last_value", lv / min(r["val_final_mse"] for r in log), 2)
    save_model(fc, tmp_path / "m")
    again = read_model(tmp_path / "m")
    test = tiny_runs["test"].prefix(K)
    assert torch.equal(fc.forecast(test, horizons=hz), again.forecast(test, horizons=hz))


def test_forecasts_a_width_it_never_saw(tiny_params, tiny_runs):
    """A field fitted on width-6 runs forecasts width-12 runs: the layout gives the network."""
    fc, _ = fitted(tiny_params, tiny_runs, steps=20)
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    test = tiny_runs["test"]
    wide = mlp_layout(1, 12, 1)
    n = test.n_runs
    w = test.weights
    # a width-12 network equal in function to the width-6 one: every unit split into two halves
    w1, b1, w2, b2 = w[..., 0:6], w[..., 6:12], w[..., 12:18], w[..., 18:19]
    wide_w = torch.cat([w1, w1, b1, b1, w2 / 2, w2 / 2, b2], -1)
    states = {k: torch.cat([v[..., 0:6], v[..., 0:6], v[..., 6:12], v[..., 6:12], v[..., 12:18] / 2,
                            v[..., 12:18] / 2, v[..., 18:19]], -1) for k, v in test.states.items()}
    wide_runs = Trajectories(weights=wide_w, lr=test.lr, optimizer=test.optimizer, record_every=test.record_every,
                             steps=test.steps, states=states, hyper=test.hyper, layout=wide)
    out = fc.forecast(wide_runs.prefix(K), horizons=hz)
    assert out.shape == (n, len(hz), 37) and torch.isfinite(out).all()


def test_wrong_optimizer_is_refused(tiny_params, tiny_runs):
    fc, _ = fitted(tiny_params, tiny_runs, steps=20)
    import dataclasses

    other = dataclasses.replace(tiny_runs["test"], optimizer="sgd", states={})
    with pytest.raises(ForecasterError, match="trained on adam runs"):
        fc.forecast(other.prefix(tiny_params.forecast.prefix_end), horizons=tiny_params.forecast.horizons)


def test_overfits_one_trajectory(tiny_params, tiny_runs):
    """Fitted and validated on a single run, the field reproduces that run's path: its forecast of the run's
    final weights is far closer than stopping at the prefix (the capacity to learn one landscape exactly)."""
    import dataclasses

    train = tiny_runs["train"]
    one = dataclasses.replace(train, weights=train.weights[:1], lr=train.lr[:1],
                              states={k: v[:1] for k, v in train.states.items()},
                              hyper={k: v[:1] for k, v in train.hyper.items()},
                              run_ids=None if train.run_ids is None else np.asarray(train.run_ids)[:1])
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    fc = make_forecaster("gfm_function", {"steps": 300, "eval_every": 50, "patience": 6, "probes": 16,
                                          "batch_size": 1, "points": 16, "samples": 0}, prefix_end=K, horizons=hz)
    fc.fit(one, one, rng=fit_rng(0))
    pred = fc.forecast(one.prefix(K), horizons=[hz[-1]])[:, 0]
    err = float((pred - one.weights[:, hz[-1]]).pow(2).mean())
    stop = float((one.weights[:, K] - one.weights[:, hz[-1]]).pow(2).mean())
    at_least("overfit[gfm_function]", stop / err, 30)  # measured 113-152x over seeds (BENCHMARKS.md)


def test_lstm_z_reads_the_run_code_and_round_trips(tiny_params, tiny_runs, tmp_path):
    """lstm_z (the encoder ablation): the LSTM's inputs carry gfm_function's code z of each run, the saved
    model forecasts exactly as the fitted one, and a different code changes the forecast."""
    K, hz = tiny_params.forecast.prefix_end, tiny_params.forecast.horizons
    fc = make_forecaster("lstm_z", {"steps": 40, "eval_every": 20, "hidden": 8, "batch_size": 64, "probes": 8},
                         prefix_end=K, horizons=hz)
    fc.fit(tiny_runs["train"], tiny_runs["val"], rng=torch.Generator().manual_seed(0))
    test = tiny_runs["test"].prefix(K)
    (x,) = fc._inputs(test)
    assert x.shape == (test.n_runs * test.n_params, K + 1, 5 + 2)
    assert torch.allclose(x[:: test.n_params, 0, 5:], x[:: test.n_params, -1, 5:])   # z is constant in time
    assert fc.states_needed() == fc.encoder.states_needed() == ("exp_avg", "exp_avg_sq")   # Adam runs
    pred = fc.forecast(test, horizons=hz)
    save_model(fc, tmp_path / "m")
    again = read_model(tmp_path / "m")
    assert torch.equal(again.forecast(test, horizons=hz), pred)
    again._z_stats = ([m + 3.0 for m in again._z_stats[0]], again._z_stats[1])
    assert not torch.allclose(again.forecast(test, horizons=hz), pred)


def test_rollout_loss_trains_through_the_optimizer_map(tiny_params, tiny_runs):
    """unroll > 0 adds a loss differentiated through every replayed optimizer step: the fit differs from the
    gradient-matching fit with the same random stream, and the rollout loss reaches the field's parameters."""
    fc0, _ = fitted(tiny_params, tiny_runs, steps=20, samples=0)
    fc1, _ = fitted(tiny_params, tiny_runs, steps=20, samples=0, unroll=3, unroll_sigma=0.1)
    assert not torch.equal(fc0.module.basis, fc1.module.basis)
    train = tiny_runs["train"]
    runs = torch.arange(4)
    K = tiny_params.forecast.prefix_end
    from gfm.forecasters.gfm_features import recover_gradient

    z = fc1.module.infer_code(train.weights[runs, :K].float(), recover_gradient(train).float()[runs, :K], create_graph=True)
    loss = fc1._rollout_loss(train, runs, z, torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and fc1.module.x.grad is not None and fc1.module.x.grad.abs().sum() > 0


# --- the store's activation: a Tanh network is forecast as one ------------------------------------------------
class CustomMLP(nn.Module):
    """An MLP layout whose activation only its forward says: gfm.record cannot read it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(1, 6), nn.Linear(6, 1)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def record_runs(path, make_net, n_runs: int, steps: int = 12, **record_kw):
    """``n_runs`` Adam runs of ``make_net()`` fitting y = a sin(2x), a different a per run, into one store."""
    import gfm

    for r in range(n_runs):
        torch.manual_seed(r)
        net = make_net()
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(100 + r)
        x = torch.randn(32, 1, generator=g)
        y = (0.5 + r / n_runs) * torch.sin(2 * x)
        with gfm.record(path, net, opt, mode="w" if r == 0 else "a", **record_kw) as rec:
            for _ in range(steps):
                loss = (net(x) - y).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step(loss)
    return path


@pytest.fixture(scope="module")
def tanh_runs(tmp_path_factory):
    """Trajectories of 6 recorded runs of nn.Sequential(Linear, Tanh, Linear) (activation read from the module)."""
    from gfm.store.reader import open_trajectories

    path = record_runs(tmp_path_factory.mktemp("tanh") / "t.zarr",
                       lambda: nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)), 6, loss="mse")
    return Trajectories.from_store(open_trajectories(path), np.arange(6))


def tanh_fit(runs):
    fc = make_forecaster("gfm_function", {"steps": 10, "eval_every": 5, "probes": 4, "batch_size": 4, "samples": 0},
                         prefix_end=4, horizons=[8, 12])
    fc.fit(runs.select(range(3)), runs.select([3]), rng=fit_rng(0))
    return fc


def test_a_tanh_store_is_fitted_and_forecast_as_a_tanh_network(tanh_runs, tmp_path):
    """The store says tanh; the fitted field's surrogate is the gradient through nn.Sequential(Tanh) (not ReLU)
    of its probe loss, the saved model keeps the activation, and a ReLU run is refused, not forecast."""
    import dataclasses

    assert tanh_runs.network == Network("tanh", "mse")
    fc = tanh_fit(tanh_runs)
    assert fc.extra["activation"] == "tanh" and fc.module.activation == "tanh"
    field = fc.module
    w = tanh_runs.weights[4, 5].double()
    z = torch.randn(field.basis.shape[-1], dtype=torch.float64)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    nn.utils.vector_to_parameters(w, net.parameters())
    x, c, basis = (t.detach().double() for t in (field.x, field.weights(), field.basis))
    h = torch.einsum("pom,m->po", basis, z)
    probe_loss = (c[:, None] * (net(x) - h).pow(2)).sum()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(probe_loss, list(net.parameters()))])
    got = field.double().surrogate(w, z)
    field.float()
    assert torch.allclose(got, exact, atol=1e-10)
    test = tanh_runs.select([4, 5]).prefix(4)
    out = fc.forecast(test, horizons=[8, 12])
    assert out.shape == (2, 2, 19) and torch.isfinite(out).all()
    save_model(fc, tmp_path / "m")
    again = read_model(tmp_path / "m")
    assert again.extra["activation"] == "tanh" and torch.equal(again.forecast(test, horizons=[8, 12]), out)
    relu = dataclasses.replace(test, network=Network("relu", "mse"))
    with pytest.raises(StoreNotSupported, match="fitted on networks with tanh between layers; the run's network uses relu"):
        again.forecast(relu, horizons=[8, 12])


def test_a_model_saved_before_models_kept_their_activation_is_relu(tanh_runs, tmp_path):
    """Before the activation was recorded gfm_function had only ReLU: a saved model without extra.activation
    was fitted with it; an explicit null is refused at load."""
    import json

    from gfm.forecasters.base import ModelFileError

    fc = tanh_fit(tanh_runs)
    save_model(fc, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    del meta["extra"]["activation"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    assert read_model(tmp_path / "m").module.activation == "relu"
    meta["extra"]["activation"] = None
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="extra.activation is null"):
        read_model(tmp_path / "m")


def test_a_store_that_does_not_know_its_activation_is_refused(tmp_path):
    """A custom forward recorded without activation=: the store says null, and gfm_function and lstm_z (its
    encoder) refuse it with StoreNotSupported, the one-line reason the stages record, instead of assuming ReLU."""
    from gfm.store.reader import open_trajectories

    path = record_runs(tmp_path / "c.zarr", CustomMLP, 3, steps=6)
    runs = Trajectories.from_store(open_trajectories(path), np.arange(3))
    assert runs.network == Network(None, None)
    for kind, options in (("gfm_function", {"steps": 2, "probes": 2, "samples": 0}),
                          ("lstm_z", {"steps": 2, "probes": 2, "hidden": 4})):
        fc = make_forecaster(kind, options, prefix_end=2, horizons=[4])
        with pytest.raises(StoreNotSupported) as err:
            fc.fit(runs.select([0, 1]), runs.select([2]), rng=fit_rng(0))
        assert str(err.value) == ("gfm_function: the store does not record its network's activation; record it "
                                  "with gfm.record(..., activation=...)")


def test_a_run_held_as_arrays_says_its_activation_through_its_module(tanh_runs):
    """prefix_from_arrays(layout=module) reads the module's activation: a ReLU run is refused by a model fitted on
    Tanh runs; a module that does not say is taken as the fitted network, as a run without a layout is."""
    from gfm.forecasters.run_arrays import prefix_from_arrays

    fc = tanh_fit(tanh_runs)
    w = tanh_runs.weights[4, :5].numpy()
    states = {k: v[4, :5].numpy() for k, v in tanh_runs.states.items()}

    def run(module):
        return prefix_from_arrays(w, optimizer="adam", lr=0.05, states=states, layout=module)

    relu = run(nn.Sequential(nn.Linear(1, 6), nn.ReLU(), nn.Linear(6, 1)))
    assert relu.network == Network("relu", None)
    with pytest.raises(StoreNotSupported, match="the run's network uses relu"):
        fc.forecast(relu, horizons=[12])
    tanh = run(nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)))
    custom = run(CustomMLP())
    assert custom.network is None
    assert torch.equal(fc.forecast(tanh, horizons=[12]), fc.forecast(custom, horizons=[12]))
