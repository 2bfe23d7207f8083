"""Metrics against hand counts, multi-view averaging, and the report files."""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.evaluation import average_views, compute_metrics, predict_dataset, topk_hits, write_reports


def test_metrics_by_hand():
    # 3 classes; labels 0,0,1,2,2,2. argmax: 0,1,1,2,0,2 -> 4/6 correct.
    logits = np.array([[5, 1, 0], [1, 5, 0], [0, 5, 1], [0, 1, 5], [5, 0, 1], [0, 1, 5]], np.float32)
    labels = np.array([0, 0, 1, 2, 2, 2])
    m = compute_metrics(logits, labels, 3)
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] == 1.0  # top-min(5, 3) = top-3 always hits
    # per class: 1/2, 1/1, 2/3 -> mean (0.5 + 1 + 0.6667) / 3
    np.testing.assert_allclose(m["per_class_accuracy"], [0.5, 1.0, 2 / 3])
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    np.testing.assert_array_equal(m["confusion"], [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    # top-2: row 4 (label 2, scores 5,0,1) has 2 in its top 2; row 1 (label 0, scores 1,5,0) too.
    np.testing.assert_array_equal(topk_hits(logits, labels, 2), [True, True, True, True, True, True])


def test_class_without_samples_is_left_out_of_the_mean():
    m = compute_metrics(np.eye(3)[[0, 0]], np.array([0, 1]), 3)
    assert np.isnan(m["per_class_accuracy"][2])
    assert m["mean_class_accuracy"] == pytest.approx(0.5)


def test_multi_view_scores_are_averaged_per_video():
    logits = np.array([[1, 0], [3, 4], [0, 2], [2, 2]], np.float32)  # 2 videos x 2 views
    np.testing.assert_allclose(average_views(logits, 2), [[2, 2], [1, 2]])


class _Sum:
    """A model whose logits are the per-channel sums of the clip: easy to predict by hand."""

    def __call__(self, clips, training=False):
        x = tf.cast(clips, tf.float32)
        return tf.stack([tf.reduce_sum(x[..., 0], [1, 2, 3]), tf.reduce_sum(x[..., 1], [1, 2, 3])], -1)


def test_predict_dataset_flattens_and_averages_views():
    clips = np.random.default_rng(0).integers(0, 255, (4, 3, 2, 4, 4, 3)).astype(np.uint8)  # 4 videos, 3 views
    labels = np.array([0, 1, 0, 1], np.int32)
    ds = tf.data.Dataset.from_tensor_slices((clips, labels)).batch(3)
    logits, got_labels = predict_dataset(_Sum(), ds)
    x = clips.astype(np.float64)
    expected = np.stack([x[..., 0].sum((2, 3, 4)), x[..., 1].sum((2, 3, 4))], -1).mean(1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)


def test_many_views_go_through_the_model_in_bounded_chunks():
    calls = []

    class _Counting(_Sum):
        def __call__(self, clips, training=False):
            def record(n):
                calls.append(int(n))
                return n

            n = tf.numpy_function(record, [tf.shape(clips)[0]], tf.int32)  # the batch each run really sees
            return super().__call__(clips, training) + 0.0 * tf.cast(n, tf.float32)

    clips = np.random.default_rng(1).integers(0, 255, (3, 10, 2, 4, 4, 3)).astype(np.uint8)  # 3 videos x 10 views
    ds = tf.data.Dataset.from_tensor_slices((clips, np.arange(3, dtype=np.int32))).batch(3)
    model = _Counting()
    logits, _ = predict_dataset(model, ds, max_clips=8)
    x = clips.astype(np.float64)
    expected = np.stack([x[..., 0].sum((2, 3, 4)), x[..., 1].sum((2, 3, 4))], -1).mean(1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    assert calls == [8, 8, 8, 6]  # 30 clips, at most 8 per forward


def test_reports(tmp_path):
    import cv2

    names = ["moving_right", "moving_left", "growing"]
    m = compute_metrics(np.eye(3)[[0, 1, 1, 2]], np.array([0, 0, 1, 2]), 3)
    paths = write_reports(str(tmp_path), m, names)
    summary = json.loads(open(paths["json"]).read())
    assert summary["top1"] == 0.75 and summary["label_names"] == names
    rows = list(csv.DictReader(open(paths["csv"])))
    assert rows[0]["class_name"] == "moving_right" and rows[0]["accuracy"] == "0.5000"
    assert rows[0]["most_confused_with"] == "moving_left" and rows[0]["most_confused_count"] == "1"
    image = cv2.imread(paths["png"])
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert (image < 200).any()  # cells and names were drawn
    # Many classes still render (no names when cells are tiny).
    big = compute_metrics(np.eye(400)[np.arange(400)], np.arange(400), 400)
    assert cv2.imread(write_reports(str(tmp_path / "big"), big, [f"class {i}" for i in range(400)])["png"]) is not None


def test_eval_batch_size_default_fits_the_budget_and_keeps_replicas_even():
    from tsm_keras.config import Config
    from tsm_keras.evaluation.evaluator import EVAL_BATCH_BYTES, eval_batch_size

    k400 = Config(batch_size=128, num_segments=8, image_size=224, test_clips=10, test_crops=3)
    videos = eval_batch_size(k400)
    assert videos == EVAL_BATCH_BYTES // (30 * 8 * 224 * 224 * 3) == 29
    assert eval_batch_size(k400.replace(test_clips=1, test_crops=1)) == 128  # the training batch fits
    assert eval_batch_size(k400.replace(eval_batch_size=7)) == 7
    assert eval_batch_size(k400.replace(batch_size=3, num_segments=2, image_size=32), replicas=2) == 4


def test_evaluator_metrics_do_not_depend_on_the_eval_batch(tiny_tsm):
    """The same metrics whatever --eval_batch_size (batches of 1, 4 and a partial last one of 13 videos)."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
    import fake_data
    from tsm_keras.config import Config
    from tsm_keras.evaluation import Evaluator

    config = Config(num_classes=3, num_segments=2, image_size=32, batch_size=16)
    results = [Evaluator(tiny_tsm, config.replace(eval_batch_size=b), fake_data).run() for b in (0, 1, 4)]
    for metrics in results[1:]:
        assert metrics["num_samples"] == results[0]["num_samples"]
        assert metrics["top1"] == results[0]["top1"] and metrics["top5"] == results[0]["top5"]
        np.testing.assert_array_equal(metrics["confusion"], results[0]["confusion"])


def test_evaluator_on_a_pptsm_model_counts_what_the_model_predicts(tiny_pptsm):
    """--mode=eval's Evaluator on a ResNet-50-vd TSM: its top-1 is the one the model's own logits give."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
    import fake_data
    from tsm_keras.config import Config
    from tsm_keras.evaluation import Evaluator

    config = Config(num_classes=3, num_segments=2, image_size=40, batch_size=8, backbone="resnet50_vd")
    metrics = Evaluator(tiny_pptsm, config, fake_data).run()
    clips, labels = fake_data.make_clips(fake_data.NUM_VAL, 2, 40, seed=2)  # the validation split's clips
    expected = tiny_pptsm(clips.astype(np.float32), training=False).numpy()
    assert metrics["num_samples"] == fake_data.NUM_VAL
    assert metrics["top1"] == pytest.approx(float(np.mean(expected.argmax(-1) == labels)))
    # The logits the Evaluator ranks, not only their argmax.
    logits, _ = predict_dataset(tiny_pptsm, fake_data.build_dataset(config, "val", batch_size=8, shuffle=False))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
