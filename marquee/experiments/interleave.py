"""Interleaving: two rankings merged into one page, each title tagged with its team.

**Team draft** (Radlinski, Kurup and Joachims, 2008): the teams take turns like captains picking
players. The team with fewer picks so far picks next (a coin decides a tie); it picks its own
highest-ranked title not on the page yet. A watch is credited to the team of the title watched;
the user prefers the team with more credited watches.

**Balanced** (Joachims, 2002): each list keeps a pointer; the list whose pointer is further
behind adds its next title not yet on the page (a coin decides which goes first on ties). A title
is tagged with the list that added it (its credit in the analysis), which is the simplification
of balanced interleaving's rank-cutoff credit used here and documented in docs/experiments.md.

Both are deterministic given ``seed`` (the serving stack uses the user id and the page's day), so
a page is reproducible.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

TEAMS = ("A", "B")


def _coins(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), 0x1EAF]))


def team_draft(a: Sequence[Hashable], b: Sequence[Hashable], k: int,
               seed: int = 0) -> list[tuple[Hashable, int]]:
    """Team-draft interleaving of rankings ``a`` and ``b`` (best first, each without
    duplicates): up to ``k`` (item, team) pairs, team 0 for ``a`` and 1 for ``b``. When one
    list runs out the other fills the page."""
    rng = _coins(seed)
    lists, nexts, picks = (list(a), list(b)), [0, 0], [0, 0]
    shown: set = set()
    out: list[tuple[Hashable, int]] = []
    while len(out) < k:
        left = [_skip(lists[t], nexts, t, shown) < len(lists[t]) for t in (0, 1)]
        if not any(left):
            break
        if left[0] and left[1]:
            team = (0 if picks[0] < picks[1] else 1 if picks[1] < picks[0]
                    else int(rng.random() < 0.5))
        else:
            team = 0 if left[0] else 1
        item = lists[team][nexts[team]]
        out.append((item, team))
        shown.add(item)
        picks[team] += 1
        nexts[team] += 1
    return out


def balanced(a: Sequence[Hashable], b: Sequence[Hashable], k: int,
             seed: int = 0) -> list[tuple[Hashable, int]]:
    """Balanced interleaving of ``a`` and ``b``: up to ``k`` (item, team) pairs, the team being
    the list that added the title (0: ``a``, 1: ``b``)."""
    a_first = bool(_coins(seed).random() < 0.5)
    lists, ptr = (list(a), list(b)), [0, 0]
    shown: set = set()
    out: list[tuple[Hashable, int]] = []
    while len(out) < k and (ptr[0] < len(lists[0]) or ptr[1] < len(lists[1])):
        if ptr[1] >= len(lists[1]):
            team = 0
        elif ptr[0] >= len(lists[0]):
            team = 1
        else:
            team = 0 if ptr[0] < ptr[1] or (ptr[0] == ptr[1] and a_first) else 1
        item = lists[team][ptr[team]]
        ptr[team] += 1
        if item not in shown:
            shown.add(item)
            out.append((item, team))
    return out


def _skip(ranking: list, nexts: list[int], team: int, shown: set) -> int:
    """Advances ``nexts[team]`` past titles already on the page; returns it."""
    while nexts[team] < len(ranking) and ranking[nexts[team]] in shown:
        nexts[team] += 1
    return nexts[team]


METHODS = {"team_draft": team_draft, "balanced": balanced}


def credit(teams_shown: dict[Hashable, int], watched: Sequence[Hashable]) -> tuple[int, int]:
    """Credited watches (team A, team B) of one page: each watched title shown on it counts for
    its team; a watch of a title not on the page counts for neither."""
    wins = [0, 0]
    for item in watched:
        team = teams_shown.get(item)
        if team is not None:
            wins[team] += 1
    return wins[0], wins[1]
