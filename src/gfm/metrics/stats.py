"""Paired comparisons of two forecasters over dataset seeds, and the verdict on a claim "A/B < threshold".

Every store is generated for several dataset seeds, and every learned forecaster is fitted once per seed, so a
model's final-step weight MSE comes as one number per seed (``final_mse.per_seed`` in the evaluate metrics).
Two models scored on the same test runs of the same seed are *paired*: their per-seed MSEs share the seed's
data, runs and difficulty, and most of the seed-to-seed variation cancels in the ratio. The unit of
replication is the seed (one fit of each model on independent data); runs within a seed are not independent
replicates of the fit and are averaged first.

Method (:func:`paired_ratio`): per-seed ratios r_i = A_i / B_i; on their logs l_i = log r_i, the mean m, the
sample standard deviation s (ddof 1) and the Student t quantile with n - 1 degrees of freedom give the
two-sided ``level`` interval m ± t s / sqrt(n); the ratio and the interval are exp of those (the ratio is the
geometric mean of the per-seed ratios).

Why logs: an MSE is positive and a change of model scales it, so ratios are the natural effect size, and
ratios are multiplicative and skewed (0.5 and 2 are the same size of effect in opposite directions). On the
log scale they are additive and symmetric, the interval cannot cross 0 on the ratio scale, and "A is 30%
below B" is the one-sided statement log r < log 0.7. Assumption: the per-seed log ratios are independent draws
from a normal distribution (the t interval is robust to mild non-normality, not to a single wild seed; with
5 seeds the t quantile is 2.78, so an interval is wide unless the seeds agree). No correction is made for
testing many claims at once: at 95% roughly one interval in twenty misses the true ratio.

Verdict (:func:`verdict`) on the claim "ratio < threshold": ``met`` when the whole interval is below the
threshold, ``not met`` when the whole interval is at or above it, ``not resolved`` otherwise (the data cannot
tell). With fewer than two seeds there is no interval: ``ci`` is ``(nan, nan)`` (``null`` in JSON) and the
verdict is ``not resolved``. A zero, negative or non-finite MSE has no log ratio; the comparison is then not
computed, ``problem`` names the seed and the value, and the verdict is ``not resolved``.

Across machines the numbers are not bit-identical (float round-off differs between CPU kernels, and a trained
model amplifies it), so a verdict whose interval ends within ``tolerance`` (relative) of the threshold could
flip on another machine: such a verdict is ``unstable`` instead of ``met`` or ``not met``. The tolerance is
``report.tolerance`` in params.yaml, set from what was measured between two CPU kernels (README,
"Reproducibility").

The Student t quantile is computed here (exact closed-form CDF for integer degrees of freedom, inverted by
bisection), so this module needs only the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["PairedRatio", "paired_ratio", "verdict", "seeds_to_resolve", "t_quantile", "t_cdf", "METHOD"]

METHOD = ("paired over dataset seeds: geometric mean of the per-seed MSE ratios, {level:.0%} Student t interval "
          "on the log ratios (n - 1 degrees of freedom)")
NAN = float("nan")


@dataclass(frozen=True)
class PairedRatio:
    """A/B over paired seeds: ``ratio`` (geometric mean of ``per_seed``), its ``level`` interval ``ci`` (``(nan,
    nan)`` when n < 2 or when ``problem`` is set), and ``n`` seeds."""

    ratio: float
    ci: tuple[float, float]
    n: int
    per_seed: list[float] = field(default_factory=list)
    level: float = 0.95
    problem: str | None = None

    def to_json(self) -> dict:
        """Plain JSON (non-finite numbers as null)."""
        return {"ratio": _finite(self.ratio), "ci": [_finite(c) for c in self.ci], "n_seeds": self.n,
                "per_seed_ratios": [_finite(r) for r in self.per_seed], "level": self.level, "problem": self.problem}


def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def paired_ratio(a_per_seed: Sequence[float], b_per_seed: Sequence[float], level: float = 0.95, *,
                 seeds: Sequence | None = None) -> PairedRatio:
    """Ratio of A's to B's per-seed values (same seeds, same order) with a t interval on the log ratios.

    ``seeds`` (optional) labels the values in ``problem`` messages; default: their positions.

    Raises:
        ValueError: the two lists differ in length, or ``level`` is not in (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level: got {level!r}; expected a number in (0, 1)")
    a, b = [float(v) for v in a_per_seed], [float(v) for v in b_per_seed]
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: got {len(a)} and {len(b)} values")
    n = len(a)
    labels = [f"dataset seed {s}" for s in seeds] if seeds is not None and len(seeds) == n else [f"seed #{i}" for i in range(n)]
    for which, vals in (("A", a), ("B", b)):
        for i, v in enumerate(vals):
            if not math.isfinite(v) or v <= 0:
                what = "not finite" if not math.isfinite(v) else ("zero" if v == 0 else "negative")
                ratios = [x / y if y else NAN for x, y in zip(a, b)]
                return PairedRatio(NAN, (NAN, NAN), n, ratios, level,
                                   f"{labels[i]}: {which}'s MSE is {what} ({v!r}); no log ratio")
    if n == 0:
        return PairedRatio(NAN, (NAN, NAN), 0, [], level, "no seeds")
    logs = [math.log(x) - math.log(y) for x, y in zip(a, b)]
    ratios = [math.exp(v) for v in logs]
    m = math.fsum(logs) / n
    if n < 2:
        return PairedRatio(math.exp(m), (NAN, NAN), n, ratios, level, None)
    s = math.sqrt(math.fsum((v - m) ** 2 for v in logs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return PairedRatio(math.exp(m), (math.exp(m - half), math.exp(m + half)), n, ratios, level, None)


def verdict(ci: Sequence[float] | None, threshold: float, tolerance: float = 0.0) -> str:
    """``met`` / ``not met`` / ``not resolved`` for the claim "ratio < threshold" given the ratio's interval;
    ``unstable`` for a met / not met whose interval edge lies within ``tolerance`` (relative) of the threshold,
    where the round-off of another machine could flip it."""
    if ci is None or len(ci) != 2 or any(c is None or not math.isfinite(c) for c in ci):
        return "not resolved"
    low, high = float(ci[0]), float(ci[1])
    if high < threshold:
        return "met" if high * (1 + tolerance) < threshold else "unstable"
    if low >= threshold:
        return "not met" if low / (1 + tolerance) >= threshold else "unstable"
    return "not resolved"


def seeds_to_resolve(per_seed_ratios: Sequence[float], threshold: float, level: float = 0.95,
                     max_n: int = 1000) -> int | None:
    """How many dataset seeds a claim "ratio < threshold" would need to be resolved (met or not met), if the
    per-seed log ratios kept the mean and spread seen here: the smallest n with t_{n-1} s / sqrt(n) < |m - log
    threshold|. None when that never happens below ``max_n`` (the effect sits on the threshold), or fewer than
    two finite positive ratios were given. A planning number (is "more seeds" the cheap lever?), not a result.
    """
    logs = [math.log(r) for r in per_seed_ratios if isinstance(r, (int, float)) and math.isfinite(r) and r > 0]
    if len(logs) < 2 or threshold <= 0:
        return None
    m = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - m) ** 2 for x in logs) / (len(logs) - 1))
    gap = abs(m - math.log(threshold))
    if sd == 0:
        return len(logs) if gap > 0 else None

    def resolves(n: int) -> bool:
        return t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n) < gap

    # The half-width t_{n-1} s / sqrt(n) falls as n grows, so the smallest resolving n is found by bisection
    # (about 10 quantiles instead of one per n: the report asks this for every unresolved comparison).
    if max_n < 2 or not resolves(max_n):
        return None
    lo, hi = 2, max_n  # resolves(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if resolves(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1 (Abramowitz & Stegun 26.7.3-4, exact)."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df: got {df!r}; expected an integer >= 1")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: A = (2/pi)(theta + sin cos (1 + 2/3 c^2 + 2*4/(3*5) c^4 + ...))
        total, term = 0.0, 1.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:  # even: A = sin (1 + 1/2 c^2 + 1*3/(2*4) c^4 + ...)
        total, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        a = s * total
    a = min(max(a, 0.0), 1.0)  # A = P(|T| <= |t|)
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with integer ``df`` >= 1, to about 1e-12 relative (bisection on the
    angle atan(t / sqrt(df)), on which the CDF is monotone and bounded)."""
    if not 0 < p < 1:
        raise ValueError(f"p: got {p!r}; expected a number in (0, 1)")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(math.sqrt(df) * math.tan(mid), df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-16:
            break
    return math.sqrt(df) * math.tan((lo + hi) / 2)
