"""Precise BatchNorm statistics: PaddleVideo's `do_preciseBN` (PP-TSM's `PRECISEBN`).

During training the moving statistics trail weights that change every step. Every `precise_bn_every`
epochs PaddleVideo sets each BatchNorm's momentum to 0, runs `num_iters_preciseBN` training batches
forward in training mode (no gradients, no weight update) and sets the moving mean and variance to the
average over those batches of the per-batch mean and (biased) variance. It runs after the 0-based
epochs `e % interval == 0` and the last: epochs 1, 1 + N, 1 + 2N, ... and the last, counted from 1;
the batches are a fresh pass of the training loader, mixup included when the recipe mixes.

One replica only: with several, each replica would average its own batches and the copies of the
moving statistics would disagree (the loop refuses `--precise_bn_every` under several replicas).
"""

import numpy as np


def batch_norm_layers(model):
    """The BatchNormalization layers whose statistics training updates (trainable ones), in model order."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def precise_bn_due(epoch, every, epochs):
    """After 0-based `epoch`: PaddleVideo's `epoch % interval == 0 or epoch == epochs - 1` (never if every=0)."""
    return bool(every) and (epoch % int(every) == 0 or epoch == int(epochs) - 1)


def recompute_batch_norm_statistics(model, batches, num_batches, prepare=None):
    """Set every trainable BatchNorm's moving mean/variance to the mean over `num_batches` batches of
    its per-batch mean/variance. Returns the number of layers updated.

    `batches`: iterable of `(clips, labels)` training batches; `prepare(clips, labels, index) -> clips`
    transforms each one first (mixup). Weights and optimizer state are not touched. Raises
    RuntimeError if the batches run out before `num_batches`.
    """
    import tensorflow as tf

    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    means = [np.zeros(layer.moving_mean.shape, np.float64) for layer in layers]
    variances = [np.zeros(layer.moving_variance.shape, np.float64) for layer in layers]
    try:
        # moving = moving * momentum + batch * (1 - momentum): momentum 0 leaves the batch's own statistics.
        # A function traced now reads momentum 0; the train step's trace keeps its own.
        for layer in layers:
            layer.momentum = 0.0

        @tf.function(reduce_retracing=True)
        def forward(clips):
            model(clips, training=True)
            return ([tf.identity(layer.moving_mean.value) for layer in layers],
                    [tf.identity(layer.moving_variance.value) for layer in layers])

        done = 0
        for index, (clips, labels) in enumerate(batches):
            if index >= num_batches:
                break
            if prepare is not None:
                clips = prepare(clips, labels, index)
            batch_means, batch_variances = forward(clips)
            for i in range(len(layers)):
                # PaddleVideo's running average: running += (batch - running) / (index + 1).
                means[i] += (batch_means[i].numpy() - means[i]) / (index + 1)
                variances[i] += (batch_variances[i].numpy() - variances[i]) / (index + 1)
            done = index + 1
        if done < num_batches:
            raise RuntimeError(f"precise BN needs {num_batches} training batches but the data gave {done}; lower "
                               "--precise_bn_steps.")
        for layer, mean, variance in zip(layers, means, variances):
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


# Precise-BN passes draw their batches with this offset to the epoch's training seed: a fresh pass.
PRECISE_BN_SEED_OFFSET = 1_000_003


def check_precise_bn(every, steps, replicas):
    if every < 0 or (every and steps < 1):
        raise ValueError(f"--precise_bn_every must be >= 0 (0 = off) and --precise_bn_steps >= 1, got {every} and "
                         f"{steps} (PP-TSM: 5 and 200).")
    if every and replicas > 1:
        raise ValueError(f"--precise_bn_every runs on one replica only, this strategy has {replicas}: each replica "
                         "would average its own batches and the copies of the statistics would disagree. Use "
                         "--strategy=one_device, or --precise_bn_every=0.")


def precise_bn_after_epoch(model, data, config, batch_size, epoch, steps_per_epoch):
    """The recipe's precise-BN pass after 0-based `epoch`: min(precise_bn_steps, steps_per_epoch) fresh training
    batches of `batch_size` (mixed with `config.mixup_alpha` as training mixes). Returns (layers, batches)."""
    import tensorflow as tf

    from tsm_keras.training.mixup import mix_clips, sample_mixup

    num_batches = min(int(config.precise_bn_steps), int(steps_per_epoch))
    seed = config.seed + PRECISE_BN_SEED_OFFSET + epoch
    dataset = data.build_dataset(config, "train", batch_size=batch_size, shuffle=True, repeat=True, seed=seed)
    prepare = None
    if config.mixup_alpha:
        def prepare(clips, labels, index):
            lam, perm = sample_mixup(tf.shape(labels)[0], config.mixup_alpha, tf.constant([index, seed], tf.int64))
            return mix_clips(clips, labels, lam, perm)[0]
    layers = recompute_batch_norm_statistics(model, dataset.take(num_batches), num_batches, prepare)
    return layers, num_batches
