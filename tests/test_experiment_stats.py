"""The statistics of online experiments: numbers worked by hand in comments, and statsmodels /
scipy references (NormalIndPower, proportion_effectsize, ttest_ind, chisquare, binomtest)."""

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from marquee.experiments import stats

Z975, Z80 = 1.959963984540054, 0.8416212335729143


# ----------------------------------------------------------------------------- planning


def test_users_per_arm_reproduces_the_design_figure():
    # p = 0.25, 1% relative lift -> delta = 0.0025, sd^2 = 0.25 * 0.75 = 0.1875
    # n = 2 (1.959964 + 0.841621)^2 * 0.1875 / 0.0025^2 = 0.375 * 7.848879 / 6.25e-6 = 470,932.7
    n = stats.users_per_arm(0.25, 0.01)
    assert n == 470_933
    assert n == math.ceil(2 * (Z975 + Z80) ** 2 * 0.1875 / 0.0025**2)
    # the design's "~500K users per arm for a 1% lift in watch-through rate"
    assert 400_000 < n < 500_000


@pytest.mark.parametrize("p, mde, alpha, power", [
    (0.25, 0.01, 0.05, 0.8), (0.1, 0.02, 0.05, 0.9), (0.5, 0.05, 0.01, 0.8), (0.03, 0.1, 0.1, 0.9)])
def test_users_per_arm_matches_statsmodels_normal_power(p, mde, alpha, power):
    effect = p * mde / math.sqrt(p * (1 - p))
    reference = NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power,
                                             ratio=1.0, alternative="two-sided")
    # statsmodels also counts the far rejection tail, Phi(-(2 z_alpha + z_power)) < 1e-5 here
    # (at power 0.5 and alpha 0.1 it would be 5e-4 and move n by 0.15%): the same n to a user
    assert abs(stats.users_per_arm(p, mde, alpha, power) - math.ceil(reference)) <= 1


def test_users_per_arm_against_the_arcsine_effect_size():
    # Cohen's h = 2 asin(sqrt(0.2525)) - 2 asin(sqrt(0.25)) is the variance-stabilised effect;
    # its n differs from the normal approximation's by the curvature of asin: ~0.3% here.
    h = proportion_effectsize(0.2525, 0.25)
    arcsine = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1.0)
    ours = stats.users_per_arm(0.25, 0.01)
    assert arcsine == pytest.approx(ours, rel=0.005)
    assert arcsine != pytest.approx(ours, rel=1e-4)  # the two are different approximations


def test_users_per_arm_for_mean_is_the_same_rule():
    assert stats.users_per_arm_for_mean(0.25, math.sqrt(0.1875), 0.01) == 470_933
    # twice the effect, a quarter of the users (to the rounding)
    assert abs(stats.users_per_arm_for_mean(10.0, 4.0, 0.02) * 4
               - stats.users_per_arm_for_mean(10.0, 4.0, 0.01)) <= 4


def test_planning_a_ratio_metric_from_a_log():
    # per-user impressions and positive watches; the sd of the linearised metric plans it
    rng = np.random.default_rng(3)
    den = rng.poisson(20, 20_000) + 1
    num = rng.binomial(den, rng.beta(2, 6, len(den)))
    ratio = num.sum() / den.sum()
    sd = stats.linearise(num, den).std(ddof=1)
    n = stats.users_per_arm_for_mean(ratio, sd, 0.01)
    reference = NormalIndPower().solve_power(effect_size=0.01 * ratio / sd, alpha=0.05,
                                             power=0.8)
    assert abs(n - math.ceil(reference)) <= 1
    # sanity: Var(R) = var(L) / n, so n users give a standard error of sd / sqrt(n)
    assert stats.ratio_estimate(num, den)[1] == pytest.approx(sd**2 / len(den))


@pytest.mark.parametrize("kwargs", [
    {"baseline_rate": 0.0, "mde_relative": 0.01}, {"baseline_rate": 1.0, "mde_relative": 0.01},
    {"baseline_rate": 0.2, "mde_relative": 0.0}, {"baseline_rate": 0.2, "mde_relative": 0.01,
                                                  "power": 1.0}])
def test_users_per_arm_rejects_impossible_plans(kwargs):
    with pytest.raises(ValueError):
        stats.users_per_arm(**kwargs)


# ----------------------------------------------------------------------------- comparisons


def test_mean_difference_by_hand_and_against_welch():
    # control 1,2,3,4: mean 2.5, s^2 = 5/3; treatment 2,4,6,8: mean 5, s^2 = 20/3
    # se = sqrt(5/12 + 20/12) = sqrt(25/12) = 1.443376; z = 2.5 / 1.443376 = sqrt(3)
    cmp = stats.mean_difference([1, 2, 3, 4], [2, 4, 6, 8])
    assert cmp.difference == 2.5
    assert cmp.se == pytest.approx(math.sqrt(25 / 12))
    assert cmp.difference / cmp.se == pytest.approx(math.sqrt(3))
    assert cmp.p_value == pytest.approx(2 * scipy.stats.norm.sf(math.sqrt(3)))  # 0.0833
    assert cmp.ci_low == pytest.approx(2.5 - Z975 * math.sqrt(25 / 12))
    assert cmp.relative == pytest.approx(1.0)  # 5 / 2.5 - 1
    welch = scipy.stats.ttest_ind([2, 4, 6, 8], [1, 2, 3, 4], equal_var=False)
    assert cmp.difference / cmp.se == pytest.approx(welch.statistic)


def test_mean_difference_p_value_converges_to_welch_for_large_arms():
    rng = np.random.default_rng(0)
    control = rng.normal(10.0, 3.0, 6000)
    treatment = rng.normal(10.12, 4.0, 4000)
    cmp = stats.mean_difference(control, treatment)
    welch = scipy.stats.ttest_ind(treatment, control, equal_var=False)
    assert cmp.difference / cmp.se == pytest.approx(welch.statistic, rel=1e-12)
    assert cmp.p_value == pytest.approx(welch.pvalue, abs=1e-3)
    assert cmp.p_value < 0.05  # the effect is there (z ~ 1.6 / 0.07 = 2.3 in expectation)


def test_ratio_difference_by_hand():
    # control: num 1,2,3 over den 2,2,2: R = 1, L = (num - 2) / 2 = -.5, 0, .5, var(L) = .25
    #   Var(R) = .25 / 3
    # treatment: num 2,2,5 over den 1,2,3: R = 9/6 = 1.5, mean den 2,
    #   L = (2 - 1.5, 2 - 3, 5 - 4.5) / 2 = .25, -.5, .25, var(L) = .375 / 2 = .1875, Var(R) = .0625
    # diff .5, se = sqrt(.0833 + .0625) = .381881; relative .5 with
    #   se sqrt(.0625 / 1 + 1.5^2 * .0833 / 1) = sqrt(.25) = .5
    cmp = stats.ratio_difference([1, 2, 3], [2, 2, 2], [2, 2, 5], [1, 2, 3])
    assert (cmp.control, cmp.treatment) == (1.0, 1.5)
    assert cmp.se == pytest.approx(math.sqrt(0.25 / 3 + 0.0625))
    assert cmp.p_value == pytest.approx(2 * scipy.stats.norm.sf(0.5 / math.sqrt(0.25 / 3 + 0.0625)))
    assert cmp.relative == pytest.approx(0.5)
    assert cmp.relative_ci_high == pytest.approx(0.5 + Z975 * 0.5)
    assert (cmp.n_control, cmp.n_treatment) == (3, 3)


def test_ratio_with_unit_denominators_is_a_difference_of_means():
    rng = np.random.default_rng(1)
    a, b = rng.binomial(1, 0.3, 500), rng.binomial(1, 0.33, 700)
    ratio = stats.ratio_difference(a, np.ones(500), b, np.ones(700))
    means = stats.mean_difference(a, b)
    assert ratio.difference == pytest.approx(means.difference)
    assert ratio.se == pytest.approx(means.se)


def test_delta_method_variance_against_the_expanded_formula_and_the_bootstrap():
    rng = np.random.default_rng(2)
    den = rng.poisson(8, 3000) + 1.0
    num = rng.binomial(den.astype(int), rng.beta(2, 5, 3000)).astype(float)
    ratio, var = stats.ratio_estimate(num, den)
    # Var(R) = (s_nn / mu_d^2 - 2 mu_n s_nd / mu_d^3 + mu_n^2 s_dd / mu_d^4) / n
    cov = np.cov(num, den, ddof=1)
    mu_n, mu_d, n = num.mean(), den.mean(), len(num)
    expanded = (cov[0, 0] / mu_d**2 - 2 * mu_n * cov[0, 1] / mu_d**3
                + mu_n**2 * cov[1, 1] / mu_d**4) / n
    assert var == pytest.approx(expanded, rel=1e-10)
    lo, hi = stats.bootstrap_ci(lambda x, y: x.sum() / y.sum(), [num, den], n=1000, seed=0)
    assert (hi - lo) == pytest.approx(2 * Z975 * math.sqrt(var), rel=0.1)
    assert lo < ratio < hi


def test_mismatched_or_tiny_inputs_name_the_problem():
    with pytest.raises(ValueError, match="numerators but"):
        stats.ratio_difference([1, 2], [1, 2, 3], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_difference([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive sum"):
        stats.ratio_difference([0, 0], [0, 0], [1, 2], [1, 2])


def test_detectable_effect_from_a_comparison():
    # se 0.01 around a control of 0.5: (1.96 + 0.84) * 0.01 / 0.5 = 5.6%
    cmp = stats.compare_estimates(0.5, 0.00005, 100, 0.5, 0.00005, 100)
    assert stats.detectable_relative_effect(cmp) == pytest.approx((Z975 + Z80) * 0.01 / 0.5)


# ----------------------------------------------------------------------------- CUPED


def test_cuped_by_hand():
    # control x 1,2,3,4 y 2,3,5,6; treatment x 2,3,4,5 y 3,5,6,8.
    # within arms: dx = -1.5,-.5,.5,1.5 in both; dy = -2,-1,1,2 (cross 7) and -2.5,-.5,.5,2.5
    # (cross 8); sum dx^2 = 5 each -> theta = 15 / 10 = 1.5. mean x overall = 3:
    # control 4 - 1.5 (2.5 - 3) = 4.75, treatment 5.5 - 1.5 (3.5 - 3) = 4.75: no difference left
    # (the treatment's higher y is its higher x). y - 1.5 x: .5,0,.5,0 and 0,.5,0,.5: var 1/12
    # each, se = sqrt(2 / 12 / 4) = .204124. Raw: diff 1.5, se = sqrt(10/3/4 + 13/3/4) = 1.384437
    res = stats.cuped_mean_difference([2, 3, 5, 6], [1, 2, 3, 4], [3, 5, 6, 8], [2, 3, 4, 5])
    assert res.theta == pytest.approx(1.5)
    assert res.raw.difference == pytest.approx(1.5)
    assert res.raw.se == pytest.approx(math.sqrt(23 / 12))
    assert (res.adjusted.control, res.adjusted.treatment) == pytest.approx((4.75, 4.75))
    assert res.adjusted.difference == pytest.approx(0.0)
    assert res.adjusted.se == pytest.approx(math.sqrt(2 / 12 / 4))
    assert res.variance_reduction == pytest.approx(1 - (2 / 48) / (23 / 12))


def test_cuped_without_covariate_variance_changes_nothing():
    res = stats.cuped_mean_difference([1, 2, 4], [0, 0, 0], [2, 3, 7], [0, 0, 0])
    assert res.theta == 0.0
    assert res.adjusted == res.raw


def _correlated(rng, n, rho, effect):
    x = rng.normal(0, 1, n)
    return x, 1.0 + effect + rho * x + math.sqrt(1 - rho**2) * rng.normal(0, 1, n)


def test_cuped_shrinks_the_variance_by_one_minus_rho_squared():
    rng = np.random.default_rng(5)
    rho = 0.7
    xc, yc = _correlated(rng, 100_000, rho, 0.0)
    xt, yt = _correlated(rng, 100_000, rho, 0.02)
    res = stats.cuped_mean_difference(yc, xc, yt, xt)
    assert res.theta == pytest.approx(rho, abs=0.01)
    assert (res.adjusted.se / res.raw.se) ** 2 == pytest.approx(1 - rho**2, abs=0.01)  # 0.51
    assert abs(res.adjusted.difference - 0.02) < 3 * res.adjusted.se


def test_cuped_stays_unbiased_over_repeated_experiments():
    # 400 experiments of 2,000 users per arm, true effect 0.05: the mean adjusted estimate is
    # within 4 standard errors of the mean (se of one ~ sqrt(2 * .51 / 2000) = .0226; of the
    # mean of 400 ~ .0011), as is the raw one, and the adjusted ones vary less
    rng = np.random.default_rng(6)
    raw, adjusted = [], []
    for _ in range(400):
        xc, yc = _correlated(rng, 2000, 0.7, 0.0)
        xt, yt = _correlated(rng, 2000, 0.7, 0.05)
        res = stats.cuped_mean_difference(yc, xc, yt, xt)
        raw.append(res.raw.difference)
        adjusted.append(res.adjusted.difference)
    assert abs(np.mean(adjusted) - 0.05) < 4 * np.std(adjusted) / math.sqrt(400)
    assert abs(np.mean(raw) - 0.05) < 4 * np.std(raw) / math.sqrt(400)
    assert np.var(adjusted) / np.var(raw) == pytest.approx(0.51, abs=0.08)


def _ratio_users(rng, n, lift):
    """Per-user impressions and positive watches in the pre-period and the experiment, from
    one propensity per user (which makes the two periods correlated)."""
    p = rng.beta(2, 6, n)
    den_pre, den = rng.poisson(20, n) + 1, rng.poisson(20, n) + 1
    return (rng.binomial(den, np.minimum(p * (1 + lift), 1)), den,
            rng.binomial(den_pre, p), den_pre)


def test_cuped_for_a_ratio_metric_linearises_first():
    rng = np.random.default_rng(7)
    c_num, c_den, c_pre_num, c_pre_den = _ratio_users(rng, 50_000, 0.0)
    t_num, t_den, t_pre_num, t_pre_den = _ratio_users(rng, 50_000, 0.1)
    res = stats.cuped_ratio_difference(c_num, c_den, c_pre_num, c_pre_den,
                                       t_num, t_den, t_pre_num, t_pre_den)
    assert res.raw == stats.ratio_difference(c_num, c_den, t_num, t_den)
    # the reduction is the squared within-arm correlation of the linearised metric with the
    # linearised pre-period metric
    pre_num = np.concatenate([c_pre_num, t_pre_num])
    pre_den = np.concatenate([c_pre_den, t_pre_den])
    r_pre, m_pre = pre_num.sum() / pre_den.sum(), pre_den.mean()
    rho = [np.corrcoef(stats.linearise(n, d), (pn - r_pre * pd) / m_pre)[0, 1]
           for n, d, pn, pd in ((c_num, c_den, c_pre_num, c_pre_den),
                                (t_num, t_den, t_pre_num, t_pre_den))]
    assert res.variance_reduction == pytest.approx(np.mean(np.square(rho)), abs=0.01)
    assert res.variance_reduction > 0.3
    # true lift: 10% of E[p] = 0.25, i.e. +0.025 (np.minimum clips nothing at p * 1.1 < 1)
    assert abs(res.adjusted.difference - 0.025) < 3 * res.adjusted.se
    assert res.adjusted.se < res.raw.se


def test_cuped_ratio_without_a_pre_period_is_the_raw_comparison():
    res = stats.cuped_ratio_difference([1, 2, 3], [2, 2, 2], [0, 0, 0], [0, 0, 0],
                                       [2, 2, 5], [1, 2, 3], [0, 0, 0], [0, 0, 0])
    assert res.theta == 0.0
    assert res.adjusted.difference == pytest.approx(res.raw.difference)
    assert res.adjusted.se == pytest.approx(res.raw.se)


# ----------------------------------------------------------------------------- sample ratio


def test_an_injected_half_percent_split_is_flagged():
    # 505,000 vs 495,000 of 1M against 50/50: chi2 = 2 * 5000^2 / 500000 = 100, p ~ 1.5e-23
    srm = stats.sample_ratio_mismatch({"control": 505_000, "treatment": 495_000},
                                      {"control": 0.5, "treatment": 0.5})
    assert srm.chi2 == pytest.approx(100.0)
    reference = scipy.stats.chisquare([505_000, 495_000])
    assert srm.p_value == pytest.approx(reference.pvalue)
    assert srm.flagged


def test_a_fair_binomial_draw_is_not_flagged():
    treated = int(np.random.default_rng(0).binomial(1_000_000, 0.5))
    srm = stats.sample_ratio_mismatch({"a": 1_000_000 - treated, "b": treated},
                                      {"a": 0.5, "b": 0.5})
    reference = scipy.stats.chisquare([1_000_000 - treated, treated])
    assert srm.p_value == pytest.approx(reference.pvalue)
    assert not srm.flagged


def test_sample_ratio_with_uneven_shares_and_a_holdout():
    observed = {"control": 4400, "treatment": 4550, "holdout": 1050}
    shares = {"control": 0.45, "treatment": 0.45, "holdout": 0.10}
    srm = stats.sample_ratio_mismatch(observed, shares)
    reference = scipy.stats.chisquare([4400, 4550, 1050], f_exp=[4500, 4500, 1000])
    assert srm.chi2 == pytest.approx(reference.statistic)
    assert srm.p_value == pytest.approx(reference.pvalue)
    assert srm.expected == (4500.0, 4500.0, 1000.0)


def test_users_in_an_arm_of_share_zero_are_a_mismatch():
    srm = stats.sample_ratio_mismatch({"a": 50, "b": 50, "holdout": 3},
                                      {"a": 0.5, "b": 0.5, "holdout": 0.0})
    assert srm.flagged and srm.p_value == 0.0
    assert not stats.sample_ratio_mismatch({"a": 50, "b": 50, "holdout": 0},
                                           {"a": 0.5, "b": 0.5, "holdout": 0.0}).flagged
    with pytest.raises(ValueError, match="differ"):
        stats.sample_ratio_mismatch({"a": 1}, {"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="sum to 1"):
        stats.sample_ratio_mismatch({"a": 1, "b": 1}, {"a": 0.5, "b": 0.6})


# ----------------------------------------------------------------------------- interleaving


def test_interleaving_preference_by_hand():
    # credited watches per user (A, B): (3,1) A, (0,2) B, (1,1) tie, (2,0) A, (0,0) no evidence,
    # (1,0) A -> 5 users, prefer A 3, B 1, tie 1; share 3/4; binomial p = 2 * 5/16 = 0.625;
    # Delta_AB = (3 + 1/2) / 5 - 1/2 = 0.2 = (3 - 1) / (2 * 5)
    pref = stats.interleaving_preference([3, 0, 1, 2, 0, 1], [1, 2, 1, 0, 0, 0])
    assert (pref.users, pref.prefer_a, pref.prefer_b, pref.ties) == (5, 3, 1, 1)
    assert pref.share_a == 0.75
    assert pref.p_value == pytest.approx(0.625)
    assert pref.delta_ab == pytest.approx(0.2)
    # Wilson at 95% for 3/4: centre (0.75 + z^2/8) / (1 + z^2/4) = 0.627527, half-width
    # z sqrt(3/64 + z^2/64) / (1 + z^2/4) = 0.326885
    assert (pref.share_ci_low, pref.share_ci_high) == pytest.approx((0.300642, 0.954413),
                                                                    abs=2e-6)
    ci = scipy.stats.binomtest(3, 4).proportion_ci(method="wilson")
    assert (pref.share_ci_low, pref.share_ci_high) == pytest.approx((ci.low, ci.high))
    assert pref.delta_ci_low <= pref.delta_ab <= pref.delta_ci_high


def test_interleaving_bootstrap_matches_the_normal_interval_on_many_users():
    rng = np.random.default_rng(8)
    outcome = rng.choice([1, -1, 0], size=5000, p=[0.4, 0.35, 0.25])  # A, B, tie
    wins_a = np.where(outcome == 1, 2, np.where(outcome == 0, 1, 0))
    wins_b = np.where(outcome == -1, 1, np.where(outcome == 0, 1, 0))
    pref = stats.interleaving_preference(wins_a, wins_b, seed=1)
    assert pref.delta_ab == pytest.approx((outcome == 1).mean() / 2 - (outcome == -1).mean() / 2)
    se = outcome.std(ddof=1) / 2 / math.sqrt(len(outcome))
    assert pref.delta_ci_high - pref.delta_ci_low == pytest.approx(2 * Z975 * se, rel=0.1)
    test = scipy.stats.binomtest(pref.prefer_a, pref.prefer_a + pref.prefer_b)
    assert pref.p_value == pytest.approx(test.pvalue)
    assert pref.p_value < 0.05 and pref.share_a > 0.5  # drawn 40% vs 35%: A is preferred
    again = stats.interleaving_preference(wins_a, wins_b, seed=1)
    other = stats.interleaving_preference(wins_a, wins_b, seed=2)
    assert again == pref and other.delta_ci_low != pref.delta_ci_low


def test_interleaving_without_any_credited_watch():
    pref = stats.interleaving_preference([0, 0], [0, 0])
    assert pref.users == 0 and math.isnan(pref.share_a) and math.isnan(pref.delta_ab)


def test_bootstrap_ci_of_a_mean():
    rng = np.random.default_rng(9)
    x = rng.exponential(2.0, 4000)
    lo, hi = stats.bootstrap_ci(np.mean, [x], n=1000, seed=3)
    half = Z975 * x.std(ddof=1) / math.sqrt(len(x))
    assert lo == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.2 * half)
    assert stats.bootstrap_ci(np.mean, [x], n=1000, seed=3) == (lo, hi)
    with pytest.raises(ValueError, match="one non-zero length"):
        stats.bootstrap_ci(np.mean, [x, x[:10]])
