"""The one pipeline factory. Runners (local, Kubeflow) only choose roots, metadata and Beam args.

    ContractExampleGen -> StatisticsGen -> ExampleValidator (curated schema) ------> AnomalyGate
                                       -> DistributionValidator (vs BaselineStatistics) --^
      -> Transform -> Trainer (two-tower) -> ScannIndexer ----------------------> ModelPusher
                                          -> AlsTrainer (item factors, als.enabled) --^
                                                  | (the ranker's ALS feature)         |
                   -> RankingTrainer (multi-task) -> RankingEvaluator (vs last blessed) --^
                                                                     EmbeddingDrift <--'

BaselineStatistics resolves the latest statistics an AnomalyGate accepted in an earlier run of
this pipeline (same pipeline root and metadata): the drift baseline (marquee/monitoring/drift.py).
"""

from __future__ import annotations

from pathlib import Path

from tfx import v1 as tfx
from tfx.components.distribution_validator.component import DistributionValidator
from tfx.proto import transform_pb2
from tfx.utils import io_utils

from components.als_trainer.component import AlsTrainer
from components.anomaly_gate.component import AnomalyGate
from components.anomaly_gate.executor import BASELINE_STATISTICS
from components.contract_example_gen.component import ContractExampleGen
from components.contract_example_gen.example_lib import (
    CATALOGUE,
    EVAL,
    RANK_EVAL,
    RANK_TRAIN,
    TRAIN,
)
from components.embedding_drift.component import EmbeddingDrift
from components.model_pusher.component import ModelPusher
from components.ranking_evaluator.component import RankingEvaluator
from components.ranking_trainer.component import RankingTrainer
from components.scann_indexer.component import ScannIndexer
from marquee.config import BeamConfig, Config
from marquee.monitoring.drift import DRIFT_SPLITS, validator_config

SCHEMA_FILE = str(Path(__file__).resolve().parent / "schema" / "schema.pbtxt")
PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RETRIEVAL_RUN_FN = "trainer.retrieval.run_fn"
RANKING_RUN_FN = "trainer.ranking.run_fn"
GATE = "AnomalyGate"


# Beam (2.6x on) offers a DirectRunner pipeline first to its Prism runner: it converts the whole
# pipeline to its proto form (1.8 s for the Transform on MovieLens 100K, 2.7 s over a run's Beam
# steps) and downloads Prism's Go binary from GitHub. Where that fails (no network, as here) it
# falls back to the FnApiRunner; where it works, the run is on another runner than the one
# this project tests and tunes, which ignores beam.direct_running_mode. Beam's DirectRunner
# leaves Prism out of any pipeline that allows unsafe triggers; no step here sets a trigger
# (batch, global windows, the default trigger), so the option changes nothing else.
NO_PRISM = "--allow_unsafe_triggers"


def beam_args(beam: BeamConfig, cores: int, interactions: int | None = None) -> list[str]:
    """Beam pipeline options from config. The DirectRunner runs without trying Prism first
    (``NO_PRISM``), in ``beam.running_mode`` for a dataset of ``interactions`` rows (None: not
    known), with one worker per core by default (in_memory runs one)."""
    if beam.runner != "DirectRunner":
        return [f"--runner={beam.runner}", *beam.extra_args]
    mode = beam.running_mode(interactions)
    workers = 1 if mode == "in_memory" else beam.direct_num_workers or cores
    return ["--runner=DirectRunner", f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}", NO_PRISM, *beam.extra_args]


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_dir: str,
    serving_dir: str,
    config: Config,
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
) -> tfx.dsl.Pipeline:
    example_gen = ContractExampleGen(data_dir=data_dir, config=config)
    examples = example_gen.outputs["examples"]
    statistics = tfx.components.StatisticsGen(examples=examples, exclude_splits=[CATALOGUE])
    schema = tfx.components.ImportSchemaGen(schema_file=SCHEMA_FILE)
    validator = tfx.components.ExampleValidator(
        statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"],
        exclude_splits=[CATALOGUE])
    # A plain Channel (not the gate's output channel) queries every run's artifacts, so the
    # resolver sees earlier runs' accepted statistics and this run's gate stays downstream.
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        statistics=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ExampleStatistics,
                                   producer_component_id=GATE, output_key=BASELINE_STATISTICS),
    ).with_id("BaselineStatistics")
    drift = DistributionValidator(
        statistics=statistics.outputs["statistics"],
        # optional: the first run has no baseline, and the validator then compares nothing
        baseline_statistics=baseline.outputs["statistics"].as_optional(),
        config=validator_config(io_utils.SchemaReader().read(SCHEMA_FILE), config.monitor),
        include_split_pairs=[(s, s) for s in DRIFT_SPLITS])
    gate = AnomalyGate(anomalies=validator.outputs["anomalies"],
                       statistics=statistics.outputs["statistics"],
                       drift_anomalies=drift.outputs["anomalies"], config=config).with_id(GATE)
    transform = tfx.components.Transform(
        examples=examples, schema=schema.outputs["schema"], preprocessing_fn=PREPROCESSING_FN,
        disable_statistics=True,  # StatisticsGen already profiles the examples
        force_tf_compat_v1=config.data.transform_tf_compat_v1,
        custom_config={"config": config.to_json()},  # data.user_id_hash_buckets
        splits_config=transform_pb2.SplitsConfig(analyze=[TRAIN],
                                                 transform=[TRAIN, EVAL, CATALOGUE]))
    transform.add_upstream_node(gate)
    trainer = tfx.components.Trainer(
        run_fn=RETRIEVAL_RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema.outputs["schema"],
        train_args=tfx.proto.TrainArgs(splits=[TRAIN]),
        eval_args=tfx.proto.EvalArgs(splits=[EVAL]),
        custom_config={"config": config.to_json()},
    )
    indexer = ScannIndexer(model=trainer.outputs["model"], examples=examples, config=config)
    als = (AlsTrainer(examples=examples, retrieval_model=trainer.outputs["model"], config=config)
           if config.als.enabled else None)
    ranking_trainer = RankingTrainer(
        run_fn=RANKING_RUN_FN,
        examples=examples,  # raw: the ranker applies the Transform graph inside the model
        transform_graph=transform.outputs["transform_graph"],
        base_model=trainer.outputs["model"],  # the retrieval towers give the retrieval score
        als_model=als.outputs["model"] if als and config.ranking.use_als_score else None,
        train_args=tfx.proto.TrainArgs(splits=[RANK_TRAIN]),
        eval_args=tfx.proto.EvalArgs(splits=[RANK_EVAL]),
        custom_config={"config": config.to_json()},
    ).with_id("RankingTrainer")
    last_blessed_ranker = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LastBlessedRanker")
    evaluator = RankingEvaluator(
        model=ranking_trainer.outputs["model"], examples=examples,
        retrieval_model=trainer.outputs["model"],
        baseline_model=last_blessed_ranker.outputs["model"], config=config,
        als_model=als.outputs["model"] if als else None)
    pusher = ModelPusher(model=trainer.outputs["model"], index=indexer.outputs["index"],
                         serving_dir=serving_dir,
                         ranking_model=ranking_trainer.outputs["model"],
                         ranking_blessing=evaluator.outputs["blessing"],
                         als_model=als.outputs["model"] if als else None)
    embedding_drift = EmbeddingDrift(pushed_model=pusher.outputs["pushed_model"],
                                     examples=examples, config=config)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics, schema, validator, baseline, drift, gate,
                    transform, trainer, indexer, *([als] if als else []), ranking_trainer,
                    last_blessed_ranker, evaluator, pusher, embedding_drift],
        enable_cache=False,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )
