"""The ranker against the simulator's ground truth, on the same eval examples.

    .venv/bin/python bench/bench_ranking_truth.py --data build/demo/data --run build/demo/run

For the rank_eval examples of the users whose true affinities the simulator wrote
(``DATA/_truth/affinities.parquet``), prints the AUC of P(watch past 2 minutes) reached by
(a) the true affinity, (b) the trained ranker, (c) the popularity baseline, plus the ranker's
calibration (mean prediction / observed rate) on all rank_eval examples.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

import marquee  # noqa: F401
from components.ranking_evaluator import eval_lib
from components.ranking_evaluator.executor import predict
from marquee.data import contract as c
from marquee.data.simulate import AFFINITY, TRUTH_DIR, TRUTH_FILE
from trainer import features as f
from trainer import raw_inputs
from trainer.ranking import labels, load_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", required=True)
    args = ap.parse_args()
    run = Path(args.run) / "tfx"
    examples = max((run / "ContractExampleGen" / "examples").glob("*"), key=lambda p: int(p.name))
    retrieval = max((run / "Trainer" / "model").glob("*"), key=lambda p: int(p.name))
    ranker = max((run / "RankingTrainer" / "model").glob("*"), key=lambda p: int(p.name))
    data = load_split([str(examples / "Split-rank_eval" / "*")], str(retrieval / "Format-Serving"))
    # the ranker's own positive threshold (RankingConfig.min_watch_seconds), from its metadata
    trained = json.loads((ranker / "Format-Serving" / "metadata.json").read_text())["config"]
    threshold = trained.get("min_watch_seconds", c.WATCHED_THRESHOLD_SECONDS)
    y, log_time = labels(data[f.WATCH_SECONDS], threshold)
    p, t = predict(str(ranker / "Format-Serving" / "ranker"), data)
    train = raw_inputs.columns([str(examples / "Split-rank_train" / "*")],
                               (f.ITEM_ID, f.WATCH_SECONDS))
    tw, tt = labels(train[f.WATCH_SECONDS], threshold)
    bp, _ = eval_lib.PopularityBaseline.fit(train[f.ITEM_ID], tw, tt).predict(
        data[f.ITEM_ID])

    truth = pd.read_parquet(Path(args.data) / TRUTH_DIR / TRUTH_FILE)
    key = pd.DataFrame({c.USER_ID: data[f.USER_ID], c.ITEM_ID: data[f.ITEM_ID],
                        "row": np.arange(len(y))})
    joined = key.merge(truth, on=[c.USER_ID, c.ITEM_ID], how="inner")
    rows = joined["row"].to_numpy()
    out = {
        "rank_eval_examples": int(len(y)),
        "truth_examples": int(len(rows)),
        "auc_truth_affinity": eval_lib.auc(y[rows], joined[AFFINITY].to_numpy()),
        "auc_ranker_same_examples": eval_lib.auc(y[rows], p[rows]),
        "auc_popularity_same_examples": eval_lib.auc(y[rows], bp[rows]),
        "auc_ranker_all": eval_lib.auc(y, p),
        "calibration_ranker_all": float(np.mean(p) / np.mean(y)),
        "log_loss_ranker_all": eval_lib.log_loss(y, p),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
