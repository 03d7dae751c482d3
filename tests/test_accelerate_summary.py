"""What the jump-ahead experiment reports (gfm.metrics.accelerate_summary), on loops whose answers are known by hand."""

from __future__ import annotations

import json
import math

import numpy as np

from gfm.metrics.accelerate_summary import best_by_validation, curve, summarise, why_not


def _loop(loss, seconds, accepted=0, rejected=0):
    loss = np.asarray(loss, dtype=float)
    return {"loss": loss, "seconds": np.broadcast_to(np.asarray(seconds, dtype=float), loss.shape),
            "accepted": np.full(len(loss), accepted), "rejected": np.full(len(loss), rejected),
            "jumped_steps": np.zeros(len(loss))}


def test_speedups_steps_and_wall_with_paired_intervals():
    # plain: loss falls 8, 4, 2, 1 over steps 0..3 (target 1, reached at step 3, 3 s); the jumping loop
    # reaches 1 at step 1 (one run) and step 3 (another), its clock 1.5 s per step (forecasts cost)
    plain = _loop([[8, 4, 2, 1], [8, 4, 2, 1]], [0, 1, 2, 3])
    loop = _loop([[8, 1, 1, 0.5], [8, 4, 2, 1]], [0, 1.5, 3, 4.5], accepted=1)
    m = summarise(plain, loop, budget=3, timing=True)
    assert m["plain_steps_to_target_mean"] == 3 and m["steps_to_target_mean"] == 2
    assert m["speedup_steps"] == 6 / 4
    # per-run step ratios 3 and 1: geometric mean sqrt(3), with an interval that is not resolved (2 runs)
    assert math.isclose(m["speedup_steps_paired"]["ratio"], math.sqrt(3))
    lo, hi = m["speedup_steps_paired"]["ci"]
    assert lo < 1 < hi and m["speedup_steps_paired"]["n_runs"] == 2
    # wall: run 0 reaches at 1.5 s (plain 3 s: 2x), run 1 at 4.5 s (plain 3 s: 2/3 x)
    assert math.isclose(m["speedup_wall"], 6 / 6) and math.isclose(m["speedup_wall_paired"]["ratio"], math.sqrt(4 / 3))
    assert m["worse_runs"] == 0 and m["no_worse_final"] == 1.0


def test_a_run_that_never_reaches_counts_the_whole_budget_and_its_clock():
    plain = _loop([[4, 2, 1]], [0, 1, 2])
    loop = _loop([[4, 3, 2]], [0, 5, 10], rejected=2)
    m = summarise(plain, loop, budget=2, timing=True)
    assert m["reached"] == 0 and m["steps_to_target_mean"] == 2 and m["seconds_to_target_mean"] == 10
    assert m["worse_runs"] == 1 and m["speedup_wall"] == 2 / 10
    assert "no jump was kept" in why_not(m, step_seconds=1.0)


def test_why_not_names_the_cost_when_forecasts_outweigh_the_steps_saved():
    plain = _loop([[8, 4, 2, 1]] * 3, [0, 1, 2, 3])
    loop = _loop([[8, 1, 1, 1]] * 3, [0, 4, 4, 4], accepted=1)
    m = summarise(plain, loop, budget=3, timing=True)
    m["jump_seconds_per_run"] = 3.5
    assert m["speedup_steps"] == 3 and m["speedup_wall"] < 1
    assert "saves 2 optimizer steps per run (about 2 s) but its forecasts and checks cost 3.5 s" in why_not(m, 1.0)
    # a loop that is faster with an interval above 1 needs no explanation
    fast = summarise(plain, _loop([[8, 1, 1, 1], [8, 1, 1, 1], [8, 2, 1, 1]], [0, 1.1, 1.9, 3], accepted=1),
                     budget=3, timing=True)
    assert fast["speedup_wall_paired"]["ci"][0] > 1 and why_not(fast, 1.0) is None


def test_curve_keeps_medians_at_evenly_spaced_steps():
    loop = _loop(np.arange(2 * 11, dtype=float).reshape(2, 11), np.arange(11) * 0.5)
    c = curve(loop, points=6)
    assert c["step"] == [0, 2, 4, 6, 8, 10]
    assert c["loss"] == [5.5, 7.5, 9.5, 11.5, 13.5, 15.5] and c["seconds"] == [0, 1, 2, 3, 4, 5]


def test_best_by_validation_reads_validation_scores_only(tmp_path):
    def summary(name, mse_by_seed):
        (tmp_path / name).mkdir()
        seeds = {s: {"val_weight_mse": {str(h): v for h, v in hv.items()}} for s, hv in mse_by_seed.items()}
        (tmp_path / name / "summary.json").write_text(json.dumps({"seeds": seeds}))

    summary("linear", {"1": {40: 0.2, 200: 0.4}, "2": {40: 0.2, 200: 0.4}})
    summary("gfm_function", {"1": {40: 0.1, 200: 0.1}, "2": {40: 0.1, 200: 0.3}})
    summary("wnn", {"1": {40: 0.01}, "2": {40: 0.01}})  # no score at 200: not comparable, left out
    best = best_by_validation(tmp_path, [40, 200], ["linear", "gfm_function", "wnn", "missing"])
    assert best["model"] == "gfm_function" and math.isclose(best["val_weight_mse"], 0.15)
    assert [name for name, _ in best["ranking"]] == ["gfm_function", "linear"]
    assert best_by_validation(tmp_path, [40, 200], ["missing"]) is None


def test_why_not_names_runs_that_end_worse_and_a_gain_short_of_the_goal():
    plain = _loop([[8, 4, 2, 1]] * 3, [0, 1, 2, 3])
    # twice as fast on every run, but one run ends above plain's final loss
    worse = summarise(plain, _loop([[8, 1, 1, 1], [8, 1, 1, 1], [8, 1, 1, 1.5]], [0, 1.5, 3, 4.5], accepted=1),
                      budget=3, timing=True)
    assert worse["worse_runs"] == 1 and worse["speedup_wall_paired"]["ci"][0] > 1
    assert why_not(worse, 1.0).startswith("it is 2.00x faster, but 1 of 3 runs ended with a higher held-out loss")
    # 1.2x faster on every run: resolved, but short of the goal
    slow = summarise(plain, _loop([[8, 4, 1, 1]] * 3, [0, 1.25, 2.5, 3.75], accepted=1), budget=3, timing=True)
    assert math.isclose(slow["speedup_wall_paired"]["ratio"], 1.2)
    assert why_not(slow, 1.0) == "it is 1.20x faster, short of the 1.3x goal"
