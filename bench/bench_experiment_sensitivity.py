"""How many users an A/B test and interleaving need to pick the better arm, from a closed loop.

    .venv/bin/python bench/bench_experiment_sensitivity.py --workdir build/loop \\
        --data DATA --models RUN/serving --config loop.yaml --days 7 --better personal

Runs ``marquee experiment simulate``'s loop (``marquee.experiments.closed_loop``: the simulated
audience browses the real server's pages on loopback, its watches go back through POST
/v1/events) unless ``WORKDIR/data`` already holds one, then analyses the config's two
experiments (one ``ab``, one ``interleave``, over the same two arms, e.g. in one layer at half
the traffic each) and resamples their users (``marquee.experiments.sensitivity``): for each
sample size, ``--runs`` samples of users with replacement, and the share in which the test calls
``--better`` better at alpha 0.05 (two-sided). Users needed: the smallest size where that share
reaches 95%. Prints the share per size for both methods, the table and the ratio (A/B users in
both arms over interleaved users), with the target beside it: industry reports put interleaving
one to two orders of magnitude ahead (ratio 10-100).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import marquee  # noqa: F401  (sets the environment before anything imports TensorFlow)
from marquee.config import load_config
from marquee.experiments.analyze import analyze
from marquee.experiments.closed_loop import LoopConfig, run_loop, sim_config_of
from marquee.experiments.sensitivity import (
    ab_sensitivity,
    grid,
    interleaving_sensitivity,
    ratio,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--config", required=True, help="serving.experiments: one ab, one interleave")
    ap.add_argument("--data", help="the simulated dataset (to run the loop)")
    ap.add_argument("--models", help="its pipeline run's serving/ folder (to run the loop)")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--better", required=True, help="the arm expected to be better")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    config = load_config(args.config)
    kinds = {e.kind: e for e in config.serving.experiments}
    if set(kinds) != {"ab", "interleave"}:
        raise SystemExit(f"{args.config}: expected one ab and one interleave experiment, got "
                         f"{[(e.id, e.kind) for e in config.serving.experiments]}")
    ab_exp, il_exp = kinds["ab"], kinds["interleave"]
    if [a.name for a in ab_exp.arms] != [a.name for a in il_exp.arms]:
        raise SystemExit("the two experiments must compare the same arms")
    data = args.workdir / "data"
    if not data.exists():
        if not (args.data and args.models):
            raise SystemExit(f"{data} holds no loop yet: pass --data and --models to run one")
        began = time.perf_counter()
        done = run_loop(sim_config_of(args.data), args.data, args.models, config, args.workdir,
                        LoopConfig(days=args.days, seed=args.seed), progress=print)
        print(done)
        print(f"loop: {time.perf_counter() - began:.0f} s")
    else:
        print(f"reusing the loop in {data}")

    ab = analyze(data, config, ab_exp.id)
    il = analyze(data, config, il_exp.id)
    control, treatment = (a.name for a in ab_exp.arms)
    print(f"\nA/B '{ab_exp.id}': " + "; ".join(
        f"{a.arm}: {a.users:,} users, {a.impressions:,} impressions, watch-through "
        f"{a.watch_through_rate:.4f}" for a in ab.arms))
    wtr = ab.comparison("watch_through_rate", treatment)
    if wtr is not None:
        r = wtr.result.raw
        print(f"  {treatment} - {control}: {r.difference:+.4f} (95% CI {r.ci_low:+.4f} .. "
              f"{r.ci_high:+.4f}), relative {r.relative:+.1%}, p = {r.p_value:.2g}")
    if il.preference is not None:
        p = il.preference
        a, b = (arm.name for arm in il_exp.arms)
        print(f"interleaving '{il_exp.id}': {p.users:,} interleaved users: {p.prefer_a:,} prefer "
              f"{a}, {p.prefer_b:,} prefer {b}, {p.ties:,} ties; share preferring {a} "
              f"{p.share_a:.3f} (95% CI {p.share_ci_low:.3f} .. {p.share_ci_high:.3f}), "
              f"p = {p.p_value:.2g}")

    began = time.perf_counter()
    pop_ab = min(a.users for a in ab.arms)
    s_ab = ab_sensitivity(ab.per_user, control, treatment, args.better, runs=args.runs,
                          sizes=grid(pop_ab, smallest=10, steps_per_doubling=4))
    s_il = interleaving_sensitivity(il.per_user, args.better, runs=args.runs,
                                    sizes=grid(len(il.per_user), smallest=5,
                                               steps_per_doubling=4))
    print(f"\nresampling: {args.runs} runs per size, {time.perf_counter() - began:.0f} s")
    for s in (s_ab, s_il):
        unit = "users per arm" if s.method == "ab" else "interleaved users"
        print(f"\n{s.method}: share of runs calling {s.better!r} better at p < 0.05 ({unit}; "
              f"{s.population:,} to draw from)")
        for n, share in sorted(s.success.items()):
            print(f"  n = {n:>6,}  {share:6.1%}{'   <- 95%' if share >= 0.95 else ''}")

    def needed(s) -> str:
        if s.users_needed is None:
            return "not reached"
        extra = " (extrapolated by the power formula)" if s.extrapolated else ""
        return f"{s.total_users:,}{extra}"

    print("\n| method | users needed (95% of runs pick the better arm) |")
    print("|---|---:|")
    print(f"| A/B (both arms; {s_ab.users_needed or '-'} per arm) | {needed(s_ab)} |")
    print(f"| interleaving | {needed(s_il)} |")
    r = ratio(s_ab, s_il)
    print(f"\nA/B / interleaving: {r:.1f}x   (target beside it: published figures 10-100x)")


if __name__ == "__main__":
    main()
