"""gfm_function: the function-space gradient field (src/gfm/forecasters/function_field.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gfm.forecasters.base import ForecasterError, Trajectories, load_forecaster, make_forecaster
from gfm.forecasters.function_field import FunctionField, mlp_apply, mlp_shape
from gfm.layout import layout_from_shapes
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
                      torch.randn(probes, shape.n_out, basis, generator=g, dtype=torch.float64), 1e-3)
    return f.double()


def test_mlp_apply_matches_torch_module():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).double()
    layout = mlp_layout(3, 5, 2)
    w = torch.cat([p.detach().flatten() for p in net.parameters()])
    x = torch.randn(11, 3, dtype=torch.float64)
    assert torch.allclose(mlp_apply(mlp_shape(layout), w, x), net(x))


def test_surrogate_is_the_data_loss_gradient_when_probes_are_the_data():
    """With the probes at the training inputs, equal weights and h = the targets, the surrogate is exactly
    the full-batch MSE gradient of the network: the field's structure holds the true gradient field."""
    layout = mlp_layout(1, 6, 1)
    net = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1)).double()
    x = torch.randn(20, 1, dtype=torch.float64)
    y = 0.7 * x
    loss = (net(x) - y).pow(2).mean()
    true = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])
    field = FunctionField(mlp_shape(layout), x.clone(), y[:, :, None].clone(), 1e-3).double()
    with torch.no_grad():
        field.logc.fill_(float(np.log(np.e - 1)))   # softplus -> 1: weights 1/P, the mean over the data
    w = torch.cat([p.detach().flatten() for p in net.parameters()])
    got = field.surrogate(w, torch.ones(1, dtype=torch.float64))
    assert torch.allclose(got, true, atol=1e-12)


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
    with pytest.raises(ForecasterError, match="not an MLP"):
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
    fc.save(tmp_path / "m")
    again = load_forecaster(tmp_path / "m")
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
    fc.save(tmp_path / "m")
    again = load_forecaster(tmp_path / "m")
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
