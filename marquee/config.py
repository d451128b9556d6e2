"""Typed configuration: one YAML file, loaded into frozen dataclasses.

Every knob the pipeline and serving read lives here with its default. A config file only lists
what it changes::

    retrieval:
      epochs: 5
      embedding_dim: 64
    index:
      min_recall_at_100: 0.95

An unknown section or key is an error that names the valid ones (a typo never silently falls back
to a default).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import yaml

from marquee.experiments.config import ExperimentConfig
from marquee.monitoring.config import MonitorConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # Largest share of rejected rows per table before a run stops.
    max_bad_share: float = 0.01
    # Interactions in the last `eval_fraction` of the time span go to eval; the rest to train.
    eval_fraction: float = 0.1
    # Fixed cutoff (UTC seconds) instead of `eval_fraction`; eval is timestamp >= cutoff.
    eval_cutoff: int | None = None
    # Items in a user's history feature (the last N watches before the event).
    history_length: int = 20
    # A watch counts as a retrieval positive from this many seconds on.
    min_watch_seconds: float = 120.0
    # How the Transform graph indexes user ids: 0 = a vocabulary of the train split's users
    # (plus the out-of-vocabulary buckets); N > 0 = a hash of the id into N buckets, with no
    # vocabulary to compute or hold (100M users), at the cost of collisions (N = 2^20 for
    # millions of users). Both towers and the ranker read the same index.
    user_id_hash_buckets: int = 0
    # Run the Transform component in TensorFlow's graph (compat.v1) mode: the same
    # preprocessing_fn and vocabularies, the transformed features equal to 1e-6
    # (tests/test_preprocessing.py runs both modes), a v1 SavedModel in the Transform graph.
    # TF2 mode traces the preprocessing_fn as tf.functions and writes and reloads TF2
    # SavedModels for each analysis phase; on MovieLens 100K the Transform took 25.4 s this
    # way against 30.8 s, and the components that load the graph (the towers, the ranker, the
    # evaluator) loaded it faster (docs/performance.md). False: TF2 mode.
    transform_tf_compat_v1: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.user_id_hash_buckets, int) and self.user_id_hash_buckets >= 0):
            raise ValueError("user_id_hash_buckets: expected 0 (a vocabulary) or a number of "
                             f"buckets >= 1 (e.g. 1048576), got {self.user_id_hash_buckets!r}")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
    embedding_dim: int = 64
    # Width of the hidden layer in each tower (0 = no hidden layer).
    hidden_dim: int = 128
    epochs: int = 8
    batch_size: int = 1024
    # Adam learning rate.
    learning_rate: float = 0.01
    # Softmax temperature for the in-batch loss.
    temperature: float = 0.1
    # Subtract log(sampling probability) from in-batch logits (log-Q correction).
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    # Stop when the eval loss has not improved for this many epochs.
    early_stopping_patience: int = 2
    # Rows of the vocabulary-free hash buckets for out-of-vocabulary ids.
    oov_buckets: int = 10
    seed: int = 0
    # Training speed (issue 18; bench/bench_training.py compares with the Trainer before it).
    # Parse the train and eval splits once and keep them in memory (about 0.5 KB a MovieLens
    # example), in a new uniform order every epoch. False streams and parses the gzipped
    # TFRecords every epoch through a 50,000-record shuffle buffer, for splits that do not fit
    # in memory; on 2 cores that parse competes with the training step for the CPU.
    in_memory: bool = True
    # Training steps per tf.function call (Keras steps_per_execution): fewer Python round trips.
    steps_per_execution: int = 16
    # Compile the in-batch softmax (the [batch, batch] score matrix: temperature, log-Q,
    # accidental-hit mask, cross-entropy) and its gradient with XLA, once per batch shape. Off:
    # on 2 CPU cores with today's plain-ops loss it no longer pays for its compiles
    # (bench/bench_training.py, seeds 0-4 side by side: 53.1K ex/s over a whole fit with it,
    # 56.5K without; steady 78.5K and 79.5K; the same Recall@20).
    jit_compile_loss: bool = False


@dataclasses.dataclass(frozen=True)
class RankingConfig:
    # A watch of at least this many seconds is a ranking positive (the ``watched`` head's
    # label); shorter watches are real negatives. The contract's default: past 2 minutes.
    min_watch_seconds: float = 120.0
    # Negatives per positive in the ranking examples.
    negatives_per_positive: int = 4
    # Share of those negatives drawn from the user's shown-but-not-watched impressions; the rest
    # (and any shortfall) are random catalogue items the user never watched.
    impression_negative_share: float = 0.5
    # Random negatives are drawn with P(item) proportional to (its train-period positives + 1)
    # to this power: 0 = uniform. Uniform negatives let the ranker score mostly by popularity,
    # which narrows what the served blend shows; 0.5 keeps it personal (configs/movielens.yaml).
    random_negative_popularity_exponent: float = 0.0
    # Hard negatives added by the RankingTrainer per positive: items drawn uniformly from the
    # retrieval model's top ``retrieval_negative_top_n`` for the positive's query that the user
    # never watched (trainer/negatives.py), so the ranker learns to order plausible candidates,
    # which is what it sees at serving. 0 = none.
    retrieval_negatives_per_positive: int = 0
    retrieval_negative_top_n: int = 100
    # Feed the two-tower score of the pair to the ranker. On the ranker's training examples it
    # is in-sample (the towers were fitted on the same positives), so it can be inflated there.
    use_retrieval_score: bool = True
    # Feed the pair's ALS score to the ranker when the pipeline trains ALS (als.enabled). Its
    # training rows are scored out of fold (trainer/als_feature.py): each by one of
    # ``als_score_folds`` ALS models fitted without the row's (user, title) fold, as serving
    # scores a candidate the model never saw; in-sample scores wrecked the ranker.
    use_als_score: bool = True
    als_score_folds: int = 5
    # Give the ranker the item's train-period counts (log positives, log examples and the
    # positive rate smoothed towards the global one with ``popularity_prior_count`` pseudo
    # examples), looked up inside the exported model by item id. A training row's own label is
    # left out of its item's counts (leave-one-out), so the feature means on train what it means
    # at serving. Off: measured on MovieLens 100K (same towers), it lifts the rank_eval AUC
    # (0.8723 -> 0.8772) but the ranker then orders the retrieved candidates by popularity:
    # alone, its test NDCG@20 falls 0.1687 -> 0.1185 and the tuned blend drops it (weight 0).
    # On the simulated default it changes nothing (AUC 0.8106 vs 0.8096).
    item_popularity_features: bool = False
    popularity_prior_count: float = 10.0
    embedding_dim: int = 32
    cross_layers: int = 2
    # Rank of each cross layer's weight matrix (DCN-v2's low-rank cross: x0 * (V(U x) + b) + x,
    # U and V of [features, rank]); 0 = full rank, a [features, features] matrix a layer.
    # With the deep tower below, a candidate costs 29.5K multiply-adds instead of 179K (full
    # rank, 256/128): on MovieLens 100K (bench/bench_ranker.py, seeds 0-1) rank_by_id on 1,000
    # candidates took 2.89 instead of 4.57 ms p50, for rank_eval AUC 0.8547 vs 0.8570 and log
    # loss 0.3840 vs 0.3807 (docs/performance.md).
    cross_projection_dim: int = 16
    deep_layers: tuple[int, ...] = (64, 32)
    # One epoch: on the simulated default a second one already overfits (rank_eval AUC
    # 0.809 -> 0.787, calibration 1.02 -> 1.22) although the time-carved validation improves.
    epochs: int = 1
    # Early stopping watches the binary loss on the latest share of the train examples.
    validation_share: float = 0.1
    early_stopping_patience: int = 1
    batch_size: int = 1024
    learning_rate: float = 0.001
    # Loss = watched_weight * BCE(watched past 2 min) + watch_time_weight * MSE(log1p seconds).
    watched_weight: float = 1.0
    watch_time_weight: float = 0.1
    # Page positions get their own bias (the shallow position tower); higher ones share the last.
    position_buckets: int = 30
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.cross_projection_dim, int) and self.cross_projection_dim >= 0):
            raise ValueError("cross_projection_dim: expected an integer >= 0 (the rank of each "
                             "cross layer's weights; 0 = full rank), got "
                             f"{self.cross_projection_dim!r}")
        if not (isinstance(self.als_score_folds, int) and self.als_score_folds >= 2):
            raise ValueError("als_score_folds: expected an integer >= 2 (each fold's training "
                             "rows are scored by an ALS model fitted without them), got "
                             f"{self.als_score_folds!r}")


@dataclasses.dataclass(frozen=True)
class AlsConfig:
    """The ALS candidate source's model (components/als_trainer): implicit-feedback ALS on the
    retrieval train split's positives, its item factors pushed with the towers."""

    # Train it in the pipeline (off: no `als` model is pushed and the `als` source answers
    # nothing).
    enabled: bool = True
    factors: int = 128
    regularization: float = 10.0
    # A positive's confidence (the unobserved cells have 1).
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 0
    # A ScaNN index over the item factors (components/als_trainer/als_lib.build_index, with the
    # `index:` settings), so serving searches it instead of scoring every title: at 500K x 128
    # that score reads 256 MB a request (10 ms alone, 30 ms in a page). Built when the titles
    # with factors are enough for a tree (index.brute_force_below).
    index: bool = True
    # The most leaves a search of it visits; the tuning (index.tune_leaves) lowers it. ALS
    # factors are not normalised, so a title with a large norm can be any user's best, and a
    # tree finds those only by visiting most leaves: at 500K simulated titles (80K with factors)
    # 20% of the leaves gave recall@100 0.91, 50% 0.94, the tuned 87% 0.96 in 0.44 ms.
    index_leaves_to_search_share: float = 1.0

    def __post_init__(self) -> None:
        checks = (("factors", self.factors >= 1, "an integer >= 1"),
                  ("index_leaves_to_search_share", 0 < self.index_leaves_to_search_share <= 1,
                   "a number in (0, 1]"),
                  ("regularization", self.regularization > 0, "a number > 0"),
                  ("alpha", self.alpha > 0, "a number > 0 (1: no extra confidence)"),
                  ("iterations", self.iterations >= 1, "an integer >= 1"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    # A ranking model is blessed only if its eval AUC beats the baseline's (the last blessed
    # model, or the popularity baseline the first time) by more than this...
    min_auc_gain: float = 0.0
    # ...and its log loss is at most the baseline's times (1 + this).
    max_logloss_increase: float = 0.0
    # Eval examples scored (keeps evaluation fast on big data).
    max_examples: int = 200_000


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    # Neighbours retrieved per query and used for the recall check.
    num_neighbors: int = 100
    # The index is blessed only when recall@num_neighbors vs brute force reaches this...
    min_recall: float = 0.95
    # ...and the median single-query search latency stays under this.
    max_latency_ms: float = 20.0
    # Held-out queries used to measure recall and latency.
    eval_queries: int = 500
    # Items per leaf the tree aims for (leaves scale with catalogue size).
    items_per_leaf: int = 100
    # Share of leaves searched per query.
    leaves_to_search_share: float = 0.2
    # Candidates re-scored exactly after asymmetric hashing (a search re-scores at least twice
    # the neighbours it asks for: marquee.retrieval_index.REORDER_PER_NEIGHBOUR).
    reorder: int = 400
    # The tree has at most this many leaves: above 200,000 items (at items_per_leaf 100) leaves
    # grow instead. At 500K x 64, top-1000 (serving asks for its collaborative quota 600 plus the
    # user's watched titles), 20% of leaves searched, 2,000 re-scored, one query at a time
    # (bench/bench_ann.py --sweep): 2,000 leaves gave recall@1000 0.965 in
    # 0.44 ms on clustered Gaussians and 0.969 in 0.39 ms on a real candidate tower's embeddings;
    # 5,000 leaves 0.997 / 0.957 in 0.65 / 0.58 ms (built in 117 s, not 50 s); 1,000 leaves needed
    # 30% for 0.959 / 0.969.
    max_leaves: int = 2000
    # Dimensions per asymmetric-hashing block (16 centres each: 4 bits a dimension at 1). ScaNN's
    # usual 2 halves the scoring work, but its coarser scores miss more of the true top-1000: at
    # 500K, 5,000 leaves, 20% searched, 2,000 re-scored: recall@1000 0.979 / 0.946 (Gaussians /
    # real tower) with 2, 0.997 / 0.957 with 1.
    dims_per_block: int = 1
    # After the build, the ScannIndexer lowers the leaves a search visits to the fewest whose
    # recall on ``tune_queries`` held-out queries (other than the eval ones) still reaches
    # min_recall + tune_margin, both at num_neighbors and at tune_k (serving asks for its
    # collaborative quota 600 plus the user's watched titles): leaves_to_search_share is then the
    # most a search visits. A catalogue whose embeddings separate well needs far fewer leaves than
    # a clustered one (bench/bench_ann.py). False: always leaves_to_search_share.
    tune_leaves: bool = True
    tune_k: int = 1000
    tune_margin: float = 0.01
    tune_queries: int = 250
    # Catalogues smaller than this are searched exactly (ScaNN brute force): exact search over a
    # few thousand items costs microseconds, while a tree over them scores too few items for
    # recall@100 >= 0.95 (measured 0.74-0.92 at 2,000-3,000 clustered items, >= 0.99 at 5,000).
    brute_force_below: int = 4000
    seed: int = 0


DIRECT_RUNNING_MODES = ("auto", "in_memory", "multi_threading", "multi_processing")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    # DirectRunner, DataflowRunner, FlinkRunner, SparkRunner or PortableRunner.
    runner: str = "DirectRunner"
    # DirectRunner workers for multi_processing and multi_threading; 0 means one per core.
    direct_num_workers: int = 0
    # auto, in_memory, multi_threading or multi_processing. auto: in_memory (one process, no
    # workers to start) when the dataset's interactions table has fewer than in_memory_below
    # rows, else multi_processing. On 2 cores the MovieLens 100K pipeline ran in 155 s
    # in_memory against 169 s multi_processing: each Beam step's worker processes start and
    # import TensorFlow, and a split of one gzipped file is read by one worker anyway
    # (docs/performance.md). Kubeflow, whose data_dir is a runtime parameter, resolves auto to
    # multi_processing.
    direct_running_mode: str = "auto"
    in_memory_below: int = 1_000_000
    # Extra pipeline options passed through to Beam, e.g. ["--project=p", "--region=r"].
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.direct_running_mode not in DIRECT_RUNNING_MODES:
            raise ValueError(f"direct_running_mode: expected one of "
                             f"{', '.join(DIRECT_RUNNING_MODES)}, got {self.direct_running_mode!r}")
        if not (isinstance(self.in_memory_below, int) and self.in_memory_below >= 0):
            raise ValueError("in_memory_below: expected a number of interactions >= 0 (0: auto "
                             f"never picks in_memory), got {self.in_memory_below!r}")

    def running_mode(self, interactions: int | None) -> str:
        """The DirectRunner mode for a dataset of ``interactions`` rows (None: not known)."""
        if self.direct_running_mode != "auto":
            return self.direct_running_mode
        small = interactions is not None and interactions < self.in_memory_below
        return "in_memory" if small else "multi_processing"


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """One candidate source of the homepage (``serving.sources``)."""

    # collaborative, als, content, trending or item_to_item.
    name: str
    # Most candidates it adds to the merged list (round robin, after dedupe).
    quota: int
    # With serving.parallel_sources it is skipped (named in the page's `skipped`) when it
    # answers later than this; on the request's thread (the default) a later answer is kept and
    # logged, and the sources after it are skipped once the request's budget is spent.
    deadline_ms: float = 40.0
    # Cold-start stages (serving.homepage.cold_start: new, light, full) of the users it answers.
    stages: tuple[str, ...] = ("new", "light", "full")


@dataclasses.dataclass(frozen=True)
class TokenConfig:
    """Where the bearer token of one scope comes from: an environment variable or a file (its
    first line). Scopes: ``events`` (POST /v1/events and onboarding answers: the app backend),
    ``admin`` (titles and signups; also grants ``events`` and ``read``), ``read`` (the homepage,
    only when ``auth.require_read_token``)."""

    scope: str
    env: str | None = None
    file: str | None = None


@dataclasses.dataclass(frozen=True)
class AuthConfig:
    tokens: tuple[TokenConfig, ...] = (
        TokenConfig("events", env="MARQUEE_EVENTS_TOKEN"),
        TokenConfig("admin", env="MARQUEE_ADMIN_TOKEN"),
        TokenConfig("read", env="MARQUEE_READ_TOKEN"),
    )
    # Reads (homepages) need a `read` (or higher) token too; open by default.
    require_read_token: bool = False


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    """Bounds the HTTP server puts on every client (serving/api)."""

    # Write requests per second per client (its token, else its address), and the burst above
    # it; more is a 429 with Retry-After.
    write_rate_per_second: float = 500.0
    write_burst: int = 1000
    # Largest request body and request head (line plus headers), bytes.
    max_body_bytes: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    # Deepest nesting of a JSON body (objects and arrays).
    max_json_depth: int = 8
    # Seconds a client may take to send its body, and an idle keep-alive connection is kept.
    read_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 5.0
    # An event, title or signup dated more than this many seconds ahead of the server's clock is
    # refused (a far-future event would drive trending).
    max_future_skew_seconds: float = 300.0
    # Seconds SIGTERM/SIGINT waits for requests in flight before the log is closed (the
    # Kubernetes manifest's terminationGracePeriodSeconds is above it, with its preStop).
    shutdown_grace_seconds: float = 15.0


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    # Titles on a homepage.
    k: int = 50
    # Most merged candidates (of all sources) scored by the ranker in one batched call.
    candidates: int = 1000
    # Budget of a whole request, and of the two model calls within it.
    deadline_ms: float = 200.0
    query_deadline_ms: float = 60.0
    rank_deadline_ms: float = 120.0
    # Items in the query's history (must match data.history_length used in training).
    history_length: int = 20
    # Weight of the ranker in the final score against the retrieval score (see
    # serving.homepage.ranking.blend); `marquee evaluate --tune-blend` chooses it on a
    # validation split.
    ranker_weight: float = 1.0
    # Two more signals of the final score (serving.homepage.ranking.blend), chosen with the
    # ranker weight on a validation split by `marquee evaluate`: every candidate's item-to-item
    # score (co-watch similarity to the last watches) is added with this weight, and its log
    # popularity (train positives) subtracted with the next one, which keeps the catalogue
    # exposure wide. 0 = off.
    item_to_item_weight: float = 0.0
    popularity_weight: float = 0.0
    # And the ALS score (the user's vector folded in from their positives at request time, dot
    # the title's factors; serving.sources.als), added with this weight. 0 = off.
    als_weight: float = 0.0
    # Calibrated exposure (serving.homepage.exposure): each candidate's exposure in the table
    # `exposure_file` (a Parquet file of item_id, exposure: how often the title is in the top
    # 50 of this stack's pages over the known users; `marquee evaluate` writes it) is
    # subtracted, as z(log(1 + exposure)), with this weight. It widens the catalogue shown by
    # pushing down only the titles that are over-shown. 0 = off.
    exposure_weight: float = 0.0
    exposure_file: str = ""
    # Consecutive failures that open a model's circuit breaker, and seconds before a probe.
    breaker_failures: int = 5
    breaker_reset_seconds: float = 10.0
    # Candidate sources, merged in this order (each takes a turn) up to their quotas.
    sources: tuple[SourceConfig, ...] = (
        SourceConfig("collaborative", 600, stages=("full",)),
        SourceConfig("als", 200, stages=("light", "full")),
        SourceConfig("item_to_item", 200, stages=("light", "full")),
        SourceConfig("content", 100, stages=("light", "full")),
        SourceConfig("trending", 100),
    )
    # Where the sources run. false (the default): one after another on the request's thread;
    # a source's deadline is then not a cut-off, only reported (a late source is logged and
    # kept). true: at once on a shared thread pool, each cut off at its deadline (its thread runs
    # on; the answer is dropped). Most of a source's time holds Python's GIL, so on 2 cores the
    # threads cost more than they save: at 500K titles, 300 requests each way, alternating, a
    # page took p50 / p99 15.1 / 18.1 ms on the request's thread against 15.7 / 19.4 ms on the
    # pool, and 2 clients got 76.7 against 67.2 pages/s (docs/performance.md).
    parallel_sources: bool = False
    # Half-life of a watch in the trending score (serving.sources.trending).
    trending_half_life_days: float = 3.0
    # Seconds between recomputations of trending from the loaded interactions plus the events
    # accepted since (POST /v1/events), without retraining; 0 = never.
    trending_refresh_seconds: float = 300.0
    # Re-rank steps in order, each {"step": NAME, ...arguments} (serving.rerank.STEPS); also
    # block_list {"item_ids": [...]}. Freshness adds to the score: final scores are z-scores.
    rerank: tuple[dict, ...] = (
        {"step": "exclude_watched"},
        {"step": "maturity"},
        {"step": "freshness", "days": 14.0, "boost": 0.5, "mode": "add"},
        {"step": "max_per_genre", "n": 10},
        {"step": "mmr", "lam": 0.8, "k": 50},
        {"step": "exploration", "share": 0.05},
    )
    # Positive watches where the cold-start stages `light` and `full` begin (0 watches: `new`).
    light_from: int = 1
    full_from: int = 5
    # Genres a user picks in the onboarding quiz (POST /v1/users/{id}/onboarding).
    onboarding_genres: int = 3
    # "Because you watched X" rows: one per recent watch (0 = none), of this many titles each.
    because_you_watched: int = 3
    row_k: int = 10
    # Titles added within this many days of the request form the exploration step's pool.
    explore_new_days: int = 14
    # Seconds a default-size homepage stays cached per (user, pushed version); a watch by the
    # user invalidates it at once (serving/state/feature_store.py). 0 turns the cache off.
    cache_ttl_seconds: float = 300.0
    # Who may call which route, and the bounds on every client.
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    # Online experiments (marquee/experiments/config.py): A/B tests and interleaving, each arm an
    # override of these settings and/or a pushed model version. Pages served while any is
    # configured log their impressions (--event-log is then required).
    experiments: tuple[ExperimentConfig, ...] = ()
    # With --event-log, every page served is logged as impression rows (page, experiment, arm;
    # serving/ingest/exposures.py) for the next pipeline run and experiment analyses.
    log_impressions: bool = True

    def __post_init__(self) -> None:
        if self.exposure_weight < 0:
            raise ValueError(f"serving.exposure_weight must be >= 0, got "
                             f"{self.exposure_weight}; 0 turns calibrated exposure off")
        if self.exposure_weight and not self.exposure_file:
            raise ValueError(f"serving.exposure_weight is {self.exposure_weight} but "
                             "serving.exposure_file is empty: give the exposure table "
                             "`marquee evaluate` wrote (OUT/exposure.parquet), or set the "
                             "weight to 0")


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ranking: RankingConfig = RankingConfig()
    als: AlsConfig = AlsConfig()
    evaluator: EvaluatorConfig = EvaluatorConfig()
    index: IndexConfig = IndexConfig()
    beam: BeamConfig = BeamConfig()
    serving: ServingConfig = ServingConfig()
    monitor: MonitorConfig = MonitorConfig()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return from_dict(json.loads(text))


class ConfigError(ValueError):
    pass


def _coerce(where: str, value, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(f"{where}[{n}]", v, args[0]) for n, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{where}: expected {hint.__name__}, got {value!r} ({type(value).__name__})"
        )
    return value


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - fields
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"valid ones are {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = _coerce(f"{where}.{name}" if where else name, value, hint)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a section's own check (__post_init__): said as a config error
        raise ConfigError(f"{where or 'config'}: {e}") from e


def from_dict(raw: dict | None) -> Config:
    return _build(Config, raw or {}, "")


def load_config(path: str | Path | None) -> Config:
    """Loads a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def with_overrides(base, changes: dict, where: str):
    """``base`` (a config dataclass) with the settings in ``changes`` (a partial mapping of the
    same section, checked like a config file's) replaced; an unknown key is a ConfigError
    naming the valid ones."""
    parsed = _build(type(base), changes, where)
    return dataclasses.replace(base, **{name: getattr(parsed, name) for name in changes})
