"""Clip-level mixup (PaddleVideo Mixup) against numpy: lam's distribution, the mixed clips and labels, and
the train step's loss and accuracy for a known lam and permutation."""

import keras
import numpy as np
import tensorflow as tf

from tsm_keras.training.mixup import mix_clips, replica_mixup_seed, sample_beta, sample_mixup
from tsm_keras.training.optimizer import PaddleMomentum
from tsm_keras.training.step import make_train_step


def test_lam_follows_beta_alpha_alpha():
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); P(lam < 0.1) from numpy's own Beta sampler.
    alpha = 0.2
    lam = sample_beta([40000], alpha, tf.constant([1, 2], tf.int64)).numpy()
    reference = np.random.default_rng(0).beta(alpha, alpha, 400000)
    assert lam.min() >= 0.0 and lam.max() <= 1.0
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - 1.0 / (4 * (2 * alpha + 1))) < 0.005
    for q in (0.01, 0.1, 0.3):
        assert abs((lam < q).mean() - (reference < q).mean()) < 0.01


def test_sample_mixup_is_seeded_and_perm_is_a_permutation():
    lam, perm = sample_mixup(8, 0.2, tf.constant([3, 4], tf.int64))
    lam2, perm2 = sample_mixup(8, 0.2, tf.constant([3, 4], tf.int64))
    assert float(lam) == float(lam2) and np.array_equal(perm, perm2)
    assert sorted(perm.numpy().tolist()) == list(range(8))
    others = {tuple(sample_mixup(8, 0.2, tf.constant([s, 4], tf.int64))[1].numpy()) for s in range(10)}
    assert len(others) > 5


def test_mixed_clips_and_labels_match_numpy():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 256, (4, 2, 3, 3, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 3], np.int32)
    lam, perm = 0.25, np.array([2, 0, 3, 1], np.int32)
    mixed, a, b = mix_clips(tf.constant(clips), tf.constant(labels), lam, tf.constant(perm))
    expected = 0.25 * clips.astype(np.float64) + 0.75 * clips[[2, 0, 3, 1]].astype(np.float64)
    assert mixed.dtype == tf.float32
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(a.numpy(), labels)
    np.testing.assert_array_equal(b.numpy(), [2, 0, 3, 1])


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_train_step_loss_and_top1_for_the_step_seed():
    """The step mixes with lam, perm from (seed, optimizer step, replica) and returns the sum over the batch of
    lam * CE_eps(a) + (1 - lam) * CE_eps(b) on the mixed clips; top-1 hits are lam-weighted too."""
    num_classes, batch, eps, seed = 3, 6, 0.1, 5
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2, 2, 2, 3)), keras.layers.Flatten(), keras.layers.Dense(num_classes)])
    optimizer = PaddleMomentum(learning_rate=0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (batch, 2, 2, 2, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    kernel, bias = [w.astype(np.float64) for w in model.get_weights()]
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer, batch, num_classes,
                           label_smoothing=eps, mixup_alpha=0.2, seed=seed)
    loss_sum, top1, _, count = [float(v) for v in step((tf.constant(clips), tf.constant(labels)))]

    lam, perm = sample_mixup(batch, 0.2, replica_mixup_seed(seed, 0))
    lam, perm = float(lam), perm.numpy()
    assert 0.0 < lam < 1.0 and not np.array_equal(perm, np.arange(batch))
    mixed = lam * clips.astype(np.float64) + (1 - lam) * clips[perm].astype(np.float64)
    logits = mixed.reshape(batch, -1) @ kernel + bias
    log_p = _log_softmax(logits)
    smooth = lambda y: np.eye(num_classes)[y] * (1 - eps) + eps / num_classes  # noqa: E731
    expected = (lam * -(smooth(labels) * log_p).sum(-1) + (1 - lam) * -(smooth(labels[perm]) * log_p).sum(-1)).sum()
    np.testing.assert_allclose(loss_sum, expected, rtol=1e-4)
    pred = logits.argmax(-1)
    np.testing.assert_allclose(top1, (lam * (pred == labels) + (1 - lam) * (pred == labels[perm])).sum(), rtol=1e-5)
    assert count == batch
    # The next step draws another lam and perm.
    assert float(sample_mixup(batch, 0.2, replica_mixup_seed(seed, 1))[0]) != lam


def test_train_step_without_mixup_or_smoothing_is_plain_cross_entropy():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2, 2, 2, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    optimizer = PaddleMomentum(learning_rate=0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    clips = np.random.default_rng(2).integers(0, 256, (4, 2, 2, 2, 3)).astype(np.uint8)
    labels = np.array([0, 1, 2, 1], np.int32)
    kernel, bias = [w.astype(np.float64) for w in model.get_weights()]
    step = make_train_step(tf.distribute.get_strategy(), model, optimizer, 4, 3)
    loss_sum = float(step((tf.constant(clips), tf.constant(labels)))[0])
    log_p = _log_softmax(clips.reshape(4, -1).astype(np.float64) @ kernel + bias)
    np.testing.assert_allclose(loss_sum, -log_p[np.arange(4), labels].sum(), rtol=1e-4)
