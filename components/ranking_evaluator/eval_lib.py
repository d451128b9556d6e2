"""Ranking metrics, slices, the popularity baseline and the blessing rule (plain numpy).

Metrics of the binary head (P(watch past 2 minutes)): AUC, calibration (mean prediction /
observed positive rate; 1.0 is perfect) and log loss; of the watch-time head: RMSE of
log1p(watch seconds). Slices: item popularity (head = the top 10% of items by train positives,
torso = the next 40%, tail = the rest and unseen items) and user (returning = has train
examples, new = none).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import rankdata

from marquee.config import EvaluatorConfig

EPS = 1e-7
# Pseudo-count pulling a rarely seen item's rate towards the global rate in the baseline.
BASELINE_PRIOR_COUNT = 10.0


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties count one half); NaN without both labels."""
    y = np.asarray(y, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(p, np.float64))
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def metrics(y: np.ndarray, p: np.ndarray, log_time: np.ndarray,
            log_time_pred: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, np.float64)
    rate = float(y.mean()) if len(y) else float("nan")
    return {
        "examples": int(len(y)),
        "positive_rate": rate,
        "auc": auc(y, p),
        "calibration": float(np.mean(p) / rate) if rate else float("nan"),
        "log_loss": log_loss(y, p) if len(y) else float("nan"),
        "rmse_log_watch_time": float(np.sqrt(np.mean((log_time - log_time_pred) ** 2)))
        if len(y) else float("nan"),
    }


def popularity_slices(eval_items: np.ndarray, train_items: np.ndarray,
                      train_watched: np.ndarray) -> np.ndarray:
    """'head' / 'torso' / 'tail' per eval row from the items' train positives."""
    ids, counts = np.unique(train_items[train_watched > 0], return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    n = len(order)
    head = set(order[: max(1, int(round(0.1 * n)))].tolist()) if n else set()
    torso = set(order[len(head): int(round(0.5 * n))].tolist())
    return np.array(["head" if i in head else "torso" if i in torso else "tail"
                     for i in eval_items.tolist()], dtype=object)


def sliced_metrics(y, p, log_time, log_time_pred, slices: dict[str, np.ndarray]) -> dict:
    """{'all': metrics, '<slice>=<value>': metrics, ...}."""
    out = {"all": metrics(y, p, log_time, log_time_pred)}
    for name, values in slices.items():
        for v in sorted(set(values.tolist())):
            m = values == v
            out[f"{name}={v}"] = metrics(y[m], p[m], log_time[m], log_time_pred[m])
    return out


@dataclasses.dataclass(frozen=True)
class PopularityBaseline:
    """P(watched) = the item's smoothed train positive rate; watch time = its smoothed mean."""

    rate: dict
    log_time: dict
    global_rate: float
    global_log_time: float

    @classmethod
    def fit(cls, items: np.ndarray, watched: np.ndarray, log_time: np.ndarray):
        g_rate, g_time = float(np.mean(watched)), float(np.mean(log_time))
        rate, lt = {}, {}
        ids, inverse, counts = np.unique(items, return_inverse=True, return_counts=True)
        pos = np.bincount(inverse, weights=watched)
        tsum = np.bincount(inverse, weights=log_time)
        m = BASELINE_PRIOR_COUNT
        for k, i in enumerate(ids.tolist()):
            rate[i] = (pos[k] + m * g_rate) / (counts[k] + m)
            lt[i] = (tsum[k] + m * g_time) / (counts[k] + m)
        return cls(rate, lt, g_rate, g_time)

    def predict(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.array([self.rate.get(i, self.global_rate) for i in items.tolist()])
        t = np.array([self.log_time.get(i, self.global_log_time) for i in items.tolist()])
        return p, t


def bless(candidate: dict, baseline: dict, baseline_name: str,
          cfg: EvaluatorConfig) -> tuple[bool, str]:
    """Blessed iff AUC > baseline AUC + min_auc_gain and log loss <= baseline * (1 + increase)."""
    ca, ba = candidate["auc"], baseline["auc"]
    cl, bl = candidate["log_loss"], baseline["log_loss"]
    auc_ok = not np.isnan(ca) and (np.isnan(ba) or ca > ba + cfg.min_auc_gain)
    loss_ok = cl <= bl * (1 + cfg.max_logloss_increase)
    verdict = "Blessed" if auc_ok and loss_ok else "Not blessed"
    return auc_ok and loss_ok, (
        f"{verdict}: AUC {ca:.4f} vs {baseline_name} {ba:.4f} (must beat it by more than "
        f"{cfg.min_auc_gain}); log loss {cl:.4f} vs {bl:.4f} (at most "
        f"x{1 + cfg.max_logloss_increase:g}).")
