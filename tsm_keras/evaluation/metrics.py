"""Classification metrics of video scores: top-1 / top-5, mean class accuracy, confusion matrix (numpy)."""

import numpy as np


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
