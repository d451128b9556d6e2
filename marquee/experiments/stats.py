"""Statistics of online experiments: planning, comparisons, CUPED, sample ratio, interleaving.

Plain numpy/scipy. The unit is the **user** (the unit of randomisation): event-level data must
first be aggregated per user (a ratio metric's numerator and denominator, a mean metric's value),
so that users, not events, are the independent draws. Arms are independent samples.

* Intervals are two-sided normal (Wald) intervals at ``level`` and p-values two-sided normal
  p-values: the arms of an online experiment hold thousands of users, where Welch's t and the
  normal agree to the third decimal.
* Ratio metrics (watches per impression) use the delta method on the per-user aggregates:
  ``R = sum(num) / sum(den)`` and ``Var(R) ~= Var(L) / n`` with the linearised metric
  ``L_i = (num_i - R den_i) / mean(den)`` (:func:`linearise`).
* CUPED subtracts ``theta (x_i - mean(x))`` of a pre-period covariate ``x`` from each user's
  metric; ``theta`` is pooled over the arms. The estimate stays unbiased (the covariate is the
  same in expectation in every arm) and its variance shrinks by about ``1 - rho^2``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

DEFAULT_LEVEL = 0.95
SRM_THRESHOLD = 0.001


def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r} (0.95 for a 95% interval)")
    return float(stats.norm.ppf(0.5 + level / 2.0))


def _p_two_sided(estimate: float, se: float) -> float:
    """Two-sided normal p-value of ``estimate / se``; with ``se == 0`` 1 for a zero estimate,
    else 0 (every user agrees: no sampling noise is left)."""
    if se == 0.0:
        return 1.0 if estimate == 0.0 else 0.0
    return float(2.0 * stats.norm.sf(abs(estimate) / se))


def _array(values, name: str, min_size: int = 2) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected one value per user (1-d), got shape {a.shape}")
    if len(a) < min_size:
        raise ValueError(
            f"{name}: {len(a)} user(s); a variance needs at least {min_size}. Run the experiment "
            "longer or check that its users were logged.")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite value(s)")
    return a


# ----------------------------------------------------------------------------- planning


def users_per_arm_for_mean(
    mean: float, sd: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm to detect a relative change ``mde_relative`` of a per-user metric.

    Two-sided two-sample z-test with equal arms and the same per-user standard deviation ``sd``
    in both: ``n = 2 (z_{1-alpha/2} + z_{power})^2 sd^2 / (mde_relative * mean)^2``, rounded up
    (statsmodels' ``NormalIndPower`` with ``effect_size = mde_relative * mean / sd``). For a ratio
    metric planned from a log, ``mean`` is the ratio and ``sd`` the standard deviation of the
    per-user linearised metric (``linearise(num, den).std(ddof=1)``).
    """
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    if not sd > 0.0 or not math.isfinite(sd):
        raise ValueError(f"sd must be a positive number, got {sd!r}")
    effect = abs(mde_relative * mean)
    if not effect > 0.0 or not math.isfinite(effect):
        raise ValueError(
            f"the detectable effect mde_relative * mean = {mde_relative!r} * {mean!r} must be "
            "non-zero (0.01 for a 1% relative lift)")
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    return math.ceil(2.0 * (z * sd / effect) ** 2)


def users_per_arm(
    baseline_rate: float, mde_relative: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm to detect a relative lift ``mde_relative`` of a proportion-like metric.

    The per-user standard deviation is the baseline's, ``sqrt(p (1 - p))`` (one Bernoulli draw
    per user), in both arms. A watch-through rate of 0.25 with a 1% relative lift (0.25 ->
    0.2525), alpha 0.05 and power 0.8 needs 470,933 users per arm; at p = 0.1 it takes 1.41M and
    at p = 0.5 157K. Using each arm's own variance (``p1 q1 + p2 q2``) would add 0.3%, the
    arcsine effect size (``proportion_effectsize``) about as much.
    """
    if not 0.0 < baseline_rate < 1.0:
        raise ValueError(
            f"baseline_rate must be in (0, 1), got {baseline_rate!r}; for a metric that is no "
            "proportion use users_per_arm_for_mean with its per-user sd")
    sd = math.sqrt(baseline_rate * (1.0 - baseline_rate))
    return users_per_arm_for_mean(baseline_rate, sd, mde_relative, alpha, power)


# ----------------------------------------------------------------------------- comparisons


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Treatment against control on one metric.

    Attributes:
      control, treatment: the arms' estimates (a mean per user, or a ratio).
      difference: ``treatment - control``, with its standard error ``se``, interval
        ``[ci_low, ci_high]`` at ``level`` and two-sided p-value.
      relative: ``difference / control`` (nan when control is 0), with its delta-method interval
        (``Var(t/c) ~= Var(t)/c^2 + t^2 Var(c)/c^4``).
      n_control, n_treatment: users in each arm.
    """

    control: float
    treatment: float
    difference: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    relative: float
    relative_ci_low: float
    relative_ci_high: float
    n_control: int
    n_treatment: int
    level: float = DEFAULT_LEVEL

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def compare_estimates(
    control: float, var_control: float, n_control: int,
    treatment: float, var_treatment: float, n_treatment: int,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """A :class:`Comparison` from two independent estimates and their sampling variances (the
    variance of the estimate, e.g. ``s^2 / n``, not of the per-user values)."""
    z = _z(level)
    diff = treatment - control
    se = math.sqrt(var_control + var_treatment)
    if control != 0.0:
        rel = treatment / control - 1.0
        rel_se = math.sqrt(var_treatment / control**2 + treatment**2 * var_control / control**4)
    else:
        rel = rel_se = math.nan
    return Comparison(
        control=float(control), treatment=float(treatment), difference=float(diff), se=se,
        ci_low=diff - z * se, ci_high=diff + z * se, p_value=_p_two_sided(diff, se),
        relative=rel, relative_ci_low=rel - z * rel_se, relative_ci_high=rel + z * rel_se,
        n_control=int(n_control), n_treatment=int(n_treatment), level=level)


def mean_difference(control, treatment, level: float = DEFAULT_LEVEL) -> Comparison:
    """Difference of per-user means ``[n_c]``, ``[n_t]`` with Welch's standard error
    ``sqrt(s_c^2 / n_c + s_t^2 / n_t)`` and the normal approximation (``difference / se`` is
    Welch's t of ``scipy.stats.ttest_ind(treatment, control, equal_var=False)``)."""
    c = _array(control, "control")
    t = _array(treatment, "treatment")
    return compare_estimates(c.mean(), c.var(ddof=1) / len(c), len(c),
                             t.mean(), t.var(ddof=1) / len(t), len(t), level)


def _ratio_arrays(num, den, name: str) -> tuple[np.ndarray, np.ndarray]:
    n = _array(num, f"{name} numerators")
    d = _array(den, f"{name} denominators")
    if n.shape != d.shape:
        raise ValueError(
            f"{name}: {len(n)} numerators but {len(d)} denominators; give one of each per user")
    if (d < 0).any() or d.sum() <= 0:
        raise ValueError(
            f"{name}: denominators must be non-negative with a positive sum (impressions per "
            f"user), got sum {d.sum():g}, minimum {d.min():g}")
    return n, d


def linearise(num, den) -> np.ndarray:
    """The per-user linearised ratio metric ``[n]``: ``(num_i - R den_i) / mean(den)`` with
    ``R = sum(num) / sum(den)``. It has mean 0 and ``Var(R) ~= var(L, ddof=1) / n`` (delta
    method); CUPED adjusts a ratio metric through it."""
    n, d = _ratio_arrays(num, den, "ratio")
    return (n - n.sum() / d.sum() * d) / d.mean()


def ratio_estimate(num, den) -> tuple[float, float]:
    """``(R, Var(R))`` of the ratio ``sum(num) / sum(den)`` over users ``[n]`` (delta method)."""
    n, d = _ratio_arrays(num, den, "ratio")
    return float(n.sum() / d.sum()), float(linearise(n, d).var(ddof=1) / len(n))


def ratio_difference(
    num_control, den_control, num_treatment, den_treatment, level: float = DEFAULT_LEVEL
) -> Comparison:
    """Difference of two ratio metrics (e.g. positive watches / impressions), each from per-user
    numerators and denominators ``[n_arm]``, with delta-method variances."""
    rc, vc = ratio_estimate(*_ratio_arrays(num_control, den_control, "control"))
    rt, vt = ratio_estimate(*_ratio_arrays(num_treatment, den_treatment, "treatment"))
    return compare_estimates(rc, vc, len(np.asarray(num_control)),
                             rt, vt, len(np.asarray(num_treatment)), level)


# ----------------------------------------------------------------------------- CUPED


@dataclasses.dataclass(frozen=True)
class CupedComparison:
    """A comparison with and without CUPED.

    Attributes:
      raw: without the covariate. adjusted: with it (report both).
      theta: the pooled regression coefficient of the metric on the covariate (0 when the
        covariate has no variance: then ``adjusted`` equals ``raw``).
    """

    raw: Comparison
    adjusted: Comparison
    theta: float

    @property
    def variance_reduction(self) -> float:
        """``1 - Var(adjusted) / Var(raw)`` of the difference (about ``rho^2``)."""
        if self.raw.se == 0.0:
            return 0.0
        return 1.0 - (self.adjusted.se / self.raw.se) ** 2


def cuped_theta(y: Sequence[np.ndarray], x: Sequence[np.ndarray]) -> float:
    """``theta = sum_arms sum_i (x_i - x_arm)(y_i - y_arm) / sum_arms sum_i (x_i - x_arm)^2``:
    the covariance over the variance of the covariate, each centred within its arm and pooled
    (a treatment effect on ``y`` then cannot leak into it); 0 when ``x`` does not vary."""
    cross = sum(float(np.sum((xa - xa.mean()) * (ya - ya.mean())))
                for ya, xa in zip(y, x, strict=True))
    square = sum(float(np.sum((xa - xa.mean()) ** 2)) for xa in x)
    return cross / square if square > 0.0 else 0.0


def _cuped(estimates, values, covariates, raw: Comparison, level: float) -> CupedComparison:
    """``values``: per-user metric values whose per-arm sampling variance is ``var / n`` (the
    metric itself, or its linearisation), ``estimates`` the arms' raw estimates."""
    theta = cuped_theta(values, covariates)
    x_all = float(np.concatenate(covariates).mean())
    adjusted = []
    for est, v, x in zip(estimates, values, covariates, strict=True):
        adjusted.append((est - theta * (x.mean() - x_all), (v - theta * x).var(ddof=1) / len(v),
                         len(v)))
    return CupedComparison(raw, compare_estimates(*adjusted[0], *adjusted[1], level), theta)


def _paired(values, covariate, name: str) -> tuple[np.ndarray, np.ndarray]:
    v = _array(values, f"{name} metric")
    x = _array(covariate, f"{name} covariate")
    if v.shape != x.shape:
        raise ValueError(f"{name}: {len(v)} metric values but {len(x)} covariates; one per user")
    return v, x


def cuped_mean_difference(
    y_control, x_control, y_treatment, x_treatment, level: float = DEFAULT_LEVEL
) -> CupedComparison:
    """:func:`mean_difference` of per-user values ``y`` with CUPED on the pre-period covariate
    ``x`` (same users, same order): each arm's mean becomes ``mean(y) - theta (mean(x) -
    mean(x_all))`` with variance ``var(y - theta x) / n``."""
    yc, xc = _paired(y_control, x_control, "control")
    yt, xt = _paired(y_treatment, x_treatment, "treatment")
    raw = mean_difference(yc, yt, level)
    return _cuped((yc.mean(), yt.mean()), (yc, yt), (xc, xt), raw, level)


def cuped_ratio_difference(
    num_control, den_control, pre_num_control, pre_den_control,
    num_treatment, den_treatment, pre_num_treatment, pre_den_treatment,
    level: float = DEFAULT_LEVEL,
) -> CupedComparison:
    """:func:`ratio_difference` with CUPED: each arm's metric is linearised with its own ratio,
    and the covariate is the same ratio in the pre-period, linearised with the ratio and mean
    denominator of all users pooled (a user without pre-period denominator gets 0). All arrays
    ``[n_arm]``, one entry per user of the arm, in the same order."""
    raw = ratio_difference(num_control, den_control, num_treatment, den_treatment, level)
    values, estimates, covariates = [], [], []
    for name, num, den in (("control", num_control, den_control),
                           ("treatment", num_treatment, den_treatment)):
        n, d = _ratio_arrays(num, den, name)
        values.append(linearise(n, d))
        estimates.append(n.sum() / d.sum())
    pre = [(_array(pn, "pre-period numerators"), _array(pd_, "pre-period denominators"))
           for pn, pd_ in ((pre_num_control, pre_den_control),
                           (pre_num_treatment, pre_den_treatment))]
    for (pn, pd_), v, name in zip(pre, values, ("control", "treatment"), strict=True):
        if len(pn) != len(v) or len(pd_) != len(v):
            raise ValueError(
                f"{name}: {len(v)} users but {len(pn)} pre-period numerators and {len(pd_)} "
                "denominators; give one of each per user, in the same order")
    pre_num = np.concatenate([p[0] for p in pre])
    pre_den = np.concatenate([p[1] for p in pre])
    if pre_den.sum() > 0:
        r_pre, mean_den = pre_num.sum() / pre_den.sum(), pre_den.mean()
        covariates = [(pn - r_pre * pd_) / mean_den for pn, pd_ in pre]
    else:
        covariates = [np.zeros(len(v)) for v in values]
    return _cuped(estimates, values, covariates, raw, level)


# ----------------------------------------------------------------------------- sample ratio


@dataclasses.dataclass(frozen=True)
class SampleRatio:
    """Users per arm against the configured shares (a chi-square goodness-of-fit test).

    ``flagged`` when ``p_value < threshold``: the assignment or the logging is broken, and no
    difference between the arms can be trusted until the cause is found.
    """

    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    threshold: float = SRM_THRESHOLD

    @property
    def flagged(self) -> bool:
        return self.p_value < self.threshold


def sample_ratio_mismatch(
    observed: Mapping[str, int], shares: Mapping[str, float], threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Chi-square test of users per arm ``observed`` against expected ``shares`` (summing to 1;
    the same keys). An arm with share 0 and no users is left out of the test; share 0 with
    users is a mismatch (p 0)."""
    if set(observed) != set(shares):
        raise ValueError(
            f"observed arms {sorted(observed)} and configured arms {sorted(shares)} differ; "
            "give a count (0 if none) for every configured arm")
    total_share = float(sum(shares.values()))
    if abs(total_share - 1.0) > 1e-9 or any(s < 0 for s in shares.values()):
        raise ValueError(f"shares must be non-negative and sum to 1, got {dict(shares)}")
    total = int(sum(observed.values()))
    if total <= 0:
        raise ValueError("no users in any arm: nothing to test the sample ratio on")
    arms = tuple(shares)
    obs = np.array([observed[a] for a in arms], dtype=np.float64)
    exp = np.array([shares[a] * total for a in arms])
    if (obs[exp == 0] > 0).any():
        chi2, p = math.inf, 0.0
    else:
        keep = exp > 0
        chi2 = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
        dof = int(keep.sum()) - 1
        p = float(stats.chi2.sf(chi2, dof)) if dof > 0 else 1.0
    return SampleRatio(arms, tuple(int(v) for v in obs), tuple(float(v) for v in exp), chi2, p,
                       threshold)


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    fn: Callable[..., float],
    arrays: Sequence[np.ndarray],
    n: int = 2000,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float]:
    """Percentile interval of ``fn(*arrays)`` over ``n`` bootstrap resamples of the rows (users):
    every array ``[n_users, ...]`` is resampled with the same row indices. Seeded."""
    arrays = [np.asarray(a) for a in arrays]
    if not arrays or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise ValueError(
            f"bootstrap_ci needs arrays of one non-zero length (one row per user), got lengths "
            f"{[len(a) for a in arrays]}")
    _z(level)
    rng = np.random.default_rng(seed)
    rows = len(arrays[0])
    draws = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, rows, size=rows)
        draws[b] = fn(*(a[idx] for a in arrays))
    lo, hi = np.quantile(draws, [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- interleaving


@dataclasses.dataclass(frozen=True)
class Preference:
    """Which team users prefer in an interleaving experiment (A: the first arm, B: the second).

    Attributes:
      users: users with at least one credited watch; ``prefer_a + prefer_b + ties == users``.
      share_a: ``prefer_a / (prefer_a + prefer_b)``, the share of users preferring A among those
        with a preference, with its Wilson interval and the exact two-sided binomial p-value
        against 1/2 (nan without any preference).
      delta_ab: Chapelle et al.'s ``(prefer_a + ties / 2) / users - 1/2``, which equals
        ``(prefer_a - prefer_b) / (2 users)``: > 0 when A wins; with a bootstrap interval over
        users.
    """

    users: int
    prefer_a: int
    prefer_b: int
    ties: int
    share_a: float
    share_ci_low: float
    share_ci_high: float
    p_value: float
    delta_ab: float
    delta_ci_low: float
    delta_ci_high: float
    level: float = DEFAULT_LEVEL


def interleaving_preference(
    wins_a, wins_b, level: float = DEFAULT_LEVEL, n_bootstrap: int = 2000, seed: int = 0
) -> Preference:
    """Per-user preference from credited watches ``wins_a``, ``wins_b`` ``[n_users]`` (watches
    credited to each team per user). A user prefers the team with more credited watches; users
    with none credited are no evidence and are left out."""
    a = np.asarray(wins_a, dtype=np.float64)
    b = np.asarray(wins_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"wins_a {a.shape} and wins_b {b.shape} must be 1-d, one per user")
    if (a < 0).any() or (b < 0).any():
        raise ValueError("credited watches cannot be negative")
    active = (a + b) > 0
    sign = np.sign(a[active] - b[active])
    prefer_a, prefer_b = int((sign > 0).sum()), int((sign < 0).sum())
    users = int(active.sum())
    decided = prefer_a + prefer_b
    if decided:
        test = stats.binomtest(prefer_a, decided, 0.5)
        ci = test.proportion_ci(confidence_level=level, method="wilson")
        share, lo, hi, p = prefer_a / decided, float(ci.low), float(ci.high), float(test.pvalue)
    else:
        share = lo = hi = p = math.nan
    if users:
        delta = (prefer_a - prefer_b) / (2.0 * users)
        d_lo, d_hi = bootstrap_ci(lambda s: s.mean() / 2.0, [sign], n_bootstrap, seed, level)
    else:
        delta = d_lo = d_hi = math.nan
    return Preference(users, prefer_a, prefer_b, users - decided, share, lo, hi, p,
                      delta, d_lo, d_hi, level)


def detectable_relative_effect(comparison: Comparison, alpha: float = 0.05,
                               power: float = 0.8) -> float:
    """The smallest relative change this comparison had ``power`` to detect at ``alpha``:
    ``(z_{1-alpha/2} + z_power) se / |control|`` (nan when control is 0)."""
    if comparison.control == 0.0:
        return math.nan
    z = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    return float(z * comparison.se / abs(comparison.control))
