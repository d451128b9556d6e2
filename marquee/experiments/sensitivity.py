"""How many users an A/B test and an interleaving experiment need to pick the better arm.

From a closed loop's user-level outcomes (``ExperimentResult.per_user``), for each sample size
``n`` draw ``runs`` samples of users with replacement and count the runs in which the test
calls the known-better arm better at ``alpha`` (two-sided): significant, in the right
direction. The users needed are the smallest ``n`` of the grid where that share reaches
``target`` (95% confidence in 95% of repeated runs, by default).

- A/B: ``n`` users per arm; the watch-through rate (positive watches per impression) by the
  delta method on user-level sums (:func:`marquee.experiments.stats.ratio_difference`).
- Interleaving: ``n`` interleaved users; the sign test of users preferring each team (the test
  of :func:`marquee.experiments.stats.interleaving_preference`).

When the grid's largest ``n`` (the users the loop had) is not enough, the A/B figure is
extrapolated with the power formula from the measured effect and per-user variance
(:func:`marquee.experiments.stats.users_per_arm_for_mean` at the target power), and marked so.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from marquee.experiments import stats


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Users needed by one method, with the share of runs that picked the better arm per n."""

    method: str  # "ab" (users per arm) or "interleaving" (users)
    better: str
    users_needed: int | None  # None: not reached on the grid and not extrapolated
    extrapolated: bool
    success: dict[int, float]  # n -> share of runs that picked `better` significantly
    population: int  # users the samples were drawn from (per arm for A/B)

    @property
    def total_users(self) -> int | None:
        """Users in the whole experiment (A/B: both arms)."""
        if self.users_needed is None:
            return None
        return self.users_needed * (2 if self.method == "ab" else 1)


def grid(largest: int, smallest: int = 10, steps_per_doubling: int = 2) -> list[int]:
    """Sample sizes from ``smallest`` to ``largest``, about geometric."""
    out, n = [], float(smallest)
    while n < largest:
        out.append(int(round(n)))
        n *= 2 ** (1 / steps_per_doubling)
    return sorted(set(out + [largest]))


def ab_sensitivity(per_user: pd.DataFrame, control: str, treatment: str, better: str,
                   alpha: float = 0.05, target: float = 0.95, runs: int = 200,
                   seed: int = 0, sizes: list[int] | None = None) -> Sensitivity:
    """``per_user``: arm, positives, impressions per user (an A/B ExperimentResult's)."""
    arms = {a: per_user[(per_user["arm"] == a).to_numpy()] for a in (control, treatment)}
    pop = min(len(arms[control]), len(arms[treatment]))
    if pop < 2:
        raise ValueError(f"A/B sensitivity needs users in both arms, got "
                         f"{ {a: len(r) for a, r in arms.items()} }")
    sign = 1 if better == treatment else -1
    rng = np.random.default_rng([seed, 1])
    num = {a: r["positives"].to_numpy() for a, r in arms.items()}
    den = {a: r["impressions"].to_numpy() for a, r in arms.items()}
    success: dict[int, float] = {}
    for n in sizes or grid(pop):
        wins = 0
        for _ in range(runs):
            pick = {a: rng.integers(0, len(num[a]), n) for a in arms}
            if any(den[a][pick[a]].sum() == 0 for a in arms):
                continue
            cmp = stats.ratio_difference(num[control][pick[control]], den[control][pick[control]],
                                         num[treatment][pick[treatment]],
                                         den[treatment][pick[treatment]], 1 - alpha)
            wins += bool(cmp.p_value < alpha and sign * cmp.difference > 0)
        success[n] = wins / runs
    needed = next((n for n, s in sorted(success.items()) if s >= target), None)
    extrapolated = False
    if needed is None:
        full = stats.ratio_difference(num[control], den[control], num[treatment],
                                      den[treatment], 1 - alpha)
        if sign * full.difference > 0:
            lin = stats.linearise(np.concatenate([num[control], num[treatment]]),
                                  np.concatenate([den[control], den[treatment]]))
            needed = stats.users_per_arm_for_mean(full.control, float(np.std(lin, ddof=1)),
                                                  abs(full.difference / full.control),
                                                  alpha, target)
            extrapolated = True
    return Sensitivity("ab", better, needed, extrapolated, success, pop)


def interleaving_sensitivity(per_user: pd.DataFrame, better: str, alpha: float = 0.05,
                             target: float = 0.95, runs: int = 200, seed: int = 0,
                             sizes: list[int] | None = None) -> Sensitivity:
    """``per_user``: one column of credited wins per arm (an interleaving ExperimentResult's);
    ``better`` names one of them."""
    a, b = list(per_user.columns)
    if better not in (a, b):
        raise ValueError(f"better must be {a!r} or {b!r}, got {better!r}")
    sign_all = np.sign(per_user[a].to_numpy() - per_user[b].to_numpy())
    if better == b:
        sign_all = -sign_all
    pop = len(sign_all)
    if pop < 2:
        raise ValueError(f"interleaving sensitivity needs interleaved users, got {pop}")
    rng = np.random.default_rng([seed, 2])
    success: dict[int, float] = {}
    for n in sizes or grid(pop):
        wins = 0
        for _ in range(runs):
            s = sign_all[rng.integers(0, pop, n)]
            up, down = int((s > 0).sum()), int((s < 0).sum())
            if up + down and up > down:
                wins += sps.binomtest(up, up + down, 0.5).pvalue < alpha
        success[n] = wins / runs
    needed = next((n for n, s in sorted(success.items()) if s >= target), None)
    return Sensitivity("interleaving", better, needed, False, success, pop)


def ratio(ab: Sensitivity, interleaving: Sensitivity) -> float:
    """How many times more users A/B needs than interleaving (both experiments' totals)."""
    if ab.total_users is None or interleaving.total_users is None:
        return math.nan
    return ab.total_users / interleaving.total_users
