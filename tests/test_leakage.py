"""No leakage between the generalisation stores, nor between a run's training and held-out samples.

gfm.stages.runs draws each run's data, initial weights and minibatch order from streams that depend on the task's
name. Without it, run i of a generalisation target (a task that differs from the source by one setting) would
reuse the data and batch order of source run i -- maybe a run the source forecaster was fitted on -- and an
init-scale target would start from an exact scaled copy of its weights. These checks rebuild runs with
``setup_run`` (no generation needed): every target *test* run (as the split fractions give them) against every
run of the source store with the same dataset seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from gfm.config import load_params
from gfm.stages import accelerate, runs
from gfm.stages.runs import RunId, run_ids, setup_run
from gfm.stages.split import make_split
from gfm.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = load_params(ROOT / "params.yaml")
PAIRS = [(p.source, p.target) for p in DEFAULT.generalize.pairs]
COS_MAX = 0.999  # |cosine| of two initial weight vectors above this = the same init up to a scale


def _digest(t: torch.Tensor) -> bytes:
    return hashlib.sha1(t.contiguous().numpy().tobytes()).digest()


def _test_runs(params, task_cfg, seed: int) -> list[int]:
    """Indices (within dataset ``seed``) of the test runs, as gfm.stages.split assigns them."""
    ids = run_ids([seed], task_cfg.runs_per_dataset)
    sp = make_split(np.array([r.dataset_seed for r in ids]), np.array([r.index for r in ids]),
                    np.zeros(len(ids), dtype=bool), params.split)
    return sp["datasets"][str(seed)]["test"]


def _setups(params, store: str, seed: int, indices) -> tuple[object, list]:
    spec, task_cfg = params.lookup_store(store)
    task = make_task(task_cfg)
    return task, [setup_run(task, spec.optimizer, params.seed, RunId(seed, int(i)), task_name=spec.task)
                  for i in indices]


def _first_layer(task, w: torch.Tensor) -> torch.Tensor:
    p = task.layout[0]
    return w[p.offset : p.offset + p.size].view(p.shape)


def _abs_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|cos| between each row of a (m, k) and each row of b (n, k): (m, n)."""
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    return (a @ b.T).abs()


def leaks(params, source: str, target: str, seeds, source_runs=None, target_runs=None) -> list[str]:
    """Every way a target test run shares something with a source run of the same dataset seed."""
    found = []
    _, s_cfg = params.lookup_store(source)
    _, t_cfg = params.lookup_store(target)
    for d in seeds:
        s_task, src = _setups(params, source, d, range(s_cfg.runs_per_dataset) if source_runs is None else source_runs)
        t_task, tgt = _setups(params, target, d, _test_runs(params, t_cfg, d) if target_runs is None else target_runs)
        # data: a sample is an (input, label) row; also the run's data set as a whole
        rows = {_digest(torch.cat([xi.flatten(), yi.flatten().float()])) for s in src for xi, yi in zip(s.x, s.y)}
        sets = {_digest(torch.cat([s.x.flatten(), s.y.flatten().float()])): s.run.index for s in src}
        # batch order: every epoch's permutation
        perms = {_digest(p): s.run.index for s in src for p in s.orders}
        for t in tgt:
            tag = f"{target} seed {d} run {t.run.index}"
            key = _digest(torch.cat([t.x.flatten(), t.y.flatten().float()]))
            if key in sets:
                found.append(f"{tag}: same data set as {source} run {sets[key]}")
            shared = sum(_digest(torch.cat([xi.flatten(), yi.flatten().float()])) in rows for xi, yi in zip(t.x, t.y))
            if shared:
                found.append(f"{tag}: {shared} (x, y) samples also in {source} runs")
            same = {perms[_digest(p)] for p in t.orders if _digest(p) in perms}
            if same:
                found.append(f"{tag}: minibatch order shared with {source} runs {sorted(same)[:5]}")
        # initial weights up to a scale: whole vectors where shapes match, else the overlapping first-layer slice
        if s_task.n_params == t_task.n_params:
            cos = _abs_cos(torch.stack([t.w0 for t in tgt]), torch.stack([s.w0 for s in src]))
            what = "w0"
        else:
            fs = [_first_layer(s_task, s.w0) for s in src]
            ft = [_first_layer(t_task, t.w0) for t in tgt]
            cut = tuple(slice(0, min(a, b)) for a, b in zip(fs[0].shape, ft[0].shape))
            cos = _abs_cos(torch.stack([f[cut].flatten() for f in ft]), torch.stack([f[cut].flatten() for f in fs]))
            what = "first-layer slice of w0"
        for i, j in zip(*np.nonzero((cos >= COS_MAX).numpy())):
            found.append(f"{target} seed {d} run {tgt[i].run.index}: {what} parallel to {source} run "
                         f"{src[j].run.index} (|cos| {float(cos[i, j]):.6f})")
    return found


@pytest.mark.parametrize("source, target", PAIRS, ids=[t for _, t in PAIRS])
def test_generalize_targets_share_nothing_with_their_source(source, target):
    """Every target test run vs every source run (train, val and test) of the same dataset seed."""
    assert DEFAULT.lookup_store(source)[0].task != DEFAULT.lookup_store(target)[0].task
    found = leaks(DEFAULT, source, target, DEFAULT.generate.dataset_seeds)
    assert not found, "\n".join(found[:20])


def test_the_checks_catch_the_old_leak(monkeypatch):
    """With the task left out of the streams (the old behaviour), the same checks find the leaks: the test has
    teeth. Init-scale target: same data, batch order and a scaled copy of w0; wider target: same data and batch
    order, and its first-layer weights begin with the source's."""
    monkeypatch.setattr(runs, "task_key", lambda name: 0)
    x2 = leaks(DEFAULT, "mlp_regression-sgd", "mlp_regression_x2-sgd", [1], source_runs=range(8),
               target_runs=range(3))
    for i in range(3):
        assert any(f"run {i}: same data set as mlp_regression-sgd run {i}" in f for f in x2)
        assert any(f"run {i}: minibatch order shared" in f for f in x2)
        assert any(f"run {i}: w0 parallel to mlp_regression-sgd run {i} (|cos| 1.000000)" in f for f in x2)
    w20 = leaks(DEFAULT, "mlp_regression-sgd", "mlp_regression_w20-sgd", [1], source_runs=range(8),
                target_runs=range(3))
    assert any("run 2: first-layer slice of w0 parallel to mlp_regression-sgd run 2" in f for f in w20)
    assert any("run 2: same data set" in f for f in w20)


def test_optimizers_of_one_task_still_share_runs():
    """Paired comparison of optimizers: the stores of one task see the same data, init and batch order."""
    _, a = _setups(DEFAULT, "mlp_regression-sgd", 1, range(3))
    _, b = _setups(DEFAULT, "mlp_regression-adam", 1, range(3))
    for sa, sb in zip(a, b):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y) and torch.equal(sa.w0, sb.w0)
        assert torch.equal(sa.orders, sb.orders)


def test_task_key_is_stable():
    # sha256("mlp_regression")[:4] little-endian: fixed forever (a change would silently regenerate every store)
    assert runs.task_key("mlp_regression") == int.from_bytes(hashlib.sha256(b"mlp_regression").digest()[:4], "little")
    assert runs.task_key("mlp_regression") != runs.task_key("mlp_regression_x2")
    with pytest.raises(ValueError):
        runs.task_key("")


@pytest.mark.parametrize("store", sorted(DEFAULT.accelerate.stores))
def test_accelerate_holdout_is_never_training_data(store):
    """The accelerate stage's held-out samples (accelerate.holdout per run, deciding whether a jump is kept, and
    accelerate.measure per run, on which the reported loss is measured): disjoint segments of the run's data
    stream -- rows n..n+h and n+h..n+h+m of one draw of the task, after the n training rows -- that share no
    sample with the training rows, with each other, nor with the stored run's training data, and never enter a
    minibatch."""
    spec, task_cfg = DEFAULT.lookup_store(store)
    acc = DEFAULT.accelerate
    n, h, m = task_cfg.n_samples, acc.holdout, acc.measure
    for d in DEFAULT.generate.dataset_seeds:
        ids = [RunId(d, i) for i in _test_runs(DEFAULT, task_cfg, d)[: acc.runs or None]]
        data = accelerate.setup_runs(task_cfg, spec.optimizer, DEFAULT.seed, ids, holdout=h,
                                     budget=acc.budget or task_cfg.steps, task_name=spec.task, measure=m)
        assert data["x"].shape[1] == n and data["xh"].shape[1] == h and data["xm"].shape[1] == m
        # one draw of n + h + m samples from the run's data stream: training = its first n, then h held out to
        # decide jumps, then m held out to measure
        pool_task = make_task(__import__("dataclasses").replace(task_cfg, n_samples=n + h + m))
        _, stored = _setups(DEFAULT, store, d, [r.index for r in ids])
        for k, r in enumerate(ids):
            pool = setup_run(pool_task, spec.optimizer, DEFAULT.seed, r, task_name=spec.task)
            assert torch.equal(data["x"][k], pool.x[:n]) and torch.equal(data["xh"][k], pool.x[n:n + h])
            assert torch.equal(data["xm"][k], pool.x[n + h:])
            held = {_digest(torch.cat([xi.flatten(), yi.flatten().float()])) for xi, yi in zip(data["xh"][k], data["yh"][k])}
            measured = {_digest(torch.cat([xi.flatten(), yi.flatten().float()])) for xi, yi in zip(data["xm"][k], data["ym"][k])}
            assert len(held) == h and len(measured) == m, "duplicate held-out samples"
            assert not held & measured, f"{store} {r}: a sample both decides jumps and measures them"
            held = held | measured
            for name, xs, ys in (("accelerate training", data["x"][k], data["y"][k]),
                                 ("stored run's training", stored[k].x, stored[k].y)):
                shared = [i for i, (xi, yi) in enumerate(zip(xs, ys))
                          if _digest(torch.cat([xi.flatten(), yi.flatten().float()])) in held]
                assert not shared, f"{store} {r}: held-out samples are {name} rows {shared[:5]}"
            # inputs alone too (a held-out image must be a different image, whatever its label)
            inputs = {_digest(xi) for xi in data["x"][k]}
            assert not any(_digest(xi) in inputs for xi in torch.cat([data["xh"][k], data["xm"][k]]))
        # minibatches index training rows only
        if data["orders"].numel():
            assert int(data["orders"].max()) == n - 1 and int(data["orders"].min()) == 0
