"""The training loss: cross-entropy over hard or label-smoothed targets, and its mixup form.

Label smoothing is PaddleVideo's `ls_eps` (`F.label_smooth` on the one-hot labels, then soft-label
cross-entropy): target = (1 - eps) * one_hot + eps / num_classes. Mixup (PaddleVideo `Mixup` +
`BaseHead.loss`): lam * CE(labels_a) + (1 - lam) * CE(labels_b), smoothed targets if eps > 0.
"""

import tensorflow as tf


def check_regularizers(label_smoothing, mixup_alpha):
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"--label_smoothing must be in [0, 1), got {label_smoothing} (PP-TSM: 0.1).")
    if mixup_alpha < 0.0:
        raise ValueError(f"--mixup_alpha must be >= 0 (0 = no mixup), got {mixup_alpha} (PP-TSM: 0.2).")


def smoothed_cross_entropy(labels, logits, num_classes, label_smoothing=0.0):
    """Per-example cross-entropy: labels int [batch], logits [batch, num_classes] -> float32 [batch]."""
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if not label_smoothing:  # hard labels: the fused kernel
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    target = tf.one_hot(labels, num_classes, dtype=tf.float32) * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def mixup_cross_entropy(labels_a, labels_b, lam, logits, num_classes, label_smoothing=0.0):
    """Per-example lam * CE(labels_a) + (1 - lam) * CE(labels_b), float32 [batch]."""
    lam = tf.cast(lam, tf.float32)
    return (lam * smoothed_cross_entropy(labels_a, logits, num_classes, label_smoothing)
            + (1.0 - lam) * smoothed_cross_entropy(labels_b, logits, num_classes, label_smoothing))
