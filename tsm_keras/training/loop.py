"""`--mode=train`: one custom training loop (`strategy.run`) for every tf.distribute strategy.

Keras 3's `fit` raises under MultiWorkerMirroredStrategy (keras-team/keras#20585), so the loop is
written once here and serves one device, mirrored devices and many workers alike:

    Config -> strategy -> model + PaddleMomentum (in strategy.scope())
           -> resume from model_dir/checkpoints -> epochs of distributed steps (training.step)
           -> checkpoints (every N steps, each epoch) + validation (evaluation.Evaluator) + logs
           -> final weights + report

What the run folder receives is `tsm_keras.runs`' layout.
"""

import contextlib
import math
import os
import time

import numpy as np

from tsm_keras import runs
from tsm_keras.errors import UsageError, UserError
from tsm_keras.loading import resolve_layout
from tsm_keras.evaluation import Evaluator, write_reports
from tsm_keras.training.logging import Progress, append_metrics, format_record, write_scalar
from tsm_keras.training.preemption import StopRequest, TrainingPreempted


class NonFiniteLossError(UserError, RuntimeError):
    """The loss diverged: a hyperparameter to change, not a bug (the last good checkpoint is intact)."""


def train(config, *, data=None, stop_after_steps=None):
    """Train `config`'s model; resumes from `config.model_dir` if it holds checkpoints.

    `data`: the data contract (`tsm_keras.data`: `build_dataset`, `load_label_names`, `num_samples`,
    optionally `BAD_SAMPLES`). `stop_after_steps`: return after this many steps of this call (tests of
    resuming; 0: once the run is set up -- run files written, model built, weights loaded). Returns the
    final metrics dict (val metrics, or the last epoch's train metrics without a val split; None when
    stopped early).
    """
    import keras
    import tensorflow as tf

    from tsm_keras import runtime
    from tsm_keras.models import build_tsm
    from tsm_keras.training.checkpoints import CheckpointManager, save_weights_atomic
    from tsm_keras.training.losses import check_regularizers
    from tsm_keras.training.optimizer import build_optimizer
    from tsm_keras.training.precise_bn import check_precise_bn, precise_bn_after_epoch, precise_bn_due
    from tsm_keras.training.schedules import build_schedule
    from tsm_keras.training.step import epoch_dataset_function, make_statistics_sync, make_train_step

    if data is None:
        import tsm_keras.data as data
    check_regularizers(config.label_smoothing, config.mixup_alpha)
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any op (collectives are
    # configured at context startup), so the strategy comes first.
    strategy = runtime.build_strategy(config.strategy)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    precision, reason = runtime.resolve_precision(config.precision, training=True)
    runtime.set_precision(precision)
    chief = runtime.is_chief(strategy)
    if chief:
        print(runtime.describe(strategy, precision, reason, training=True), flush=True)
    replicas = strategy.num_replicas_in_sync
    global_batch = int(config.batch_size)
    if global_batch % replicas:
        raise UsageError(f"--batch_size={global_batch} (global) must be divisible by the {replicas} replicas.")
    check_precise_bn(config.precise_bn_every, config.precise_bn_steps, replicas)
    validation_due(0, config)  # a bad --validate_every fails here, before any training

    # The shift convention goes with the weights: fine-tuning PaddleVideo weights keeps Paddle's shift.
    # Likewise the stride placement and input normalization keras.applications weights need.
    config, why = resolve_layout(config)
    if chief:
        print(f"convention: {config.convention} ({why})", flush=True)
    label_names = list(data.load_label_names(config))
    if len(label_names) != config.num_classes:
        raise UsageError(f"the label map has {len(label_names)} classes but --num_classes={config.num_classes}.")
    if config.validate:
        # The validation list is read now: a missing or malformed one stopped the run after its first epoch.
        data.num_samples(config, "val")
    steps_per_epoch = int(config.steps_per_epoch or 0)
    if steps_per_epoch <= 0:
        train_samples = int(data.num_samples(config, "train"))
        steps_per_epoch = max(train_samples // global_batch, 1)
        if train_samples < global_batch and chief:
            print(f"note: --batch_size={global_batch} is more than the {train_samples} training samples: each epoch "
                  "is one step whose batch holds samples more than once (a smaller --batch_size sees each once a "
                  "step)", flush=True)

    model_dir = config.model_dir
    runs.check_same_run(config, model_dir)
    if chief:
        runs.write_run_files(model_dir, config, label_names)

    with strategy.scope():
        model = build_tsm(**config.model_kwargs(normalize_input=True))
        if config.sync_bn:
            from tsm_keras.layers import synchronize_batchnorm

            layers = synchronize_batchnorm(model)
            if chief:
                print(f"sync_bn: {layers} BatchNorm layers use statistics over all {replicas} replicas", flush=True)
        schedule = build_schedule(config, steps_per_epoch)
        # config.json keeps the precision as asked ("auto" resumes on any machine); the optimizer needs
        # the policy it resolved to (mixed_float16 -> dynamic loss scaling).
        optimizer = build_optimizer(config.replace(precision=precision), model, schedule)
        optimizer.build(model.trainable_variables)
    manager = CheckpointManager(os.path.join(model_dir, runs.CHECKPOINTS_DIR), model, optimizer,
                                keep=config.keep_checkpoints)
    state = manager.restore()
    if state is None and config.pretrained:
        from tsm_keras.convert import init_from_pretrained

        init_from_pretrained(model, config.pretrained)
    state = state or {}
    if stop_after_steps == 0:
        return None
    step = int(optimizer.iterations.numpy())
    best_top1 = state.get("best_val_top1", -1.0)
    if step:
        print(f"resumed from {manager.latest()} at step {step} (epoch {step // steps_per_epoch + 1})", flush=True)

    train_step = make_train_step(strategy, model, optimizer, global_batch, config.num_classes,
                                 label_smoothing=config.label_smoothing, mixup_alpha=config.mixup_alpha,
                                 seed=config.seed)
    sync_statistics = make_statistics_sync(strategy, model)  # None on one replica
    epoch_dataset = epoch_dataset_function(strategy, data, config, global_batch, steps_per_epoch)
    evaluator = Evaluator(model, config, data, strategy=strategy)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, runs.TENSORBOARD_DIR)) if chief else None
    steps_this_call = 0
    last_val = state.get("last_val")
    record = {}
    final = None  # the last epoch's validation, if it runs
    # SIGTERM/SIGINT set a flag the loop reads after each step (training.preemption). The summary writer is
    # closed (flushed) however the loop ends: a stop, a non-finite loss, an error.
    with StopRequest(strategy) as stop, contextlib.closing(writer) if chief else contextlib.nullcontext():
        for epoch in range(step // steps_per_epoch, config.epochs):
            skip = step - epoch * steps_per_epoch
            progress = Progress(epoch, config.epochs, steps_per_epoch, skip, global_batch)
            sums = np.zeros(4)
            epoch_start, clips_seen, steps_timed, timed_start = time.time(), 0, 0, None
            # Exactly the epoch's steps are drawn (no end-of-sequence request at the epoch's end). The last
            # epoch's iterator is released before the next one is built, not while it runs.
            iterator = None
            iterator = iter(epoch_dataset(epoch, skip))
            for _ in range(steps_per_epoch - skip):
                loss_sum, top1, top5, count = (float(v) for v in train_step(_next_batch(iterator, epoch)))
                # Read a variable the step updates (the step is done, so it costs nothing). Without it,
                # epoch boundaries stalled on R50 with oneDNN backward kernels still running; the cause
                # is not understood. benchmarks/train_speed.py watches for it.
                optimizer.iterations.numpy()
                step += 1
                steps_this_call += 1
                if not math.isfinite(loss_sum):
                    last = manager.latest()
                    resume = (f"The last good checkpoint is {last}; lower --lr or --clip_norm, or use "
                              "--precision=float32, then rerun the same command to resume from it." if last else
                              "No checkpoint was written yet: lower --lr or --clip_norm, or use --precision=float32, "
                              "and rerun (it starts from the beginning).")
                    raise NonFiniteLossError(f"the training loss became {loss_sum} at epoch {epoch + 1}, step {step}: "
                                             f"stopping. {resume}")
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
                        write_scalar("train/loss", loss_sum / max(count, 1))
                        write_scalar("train/lr", lr)
                        if steps_timed:
                            write_scalar("train/clips_per_sec", clips_per_sec)
                every = int(config.checkpoint_every or 0)
                periodic = bool(every and step % every == 0 and step % steps_per_epoch)
                if periodic and sync_statistics:
                    sync_statistics()  # every worker, at the same step: the checkpoint holds what all replicas hold
                saved = chief and periodic
                if saved:
                    manager.save(step, dict(epoch=epoch, best_val_top1=best_top1, last_val=last_val))
                if stop.requested():  # the same answer on every worker (all-reduced), after the same step
                    progress.close()
                    if sync_statistics and not periodic:
                        sync_statistics()  # the checkpoint a preempted run resumes from holds the replicas' mean
                    _save_and_stop(stop, manager, step, epoch, steps_per_epoch, chief and not saved,
                                   dict(epoch=epoch, best_val_top1=best_top1, last_val=last_val))
                if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                    progress.close()
                    return None
            progress.close()
            if sync_statistics:
                sync_statistics()  # one set of BatchNorm statistics for validation, checkpoints and the saved weights
            record = dict(epoch=epoch + 1, step=step, lr=float(schedule(step - 1)),
                          train_loss=sums[0] / max(sums[3], 1), train_top1=sums[1] / max(sums[3], 1),
                          train_top5=sums[2] / max(sums[3], 1), epoch_seconds=time.time() - epoch_start,
                          clips_per_sec=clips_seen / max(time.time() - timed_start, 1e-9) if steps_timed else None)
            bad_samples = getattr(data, "BAD_SAMPLES", None)  # optional in the data contract
            if bad_samples is not None:
                record["bad_samples_skipped"] = int(bad_samples.take())
            if precise_bn_due(epoch, config.precise_bn_every, config.epochs):
                started = time.time()
                layers, batches = precise_bn_after_epoch(model, data, config, global_batch, epoch, steps_per_epoch)
                record["precise_bn_seconds"] = time.time() - started
                if chief:
                    print(f"precise BN: {layers} BatchNorm layers' statistics from {batches} training batches",
                          flush=True)
            is_best = False
            if validation_due(epoch, config):
                val = evaluator.run()
                final = val if epoch + 1 == config.epochs else None
                last_val = dict(top1=val["top1"], top5=val["top5"], mean_class_accuracy=val["mean_class_accuracy"])
                record.update({f"val_{k}": v for k, v in last_val.items()})
                is_best = val["top1"] > best_top1
                best_top1 = max(best_top1, val["top1"])
                if chief and is_best:
                    save_weights_atomic(model, os.path.join(model_dir, runs.BEST_WEIGHTS_FILE))
            print(f"epoch {epoch + 1}/{config.epochs}: {format_record(record)}", flush=True)
            if chief:
                manager.save(step, dict(epoch=epoch + 1, best_val_top1=best_top1, last_val=last_val,
                                        val_top1=record.get("val_top1")), best=is_best)
                append_metrics(os.path.join(model_dir, runs.METRICS_FILE), record)
                with writer.as_default(step=step):
                    for key, value in record.items():
                        if isinstance(value, float) and key not in ("epoch_seconds", "precise_bn_seconds"):
                            name = key.replace("val_", "val/").replace("train_", "train/")
                            write_scalar(name if "/" in name else f"epoch/{name}", value)
                writer.flush()

    # Final weights: the chief's in model_dir; other workers' beside them, so runs can be compared.
    if chief:
        save_weights_atomic(model, os.path.join(model_dir, runs.WEIGHTS_FILE))
    else:
        os.makedirs(os.path.join(model_dir, "workers"), exist_ok=True)
        save_weights_atomic(model, os.path.join(model_dir, "workers", f"worker-{strategy.cluster_resolver.task_id}"
                                                ".weights.h5"))
    try:
        # The last epoch's validation, when it ran, is the final evaluation: same weights, same data.
        final = final if final is not None else evaluator.run()
    except (FileNotFoundError, ValueError) as error:
        print(f"no validation data ({error}); reporting the last epoch's training accuracy", flush=True)
        final = dict(top1=record["train_top1"], top5=record["train_top5"]) if record else {}
    if chief and "confusion" in final:
        final["weights"] = os.path.abspath(os.path.join(model_dir, runs.WEIGHTS_FILE))
        write_reports(model_dir, final, label_names)
    return final


def validation_due(epoch, config):
    """After 0-based `epoch`: with `--validate`, every `validate_every`-th epoch and the last."""
    every = int(config.validate_every)
    if every < 1:
        raise UsageError(f"--validate_every must be >= 1, got {every}.")
    return bool(config.validate) and ((epoch + 1) % every == 0 or epoch + 1 == int(config.epochs))


def _save_and_stop(stop, manager, step, epoch, steps_per_epoch, save, state):
    """Write the checkpoint of `step` (unless just written) and raise TrainingPreempted saying where."""
    import time

    started = time.time()
    stop.saving = True
    try:
        if save:
            manager.save(step, state)
    finally:
        stop.saving = False
    where = manager.latest()
    raise TrainingPreempted(f"stopped by {stop.signal_name} after step {step} (epoch {epoch + 1}, "
                            f"{step - epoch * steps_per_epoch} of {steps_per_epoch} steps); checkpoint {where} "
                            f"written in {time.time() - started:.1f} s; rerun the same command to resume from it")


def _next_batch(iterator, epoch):
    import tensorflow as tf

    try:
        return next(iterator)
    except (StopIteration, tf.errors.OutOfRangeError):
        raise RuntimeError(f"the training data ran out during epoch {epoch + 1}: every sample may have been "
                           "skipped as bad (see the warnings above), or the dataset is empty.") from None

