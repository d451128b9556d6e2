"""TFX Trainer module for the two-tower retrieval model: ``run_fn`` trains, evaluates, exports.

Exports, under the Trainer's serving model directory::

    query_tower/       SavedModel; serving_default(raw query features) -> {"embedding": [B, dim]}
    candidate_tower/   SavedModel; serving_default(raw item features)  -> {"embedding": [B, dim]}
    metadata.json      training run id, config, metrics, item popularity (for the baseline)

Both SavedModels carry the Transform graph, so they take raw features. List features are dense
and padded: ``history`` int64 [B, H] padded with -1; genres / cast / keywords string [B, L] padded
with "". Every tower also carries ``assets.extra/marquee.json`` with the training run id, which
serving compares to the index's to refuse a mismatched pair.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from marquee import io as mio
from marquee.artifacts import EMBEDDING, EXPORT_INFO, HISTORY_PAD, LIST_PAD
from marquee.config import Config, RetrievalConfig
from trainer import features as f
from trainer.export import Export
from trainer.model import TwoTowerModel, VocabSizes
from trainer.preprocessing import ID_OOV_BUCKETS
from trainer.progress import Progress

xf = f.transformed_name
METADATA_FILE = "metadata.json"
# Cut-offs of the recall figures in the metadata (MovieLens is reported at 20).
RECALL_KS = (20, 100)
# Eval examples used for the brute-force recall figure (keeps the Trainer fast on big data).
MAX_EVAL_QUERIES = 20_000
# Examples in the shuffle buffer of both input paths. Not a uniform shuffle once a split is
# larger: on MovieLens 100K (91K train examples) a uniform order every epoch made the eval loss
# bottom out an epoch or two sooner and cost Recall@20 (seeds 3-9: median 0.199 vs 0.209).
SHUFFLE_BUFFER = 50_000
NO_TRAIN_EXAMPLES = "the train split has no examples; check the data and data.eval_fraction"


def _files(patterns: list[str]) -> list[str]:
    out = []
    for p in patterns:
        out.extend(sorted(tf.io.gfile.glob(p)))
    return out


def dataset(patterns: list[str], spec: dict, batch_size: int, shuffle_seed: int | None = None,
            reshuffle: bool = True):
    """Parsed, batched transformed examples. Examples are written grouped by user, so both
    train and eval are shuffled: an in-batch softmax over one user's own positives would be
    measuring something else (eval uses one fixed order, ``reshuffle=False``)."""
    files = _files(patterns)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle_seed is not None:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed, reshuffle_each_iteration=reshuffle)
    ds = ds.batch(batch_size).map(lambda s: tf.io.parse_example(s, spec),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_split(patterns: list[str], spec: dict) -> dict:
    """Every example of a split, parsed once, in file order: fixed-length features [N, 1],
    list features RaggedTensor [N, None]; {} for an empty split."""
    cols: dict[str, list] = {k: [] for k in spec}
    for batch in dataset(patterns, spec, 8192):
        for k, v in batch.items():
            cols[k].append(tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v)
    if not cols or not next(iter(cols.values())):
        return {}
    return {k: tf.concat(v, axis=0) for k, v in cols.items()}


def in_memory_dataset(examples: dict, batch_size: int, shuffle_seed: int | None = None,
                      reshuffle: bool = True):
    """Batches of ``load_split`` output, equal to the batches ``dataset`` reads from the same
    files with the same seed (list features as SparseTensor [B, longest in the batch]): only
    the int64 row numbers go through the shuffle buffer, and each batch is one gather per
    feature. The number of batches is known."""
    n = int(next(iter(examples.values())).shape[0])
    order = tf.data.Dataset.range(n)
    if shuffle_seed is not None:
        order = order.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed,
                              reshuffle_each_iteration=reshuffle)

    def take(rows: tf.Tensor) -> dict:
        return {k: tf.gather(v, rows).to_sparse() if isinstance(v, tf.RaggedTensor)
                else tf.gather(v, rows) for k, v in examples.items()}

    ds = order.batch(batch_size).map(take, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle_seed is None or not reshuffle:  # one fixed order: built once
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE)


def vocab_sizes(tft_out: tft.TFTransformOutput, user_buckets: int = 0) -> VocabSizes:
    """Each table's rows; ``user_buckets``: the run's ``data.user_id_hash_buckets`` (the Transform
    graph then hashes user ids and has no user vocabulary)."""
    def size(name: str, oov: int) -> int:
        return tft_out.vocabulary_size_by_name(name) + oov

    return VocabSizes(
        user_id=user_buckets or size(f.USER_VOCAB, ID_OOV_BUCKETS),
        item_id=size(f.ITEM_VOCAB, ID_OOV_BUCKETS),
        title_tokens=size(f.vocab_name(f.TITLE_TOKENS), 1),
        **{k: size(f.vocab_name(k), 1) for k in (
            f.COUNTRY, f.SUBSCRIPTION_TIER, f.AGE_BUCKET, f.DEVICE, f.DIRECTOR,
            f.GENRES, f.CAST, f.KEYWORDS)},
    )


def _scan(ds) -> tuple[np.ndarray, np.ndarray, int]:
    """Transformed item index and raw item id of every example; one pass."""
    idx, raw = [], []
    for batch in ds:
        idx.append(tf.reshape(batch[xf(f.ITEM_ID)], [-1]).numpy())
        raw.append(tf.reshape(batch[f.ITEM_ID], [-1]).numpy())
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    idx_a, raw_a = np.concatenate(idx), np.concatenate(raw)
    return idx_a, raw_a, len(idx_a)


# ----------------------------------------------------------------------------- export


def complete_raw_inputs(provided: dict, raw_spec: dict, batch: tf.Tensor) -> dict:
    """Completes serving inputs into the Transform layer's raw feature dict.

    Dense padded lists become SparseTensors (padding dropped), and so does a scalar the raw
    examples leave out when unknown (``features.OPTIONAL_INT``: the signature's MISSING_INT is
    dropped); features a tower does not take get neutral defaults (the Transform layer needs
    every raw feature; their outputs are unused).
    """
    out = {}
    for key, spec in raw_spec.items():
        if key in provided and not isinstance(spec, tf.io.VarLenFeature):
            out[key] = tf.reshape(provided[key], [-1, 1])
        elif key in provided:
            v = provided[key]
            if key in f.OPTIONAL_INT:  # a scalar per row [B]; MISSING_INT: absent
                v, pad = tf.reshape(v, [-1, 1]), f.MISSING_INT
            else:
                pad = HISTORY_PAD if v.dtype == tf.int64 else LIST_PAD
            where = tf.where(tf.not_equal(v, tf.constant(pad, v.dtype)))
            out[key] = tf.SparseTensor(
                where, tf.gather_nd(v, where), tf.shape(v, out_type=tf.int64))
        elif isinstance(spec, tf.io.VarLenFeature):
            out[key] = tf.SparseTensor(
                tf.zeros([0, 2], tf.int64), tf.zeros([0], spec.dtype),
                tf.stack([tf.cast(batch, tf.int64), tf.constant(0, tf.int64)]))
        else:
            zero = "" if spec.dtype == tf.string else 0
            out[key] = tf.fill(tf.stack([batch, 1]), tf.constant(zero, spec.dtype))
    return out


def query_signature() -> dict[str, tf.TensorSpec]:
    spec = {k: tf.TensorSpec([None], tf.int64, k) for k in f.QUERY_INT}
    spec.update({k: tf.TensorSpec([None], tf.string, k) for k in f.QUERY_STRING})
    spec[f.HISTORY] = tf.TensorSpec([None, None], tf.int64, f.HISTORY)
    return spec


def candidate_signature() -> dict[str, tf.TensorSpec]:
    spec = {k: tf.TensorSpec([None], tf.int64, k) for k in f.CANDIDATE_INT}
    spec.update({k: tf.TensorSpec([None], tf.string, k) for k in f.CANDIDATE_STRING})
    spec.update({k: tf.TensorSpec([None, None], tf.string, k) for k in f.CANDIDATE_STRING_LIST})
    return spec


class _TowerExport(Export):
    def __init__(self, tower, tft_layer, raw_spec):
        super().__init__({"tower": tower, "tft_layer": tft_layer}, tft_layer, tower.variables)
        self._raw_spec = raw_spec

    def embed(self, inputs: dict) -> dict:
        first = next(iter(inputs.values()))
        batch = tf.shape(first)[0]
        transformed = self.tft_layer(complete_raw_inputs(inputs, self._raw_spec, batch))
        return {EMBEDDING: self.tower(transformed)}


def export_tower(tower, tft_out, signature: dict, path: str, info: dict) -> None:
    module = _TowerExport(tower, tft_out.transform_features_layer(), tft_out.raw_feature_spec())
    # No tensor-dependent Python control flow: AutoGraph would only add tracing time.
    fn = tf.function(lambda **kw: module.embed(kw), autograph=False)
    concrete = fn.get_concrete_function(**signature)
    tf.saved_model.save(module, path, signatures={"serving_default": concrete})
    write_export_info(path, info)


def write_export_info(saved_model_dir: str, info: dict) -> None:
    """The training run's facts beside a SavedModel (``assets.extra/marquee.json``), through
    tf.io.gfile so a ``gs://`` model directory works too."""
    mio.write_text(os.path.join(saved_model_dir, *EXPORT_INFO),
                   json.dumps(info, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- evaluation


def recall_at_k(
    query_emb: np.ndarray, positives: np.ndarray, histories: list[np.ndarray],
    cat_emb: np.ndarray, cat_ids: np.ndarray, popularity: np.ndarray,
    ks: tuple[int, ...] = RECALL_KS,
) -> dict[str, float]:
    """Recall@k of the model and of popularity on single-positive eval examples, for each k.

    query_emb [E, dim]; positives [E] raw item ids; histories: per example, item ids to exclude
    (already watched); cat_emb [N, dim] and cat_ids [N] the catalogue; popularity [N] train
    positives per catalogue item. An example is a hit at k when its item is in the top k
    (k is capped at N, and the key names the capped k).
    """
    row = {int(i): r for r, i in enumerate(cat_ids)}
    ks = tuple(sorted({min(k, len(cat_ids)) for k in ks}))
    k_max = ks[-1]
    model_hits = dict.fromkeys(ks, 0)
    pop_hits = dict.fromkeys(ks, 0)
    pop_order = np.argsort(-popularity, kind="stable")
    for start in range(0, len(query_emb), 1024):
        scores = query_emb[start:start + 1024] @ cat_emb.T
        for j in range(scores.shape[0]):
            e = start + j
            target = row.get(int(positives[e]))
            if target is None:
                continue
            exclude = [row[h] for h in histories[e] if h in row and h != positives[e]]
            s = scores[j]
            s[exclude] = -np.inf
            top = np.argpartition(-s, k_max - 1)[:k_max]
            if np.any(top == target):  # its rank among the top k_max: items scoring higher
                rank = int(np.sum(s[top] > s[target]))
                for k in ks:
                    model_hits[k] += int(rank < k)
            excl = set(exclude)
            pop_top = [r for r in pop_order[: k_max + len(excl)] if r not in excl][:k_max]
            if target in pop_top:
                rank = pop_top.index(target)
                for k in ks:
                    pop_hits[k] += int(rank < k)
    n = max(1, len(query_emb))
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = model_hits[k] / n
        out[f"popularity_recall@{k}"] = pop_hits[k] / n
    out["eval_queries"] = len(query_emb)
    return out


def _embed_all(tower, ds, keys: tuple[str, ...]) -> tuple[np.ndarray, dict[str, list]]:
    embs, extra = [], {k: [] for k in keys}
    for batch in ds:
        embs.append(tower(batch).numpy())
        for k in keys:
            v = batch[k]
            if isinstance(v, tf.SparseTensor):
                extra[k].extend(tf.RaggedTensor.from_sparse(v).to_list())
            else:
                extra[k].extend(tf.reshape(v, [-1]).numpy().tolist())
    return (np.concatenate(embs) if embs else np.zeros((0, 1), np.float32)), extra


# ----------------------------------------------------------------------------- run_fn


@dataclasses.dataclass
class _TrainingInputs:
    """Both datasets know their number of batches, which Keras needs to run
    ``steps_per_execution`` > 1."""

    train: tf.data.Dataset
    eval: tf.data.Dataset | None
    sample: dict  # a few train examples, to create the model's weights from
    item_index: np.ndarray  # [N] transformed item index of every train example
    item_ids: np.ndarray  # [N] raw item id of every train example


def _training_inputs(train_patterns: list[str], eval_patterns: list[str], spec: dict,
                     cfg: RetrievalConfig) -> _TrainingInputs:
    if cfg.in_memory:
        train = load_split(train_patterns, spec)
        held_out = load_split(eval_patterns, spec)
        if not train:
            raise ValueError(NO_TRAIN_EXAMPLES)
        # The raw ids pass through for evaluation only; the towers read the _xf features.
        train_x, eval_x = ({k: v for k, v in split.items() if k not in (f.ITEM_ID, f.HISTORY)}
                           for split in (train, held_out))
        return _TrainingInputs(
            train=in_memory_dataset(train_x, cfg.batch_size, shuffle_seed=cfg.seed),
            eval=in_memory_dataset(eval_x, cfg.batch_size, shuffle_seed=cfg.seed,
                                   reshuffle=False) if held_out else None,
            sample=next(iter(in_memory_dataset(train_x, 8))),
            item_index=tf.reshape(train[xf(f.ITEM_ID)], [-1]).numpy(),
            item_ids=tf.reshape(train[f.ITEM_ID], [-1]).numpy())
    idx, raw, n = _scan(dataset(train_patterns, spec, 4096))
    if n == 0:
        raise ValueError(NO_TRAIN_EXAMPLES)
    eval_ds = dataset(eval_patterns, spec, cfg.batch_size, shuffle_seed=cfg.seed,
                      reshuffle=False)
    eval_batches = sum(1 for _ in eval_ds)
    return _TrainingInputs(
        train=dataset(train_patterns, spec, cfg.batch_size, shuffle_seed=cfg.seed).apply(
            tf.data.experimental.assert_cardinality(-(-n // cfg.batch_size))),
        eval=eval_ds.apply(tf.data.experimental.assert_cardinality(eval_batches))
        if eval_batches else None,
        sample=next(iter(dataset(train_patterns, spec, 8))),
        item_index=idx, item_ids=raw)


def train_and_export(
    train_patterns: list[str], eval_patterns: list[str], catalogue_patterns: list[str],
    transform_dir: str, serving_dir: str, cfg: RetrievalConfig, config_json: str,
) -> dict:
    """Trains the two towers, measures recall@20 and @100 on eval, exports both; returns
    metadata."""
    tf.keras.utils.set_random_seed(cfg.seed)
    tft_out = tft.TFTransformOutput(transform_dir)
    spec = tft_out.transformed_feature_spec()
    sizes = vocab_sizes(tft_out, Config.from_json(config_json).data.user_id_hash_buckets)

    inputs = _training_inputs(train_patterns, eval_patterns, spec, cfg)
    train_ds, eval_ds, raw = inputs.train, inputs.eval, inputs.item_ids
    n_train = len(raw)
    counts = np.bincount(inputs.item_index, minlength=sizes.item_id).astype(np.float64)
    model = TwoTowerModel(sizes, counts / counts.sum(), cfg)
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate),
                  steps_per_execution=cfg.steps_per_execution)
    model.build_weights(inputs.sample)
    has_eval = eval_ds is not None
    progress = Progress("Trainer", cfg.batch_size)
    callbacks = [progress]
    if has_eval:
        callbacks.append(tf.keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.early_stopping_patience, restore_best_weights=True))
    t0 = time.perf_counter()
    history = model.fit(train_ds, validation_data=eval_ds if has_eval else None,
                        epochs=cfg.epochs, callbacks=callbacks, verbose=2)
    train_seconds = time.perf_counter() - t0
    epochs_run = len(history.history["loss"])

    cat_emb, cat = _embed_all(model.candidate_tower, dataset(catalogue_patterns, spec, 4096),
                              (f.ITEM_ID,))
    cat_ids = np.asarray(cat[f.ITEM_ID], np.int64)
    pop_by_id: dict[int, int] = {}
    for i in raw.tolist():
        pop_by_id[i] = pop_by_id.get(i, 0) + 1
    popularity = np.array([pop_by_id.get(int(i), 0) for i in cat_ids], np.float64)
    metrics: dict = {"train_examples": n_train, "epochs_run": epochs_run,
                     "train_seconds": round(train_seconds, 2),
                     "train_examples_per_second": round(n_train * epochs_run / train_seconds, 1),
                     # After the first epoch, which also traces the step and the validation
                     # (~2.8 s on MovieLens 100K): the rate a longer training runs at.
                     "steady_examples_per_second": (
                         round(n_train * (epochs_run - 1) / sum(progress.epoch_seconds[1:]), 1)
                         if len(progress.epoch_seconds) > 1 else None),
                     "final_loss": float(history.history["loss"][-1])}
    if has_eval:
        q_emb, q = _embed_all(model.query_tower, dataset(eval_patterns, spec, 4096).take(
            -(-MAX_EVAL_QUERIES // 4096)), (f.ITEM_ID, f.HISTORY))
        q_emb = q_emb[:MAX_EVAL_QUERIES]
        metrics["final_val_loss"] = float(min(history.history["val_loss"]))
        metrics.update(recall_at_k(
            q_emb, np.asarray(q[f.ITEM_ID][:len(q_emb)], np.int64),
            [np.asarray(h, np.int64) for h in q[f.HISTORY][:len(q_emb)]],
            cat_emb, cat_ids, popularity))

    info = {"training_run": f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-"
                            f"{uuid.uuid4().hex[:8]}",
            "embedding_dim": cfg.embedding_dim}
    export_tower(model.query_tower, tft_out, query_signature(),
                 os.path.join(serving_dir, "query_tower"), info)
    export_tower(model.candidate_tower, tft_out, candidate_signature(),
                 os.path.join(serving_dir, "candidate_tower"), info)
    metadata = {**info, "metrics": metrics, "config": json.loads(config_json),
                "popularity": {str(k): v for k, v in sorted(pop_by_id.items())}}
    mio.write_text(os.path.join(serving_dir, METADATA_FILE), json.dumps(metadata, indent=2))
    return metadata


def _sibling_split(patterns: list[str], split: str) -> list[str]:
    return [p.replace("Split-train", f"Split-{split}") for p in patterns]


def run_fn(fn_args) -> None:
    """TFX Trainer entry point."""
    config_json = fn_args.custom_config["config"]
    cfg = Config.from_json(config_json).retrieval
    metadata = train_and_export(
        fn_args.train_files, fn_args.eval_files, _sibling_split(fn_args.train_files, "catalogue"),
        fn_args.transform_output, fn_args.serving_model_dir, cfg, config_json)
    print(json.dumps(metadata["metrics"], indent=2))
