"""Offline evaluation: the protocol (split, candidates, metrics), the peers, and the report.

``protocol`` holds the rules every figure follows; ``peers`` the baselines (popularity, EASE,
implicit ALS, item-kNN); ``report`` writes ``metrics.json`` and a Markdown report.
"""

from marquee.evaluation.peers import (
    EASE,
    ImplicitALS,
    ItemKNN,
    Popularity,
    Recommender,
    Tuning,
    evaluate_peers,
    tune,
    tune_ease,
)
from marquee.evaluation.protocol import (
    NO_ITEM,
    Split,
    evaluate_rankings,
    leave_last_out,
    validation_split,
)

__all__ = [
    "EASE",
    "NO_ITEM",
    "ImplicitALS",
    "ItemKNN",
    "Popularity",
    "Recommender",
    "Split",
    "Tuning",
    "evaluate_peers",
    "evaluate_rankings",
    "leave_last_out",
    "tune",
    "tune_ease",
    "validation_split",
]
