"""The optimizer rules, written once, against torch.optim and against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from gfm.config import ScheduleConfig
from gfm.optimizers import STATE_NAMES, init_state, lr_multiplier, update
from gfm.reference import torch_optimizer

HYPER = {
    "sgd": {"lr": 0.1, "weight_decay": 0.01},
    "momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    "adam": {"lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.001},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
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
