"""The AnomalyGate on real TFDV anomalies against the checked-in schema."""

import pytest
import tensorflow_data_validation as tfdv
from tfx.utils import io_utils

from components.anomaly_gate.executor import AnomaliesFound, check_anomalies
from components.contract_example_gen import example_lib
from pipeline.pipeline import SCHEMA_FILE

ITEM = {"item_id": 1, "title": "A", "genres": ["drama"], "cast": [], "director": None,
        "release_year": 1999, "duration_seconds": 5400, "added_at": 0, "keywords": None}
USER = {"user_id": 7, "country": "US", "subscription_tier": "basic", "age_bucket": None}


def _anomalies_dir(tmp_path, device: str, hour_ts: int = 1_700_000_000):
    feats = example_lib.query_features(USER, hour_ts, device, [3, 2])
    feats.update(example_lib.candidate_features(ITEM))
    feats["timestamp"] = example_lib._ints([hour_ts])
    feats["watch_seconds"] = example_lib._floats([600.0])
    feats["position"] = example_lib._ints([1])
    import tensorflow as tf
    example = tf.train.Example(features=tf.train.Features(feature=feats))
    records = tmp_path / "data.tfrecord"
    with tf.io.TFRecordWriter(str(records)) as w:
        for _ in range(5):
            w.write(example.SerializeToString())
    stats = tfdv.generate_statistics_from_tfrecord(str(records))
    anomalies = tfdv.validate_statistics(stats, io_utils.SchemaReader().read(SCHEMA_FILE))
    out = tmp_path / "anomalies" / "Split-eval"
    out.mkdir(parents=True)
    (out / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())
    return tmp_path / "anomalies"


def test_clean_examples_pass(tmp_path):
    check_anomalies(str(_anomalies_dir(tmp_path, "tv")))


def test_unknown_device_stops_the_run_naming_the_feature(tmp_path):
    with pytest.raises(AnomaliesFound, match=r"eval: feature 'device'.*smart-fridge"):
        check_anomalies(str(_anomalies_dir(tmp_path, "smart-fridge")))
