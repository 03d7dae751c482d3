"""The optimizer rules, written once, against torch.optim and against their closed forms."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from benchmarks.reference import torch_optimizer, train_reference

from conftest import ROOT
from gfm.config import (
    OPTIMIZER_NAMES,
    OPTIMIZER_STATE_ARRAYS,
    OptimizerConfig,
    Range,
    ScheduleConfig,
    load_params,
)
from gfm.core.optimizers import HYPER_DEFAULTS, HYPER_NAMES, STATE_NAMES, init_state, lr_multiplier, update
from gfm.stages.generate import simulate
from gfm.stages.runs import run_ids, setup_run
from gfm.tasks import make_task

HYPER = {
    "sgd": {"lr": 0.1, "weight_decay": 0.01},
    "momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.001},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
    "adamw": {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1},
}


@pytest.mark.parametrize("name", sorted(HYPER))
def test_update_matches_torch_optim_over_many_steps(name):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(3, 7, generator=gen)
    grads = [torch.randn(3, 7, generator=gen) for _ in range(50)]
    p = torch.nn.Parameter(w0.clone())
    opt = torch_optimizer(name, [p], HYPER[name])
    w, state = w0.clone(), init_state(name, w0)
    for n, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        w, state = update(name, w, g, state, HYPER[name], n)
    torch.testing.assert_close(w, p.detach(), rtol=0, atol=1e-6)
    assert set(state) == set(STATE_NAMES[name])


def test_one_registry_every_optimizer_tested_and_its_facts_match_torch_optim():
    from gfm.config import OPTIMIZER_KEYS
    from gfm.core.optimizers import SPECS
    from gfm.forecasters.gfm_features import n_state_features
    from gfm.recording.recorder import HYPER_NAMES as RECORDED

    assert set(HYPER) == set(SPECS) == set(OPTIMIZER_NAMES)
    # config, the recorder and GFM read the registry instead of keeping tables of their own
    assert RECORDED is HYPER_NAMES and OPTIMIZER_STATE_ARRAYS == {k: len(s.state) for k, s in SPECS.items()}
    assert {k: n_state_features(k) for k in SPECS} == OPTIMIZER_STATE_ARRAYS
    for name, spec in SPECS.items():
        # the params keys are exactly the hyper-parameters the rule reads (HYPER holds those, no more)
        assert OPTIMIZER_KEYS[name] == set(HYPER[name]) == {*spec.hyper, *(["eps"] if spec.reads_eps else [])}
        # the state names are torch.optim's, so gfm.record copies them
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch_optimizer(name, [p], HYPER[name])
        p.grad = torch.ones(2)
        opt.step()
        assert set(opt.state[p]) - {"step"} == set(spec.state), name
    # config has a field per hyper-parameter of the registry, with its default: a new one is declared there alone
    from gfm.core.optimizers import HYPERS

    assert [f.name for f in dataclasses.fields(OptimizerConfig)] == ["name", "lr", *HYPERS, "schedule"]
    defaults = OptimizerConfig(name="adam", lr=0.1)
    assert all(getattr(defaults, k) == v for k, v in HYPER_DEFAULTS.items())
    assert set(HYPER_DEFAULTS) == {k for v in OPTIMIZER_KEYS.values() for k in v} - {"lr"}


@pytest.mark.parametrize("name", sorted(HYPER))
def test_gfm_reads_one_state_feature_per_state_array(name):
    """Each spec says how GFM's field reads its state (``state_features``): one feature per state array, each
    shaped like the weights, finite."""
    from types import SimpleNamespace

    from gfm.forecasters.gfm_features import state_features

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 5, generator=gen)
    states = {k: torch.rand(3, 5, generator=gen) for k in STATE_NAMES[name]}
    hp = {k: torch.full((3, 1), float(v)) for k, v in HYPER[name].items()}
    feats = state_features(name, states, hp, 4.0, 10.0, SimpleNamespace(v=2.0, g=3.0))
    assert len(feats) == len(STATE_NAMES[name])
    assert all(f.shape == w.shape and bool(torch.isfinite(f).all()) for f in feats)


def test_adamw_decay_is_decoupled_and_nesterov_looks_ahead():
    w, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25])
    hp = {"lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.5}
    adamw, _ = update("adamw", w, g, init_state("adamw", w), hp, 1)
    adam, _ = update("adam", w, g, init_state("adam", w), hp, 1)
    # first Adam step is lr * sign(g) (up to eps); AdamW shrinks w by lr * wd first, Adam adds wd * w to g
    torch.testing.assert_close(adamw, w * (1 - 0.1 * 0.5) - 0.1 * g.sign(), rtol=0, atol=1e-6)
    torch.testing.assert_close(adam, w - 0.1 * (g + 0.5 * w).sign(), rtol=0, atol=1e-6)
    no_decay = dict(hp, weight_decay=0.0)
    assert torch.equal(update("adamw", w, g, init_state("adamw", w), no_decay, 3)[0],
                       update("adam", w, g, init_state("adam", w), no_decay, 3)[0])
    b = torch.tensor([0.2, 0.2])
    mom = {"lr": 0.1, "momentum": 0.9}
    w_n, s_n = update("nesterov", w, g, {"momentum_buffer": b}, mom, 2)
    w_m, s_m = update("momentum", w, g, {"momentum_buffer": b}, mom, 2)
    assert torch.equal(s_n["momentum_buffer"], s_m["momentum_buffer"])  # same buffer, different step
    torch.testing.assert_close(w_n, w - 0.1 * (g + 0.9 * (0.9 * b + g)))
    torch.testing.assert_close(w_m, w - 0.1 * (0.9 * b + g))


@pytest.mark.parametrize("name", ["nesterov", "adamw"])
def test_stacked_generator_equals_torch_optim_runs_for_nesterov_and_adamw(name):
    """What tests/test_generate.py checks for the default study's optimizers: R stacked runs of the generator
    (schedule, per-run lr, weight decay) are R independent torch.optim runs (SGD(nesterov=True), AdamW)."""
    _, task_cfg = load_params(ROOT / "params.yaml").lookup_store("mlp_regression-sgd")
    task = make_task(dataclasses.replace(task_cfg, steps=60))
    lr = Range(0.005, 0.05, log=True) if name == "nesterov" else Range(0.002, 0.02, log=True)
    opt = OptimizerConfig(name=name, lr=lr, weight_decay=0.05, schedule=ScheduleConfig(kind="cosine", min_ratio=0.1))
    setups = [setup_run(task, opt, 0, r, task_name="mlp_regression") for r in run_ids([1], 4)]
    rec = simulate(task, opt, setups, device=torch.device("cpu"))
    for i, s in enumerate(setups):
        ref = train_reference(task, opt, s)
        assert abs(ref["weights"] - rec["weights"][i]).max() <= 1e-5
    assert (rec["loss"][:, -1] < rec["loss"][:, 0]).all()  # the runs trained
    assert len({round(s.hyper["lr"], 8) for s in setups}) == 4


def test_per_run_hyper_parameters_broadcast():
    w = torch.zeros(2, 4)
    g = torch.ones(2, 4)
    lr = torch.tensor([[0.1], [0.2]])
    w1, _ = update("sgd", w, g, {}, {"lr": lr}, 1)
    assert torch.equal(w1, torch.tensor([[-0.1] * 4, [-0.2] * 4]))


def test_update_does_not_mutate_inputs():
    w, g = torch.randn(5), torch.randn(5)
    state = init_state("adam", w)
    snapshot = (w.clone(), g.clone(), {k: v.clone() for k, v in state.items()})
    update("adam", w, g, state, HYPER["adam"], 1)
    assert torch.equal(w, snapshot[0]) and torch.equal(g, snapshot[1])
    assert all(torch.equal(state[k], snapshot[2][k]) for k in state)


def test_unknown_optimizer_lists_valid_names():
    with pytest.raises(ValueError, match="expected one of"):
        update("lbfgs", torch.zeros(1), torch.zeros(1), {}, {"lr": 1.0}, 1)


def test_schedules():
    assert lr_multiplier(ScheduleConfig(), 37, 100) == 1.0
    step = ScheduleConfig(kind="step", step_size=10, gamma=0.5)
    assert [lr_multiplier(step, k, 100) for k in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    cos = ScheduleConfig(kind="cosine", min_ratio=0.1)
    assert lr_multiplier(cos, 0, 100) == pytest.approx(1.0)
    assert lr_multiplier(cos, 50, 100) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(cos, 100, 100) == pytest.approx(0.1)
    assert math.isclose(lr_multiplier(cos, 25, 100), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_import_rebuilds_the_momentum_buffer_from_the_weights(name):
    """gfm import's reconstruction of a missing buffer (record_every 1) against the rule's own buffers."""
    from gfm.core.optimizers import momentum_buffer_from_weights

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    hp = {"lr": torch.tensor([[0.1], [0.05], [0.2]], dtype=torch.float64),
          "momentum": torch.tensor([[0.5], [0.9], [0.99]], dtype=torch.float64), "weight_decay": 0.01}
    state = init_state(name, w)
    ws, bufs = [w], [state["momentum_buffer"]]
    for n in range(1, 41):
        w, state = update(name, w, torch.randn(3, 5, generator=gen, dtype=torch.float64), state, hp, n)
        ws.append(w)
        bufs.append(state["momentum_buffer"])
    W = torch.stack(ws, 1).numpy()
    lr = hp["lr"].expand(3, 41).numpy()
    rebuilt = momentum_buffer_from_weights(W, lr, name, hp["momentum"][:, 0].numpy())
    truth = torch.stack(bufs, 1).numpy()
    assert abs(rebuilt - truth).max() <= 1e-5 * max(1.0, abs(truth).max())
    if name == "nesterov":  # the heavy-ball reading of the same weights is wrong for Nesterov runs
        assert abs(momentum_buffer_from_weights(W, lr, "momentum", None) - truth).max() > 0.1


def test_params_generate_nesterov_and_adamw_stores(tmp_path):
    """Both names pass gfm validate and the schema Snakemake checks, generate like any optimizer (state arrays,
    per-run hyper-parameters) and pass gfm check; keys and hyper-parameters are checked as for the others."""
    import copy

    import yaml
    from snakemake.utils import validate

    from conftest import TINY
    from gfm.base.errors import ParamsError
    from gfm.config import parse_params
    from gfm.forecasters import Trajectories, make_forecaster
    from gfm.stages import generate
    from gfm.store.reader import open_trajectories
    from gfm.tools.check import check_path

    data = yaml.safe_load(TINY.read_text())
    data["stores"]["mlp_regression-nesterov"] = {"task": "mlp_regression",
                                                 "optimizer": {"name": "nesterov", "lr": 0.05, "momentum": 0.9}}
    data["stores"]["mlp_regression-adamw"] = {"task": "mlp_regression",
                                              "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05}}
    validate(copy.deepcopy(data), str(ROOT / "workflow" / "schemas" / "params.schema.json"))
    params = parse_params(data)
    for name in ("nesterov", "adamw"):
        out = tmp_path / f"{name}.zarr"
        generate.run(params, f"mlp_regression-{name}", out=out, progress=False)
        ts = open_trajectories(out)
        assert ts.optimizer["name"] == name and ts.state_names == STATE_NAMES[name]
        assert set(ts.hyper) == {*HYPER_NAMES[name], "eps"} and not ts.runs["diverged"].any()
        assert abs(ts.state(STATE_NAMES[name][0])[:, -1]).max() > 0
        assert all(v.ok for v in check_path(out)), [v.lines() for v in check_path(out)]
        runs = Trajectories.from_store(ts, range(12))
        for structure in ("rule", "state_input"):  # GFM's optimizer-aware heads take both rules
            fc = make_forecaster("gfm", {"structure": structure, "width": 8, "steps": 4, "eval_every": 2},
                                 prefix_end=8, horizons=[16, 40])
            fc.fit(runs, runs, rng=torch.Generator().manual_seed(0))
            assert fc.extra["optimizer"] == name and torch.isfinite(fc.forecast(runs, horizons=[40])).all()
    bad = copy.deepcopy(data)
    bad["stores"]["mlp_regression-nesterov"]["optimizer"]["beta1"] = 0.9
    with pytest.raises(ParamsError, match="stores.mlp_regression-nesterov.optimizer.beta1: not used by optimizer "
                                          "'nesterov'; it reads lr, momentum, schedule, weight_decay"):
        parse_params(bad)
    bad = copy.deepcopy(data)
    bad["stores"]["mlp_regression-adamw"]["optimizer"]["name"] = "adam"
    with pytest.raises(ParamsError, match="store keys are '<task>-<optimizer>'; expected 'mlp_regression-adam'"):
        parse_params(bad)
