"""The by-id ranker's head input: built from runs of neighbouring blocks, it must be exactly the
columns ``RankingModel.concat`` gives the tiled query blocks, the split item-table rows and the
pair scores (the e2e test checks whole exports; this checks every layout of the parts)."""

import itertools
import types

import numpy as np
import pytest
import tensorflow as tf

from trainer import ranking
from trainer.ranking import ALS_SCORE, CANDIDATE_PARTS, PAIR_SCORES, PARTS, RETRIEVAL_SCORE


def reference(export, parts: dict, gathered: tf.Tensor, repeat: int) -> tf.Tensor:
    """Each query block tiled, the table row split into its blocks, all in PARTS order."""
    parts = {k: (v if k in PAIR_SCORES else tf.tile(v, [repeat, 1])) for k, v in parts.items()}
    parts.update(zip(export.names, tf.split(gathered, export.widths, axis=1), strict=True))
    return ranking.RankingModel.concat(parts)


@pytest.mark.parametrize("popularity, pairs, query_rows", [
    (popularity, pairs, rows) for popularity in (False, True)
    for pairs in ((), (RETRIEVAL_SCORE,), (RETRIEVAL_SCORE, ALS_SCORE)) for rows in (1, 5)])
def test_the_head_input_is_the_concat_of_every_block(popularity, pairs, query_rows):
    rng = np.random.default_rng(len(pairs) + 2 * popularity + query_rows)
    n = 5
    candidate = [k for k in CANDIDATE_PARTS if popularity or k != "popularity"]
    width = {k: 1 if k in PAIR_SCORES else w  # a pair score is one column
             for k, w in zip(PARTS, itertools.cycle([3, 1, 2, 4]))}
    export = types.SimpleNamespace(names=[k for k in PARTS if k in candidate],
                                   widths=[width[k] for k in PARTS if k in candidate])
    query = [k for k in PARTS if k not in CANDIDATE_PARTS and k not in PAIR_SCORES]
    parts = {k: tf.constant(rng.normal(size=(query_rows, width[k])), tf.float32) for k in query}
    parts.update({k: tf.constant(rng.normal(size=(n, width[k])), tf.float32) for k in pairs})
    gathered = tf.constant(rng.normal(size=(n, sum(export.widths))), tf.float32)
    got = ranking._Export._inputs(export, parts, gathered, n // query_rows)
    expected = reference(export, parts, gathered, n // query_rows)
    assert got.shape == expected.shape == (n, sum(width[k] for k in PARTS
                                                  if k in parts or k in candidate))
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
