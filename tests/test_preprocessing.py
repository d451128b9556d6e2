"""preprocessing_fn on hand-made examples through tf.Transform's Beam implementation.

Train data (4 examples): users 7, 7, 7, 9; items 100, 100, 100, 200; release years
2000, 2010, missing (absent, as the ExampleGen writes an unknown year), 2020. Expected by hand:
- user vocabulary by frequency: "7" -> 0, "9" -> 1; an unseen user lands in an OOV bucket
  (index >= 2, < 2 + ID_OOV_BUCKETS) instead of failing.
- item vocabulary: "100" -> 0, "200" -> 1; history uses the same vocabulary.
- release year over the known values: mean 2010, std sqrt(200/3) = 8.165, so 2000 -> -1.2247,
  2020 -> +1.2247, missing -> 0.0 with the missing flag 1.
"""

import tempfile

import numpy as np
import pytest
import tensorflow_transform.beam as tft_beam
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import dataset_metadata
from tfx.utils import io_utils

from pipeline.pipeline import SCHEMA_FILE
from trainer import features as f
from trainer.preprocessing import ID_OOV_BUCKETS, preprocessing_fn

xf = f.transformed_name


def example(user, item, year, history=(), title="The Big Heat", genres=("drama",)):
    return {
        f.USER_ID: [user], f.COUNTRY: [b"US"], f.SUBSCRIPTION_TIER: [b"basic"],
        f.AGE_BUCKET: [b""], f.DEVICE: [b"tv"], f.HOUR: [21], f.DAY_OF_WEEK: [4],
        f.HISTORY: list(history), f.ITEM_ID: [item], f.DIRECTOR: [b"F. Lang"],
        f.TITLE: [title.encode()], f.RELEASE_YEAR: [] if year is None else [year],
        f.DURATION_SECONDS: [5400],
        f.GENRES: [g.encode() for g in genres], f.CAST: [b"G. Ford"], f.KEYWORDS: [],
        f.TIMESTAMP: [1_700_000_000], f.WATCH_SECONDS: [600.0], f.POSITION: [1],
    }


def _schema() -> schema_pb2.Schema:
    return io_utils.SchemaReader().read(SCHEMA_FILE)


# Both of Transform's modes (data.transform_tf_compat_v1): every expectation holds in each.
@pytest.fixture(scope="module", params=[True, False], ids=["compat_v1", "tf2"])
def transformed(request):
    train = [example(7, 100, 2000), example(7, 100, 2010, history=[100]),
             example(7, 100, None, history=[100, 100]), example(9, 200, 2020)]
    test = [example(5, 999, 2000, history=[200, 12345], title="Heat: The Return!")]
    meta = dataset_metadata.DatasetMetadata(_schema())
    with tempfile.TemporaryDirectory() as tmp, tft_beam.Context(
            temp_dir=tmp, force_tf_compat_v1=request.param):
        (train_out, _), transform_fn = (
            train, meta) | tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn)
        test_out, _ = ((test, meta), transform_fn) | \
            tft_beam.TransformDataset()
    return train_out, test_out


def test_id_vocabularies_and_oov(transformed):
    train, test = transformed
    assert [int(r[xf(f.USER_ID)]) for r in train] == [0, 0, 0, 1]
    assert [int(r[xf(f.ITEM_ID)]) for r in train] == [0, 0, 0, 1]
    # unseen user 5 and item 999: OOV buckets after the 2-entry vocabularies
    assert 2 <= int(test[0][xf(f.USER_ID)]) < 2 + ID_OOV_BUCKETS
    assert 2 <= int(test[0][xf(f.ITEM_ID)]) < 2 + ID_OOV_BUCKETS


def test_history_shares_the_item_vocabulary(transformed):
    train, test = transformed
    assert list(train[2][xf(f.HISTORY)]) == [0, 0]
    hist = list(test[0][xf(f.HISTORY)])
    assert hist[0] == 1 and 2 <= hist[1] < 2 + ID_OOV_BUCKETS  # 200 known, 12345 OOV


def test_release_year_scaled_over_known_values(transformed):
    train, _ = transformed
    std = np.sqrt(200 / 3)
    np.testing.assert_allclose(
        [float(r[xf(f.RELEASE_YEAR)]) for r in train], [-10 / std, 0.0, 0.0, 10 / std],
        atol=1e-4)
    assert [float(r[xf(f.RELEASE_YEAR) + "_missing"]) for r in train] == [0, 0, 1, 0]


def test_title_tokens_lowercased_and_split(transformed):
    train, test = transformed
    # train titles are all "The Big Heat": 3 tokens in the vocabulary
    assert len(train[0][xf(f.TITLE_TOKENS)]) == 3
    # "Heat: The Return!" -> heat, the (known), return (OOV): 3 tokens, 2 in vocabulary
    tokens = list(test[0][xf(f.TITLE_TOKENS)])
    assert len(tokens) == 3 and sum(t < 3 for t in tokens) == 2


def test_context_buckets_pass_through(transformed):
    train, _ = transformed
    assert int(train[0][xf(f.HOUR)]) == 21 and int(train[0][xf(f.DAY_OF_WEEK)]) == 4


@pytest.mark.parametrize("compat_v1", [True, False], ids=["compat_v1", "tf2"])
def test_hashed_user_ids_need_no_vocabulary(compat_v1):
    # data.user_id_hash_buckets = 8: each user's index is the FarmHash bucket of its decimal
    # string (TensorFlow's own op, the reference), the same for a user unseen in train, and the
    # items keep their vocabulary.
    import functools

    import tensorflow as tf

    from marquee.config import from_dict

    config = {"config": from_dict({"data": {"user_id_hash_buckets": 8}}).to_json()}
    train = [example(7, 100, 2000), example(9, 200, 2020), example(7, 100, 2010)]
    test = [example(5, 200, 2000)]
    meta = dataset_metadata.DatasetMetadata(_schema())
    fn = functools.partial(preprocessing_fn, custom_config=config)
    with tempfile.TemporaryDirectory() as tmp, tft_beam.Context(
            temp_dir=tmp, force_tf_compat_v1=compat_v1):
        (train_out, _), transform_fn = (train, meta) | tft_beam.AnalyzeAndTransformDataset(fn)
        test_out, _ = ((test, meta), transform_fn) | tft_beam.TransformDataset()
    expected = tf.strings.to_hash_bucket_fast(["7", "9", "7", "5"], 8).numpy().tolist()
    got = [int(np.ravel(r[xf(f.USER_ID)])[0]) for r in train_out + test_out]
    assert got == expected and all(0 <= g < 8 for g in got)
    assert [int(np.ravel(r[xf(f.ITEM_ID)])[0]) for r in train_out] == [0, 1, 0]


def test_hash_buckets_config_says_what_it_expects():
    from marquee.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="user_id_hash_buckets: expected 0"):
        from_dict({"data": {"user_id_hash_buckets": -1}})
