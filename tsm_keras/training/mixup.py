"""Clip-level mixup across a batch (PaddleVideo `Mixup`, the PP-TSM recipe's `MIX`).

One lam ~ Beta(alpha, alpha) and one permutation per batch: clips = lam * x + (1 - lam) * x[perm],
labels (labels, labels[perm], lam); the loss is `losses.mixup_cross_entropy`. PaddleVideo mixes each
GPU's batch in its data loader's collate function; here each replica mixes its own share of the
global batch in the train step. Clips are mixed as the 0-255 values the model normalizes itself;
normalization being affine, that is PaddleVideo's mix of normalized frames. Randomness is stateless:
the same seed gives the same lam and perm.
"""

import tensorflow as tf


def sample_beta(shape, alpha, seed):
    """Beta(alpha, alpha) samples, float32 `shape`, as G1 / (G1 + G2) of two Gamma(alpha) draws."""
    seed = tf.cast(seed, tf.int64)
    g1 = tf.random.stateless_gamma(shape, seed=seed, alpha=alpha, dtype=tf.float32)
    g2 = tf.random.stateless_gamma(shape, seed=seed + [0, 1], alpha=alpha, dtype=tf.float32)
    # Gamma(alpha < 1) can underflow to 0 in float32; both zero would be 0 / 0.
    total = g1 + g2
    return tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5)


def sample_mixup(batch_size, alpha, seed):
    """(lam float32 [], perm int32 [batch_size]) for one batch; `seed` int [2]."""
    lam = sample_beta([], alpha, seed)
    perm = tf.argsort(tf.random.stateless_uniform([batch_size], seed=tf.cast(seed, tf.int64) + [0, 2]))
    return lam, tf.cast(perm, tf.int32)


def mix_clips(clips, labels, lam, perm):
    """clips [batch, ...] (any dtype) -> float32 lam * clips + (1 - lam) * clips[perm]; labels ->
    (labels, labels[perm])."""
    clips = tf.cast(clips, tf.float32)
    lam = tf.cast(lam, tf.float32)
    mixed = lam * clips + (1.0 - lam) * tf.gather(clips, perm)
    return mixed, labels, tf.gather(labels, perm)


def replica_mixup_seed(seed, step):
    """The int64 [2] mixup seed of this replica at optimizer step `step`: distinct per step and replica."""
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group if context is not None else 0
    replica = tf.cast(replica, tf.int64)
    return tf.stack([tf.cast(step, tf.int64), tf.cast(seed, tf.int64) * 4096 + replica])
