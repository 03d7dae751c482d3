"""Paired ratio statistics (gfm.metrics.stats) with known answers, and claims.json written by the report stage."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from conftest import TINY
from gfm.base.errors import ParamsError
from gfm.config import parse_params
from gfm.metrics.stats import paired_ratio, t_cdf, t_quantile, verdict
from gfm.report import summary as report

# two-sided 95% Student t quantiles t_{0.975, df} (any statistics table)
T975 = {1: 12.7062047362, 2: 4.30265272975, 3: 3.18244630528, 4: 2.7764451052, 9: 2.26215716280,
        29: 2.04522964213, 30: 2.04227245630, 120: 1.97993040505}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], rel=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-T975[df], rel=1e-9)
    assert t_cdf(T975[df], df) == pytest.approx(0.975, abs=1e-10)


def test_t_quantile_agrees_with_scipy_where_available():
    st = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 6, 7, 10, 17, 50, 333):
        for p in (0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
            assert t_quantile(p, df) == pytest.approx(float(st.t.ppf(p, df)), rel=1e-10, abs=1e-12)


def test_identical_values_give_ratio_one_and_a_zero_width_interval():
    r = paired_ratio([0.0139, 0.02, 0.5, 3.0, 1e-6], [0.0139, 0.02, 0.5, 3.0, 1e-6])
    assert r.ratio == 1.0 and r.ci == (1.0, 1.0) and r.n == 5 and r.problem is None
    # "0.0139 vs 0.0139" is not a win: A < B is not met; A <= 1.01 B is
    assert verdict(r.ci, 1.0) == "not met"
    assert verdict(r.ci, 1.01) == "met"


def test_interval_equals_a_hand_computed_t_interval():
    # log ratios with mean -0.3 and sample std 0.2 (ddof 1): -0.3 + 0.2 * z, sum(z) = 0, sum(z^2) = n - 1
    z = [-1.0, -0.5, 0.0, 0.5, 1.0]
    z = [v / math.sqrt(sum(w * w for w in z) / 4) for v in z]
    logs = [-0.3 + 0.2 * v for v in z]
    b = [0.01, 0.02, 0.05, 0.1, 0.3]
    a = [bi * math.exp(li) for bi, li in zip(b, logs)]
    r = paired_ratio(a, b)
    half = T975[4] * 0.2 / math.sqrt(5)
    assert r.ratio == pytest.approx(math.exp(-0.3), rel=1e-12)
    assert r.ci[0] == pytest.approx(math.exp(-0.3 - half), rel=1e-9)
    assert r.ci[1] == pytest.approx(math.exp(-0.3 + half), rel=1e-9)
    assert r.per_seed == pytest.approx([math.exp(v) for v in logs], rel=1e-12)
    # ratio is symmetric in A and B on the log scale
    inv = paired_ratio(b, a)
    assert inv.ratio == pytest.approx(1 / r.ratio) and inv.ci[0] == pytest.approx(1 / r.ci[1])


def test_a_different_level_widens_the_interval():
    a, b = [1.0, 2.0, 1.5, 1.2], [1.1, 1.9, 2.0, 1.6]
    r90, r99 = paired_ratio(a, b, 0.90), paired_ratio(a, b, 0.99)
    assert r99.ci[0] < r90.ci[0] < r90.ratio < r90.ci[1] < r99.ci[1]


def test_verdicts_win_loss_and_noise():
    seeds_b = [0.10, 0.20, 0.15, 0.12, 0.30]
    win = paired_ratio([0.5 * b * f for b, f in zip(seeds_b, [1.0, 1.05, 0.95, 1.02, 0.98])], seeds_b)
    assert win.ci[1] < 0.7 and verdict(win.ci, 0.7) == "met"
    loss = paired_ratio([1.5 * b * f for b, f in zip(seeds_b, [1.0, 1.05, 0.95, 1.02, 0.98])], seeds_b)
    assert verdict(loss.ci, 1.0) == "not met" and verdict(loss.ci, 0.7) == "not met"
    noise = paired_ratio([b * f for b, f in zip(seeds_b, [0.7, 1.4, 0.9, 1.2, 0.8])], seeds_b)
    assert noise.ci[0] < 1 < noise.ci[1] and verdict(noise.ci, 1.0) == "not resolved"
    # the claim's threshold decides, not the point estimate: ratio 0.65 with a wide interval is not resolved at 0.7
    wide = paired_ratio([0.65 * b * f for b, f in zip(seeds_b, [0.6, 1.5, 0.9, 1.3, 0.8])], seeds_b)
    assert wide.ratio < 0.7 and verdict(wide.ci, 0.7) == "not resolved"


def test_one_seed_has_no_interval():
    r = paired_ratio([0.1], [0.2])
    assert r.ratio == pytest.approx(0.5) and all(math.isnan(c) for c in r.ci) and r.n == 1
    assert verdict(r.ci, 1.0) == "not resolved"
    assert r.to_json()["ci"] == [None, None]
    assert paired_ratio([], []).problem == "no seeds"


@pytest.mark.parametrize("bad, word", [(0.0, "zero"), (float("nan"), "not finite"), (float("inf"), "not finite"),
                                       (-1.0, "negative")])
def test_unusable_values_are_named_and_unresolved(bad, word):
    r = paired_ratio([0.1, bad, 0.2], [0.1, 0.1, 0.1], seeds=[1, 2, 3])
    assert r.problem is not None and "dataset seed 2" in r.problem and word in r.problem and "A's" in r.problem
    assert math.isnan(r.ratio) and verdict(r.ci, 10.0) == "not resolved"
    assert json.loads(json.dumps(r.to_json(), allow_nan=False))["ratio"] is None
    r = paired_ratio([0.1, 0.1], [0.1, bad])
    assert "seed #1" in r.problem and "B's" in r.problem


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="same seeds"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="level"):
        paired_ratio([1.0, 2.0], [1.0, 2.0], level=95)
    assert verdict(None, 1.0) == verdict([float("nan"), 1.0], 1.0) == verdict([None, None], 1.0) == "not resolved"


# ---- claims.json from the report stage, on a synthetic metrics dict -----------------------------------------

def _store_metrics(store: str, finals: dict[str, list[float]], seeds=(1, 2, 3, 4, 5)) -> dict:
    def ms(v):
        m = sum(v) / len(v)
        return {"mean": m, "std": math.sqrt(sum((x - m) ** 2 for x in v) / len(v)), "n": len(v)}
    task, opt = store.split("-")
    return {"store": store, "task": task, "optimizer": opt, "dataset_seeds": list(seeds),
            "models": {n: {"final_mse": {**ms(v), "per_seed": v}} for n, v in finals.items()}}


def _claims_params(claims: list[dict]):
    doc = yaml.safe_load(TINY.read_text())
    doc["report"]["claims"] = claims
    return parse_params(doc)


def test_claims_json_has_the_required_fields(tmp_path):
    params = _claims_params([
        {"model": "gfm", "baseline": "lstm", "threshold": 0.7, "text": "gfm ≥ 30% below lstm"},
        {"model": "gfm", "baseline": "transformer", "threshold": 1.0},
        {"model": "gfm", "baseline": "gfm_plain", "threshold": 1.0, "text": "gfm better than gfm_plain"},
    ])
    lstm = [0.10, 0.20, 0.15, 0.12, 0.30]
    metrics = {
        "mlp_regression-sgd": _store_metrics("mlp_regression-sgd", {
            "gfm": [0.5 * v for v in lstm], "lstm": lstm, "transformer": [0.5 * v * f for v, f in
                                                                            zip(lstm, [0.7, 1.4, 0.9, 1.2, 0.8])]}),
        "mlp_regression-adam": _store_metrics("mlp_regression-adam", {"gfm": lstm, "lstm": lstm}),
        "least_squares_1d_gd-sgd": _store_metrics("least_squares_1d_gd-sgd", {"gfm": lstm, "lstm": lstm}),
    }
    rows = report.claims(params, metrics)
    path = tmp_path / "claims.json"
    report.write_claims(path, rows)
    saved = json.loads(path.read_text())  # strict JSON: no NaN
    assert len(saved) == 6  # 3 claims x the 2 stores of target_task
    required = {"store", "claim", "model", "baseline", "threshold", "ratio", "ci", "n_seeds", "verdict",
                "per_seed_ratios", "note", "method", "dataset_seeds"}
    for row in saved:
        assert required <= set(row)
    by = {(r["store"], r["baseline"]): r for r in saved}
    win = by[("mlp_regression-sgd", "lstm")]
    assert win["claim"] == "gfm ≥ 30% below lstm" and win["verdict"] == "met" and win["n_seeds"] == 5
    assert win["ratio"] == pytest.approx(0.5) and win["ci"] == pytest.approx([0.5, 0.5])
    assert win["per_seed_ratios"] == pytest.approx([0.5] * 5) and win["dataset_seeds"] == [1, 2, 3, 4, 5]
    noisy = by[("mlp_regression-sgd", "transformer")]
    assert noisy["verdict"] == "not resolved" and noisy["ci"][0] < 1 < noisy["ci"][1]
    assert noisy["claim"] == "gfm final MSE / transformer < 1"  # default text
    tie = by[("mlp_regression-adam", "lstm")]
    assert tie["verdict"] == "not met" and tie["ratio"] == 1.0  # equal means are not a win
    skipped = by[("mlp_regression-sgd", "gfm_plain")]
    assert skipped["verdict"] == "skipped" and "gfm_plain not trained" in skipped["note"]
    assert skipped["ratio"] is None and skipped["ci"] == [None, None]

    block = "\n".join(report.results_block(params, metrics | {}))
    assert "0.5 [0.5, 0.5]" in block and "not resolved" in block and "t interval on the log ratios" in block
    section = "\n".join(report.paired_section(params, metrics))
    assert "### mlp_regression-sgd" in section and "(best other)" in section


def test_claims_are_validated_in_params():
    with pytest.raises(ParamsError, match=r"report.claims\[0\].baseline: got 'nope'"):
        _claims_params([{"model": "gfm", "baseline": "nope", "threshold": 0.7}])
    with pytest.raises(ParamsError, match=r"report.claims\[0\].threshold: got 0.0; expected a value > 0"):
        _claims_params([{"model": "gfm", "baseline": "lstm", "threshold": 0}])
    with pytest.raises(ParamsError, match=r"report.claims\[0\].baseline: got 'gfm'; a claim compares two"):
        _claims_params([{"model": "gfm", "baseline": "gfm", "threshold": 1}])


def test_seeds_to_resolve_matches_the_t_interval_it_promises():
    import math

    from gfm.metrics.stats import seeds_to_resolve, t_quantile

    ratios = [0.9, 0.95, 0.85, 1.0, 0.92]  # mean log about -0.08, not resolved against 1 with 5 seeds
    n = seeds_to_resolve(ratios, 1.0)
    logs = [math.log(r) for r in ratios]
    m = sum(logs) / 5
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / 4)
    assert n is not None and t_quantile(0.975, n - 1) * sd / math.sqrt(n) < abs(m)
    assert t_quantile(0.975, n - 2) * sd / math.sqrt(n - 1) >= abs(m) or n == 2
    assert seeds_to_resolve([1.0, 1.0], 1.0) is None  # on the threshold: never
    assert seeds_to_resolve([0.5], 1.0) is None  # one seed: no spread to plan with


def test_a_verdict_within_the_tolerance_of_its_threshold_is_unstable():
    """Another machine's round-off moves a headline number by up to ``tolerance`` (relative): an interval that
    ends closer than that to the threshold cannot call the claim met or not met."""
    assert verdict((0.5, 0.62), 0.7, 0.1) == "met"              # 0.682 < 0.7
    assert verdict((0.5, 0.65), 0.7, 0.0) == "met"
    assert verdict((0.5, 0.65), 0.7, 0.1) == "unstable"         # 0.715 >= 0.7: another CPU could end above it
    assert verdict((0.72, 0.9), 0.7, 0.1) == "unstable"         # 0.72 / 1.1 = 0.655 < 0.7
    assert verdict((0.78, 0.9), 0.7, 0.1) == "not met"          # 0.709 >= 0.7
    assert verdict((0.6, 0.8), 0.7, 0.1) == "not resolved"      # straddles: the seeds cannot tell, whatever the CPU
    assert verdict((float("nan"), 0.5), 0.7, 0.1) == "not resolved"
