"""One Evaluator for validation during training and for `--mode=eval`: the metrics of a model on a split.

    evaluator = Evaluator(model, config, data)                    # one device
    evaluator = Evaluator(model, config, data, strategy=strategy)  # every replica of every worker
    metrics = evaluator.run()   # compute_metrics' dict: top1, top5, mean_class_accuracy, confusion, ...

A video's score is the mean of its views' logits (`test_clips x test_crops`, as PaddleVideo and the
official TSM test script do). `evaluate(config)` is `--mode=eval`'s work: load the trained model,
run the Evaluator, write the reports next to the weights.
"""

import os
import weakref

import numpy as np

from tsm_keras.errors import UsageError
from tsm_keras.evaluation.metrics import average_views, compute_metrics, metrics_from_counts


_INFERENCE_FUNCTIONS = weakref.WeakKeyDictionary()


def _inference_function(model):
    """One traced `model(clips, training=False)` per model, reused by every call (validation after
    each epoch would otherwise trace and optimize the graph again, and leave the old one to the GC)."""
    import tensorflow as tf

    forward = _INFERENCE_FUNCTIONS.get(model)
    if forward is None:
        ref = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(reduce_retracing=True)
        def forward(clips):
            return ref()(clips, training=False)

        _INFERENCE_FUNCTIONS[model] = forward
    return forward


# Decoded views one evaluation batch may hold (uint8 [videos, views, T, S, S, 3]): the default number of
# videos per batch keeps below it, so many views do not multiply the memory of a training-sized batch.
EVAL_BATCH_BYTES = 1 << 30


def eval_batch_size(config, replicas=1):
    """Videos per evaluation batch: `config.eval_batch_size`, or (0) `config.batch_size` capped so that
    its views fit EVAL_BATCH_BYTES; a multiple of `replicas` (every replica gets a share)."""
    videos = int(config.eval_batch_size or 0)
    if videos <= 0:
        views = max(1, int(config.test_clips)) * max(1, int(config.test_crops))
        per_video = views * int(config.num_segments) * int(config.image_size) ** 2 * 3
        videos = max(1, min(int(config.batch_size), EVAL_BATCH_BYTES // per_video))
    return -(-videos // replicas) * replicas


# Clips per forward pass at evaluation. A batch of videos x views in one call grows with the views:
# K400's 10 clips x 3 crops at batch 128 would be 3,840 clips of 8 x 224^2 frames in one forward.
MAX_CLIPS_PER_FORWARD = 32


def predict_dataset(model, dataset, progress=None, max_clips=MAX_CLIPS_PER_FORWARD):
    """Run `model` over `(clips, labels)` batches; clips `[b, T, H, W, 3]` or `[b, views, T, H, W, 3]`.

    The clips of a batch (videos x views) go through the model `max_clips` at a time.
    Returns float32 logits `[n, classes]` (mean over views) and int labels `[n]`.
    """
    import tensorflow as tf

    forward = _inference_function(model)
    all_logits, all_labels = [], []
    for clips, labels in dataset:
        views = 1
        if len(clips.shape) == 6:
            views = int(clips.shape[1])
            clips = tf.reshape(clips, (-1,) + tuple(clips.shape[2:]))
        count = int(clips.shape[0])
        logits = np.concatenate([forward(clips[start:start + max_clips]).numpy().astype(np.float32)
                                 for start in range(0, count, max_clips)]) if count else np.zeros((0, 0), np.float32)
        all_logits.append(average_views(logits, views))
        all_labels.append(np.asarray(labels).reshape(-1))
        if progress is not None:
            progress(all_logits[-1], all_labels[-1])  # this batch's view-averaged logits and labels
    if not all_logits:
        raise UsageError("the evaluation dataset is empty: check --val_list and --data_root.")
    return np.concatenate(all_logits), np.concatenate(all_labels)


class Evaluator:
    """The metrics of `model` on `split` of `config`'s data.

    `data`: the data contract (`tsm_keras.data`: `build_dataset`). `strategy`: with more than one
    replica, every replica evaluates its share of the list and the counts are summed (the same
    metrics as one device's); None or one replica: the batches run here, `MAX_CLIPS_PER_FORWARD` clips
    at a time. `dataset`: evaluate these `(clips, labels)` batches instead of building the split's.
    `progress=True`: a progress line (videos done / total, views, ETA, running top-1; `tsm_keras.progress`).
    """

    def __init__(self, model, config, data, split="val", strategy=None, dataset=None, progress=False):
        self.model, self.config, self.data, self.split, self.dataset = model, config, data, split, dataset
        self.progress = progress
        self.distributed = None
        if strategy is not None and strategy.num_replicas_in_sync > 1 and dataset is None:
            self.distributed = distributed_metrics_function(strategy, model, data, config, split,
                                                            progress=self._progress_line if progress else None)

    def _progress_line(self):
        from tsm_keras.progress import ProgressLine

        try:
            total = int(self.data.num_samples(self.config, self.split))
        except (AttributeError, OSError, ValueError):
            total = 0
        views = int(self.config.test_clips) * int(self.config.test_crops)
        return ProgressLine(f"eval ({views} view{'s' if views > 1 else ''}/video): videos", total or 1)

    def run(self):
        if self.distributed is not None:
            return self.distributed()
        dataset = self.dataset
        if dataset is None:
            dataset = self.data.build_dataset(self.config, self.split, batch_size=eval_batch_size(self.config),
                                              shuffle=False)
        callback, line = None, None
        if self.progress:
            line, seen = self._progress_line(), [0, 0]

            def callback(logits, labels):
                seen[0] += len(labels)
                seen[1] += int((np.argmax(logits, -1) == labels).sum()) if len(labels) else 0
                line.total = max(line.total, seen[0])
                line.update(seen[0], top1=seen[1] / max(seen[0], 1))
        try:
            logits, labels = predict_dataset(self.model, dataset, progress=callback)
        finally:
            if line is not None:
                line.close()
        return compute_metrics(logits, labels, self.config.num_classes)


def distributed_metrics_function(strategy, model, data, config, split="val", progress=None):
    """A function computing `compute_metrics`' dict of `model` on `split`, on every replica of
    every worker: each worker reads its shard of the list, each replica counts its confusion matrix and
    top-5 hits (mean logits over a video's views), and the sums over all replicas give the metrics of the
    whole list (the same as one device's, which would leave the other devices and workers idle).

    `eval_batch_size(config, replicas)` is the global batch. Workers with fewer batches get empty ones: tf.distribute
    makes them all take the same steps.
    """
    import tensorflow as tf

    num_classes = int(config.num_classes)
    k = min(5, num_classes)
    global_batch = eval_batch_size(config, strategy.num_replicas_in_sync)

    def dataset_fn(context):
        return data.build_dataset(config, split, batch_size=context.get_per_replica_batch_size(global_batch),
                                  shuffle=False, num_shards=context.num_input_pipelines,
                                  shard_index=context.input_pipeline_id)

    def replica_counts(clips, labels):
        if clips.shape[0] == 0:
            # The empty batch tf.distribute gives a replica with no data left is traced with a static
            # batch of 0, which Keras' Add layer mistakes for a bias (a rank error): nothing to count.
            return tf.zeros([num_classes, num_classes]), tf.zeros([])
        labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
        views = 1
        if clips.shape.rank == 6:  # [batch, views, T, H, W, 3]: the mean logits over each video's views
            views = int(clips.shape[1])
            clips = tf.reshape(clips, tf.concat([[-1], tf.shape(clips)[2:]], 0))
        logits = tf.cast(model(clips, training=False), tf.float32)
        logits = tf.reduce_mean(tf.reshape(logits, [-1, views, num_classes]), axis=1)
        predictions = tf.argmax(logits, -1, output_type=tf.int32)
        # float32 sums: exact for counts below 2**24, and every collective implementation reduces them.
        confusion = tf.math.confusion_matrix(labels, predictions, num_classes, dtype=tf.float32)
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32))
        return confusion, top5

    @tf.function
    def step(batch):
        clips, labels = batch
        results = strategy.run(replica_counts, args=(clips, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    def run():
        confusion, top5 = np.zeros((num_classes, num_classes), np.int64), 0
        # `progress` makes the line; the chief shows it (every worker sees the summed counts).
        from tsm_keras import runtime

        line = progress() if progress is not None and runtime.is_chief(strategy) else None
        for batch in strategy.distribute_datasets_from_function(dataset_fn):
            batch_confusion, batch_top5 = step(batch)
            confusion += np.rint(batch_confusion.numpy()).astype(np.int64)
            top5 += int(round(float(batch_top5)))
            if line is not None:
                done = int(confusion.sum())
                line.total = max(line.total, done)
                line.update(done, top1=float(np.trace(confusion)) / max(done, 1))
        if line is not None:
            line.close()
        if not confusion.any():
            raise UsageError("the validation dataset is empty: check --val_list and --data_root.")
        return metrics_from_counts(confusion, top5)

    return run


def _check_input_spec(model, config):
    """A model built for a fixed clip shape (a `.keras` file) evaluated with other --num_segments/--image_size:
    say which flags fit it, instead of Keras' input-shape error from inside the first batch."""
    from tsm_keras.models.inference import model_input_spec

    num_segments, image_size = model_input_spec(model)
    if num_segments != config.num_segments or (image_size and image_size != config.image_size):
        size = image_size or config.image_size
        raise UsageError(
            f"{config.weights} takes clips of {num_segments} segments"
            + (f" of {image_size} px" if image_size else "")
            + f", not {config.num_segments} of {config.image_size} px: evaluate it with --num_segments={num_segments}"
            + (f" --image_size={image_size}" if image_size else "")
            + f" (and a --scale_size for the short side before the crop: {round(size * 256 / 224)} keeps the "
            "references' 256/224).")


def evaluate(config, *, dataset=None, data=None):
    """`--mode=eval`: metrics of the trained model on the validation list; reports next to the weights.

    With `--strategy` giving more than one replica (several GPUs, or workers through TF_CONFIG), every
    replica evaluates its share of the list; the chief writes the reports. `dataset`: evaluate these
    batches on one device instead. `data`: the data contract (default `tsm_keras.data`).
    Returns the metrics dict (plus `views` and `weights`).
    """
    from tsm_keras import runtime
    from tsm_keras.evaluation.reports import write_reports
    from tsm_keras.loading import load_trained

    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = runtime.build_strategy(config.strategy) if dataset is None else None
    precision, reason = runtime.resolve_precision(config.precision, training=False)
    runtime.set_precision(precision)
    print(runtime.describe(strategy, precision, reason), flush=True)
    if data is None:
        import tsm_keras.data as data
    distributed = strategy is not None and strategy.num_replicas_in_sync > 1
    if distributed:
        with strategy.scope():
            model, run_config, label_names = load_trained(config)
        _check_input_spec(model, run_config)
        metrics = Evaluator(model, run_config, data, strategy=strategy, progress=True).run()
    else:
        model, run_config, label_names = load_trained(config)
        if dataset is None:
            _check_input_spec(model, run_config)
        metrics = Evaluator(model, run_config, data, dataset=dataset, progress=True).run()
    views = run_config.test_clips * run_config.test_crops
    metrics["views"] = views
    metrics["weights"] = os.path.abspath(run_config.weights)
    if not distributed or runtime.is_chief(strategy):
        paths = write_reports(run_config.model_dir, metrics, label_names)
        print(f"eval: {metrics['num_samples']} videos x {views} view(s), mean class accuracy "
              f"{metrics['mean_class_accuracy']:.4f}; reports: {paths['json']}, {paths['csv']}, {paths['png']}")
    return metrics
