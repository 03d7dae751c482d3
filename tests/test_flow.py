"""The flow-matching core against analytic oracles: path, sampler, fields, optimizer-aware velocity."""

from __future__ import annotations

import pytest
import torch

from gfm.core.optimizers import STATE_NAMES, init_state, update
from gfm.flow import (
    SOLVERS,
    CoordinateField,
    JointField,
    PiecewiseLinearPath,
    bound,
    optimizer_velocity,
    sample,
    sample_segments,
)

# --- path ------------------------------------------------------------------------------------------------


def test_interpolant_and_target_velocity_are_exact_on_a_hand_built_trajectory():
    w = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 2.0]]])  # (run, record, param), records 0.5 apart
    path = PiecewiseLinearPath(0.5)
    ps = path.sample(w, torch.tensor([1, 0]), torch.tensor([0.25, 0.5]), runs=torch.tensor([0, 0]))
    torch.testing.assert_close(ps.x_t, torch.tensor([[1.5, 2.0], [0.5, 1.0]]), rtol=0, atol=0)
    torch.testing.assert_close(ps.dx_t, torch.tensor([[4.0, 0.0], [2.0, 4.0]]), rtol=0, atol=0)
    torch.testing.assert_close(ps.t, torch.tensor([0.625, 0.25]), rtol=0, atol=0)
    torch.testing.assert_close(ps.x_0, w[0, [1, 0]], rtol=0, atol=0)
    torch.testing.assert_close(ps.x_1, w[0, [2, 1]], rtol=0, atol=0)


def test_velocity_integrates_back_to_the_records():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 6, 4, generator=g).cumsum(1)
    path = PiecewiseLinearPath(0.2)
    k = torch.arange(5)
    ps = path.sample(w, k, torch.zeros(5), runs=torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(w[0, 0] + (ps.dx_t * 0.2).cumsum(0), w[0, 1:], rtol=1e-6, atol=1e-6)


def test_gaussian_path_widens_inputs_but_not_the_target():
    w = torch.zeros(1, 3, 20000)
    w[0, 1] = 1.0
    path = PiecewiseLinearPath(0.1, sigma=0.3)
    ps = path.sample(w, torch.tensor([0]), torch.tensor([0.5]), generator=torch.Generator().manual_seed(1))
    noise = ps.x_t - 0.5
    assert abs(float(noise.std()) - 0.3) < 0.01 and abs(float(noise.mean())) < 0.01
    torch.testing.assert_close(ps.dx_t, torch.full_like(ps.dx_t, 10.0))


def test_segment_sampling_modes_and_errors():
    k, om = sample_segments(500, 3, 7, generator=torch.Generator().manual_seed(0))
    assert int(k.min()) == 3 and int(k.max()) == 7 and 0 <= float(om.min()) and float(om.max()) < 1
    _, om = sample_segments(10, 0, 2, mode="grid")
    assert torch.equal(om, torch.zeros(10))
    with pytest.raises(ValueError, match="unknown time sampling 'sobol'; expected one of uniform, grid"):
        sample_segments(3, 0, 2, mode="sobol")
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        PiecewiseLinearPath(0.1, sigma=-1)


# --- sampler ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", SOLVERS)
def test_constant_velocity_is_integrated_exactly(method):
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 3.0]], dtype=torch.float64)
    grid = torch.tensor([0.1, 0.35, 1.0], dtype=torch.float64)
    xs = sample(lambda x, t: v.expand_as(x), x0, time_grid=grid, method=method, step_size=0.05)
    torch.testing.assert_close(xs, x0 + (grid - 0.1).view(-1, 1, 1) * v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method,tol", [("rk4", 1e-12), ("dopri5", 1e-6), ("midpoint", 1e-12)])
def test_polynomial_velocity_matches_its_closed_form(method, tol):
    # dx/dt = 3 t^2 -> x(t) = t^3: exact for rk4 (Simpson), within tolerance for dopri5; the midpoint rule's
    # error is known in closed form, -t h^2 / 4 (each step misses h^3 f'' / 24 = h^3 / 4)
    grid = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    h = 0.1
    xs = sample(lambda x, t: 3 * t**2 * torch.ones_like(x), torch.zeros(1, dtype=torch.float64), time_grid=grid,
                method=method, step_size=h, rtol=1e-9, atol=1e-11)
    expected = grid**3 - (grid * h**2 / 4 if method == "midpoint" else 0)
    torch.testing.assert_close(xs[:, 0], expected, rtol=tol, atol=tol)


def test_euler_takes_exactly_one_step_per_interval_on_float32_times():
    calls = []

    def field(x, t):
        calls.append(float(t))
        return torch.ones_like(x)

    m = 200
    grid = torch.tensor([20 / m, 40 / m, 200 / m], dtype=torch.float32)  # times that are not exact in binary
    xs = sample(field, torch.zeros(3), time_grid=grid, method="euler", step_size=1 / m)
    assert len(calls) == 180, f"{len(calls)} field evaluations for 180 steps"
    torch.testing.assert_close(xs[:, 0], grid - grid[0], rtol=1e-5, atol=1e-6)


def test_tuple_state_cond_and_final_only():
    def field(x, t, *, rate):
        a, b = x
        return (rate * b, -rate * a)  # rotation

    x0 = (torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    a, b = sample(field, x0, time_grid=torch.tensor([0.0, 1.0], dtype=torch.float64), method="rk4",
                  step_size=1e-3, return_intermediates=False, rate=torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(a, torch.full((2,), torch.cos(torch.tensor(2.0)).item(), dtype=torch.float64))
    torch.testing.assert_close(b, torch.full((2,), -torch.sin(torch.tensor(2.0)).item(), dtype=torch.float64))


def test_unknown_solver_and_bad_grid_are_clear_errors():
    f = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="unknown solver 'leapfrog'; expected one of euler, midpoint, rk4, dopri5"):
        sample(f, torch.ones(1), time_grid=torch.tensor([0.0, 1.0]), method="leapfrog")
    with pytest.raises(ValueError, match="strictly increasing"):
        sample(f, torch.ones(1), time_grid=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="step_size must be > 0"):
        sample(f, torch.ones(1), time_grid=torch.tensor([0.0, 1.0]), step_size=0.0)


# --- fields ----------------------------------------------------------------------------------------------


@torch.no_grad()
def test_coordinate_field_is_size_independent_and_bounded():
    torch.manual_seed(0)
    field = CoordinateField(5, 2, width=16, depth=2, n_pool=5, limit=2.0, zero_init=False)
    n_weights = sum(p.numel() for p in field.parameters())
    for n_params in (7, 300):
        feats = 100 * torch.randn(3, n_params, 5)
        out = field(feats, torch.randn(3, 2), feats)
        assert out.shape == (3, n_params, 1) and float(out.abs().max()) < 2.0
    assert sum(p.numel() for p in field.parameters()) == n_weights
    # weight sharing: permuting the parameters permutes the output (the pooled context is symmetric)
    feats = torch.randn(1, 9, 5)
    perm = torch.randperm(9)
    run = torch.randn(1, 2)
    torch.testing.assert_close(field(feats, run, feats)[:, perm], field(feats[:, perm], run, feats[:, perm]))


def test_zero_init_field_starts_at_zero_and_joint_field_checks_its_size():
    coord = CoordinateField(4, 0, width=8, depth=1)
    assert torch.equal(coord(torch.randn(2, 5, 4), torch.zeros(2, 0)), torch.zeros(2, 5, 1))
    joint = JointField(6, 4, 1, width=8, depth=1)
    assert joint(torch.randn(2, 6, 4), torch.randn(2, 1)).shape == (2, 6, 1)
    with pytest.raises(ValueError, match="joint field built for 6 parameters, got 5"):
        joint(torch.randn(2, 5, 4), torch.randn(2, 1))
    assert torch.allclose(bound(torch.tensor([1e-4, 1e6]), 5.0), torch.tensor([1e-4, 5.0]))


# --- optimizer-aware velocity ----------------------------------------------------------------------------

HP = {
    "sgd": {"lr": 0.05, "weight_decay": 0.01},
    "momentum": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.0},
    "rmsprop": {"lr": 0.01, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0},
    "adam": {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
    "nesterov": {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.01},
    "adamw": {"lr": 0.02, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1},
}


def _quadratic(R: int, P: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(P, P, generator=g, dtype=torch.float64)
    A = q @ q.T / P + 0.5 * torch.eye(P, dtype=torch.float64)
    c = torch.randn(P, generator=g, dtype=torch.float64)
    w0 = torch.randn(R, P, generator=g, dtype=torch.float64)
    return A, c, w0


@pytest.mark.parametrize("name", sorted(STATE_NAMES))
def test_euler_at_one_over_m_reproduces_the_optimizer_exactly_with_the_true_gradient(name):
    R, P, m, K = 4, 5, 60, 10
    A, c, w = _quadratic(R, P, 3)
    hp = {k: torch.full((R, 1), v, dtype=torch.float64) for k, v in HP[name].items()}

    def grad(x):
        return (x - c) @ A

    # the optimizer's own discrete trajectory
    state = init_state(name, w)
    traj, states = [w], [state]
    for k in range(m):
        w, state = update(name, w, grad(w), state, hp, k + 1)
        traj.append(w)
        states.append(state)

    names = STATE_NAMES[name]

    def field(y, t):
        x, *st = y
        v, ds = optimizer_velocity(name, x, grad(x), dict(zip(names, st)), hp, n=torch.round(t * m) + 1, m=m)
        return (v, *(ds[n] for n in names))

    horizons = [20, 45, 60]
    grid = torch.tensor([K / m] + [h / m for h in horizons], dtype=torch.float64)
    y0 = (traj[K], *(states[K][n] for n in names))
    out = sample(field, y0, time_grid=grid, method="euler", step_size=1 / m)
    for i, h in enumerate(horizons):
        torch.testing.assert_close(out[0][i + 1], traj[h], rtol=1e-9, atol=1e-11)
        for j, n in enumerate(names):
            torch.testing.assert_close(out[1 + j][i + 1], states[h][n], rtol=1e-9, atol=1e-11)
    assert float((traj[-1] - traj[K]).abs().max()) > 1e-2  # the runs actually moved


def test_structured_sgd_field_is_the_scaled_negative_gradient():
    w, g = torch.randn(3, 4), torch.randn(3, 4)
    v, ds = optimizer_velocity("sgd", w, g, {}, {"lr": torch.full((3, 1), 0.1)}, n=1, m=200)
    torch.testing.assert_close(v, -200 * 0.1 * g, rtol=1e-5, atol=1e-5)
    assert ds == {}
