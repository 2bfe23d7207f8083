"""Learning-rate schedules by epoch: PaddleVideo's piecewise decay, optional linear warmup and cosine.

The lr values of a recipe are given for a reference global batch (`lr_batch_size`, 128 for
PaddleVideo's K400 TSM) and scale linearly with the actual global batch.
"""

import math

import keras
import tensorflow as tf

from tsm_keras.errors import UsageError

SCHEDULES = ("piecewise", "cosine")


def scaled_lr_values(config):
    """The recipe's lr values for this run: `lr_values` rescaled so the first equals `lr`, times
    `batch_size / lr_batch_size` (linear scaling rule; `lr_batch_size=0` turns it off)."""
    values = [float(v) for v in config.lr_values] or [float(config.lr)]
    if len(values) != len(config.lr_boundaries) + 1:
        raise UsageError(f"--lr_values needs one more entry than --lr_boundaries: got {len(values)} values "
                         f"for {len(config.lr_boundaries)} boundaries ({config.lr_boundaries}).")
    factor = float(config.lr) / values[0] if values[0] else 1.0
    reference = getattr(config, "lr_batch_size", 0) or config.batch_size
    factor *= config.batch_size / reference
    return [v * factor for v in values]


@keras.saving.register_keras_serializable(package="tsm_keras")
class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr as a function of the optimizer step, defined per epoch.

    `piecewise`: `values[i]` while `boundaries[i-1] <= epoch < boundaries[i]` (epoch = step //
    steps_per_epoch, the lr changes only at epoch starts, as Paddle's PiecewiseDecay stepped
    once per epoch). `cosine`: `values[0] * (1 + cos(pi * progress)) / 2` over the run, per step.
    Linear warmup (per step, from `values[0] / warmup_steps` to `values[0]`) replaces the
    first `warmup_epochs` whatever the schedule.
    """

    def __init__(self, kind, values, boundaries, steps_per_epoch, epochs, warmup_epochs=0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {kind!r}.")
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        self.kind = kind
        self.values = [float(v) for v in values]
        self.boundaries = [int(b) for b in boundaries]
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.warmup_epochs = float(warmup_epochs)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        spe = float(self.steps_per_epoch)
        if self.kind == "piecewise":
            epoch = tf.floor(step / spe)
            lr = tf.constant(self.values[0], tf.float32)
            for boundary, value in zip(self.boundaries, self.values[1:]):
                lr = tf.where(epoch >= boundary, tf.constant(value, tf.float32), lr)
        else:
            warm = self.warmup_epochs * spe
            total = max(self.epochs * spe - warm, 1.0)
            progress = tf.clip_by_value((step - warm) / total, 0.0, 1.0)
            lr = self.values[0] * 0.5 * (1.0 + tf.cos(math.pi * progress))
        warmup_steps = self.warmup_epochs * spe
        if warmup_steps > 0:
            lr = tf.where(step < warmup_steps, self.values[0] * (step + 1.0) / warmup_steps, lr)
        return lr

    def get_config(self):
        return dict(kind=self.kind, values=self.values, boundaries=self.boundaries,
                    steps_per_epoch=self.steps_per_epoch, epochs=self.epochs,
                    warmup_epochs=self.warmup_epochs)


def build_schedule(config, steps_per_epoch):
    return EpochSchedule(getattr(config, "lr_schedule", "piecewise"), scaled_lr_values(config),
                         config.lr_boundaries, steps_per_epoch, config.epochs,
                         getattr(config, "warmup_epochs", 0.0))
