"""Clip augmentations, each eagerly and inside tf.data.Dataset.map, against numpy/OpenCV/PaddleVideo."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.data import augment


def _clip(t=3, h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _in_map(fn, *args):
    """Run fn(*args) inside Dataset.map (graph mode, as the pipeline does)."""
    dataset = tf.data.Dataset.from_tensors(tuple(tf.convert_to_tensor(a) for a in args)).map(fn)
    return next(iter(dataset))


def _both(fn, *args):
    eager = fn(*[tf.convert_to_tensor(a) for a in args])
    mapped = _in_map(fn, *args)
    if isinstance(eager, (tuple, list)):
        for e, m in zip(eager, mapped):
            np.testing.assert_array_equal(np.asarray(e), np.asarray(m))
        return [np.asarray(e) for e in eager]
    np.testing.assert_array_equal(eager.numpy(), mapped.numpy())
    return eager.numpy()


SIZES = [(256, 340, 224), (96, 128, 112), (128, 128, 112), (60, 100, 56)]

# Runs in a subprocess: paddle (imported by PaddleVideo's augmentations.py) crashes when loaded after
# TensorFlow in one process. For each [height, width, image_size, allow_duplication], PaddleVideo's own
# MultiScaleCrop is made to enumerate every crop pair; each pair (uniform), then each offset of its candidate
# list (uniform, duplicates counted), gives the exact probability of every window it can pick.
_PADDLE_DISTRIBUTION = r"""
import json, random, sys
from collections import Counter
sys.path.insert(0, sys.argv[1])
from paddlevideo_pipelines import load_paddlevideo_pipelines
from PIL import Image
(augmentations,) = load_paddlevideo_pipelines(("augmentations",))
result = {}
for height, width, image_size, allow in json.loads(sys.argv[2]):
    probability, k, num_pairs = Counter(), 0, None
    while num_pairs is None or k < num_pairs:
        calls = []
        class Recorder:
            # Record every candidate list MultiScaleCrop draws from; force pair k.
            @staticmethod
            def choice(options):
                calls.append(list(options))
                return options[k] if len(calls) == 1 else options[0]
            randint = staticmethod(random.randint)
        augmentations.random = Recorder
        augmentations.MultiScaleCrop(image_size, allow_duplication=allow)(
            {"imgs": [Image.new("RGB", (width, height))]})
        pairs, offsets = calls
        num_pairs = len(pairs)
        crop_w, crop_h = pairs[k]
        # PIL rounds float crop boxes with round() (half to even).
        for w_off, h_off in offsets:
            probability[f"{round(h_off)},{round(w_off)},{crop_h},{crop_w}"] += 1.0 / num_pairs / len(offsets)
        k += 1
    result[f"{height},{width},{image_size},{int(allow)}"] = probability
print(json.dumps(result))
"""


def paddle_distributions(cases):
    """{(h, w, image_size, allow_duplication): {(top, left, crop_h, crop_w): probability}} from PaddleVideo."""
    benchmarks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")
    run = subprocess.run([sys.executable, "-c", _PADDLE_DISTRIBUTION, benchmarks, json.dumps(cases)],
                         capture_output=True, text=True, timeout=240)
    if run.returncode != 0 or not run.stdout.strip():
        pytest.skip(f"PaddleVideo pipelines unavailable: {run.stderr[-500:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {tuple(int(v) for v in key.split(",")[:3]) + (key.endswith(",1"),):
            {tuple(int(v) for v in w.split(",")): p for w, p in windows.items()} for key, windows in result.items()}


@pytest.fixture(scope="module")
def paddle_windows():
    """{(h, w, image_size): set of (top, left, crop_h, crop_w)} every PaddleVideo MultiScaleCrop (its class
    default, allow_duplication=False) can choose."""
    distributions = paddle_distributions([[h, w, size, False] for h, w, size in SIZES])
    return {key[:3]: set(windows) for key, windows in distributions.items()}


@pytest.mark.parametrize("height, width, image_size", SIZES)
def test_multi_scale_crop_windows_match_paddlevideo(paddle_windows, height, width, image_size):
    expected = paddle_windows[(height, width, image_size)]
    seeds = tf.data.Dataset.range(4000).map(lambda s: tf.stack(augment.multi_scale_crop_window(
        height, width, image_size, tf.stack([s, tf.constant(7, tf.int64)]))))
    seen = {tuple(int(v) for v in w) for w in seeds.batch(4000).get_single_element().numpy()}
    assert seen == expected


def test_multi_scale_crop_hand_computed_window_set():
    # 256 x 340, output 224: sizes int(256 * s) = 256, 224, 192, 168; the 256 x 256 crop has
    # w_step = 84 / 4 = 21, h_step = 0, so only offsets 0, 21, 42, 63, 84 along the width.
    seeds = tf.data.Dataset.range(3000).map(lambda s: tf.stack(augment.multi_scale_crop_window(
        256, 340, 224, tf.stack([s, tf.constant(3, tf.int64)]))))
    seen = {tuple(int(v) for v in w) for w in seeds.batch(3000).get_single_element().numpy()}
    assert {w for w in seen if w[2:] == (256, 256)} == {(0, x, 256, 256) for x in (0, 21, 42, 63, 84)}
    assert {(h, w) for _, _, h, w in seen} == {(256, 256), (256, 224), (224, 256), (224, 224), (224, 192),
                                               (192, 224), (192, 192), (192, 168), (168, 192), (168, 168)}


def test_multi_scale_crop_eager_and_in_map_match_opencv():
    clip = _clip(3, 40, 52)
    seed = np.array([5, 9], np.int64)
    out = _both(lambda c, s: augment.multi_scale_crop(c, 32, s), clip, seed)
    top, left, h, w = [int(v) for v in augment.multi_scale_crop_window(40, 52, 32, seed)]
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    for t in range(3):
        expected = cv2.resize(clip[t, top:top + h, left:left + w], (32, 32), interpolation=cv2.INTER_LINEAR)
        assert np.abs(out[t].astype(int) - expected.astype(int)).max() <= 1


def test_random_flip_is_the_same_for_every_frame():
    clip = _clip()
    flips = []
    for s in range(40):
        out = _both(augment.random_flip, clip, np.array([s, 1], np.int64))
        flipped = np.array_equal(out, clip[:, :, ::-1])
        assert flipped or np.array_equal(out, clip)
        flips.append(flipped)
    assert 8 < sum(flips) < 32


def test_resize_short_side_matches_paddlevideo_scale_and_opencv():
    clip = _clip(2, 30, 50)
    out = _both(lambda c: augment.resize_short_side(c, 24), clip)
    # PaddleVideo Scale(keep ratio): oh = 24, ow = int(50 * 24 / 30) = 40
    assert out.shape == (2, 24, 40, 3)
    expected = cv2.resize(clip[0], (40, 24), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out[0].astype(int) - expected.astype(int)).max() <= 1
    tall = _both(lambda c: augment.resize_short_side(c, 24), _clip(1, 50, 30))
    assert tall.shape == (1, 40, 24, 3)
    np.testing.assert_array_equal(_both(lambda c: augment.resize_short_side(c, 20), clip[:, :20]), clip[:, :20])


def test_center_crop_rounds_half_to_even_like_paddlevideo():
    clip = _clip(2, 21, 31)
    out = _both(lambda c: augment.center_crop(c, 16), clip)
    # x1 = round((31 - 16) / 2) = round(7.5) = 8, y1 = round(2.5) = 2
    np.testing.assert_array_equal(out, clip[:, 2:18, 8:24])


def test_three_crops_along_the_long_side():
    wide = _clip(2, 16, 40)
    out = _both(lambda c: augment.three_crops(c, 16), wide)
    np.testing.assert_array_equal(out, np.stack([wide[:, :, 0:16], wide[:, :, 12:28], wide[:, :, 24:40]]))
    tall = _clip(2, 40, 16)
    out = _both(lambda c: augment.three_crops(c, 16), tall)
    np.testing.assert_array_equal(out, np.stack([tall[:, 0:16], tall[:, 12:28], tall[:, 24:40]]))


def test_eval_views_order_clip_major():
    frames = _clip(4, 16, 24)  # 2 clips x 2 frames
    out = _both(lambda f: augment.eval_views(f, 2, 3, 16, 16), frames)
    assert out.shape == (6, 2, 16, 16, 3)
    np.testing.assert_array_equal(out[3], frames[2:4, :, 0:16])  # clip 1, first crop
    np.testing.assert_array_equal(out[4], frames[2:4, :, 4:20])
    single = _both(lambda f: augment.eval_views(f, 1, 1, 16, 16), frames[:2])
    np.testing.assert_array_equal(single[0], frames[:2, :, 4:20])


def test_normalize_matches_numpy():
    clip = _clip()
    out = _both(augment.normalize, clip)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    np.testing.assert_allclose(out, (clip - mean) / std, rtol=1e-5, atol=1e-5)


def test_flip_left_right_keeps_static_shape_and_flips_any_rank():
    views = np.random.default_rng(1).integers(0, 256, (2, 3, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment.flip_left_right(tf.constant(views)).numpy(), views[..., ::-1, :])
    spec = tf.TensorSpec([8, 224, 224, 3], tf.uint8)
    traced = tf.function(lambda x: augment.random_flip(x, tf.constant([3, 1], tf.int64)))
    assert traced.get_concrete_function(spec).output_shapes.as_list() == [8, 224, 224, 3]


def _our_distribution(height, width, image_size, allow_duplication, draws=50000):
    seeds = tf.data.Dataset.range(draws).map(lambda s: tf.stack(augment.multi_scale_crop_window(
        height, width, image_size, tf.stack([s, tf.constant(11, tf.int64)]), allow_duplication=allow_duplication)))
    counts = {}
    for window in seeds.batch(draws).get_single_element().numpy():
        key = tuple(int(v) for v in window)
        counts[key] = counts.get(key, 0) + 1
    return {key: count / draws for key, count in counts.items()}


@pytest.mark.parametrize("allow_duplication", [True, False])
def test_multi_scale_crop_window_distribution_matches_paddlevideo(allow_duplication):
    """Window frequencies over 50,000 draws against PaddleVideo's exact probabilities (each pair, then each
    offset of its candidate list, uniformly): 256 x 340 frames, where the 256 x 256 crops have no free height
    and duplication changes how often each offset comes. The other setting's distribution is farther off."""
    paddle = paddle_distributions([[256, 340, 224, allow_duplication], [256, 340, 224, not allow_duplication]])
    want, other = paddle[(256, 340, 224, allow_duplication)], paddle[(256, 340, 224, not allow_duplication)]
    got = _our_distribution(256, 340, 224, allow_duplication)
    windows = set(want) | set(got)
    error = max(abs(got.get(w, 0.0) - want.get(w, 0.0)) for w in windows)
    off = max(abs(got.get(w, 0.0) - other.get(w, 0.0)) for w in set(other) | set(got))
    print(f"allow_duplication={allow_duplication}: max |frequency - PaddleVideo| {error:.4f}; "
          f"against the other setting's probabilities {off:.4f}")
    # The two settings differ by up to 0.0049 in one window's probability here; one standard deviation of a
    # frequency of p ~ 0.04 over 50,000 draws is 0.0009.
    assert error < 0.003, error
    assert off > 0.003, off


def test_random_crop_window_draws_every_offset_both_ends_included():
    # PaddleVideo RandomCrop: random.randint(0, 40 - 32) and randint(0, 36 - 32): 9 x 5 offsets.
    seeds = tf.data.Dataset.range(2000).map(lambda s: tf.stack(augment.random_crop_window(
        40, 36, 32, tf.stack([s, tf.constant(4, tf.int64)]))))
    seen = {tuple(int(v) for v in w) for w in seeds.batch(2000).get_single_element().numpy()}
    assert seen == {(top, left) for top in range(9) for left in range(5)}


def test_random_crop_is_one_window_for_every_frame():
    clip = _clip(3, 20, 30)
    seed = np.array([2, 8], np.int64)
    out = _both(lambda c, s: augment.random_crop(c, 16, s), clip, seed)
    top, left = [int(v) for v in augment.random_crop_window(20, 30, 16, seed)]
    np.testing.assert_array_equal(out, clip[:, top:top + 16, left:left + 16])
