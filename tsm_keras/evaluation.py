"""Evaluation: top-1 / top-5 / mean class accuracy, multi-view testing, reports.

`--mode=eval` loads a trained model (`--weights` or `--model_dir`), runs the validation/test
list, averages the logits over `test_clips x test_crops` views per video (as PaddleVideo and the
official TSM test script do), prints `top1=<fraction> top5=<fraction>` and writes next to the
weights: `eval_metrics.json`, `per_class_accuracy.csv`, `confusion_matrix.png` (label names on
both axes; drawn with OpenCV).
"""

import csv
import dataclasses
import json
import os
import weakref

import numpy as np

WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.weights.h5"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
# Fields that describe the trained network: always taken from the run's saved config.
MODEL_FIELDS = ("backbone", "num_classes", "num_segments", "shift", "shift_div", "shift_place", "dropout")


# ----------------------------------------------------------------------------------------- metrics
def topk_hits(logits, labels, k):
    """`[n] bool`: label among the k highest logits (`k` capped at the number of classes)."""
    logits = np.asarray(logits)
    k = min(int(k), logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == np.asarray(labels)[:, None]).any(axis=-1)


def compute_metrics(logits, labels, num_classes):
    """Metrics of `[n, classes]` scores against `[n]` int labels.

    Returns a dict: top1, top5 (top-min(5, classes)), mean_class_accuracy (over classes present),
    per_class_accuracy / per_class_support ([classes] lists; NaN where support is 0), confusion
    ([classes, classes] counts, rows = true class, columns = prediction), num_samples.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [n, classes] and labels [n], got {logits.shape} and {labels.shape}.")
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, logits.argmax(-1)), 1)
    top5_hits = int(topk_hits(logits, labels, 5).sum()) if len(labels) else 0
    return metrics_from_counts(confusion, top5_hits)


def metrics_from_counts(confusion, top5_hits):
    """`compute_metrics`' dict from the confusion matrix and the number of top-5 hits (what distributed
    validation sums over replicas and workers)."""
    confusion = np.asarray(confusion, np.int64)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
    count = int(support.sum())
    n = max(count, 1)
    return dict(
        top1=float(np.trace(confusion) / n),
        top5=float(top5_hits / n),
        mean_class_accuracy=float(np.nanmean(per_class)) if (support > 0).any() else 0.0,
        per_class_accuracy=per_class.tolist(),
        per_class_support=support.tolist(),
        confusion=confusion,
        num_samples=count,
    )


def average_views(logits, num_views):
    """`[batch * views, classes]` -> `[batch, classes]`, the mean over each video's views."""
    logits = np.asarray(logits)
    return logits.reshape(-1, num_views, logits.shape[-1]).mean(axis=1)


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
            progress(len(all_labels[-1]))
    if not all_logits:
        raise ValueError("the evaluation dataset is empty: check --val_list and --data_root.")
    return np.concatenate(all_logits), np.concatenate(all_labels)


# ----------------------------------------------------------------------------------------- reports
def write_reports(directory, metrics, label_names, prefix=""):
    """`<prefix>eval_metrics.json`, `<prefix>per_class_accuracy.csv`, `<prefix>confusion_matrix.png`."""
    os.makedirs(directory, exist_ok=True)
    names = list(label_names) if label_names else [str(i) for i in range(len(metrics["per_class_support"]))]
    summary = {k: v for k, v in metrics.items() if k not in ("confusion",)}
    summary["label_names"] = names
    paths = dict(json=os.path.join(directory, f"{prefix}eval_metrics.json"),
                 csv=os.path.join(directory, f"{prefix}per_class_accuracy.csv"),
                 png=os.path.join(directory, f"{prefix}confusion_matrix.png"))
    with open(paths["json"], "w") as f:
        json.dump(_json_safe(summary), f, indent=2)
    confusion = metrics["confusion"]
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class_name", "support", "correct", "accuracy",
                         "most_confused_with", "most_confused_count"])
        for i, name in enumerate(names):
            row = confusion[i].copy()
            row[i] = -1
            j = int(row.argmax())
            accuracy = metrics["per_class_accuracy"][i]
            writer.writerow([i, name, int(confusion[i].sum()), int(confusion[i, i]),
                             "" if np.isnan(accuracy) else f"{accuracy:.4f}",
                             names[j] if row[j] > 0 else "", max(int(row[j]), 0)])
    write_confusion_png(paths["png"], confusion, names)
    return paths


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_confusion_png(path, confusion, label_names, max_side=1600):
    """Row-normalized confusion matrix as a PNG (white = 0, dark blue = all of the row), true classes
    down the left, predictions along the top (rotated names), drawn with OpenCV."""
    import cv2

    confusion = np.asarray(confusion, np.float64)
    classes = confusion.shape[0]
    cell = int(np.clip(max_side // max(classes, 1), 2, 48))
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, min(0.5, max(cell - 1, 1) / 24.0)
    thickness = 1
    names = [str(n) for n in label_names]
    label_width = max(cv2.getTextSize(n, font, scale, thickness)[0][0] for n in names) + 8
    grid = classes * cell
    margin = 10
    height = margin + label_width + grid + margin + 24
    width = margin + label_width + grid + margin
    image = np.full((height, width, 3), 255, np.uint8)
    top, left = margin + label_width, margin + label_width
    # Blue ramp: white (0) -> (BGR) 120, 40, 0 (1).
    shade = rows[..., None]
    colours = (255 - shade * (255 - np.array([120.0, 40.0, 0.0]))).astype(np.uint8)
    image[top:top + grid, left:left + grid] = np.repeat(np.repeat(colours, cell, 0), cell, 1)
    if cell >= 3:
        for i in range(classes + 1):
            cv2.line(image, (left, top + i * cell), (left + grid, top + i * cell), (210, 210, 210), 1)
            cv2.line(image, (left + i * cell, top), (left + i * cell, top + grid), (210, 210, 210), 1)
    if cell >= 6:
        baseline = cell // 2 + int(cv2.getTextSize("0", font, scale, thickness)[0][1] / 2)
        for i, name in enumerate(names):
            size = cv2.getTextSize(name, font, scale, thickness)[0]
            cv2.putText(image, name, (left - size[0] - 4, top + i * cell + baseline), font, scale, (0, 0, 0),
                        thickness, cv2.LINE_AA)
        # Column names: drawn horizontally on a strip, rotated 90 degrees counter-clockwise.
        strip = np.full((grid, label_width, 3), 255, np.uint8)
        for j, name in enumerate(names):
            cv2.putText(strip, name, (4, j * cell + baseline), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        image[margin:margin + label_width, left:left + grid] = cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)
        if cell >= 20:
            for i in range(classes):
                for j in range(classes):
                    if confusion[i, j]:
                        text = str(int(confusion[i, j]))
                        colour = (255, 255, 255) if rows[i, j] > 0.5 else (0, 0, 0)
                        size = cv2.getTextSize(text, font, scale * 0.8, thickness)[0]
                        cv2.putText(image, text, (left + j * cell + (cell - size[0]) // 2,
                                                  top + i * cell + (cell + size[1]) // 2),
                                    font, scale * 0.8, colour, thickness, cv2.LINE_AA)
    cv2.putText(image, "rows: true class, columns: predicted (row-normalized)", (margin, height - 8),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(path, image):
        raise OSError(f"could not write {path}")
    return path


# ---------------------------------------------------------------------------------- model loading
def resolve_run(config):
    """`(run_config, weights_path, model_dir)` for `--weights` / `--model_dir`.

    The network's fields come from the run's saved `config.json`; data and evaluation fields given
    on the command line (anything that differs from the defaults) override the saved ones.
    """
    from tsm_keras.config import Config

    weights = config.weights
    model_dir = config.model_dir
    if weights and os.path.isdir(weights):
        model_dir, weights = weights, ""
    elif weights:
        model_dir = os.path.dirname(os.path.abspath(weights))
    if not weights:
        for name in (WEIGHTS_FILE, BEST_WEIGHTS_FILE):
            if os.path.exists(os.path.join(model_dir, name)):
                weights = os.path.join(model_dir, name)
                break
        else:
            raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_dir!r}: pass --weights=<file> or the "
                                    "--model_dir of a finished `--mode=train` run.")
    saved_path = os.path.join(model_dir, CONFIG_FILE)
    run_config = config
    if os.path.exists(saved_path):
        saved = Config.load(saved_path)
        defaults = Config()
        changes = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
                   if f.name not in MODEL_FIELDS and getattr(config, f.name) != getattr(defaults, f.name)}
        run_config = saved.replace(**changes)
    return run_config.replace(weights=weights, model_dir=model_dir), weights, model_dir


def build_model_for(config):
    from tsm_keras.models.tsm import build_tsm

    return build_tsm(config.num_classes, num_segments=config.num_segments, backbone=config.backbone,
                     shift=config.shift, shift_div=config.shift_div, shift_place=config.shift_place,
                     dropout=config.dropout, image_size=config.image_size, normalize_input=True)


def load_trained_model(config):
    """`(model, run_config, model_dir)`: a Keras model from `--weights` / `--model_dir`.

    A run's `.weights.h5` (its config.json beside it) and `.keras` files are read here; other formats
    (PaddleVideo `.pdparams`, PyTorch `.pth`, a converted `.weights.h5`, ...) go to
    `tsm_keras.convert.load_model_from_source`. Whatever the source, the model returned takes raw
    0-255 frames, as the pipeline yields them.
    """
    import keras

    from tsm_keras.models.tsm import with_raw_frame_input

    run_config, weights, model_dir = resolve_run(config)
    own_run = os.path.exists(os.path.join(model_dir, CONFIG_FILE))
    if weights.endswith(".keras"):
        # The pipeline yields raw 0-255 frames; a converted .keras expects normalized ones.
        model = with_raw_frame_input(keras.models.load_model(weights, compile=False))
    elif weights.endswith(".weights.h5") and own_run:
        model = build_model_for(run_config)
        model.load_weights(weights)
    else:  # converter sources, and .weights.h5 written by --mode=convert (its architecture.json beside it)
        try:
            from tsm_keras.convert import load_model_from_source
        except ImportError as error:
            raise ValueError(f"--weights={weights}: not a .weights.h5/.keras file and the converters "
                             f"(tsm_keras.convert) are unavailable: {error}") from None
        model = load_model_from_source(weights, config=run_config)
    return model, run_config, model_dir


def load_label_names(config, model_dir=None):
    """Class names: the run's saved labels.txt, else the data pipeline's label map, else indices."""
    if model_dir and os.path.exists(os.path.join(model_dir, LABELS_FILE)):
        with open(os.path.join(model_dir, LABELS_FILE)) as f:
            return [line.rstrip("\n") for line in f]
    try:
        from tsm_keras.training.loop import default_data_module

        names = list(default_data_module().load_label_names(config))
        if names:
            return names
    except (ImportError, OSError, ValueError):
        pass
    return [str(i) for i in range(config.num_classes)]


def distributed_metrics_function(strategy, model, data, config):
    """A function computing `compute_metrics`' dict of `model` on the "val" split, on every replica of
    every worker: each worker reads its shard of the list, each replica counts its confusion matrix and
    top-5 hits (mean logits over a video's views), and the sums over all replicas give the metrics of the
    whole list (the same as one device's, which would leave the other devices and workers idle).

    `config.batch_size` is the global batch. Workers with fewer batches get empty ones: tf.distribute
    makes them all take the same steps.
    """
    import tensorflow as tf

    num_classes = int(config.num_classes)
    k = min(5, num_classes)
    global_batch = int(config.batch_size)

    def dataset_fn(context):
        return data.build_dataset(config, "val", batch_size=context.get_per_replica_batch_size(global_batch),
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
        for batch in strategy.distribute_datasets_from_function(dataset_fn):
            batch_confusion, batch_top5 = step(batch)
            confusion += np.rint(batch_confusion.numpy()).astype(np.int64)
            top5 += int(round(float(batch_top5)))
        if not confusion.any():
            raise ValueError("the validation dataset is empty: check --val_list and --data_root.")
        return metrics_from_counts(confusion, top5)

    return run


# ------------------------------------------------------------------------------------------ mode
def evaluate_model(model, dataset, num_classes):
    logits, labels = predict_dataset(model, dataset)
    return compute_metrics(logits, labels, num_classes)


def eval_mode(config):
    """`app.py --mode=eval` entry: prints `top1=... top5=...`, returns the exit code 0."""
    evaluate(config)
    return 0


def evaluate(config, *, dataset=None, data=None):
    """`--mode=eval`: metrics of the trained model on the validation list; reports next to the weights.

    With `--strategy` giving more than one replica (several GPUs, or workers through TF_CONFIG), every
    replica evaluates its share of the list (`distributed_metrics_function`); the chief writes the
    reports. `dataset`: evaluate these batches on one device instead. `data`: the data module
    (default `tsm_keras.data`).
    """
    from tsm_keras import runtime
    from tsm_keras.training.loop import default_data_module

    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = runtime.build_strategy(config.strategy) if dataset is None else None
    precision, reason = runtime.resolve_precision(config.precision, training=False)
    runtime.set_precision(precision)
    print(runtime.describe(strategy, precision, reason), flush=True)
    data = data or default_data_module()
    chief = True
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        replicas = strategy.num_replicas_in_sync
        with strategy.scope():
            model, run_config, model_dir = load_trained_model(config)
        batch = -(-int(run_config.batch_size) // replicas) * replicas  # a multiple of the replicas
        metrics = distributed_metrics_function(strategy, model, data, run_config.replace(batch_size=batch))()
        chief = runtime.is_chief(strategy)
    else:
        model, run_config, model_dir = load_trained_model(config)
        if dataset is None:
            dataset = data.build_dataset(run_config, "val", batch_size=run_config.batch_size, shuffle=False)
        metrics = evaluate_model(model, dataset, run_config.num_classes)
    views = run_config.test_clips * run_config.test_crops
    metrics["views"] = views
    metrics["weights"] = os.path.abspath(run_config.weights)
    if chief:
        paths = write_reports(model_dir, metrics, load_label_names(run_config, model_dir))
        print(f"eval: {metrics['num_samples']} videos x {views} view(s), mean class accuracy "
              f"{metrics['mean_class_accuracy']:.4f}; reports: {paths['json']}, {paths['csv']}, {paths['png']}")
    print(f"top1={metrics['top1']:.4f} top5={metrics['top5']:.4f}", flush=True)
    return metrics
