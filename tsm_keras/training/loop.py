"""`--mode=train`: one custom training loop (`strategy.run`) for every tf.distribute strategy.

Keras 3's `fit` raises under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the loop is
written once here and serves one device, mirrored devices and many workers alike:

    flags -> Config -> strategy -> model + PaddleMomentum (in strategy.scope())
          -> resume from model_dir/checkpoints -> epochs of distributed steps
          -> checkpoints (every N steps, each epoch) + validation + logs -> final weights + report

`model_dir` receives: `config.json` and `labels.txt` (so eval/predict/export need only the
folder), `checkpoints/ckpt-<step>/`, `model.weights.h5` (final), `best.weights.h5` (best
validation top-1 with --validate), `metrics.jsonl` (one line per epoch), `tensorboard/`, and the
evaluation reports of the final weights.
"""

import json
import math
import os
import sys
import time

import numpy as np

from tsm_keras.evaluation import (BEST_WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE,
                                  build_model_for, compute_metrics, distributed_metrics_function,
                                  predict_dataset, write_reports)


class NonFiniteLossError(RuntimeError):
    pass


def train_mode(config):
    """`app.py --mode=train` entry: trains, prints `top1=... top5=...`, returns the exit code 0."""
    train(config)
    return 0


def train(config, *, data=None, stop_after_steps=None):
    """Train `config`'s model; resumes from `config.model_dir` if it holds checkpoints.

    `data`: module-like object with `build_dataset(config, split, *, batch_size, shuffle, repeat,
    num_shards, shard_index, seed)` and `load_label_names(config)` (default `tsm_keras.data`).
    `stop_after_steps`: return after this many steps of this call (tests of resuming).
    Returns the final metrics dict (val metrics, or the last epoch's train metrics without a val split).
    """
    import keras
    import tensorflow as tf

    from tsm_keras import runtime
    from tsm_keras.training.checkpoints import CheckpointManager, save_weights_atomic
    from tsm_keras.training.optimizer import build_optimizer
    from tsm_keras.training.schedules import build_schedule

    if data is None:
        data = default_data_module()
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any op (collectives are
    # configured at context startup), so the strategy comes first.
    strategy = runtime.build_strategy(config.strategy)
    if getattr(config, "deterministic", False):
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    precision, reason = runtime.resolve_precision(config.precision, training=True)
    runtime.set_precision(precision)
    chief = runtime.is_chief(strategy)
    if chief:
        _log(runtime.describe(strategy, precision, reason))
    replicas = strategy.num_replicas_in_sync
    global_batch = int(config.batch_size)
    if global_batch % replicas:
        raise ValueError(f"--batch_size={global_batch} (global) must be divisible by the {replicas} replicas.")

    label_names = list(data.load_label_names(config))
    if len(label_names) != config.num_classes:
        raise ValueError(f"the label map has {len(label_names)} classes but --num_classes={config.num_classes}.")
    steps_per_epoch = int(getattr(config, "steps_per_epoch", 0) or 0)
    if steps_per_epoch <= 0:
        steps_per_epoch = max(count_samples(config, "train", data) // global_batch, 1)
    total_steps = steps_per_epoch * config.epochs

    model_dir = config.model_dir
    _check_same_run(config, model_dir)
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        config.save(os.path.join(model_dir, CONFIG_FILE))
        _write_text_atomic(os.path.join(model_dir, LABELS_FILE), "".join(f"{n}\n" for n in label_names))

    with strategy.scope():
        model = build_model_for(config)
        schedule = build_schedule(config, steps_per_epoch)
        # config.json keeps the precision as asked ("auto" resumes on any machine); the optimizer needs
        # the policy it resolved to (mixed_float16 -> dynamic loss scaling).
        optimizer = build_optimizer(config.replace(precision=precision), model, schedule)
        optimizer.build(model.trainable_variables)
    manager = CheckpointManager(os.path.join(model_dir, "checkpoints"), model, optimizer,
                                keep=getattr(config, "keep_checkpoints", 3))
    state = manager.restore()
    if state is None and config.pretrained:
        init_from_pretrained(model, config.pretrained)
    state = state or {}
    step = int(optimizer.iterations.numpy())
    best_top1 = state.get("best_val_top1", -1.0)
    if step:
        _log(f"resumed from {manager.latest()} at step {step} (epoch {step // steps_per_epoch + 1})")

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def replica_step(clips, labels):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            logits = model(clips, training=True)
            per_example = loss_fn(labels, tf.cast(logits, tf.float32))
            # Mean over the *global* batch: the cross-replica sum of these gradients is the gradient
            # of the global mean, whatever the number of replicas.
            loss = tf.reduce_sum(per_example) / global_batch
            scaled_loss = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        k = min(5, config.num_classes)
        top1 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32))
        top5 = tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        return tf.reduce_sum(per_example), top1, top5, count

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        clips, labels = batch
        results = strategy.run(replica_step, args=(clips, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, r, axis=None) for r in results]

    def epoch_dataset(epoch, skip):
        def dataset_fn(context):
            per_replica = context.get_per_replica_batch_size(global_batch)
            per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
            ds = data.build_dataset(config, "train", batch_size=per_replica, shuffle=True, repeat=True,
                                    num_shards=context.num_input_pipelines,
                                    shard_index=context.input_pipeline_id, seed=config.seed + epoch)
            # A fixed number of steps per epoch keeps every worker in lockstep; resuming skips the
            # batches already trained on (the epoch's order depends only on seed + epoch).
            return ds.skip(skip * per_pipeline).take((steps_per_epoch - skip) * per_pipeline)
        if replicas == 1 and not tf.config.list_physical_devices("GPU"):
            # One CPU replica: the dataset itself. Distributing it adds a per-device prefetch (a
            # generator dataset, warned about as "will not be optimized" every epoch) with nothing to
            # copy to. GPUs keep it: it overlaps the host-to-device copy with the step.
            return dataset_fn(tf.distribute.InputContext())
        return strategy.distribute_datasets_from_function(dataset_fn)

    distributed_validation = distributed_metrics_function(strategy, model, data, config) if replicas > 1 else None

    def validation_metrics():
        if distributed_validation is not None:
            return distributed_validation()
        ds = data.build_dataset(config, "val", batch_size=config.batch_size, shuffle=False)
        logits, labels = predict_dataset(model, ds)
        return compute_metrics(logits, labels, config.num_classes)

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard")) if chief else None
    metrics_path = os.path.join(model_dir, "metrics.jsonl")
    steps_this_call = 0
    last_val = state.get("last_val")
    start_epoch = step // steps_per_epoch
    for epoch in range(start_epoch, config.epochs):
        skip = step - epoch * steps_per_epoch
        progress = Progress(epoch, config.epochs, steps_per_epoch, skip, global_batch)
        sums = np.zeros(4)
        epoch_start, clips_seen, steps_timed, timed_start = time.time(), 0, 0, None
        # Exactly the epoch's steps are drawn (no end-of-sequence request at the epoch's end). The last
        # epoch's iterator is released before the next one is built, not while it runs.
        iterator = None
        iterator = iter(epoch_dataset(epoch, skip))
        for _ in range(steps_per_epoch - skip):
            batch = _next_batch(iterator, epoch)
            loss_sum, top1, top5, count = (float(v) for v in train_step(batch))
            # Read a variable the step updates (it takes ~0 ms: the step is done). Without this
            # read, every epoch boundary stalled 35-50 s on R50 (the end-of-sequence request, or
            # the next epoch's iterator), with oneDNN conv backward kernels running meanwhile:
            # the loop measured 0.33 clips/s instead of ~0.9 in float32. The cause is not
            # understood; benchmarks/train_speed.py watches for it.
            optimizer.iterations.numpy()
            step += 1
            steps_this_call += 1
            if not math.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"the training loss became {loss_sum} at epoch {epoch + 1}, step {step}: stopping. "
                    f"The last good checkpoint is {manager.latest()}; lower --lr or --clip_norm, or use "
                    "--precision=float32, then rerun the same command to resume from it.")
            sums += (loss_sum, top1, top5, count)
            # Throughput excludes the first step of a call (tracing and graph building).
            if timed_start is None:
                timed_start = time.time()
            else:
                steps_timed += 1
                clips_seen += int(count)
            clips_per_sec = clips_seen / max(time.time() - timed_start, 1e-9) if steps_timed else 0.0
            lr = float(schedule(step - 1))
            progress.update(step - epoch * steps_per_epoch, loss_sum / max(count, 1), lr, clips_per_sec)
            if writer is not None and (step % 10 == 0 or step == 1):
                with writer.as_default(step=step):
                    _scalar("train/loss", loss_sum / max(count, 1))
                    _scalar("train/lr", lr)
                    if steps_timed:
                        _scalar("train/clips_per_sec", clips_per_sec)
            every = int(getattr(config, "checkpoint_every", 0) or 0)
            if chief and every and step % every == 0 and step % steps_per_epoch:
                manager.save(step, dict(epoch=epoch, best_val_top1=best_top1, last_val=last_val))
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                progress.close()
                return None
        progress.close()
        epoch_time = time.time() - epoch_start
        record = dict(epoch=epoch + 1, step=step, lr=float(schedule(step - 1)),
                      train_loss=sums[0] / max(sums[3], 1), train_top1=sums[1] / max(sums[3], 1),
                      train_top5=sums[2] / max(sums[3], 1), epoch_seconds=epoch_time,
                      clips_per_sec=clips_seen / max(time.time() - timed_start, 1e-9) if steps_timed else None)
        bad = bad_sample_count(data)
        if bad is not None:
            record["bad_samples_skipped"] = bad
        is_best = False
        if config.validate:
            val = validation_metrics()
            last_val = dict(top1=val["top1"], top5=val["top5"], mean_class_accuracy=val["mean_class_accuracy"])
            record.update({f"val_{k}": v for k, v in last_val.items()})
            is_best = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            if chief and is_best:
                save_weights_atomic(model, os.path.join(model_dir, BEST_WEIGHTS_FILE))
        line = "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        _log(f"epoch {epoch + 1}/{config.epochs}: {line}")
        if chief:
            manager.save(step, dict(epoch=epoch + 1, best_val_top1=best_top1, last_val=last_val,
                                    val_top1=record.get("val_top1")), best=is_best)
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            with writer.as_default(step=step):
                for key, value in record.items():
                    if isinstance(value, float) and key not in ("epoch_seconds",):
                        name = key.replace("val_", "val/").replace("train_", "train/")
                        _scalar(name if "/" in name else f"epoch/{name}", value)
            writer.flush()

    # Final weights: the chief's in model_dir; other workers' beside them, so runs can be compared.
    if chief:
        save_weights_atomic(model, os.path.join(model_dir, WEIGHTS_FILE))
    else:
        os.makedirs(os.path.join(model_dir, "workers"), exist_ok=True)
        save_weights_atomic(model, os.path.join(model_dir, "workers", f"worker-{strategy.cluster_resolver.task_id}"
                                                ".weights.h5"))
    try:
        final = validation_metrics()
    except (FileNotFoundError, ValueError) as error:
        _log(f"no validation data ({error}); reporting the last epoch's training accuracy")
        final = dict(top1=record["train_top1"], top5=record["train_top5"]) if steps_this_call else {}
    if chief and "confusion" in final:
        final["weights"] = os.path.abspath(os.path.join(model_dir, WEIGHTS_FILE))
        write_reports(model_dir, final, label_names)
    if final:
        print(f"top1={final['top1']:.4f} top5={final['top5']:.4f}", flush=True)
    return final


def _next_batch(iterator, epoch):
    import tensorflow as tf

    try:
        return next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        raise RuntimeError(f"the training data ran out during epoch {epoch + 1}: every sample may have been "
                           "skipped as bad (see the warnings above), or the dataset is empty.") from None


def _check_same_run(config, model_dir):
    """Refuse to resume a run of another network from `model_dir` (TSN has TSM's variables, exactly)."""
    from tsm_keras.config import Config
    from tsm_keras.evaluation import MODEL_FIELDS

    saved_path = os.path.join(model_dir, CONFIG_FILE)
    checkpoints = os.path.join(model_dir, "checkpoints")
    if not (os.path.exists(saved_path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    saved = Config.load(saved_path)
    fields = MODEL_FIELDS + ("image_size", "precision")
    diffs = [f"{f}={getattr(saved, f)!r} there, {getattr(config, f)!r} here" for f in fields
             if getattr(saved, f) != getattr(config, f)]
    if diffs:
        raise ValueError(f"--model_dir={model_dir} holds checkpoints of another run ({'; '.join(diffs)}): "
                         "pass another --model_dir, or delete that folder to start over.")


def default_data_module():
    """`tsm_keras.data` (build_dataset, load_label_names, resolve_lists, BAD_SAMPLES)."""
    import tsm_keras.data as data

    if not hasattr(data, "build_dataset"):
        import tsm_keras.data.pipeline as data
    return data


def count_samples(config, split, data):
    """Number of videos in `split`: the data pipeline's count if it has one, else the list file's lines."""
    if hasattr(data, "num_samples"):
        return int(data.num_samples(config, split))
    resolve_lists = getattr(data, "resolve_lists", None)
    if resolve_lists is None:
        try:
            from tsm_keras.data.pipeline import resolve_lists
        except ImportError:
            resolve_lists = None
    if resolve_lists is not None and config.data_format != "tfrecord":
        config, _ = resolve_lists(config)  # the synthetic format generates its lists here
    path = config.train_list if split == "train" else config.val_list
    if path and not os.path.exists(path) and config.data_root:
        path = os.path.join(config.data_root, path)
    if not path or not os.path.exists(path):
        raise ValueError(f"cannot count the {split} videos (list file {path!r} not found): "
                         "pass --steps_per_epoch=<steps>.")
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def bad_sample_count(data):
    """Bad samples skipped since the last call (the data pipeline's counter), or None if it has none."""
    counter = getattr(data, "BAD_SAMPLES", None)
    if counter is None:
        try:
            from tsm_keras.data.decode import BAD_SAMPLES as counter
        except ImportError:
            return None
    try:
        return int(counter.take())
    except Exception:  # a broken counter must never stop training
        return None


def init_from_pretrained(model, path):
    """`--pretrained`: the converters' loader when present; Keras files are read here by layer name."""
    try:
        from tsm_keras.convert import init_from_pretrained as convert_init
    except ImportError:
        convert_init = None
    if convert_init is not None:
        return convert_init(model, path, skip_mismatched_head=True)
    import keras

    if path.endswith(".weights.h5"):
        model.load_weights(path, skip_mismatch=True)
        return model
    if path.endswith(".keras"):
        source = keras.models.load_model(path, compile=False)
        for layer in model.layers:
            try:
                other = source.get_layer(layer.name)
            except ValueError:
                continue
            weights = other.get_weights()
            if [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
                layer.set_weights(weights)
        return model
    raise ValueError(f"--pretrained={path}: this build reads .weights.h5/.keras only (tsm_keras.convert is missing).")


class Progress:
    """One-line progress: epoch, step, bar, ETA, loss, lr, clips/s (redrawn on a TTY, else every 15 s)."""

    def __init__(self, epoch, epochs, steps, start, batch):
        self.epoch, self.epochs, self.steps, self.start = epoch, epochs, steps, start
        self.tty = sys.stdout.isatty()
        self.began = time.time()
        self.last = 0.0
        self.line = ""

    def update(self, done, loss, lr, clips_per_sec):
        now = time.time()
        rate = (done - self.start) / max(now - self.began, 1e-9)
        eta = (self.steps - done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * done / self.steps)
        bar = "=" * max(filled - 1, 0) + (">" if filled < width else "=") + "." * (width - filled)
        self.line = (f"epoch {self.epoch + 1}/{self.epochs} {done}/{self.steps} [{bar[:width]}] ETA "
                     f"{_clock(eta)}  loss {loss:.4f}  lr {lr:.3g}  {clips_per_sec:.1f} clips/s")
        if self.tty and now - self.last > 0.2:
            sys.stdout.write("\r" + self.line)
            sys.stdout.flush()
            self.last = now
        elif not self.tty and (now - self.last > 15 or done == self.steps):
            print(self.line, flush=True)
            self.last = now

    def close(self):
        if self.tty and self.line:
            sys.stdout.write("\r" + self.line + "\n")
            sys.stdout.flush()


def _scalar(name, value):
    """A TensorBoard scalar via core `tf.summary.write` (the `tensorboard` package is not a dependency)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata.SerializeToString())


def _clock(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _log(message):
    print(message, flush=True)


def _write_text_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
