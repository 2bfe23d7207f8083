"""The training loss against numpy: label-smoothed cross-entropy (PaddleVideo ls_eps) and its mixup form."""

import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.training.losses import check_regularizers, mixup_cross_entropy, smoothed_cross_entropy


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _numpy_smoothed_ce(labels, logits, num_classes, eps):
    # PaddleVideo: F.label_smooth(one_hot, epsilon) = (1 - eps) * one_hot + eps / num_classes, soft-label CE.
    target = np.eye(num_classes)[labels] * (1 - eps) + eps / num_classes
    return -(target * _log_softmax(logits.astype(np.float64))).sum(-1)


def _case(batch=6, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, batch), (rng.normal(size=(batch, num_classes)) * 3).astype(np.float32)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothed_cross_entropy_matches_numpy(eps):
    labels, logits = _case()
    out = smoothed_cross_entropy(tf.constant(labels), tf.constant(logits), 5, eps).numpy()
    np.testing.assert_allclose(out, _numpy_smoothed_ce(labels, logits, 5, eps), rtol=1e-5, atol=1e-6)


def test_label_smoothing_by_hand():
    # Two classes, logits (0, 0): log p = log 1/2 whatever the target, so CE = log 2 for any eps;
    # logits (log 3, 0): p = (3/4, 1/4); eps = 0.2 -> target (0.9, 0.1) for label 0.
    out = smoothed_cross_entropy(tf.constant([0, 0]), tf.constant([[0.0, 0.0], [np.log(3.0), 0.0]]), 2, 0.2).numpy()
    np.testing.assert_allclose(out, [np.log(2.0), -(0.9 * np.log(0.75) + 0.1 * np.log(0.25))], rtol=1e-6)


def test_label_smoothing_keeps_bfloat16_logits_in_float32():
    labels, logits = _case()
    out = smoothed_cross_entropy(tf.constant(labels), tf.cast(tf.constant(logits), tf.bfloat16), 5, 0.1)
    assert out.dtype == tf.float32


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_cross_entropy_is_lam_weighted(eps):
    labels, logits = _case()
    labels_b = labels[::-1].copy()
    lam = 0.3
    out = mixup_cross_entropy(tf.constant(labels), tf.constant(labels_b), lam, tf.constant(logits), 5, eps).numpy()
    expected = (lam * _numpy_smoothed_ce(labels, logits, 5, eps)
                + (1 - lam) * _numpy_smoothed_ce(labels_b, logits, 5, eps))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="--label_smoothing must be in"):
        check_regularizers(1.0, 0.0)
    with pytest.raises(ValueError, match="--mixup_alpha must be >= 0"):
        check_regularizers(0.1, -0.2)
