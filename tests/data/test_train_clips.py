"""The training clip geometry with `--train_scale_size` / `--multi_scale_crop_size` (PP-TSM: short side 256,
MultiScaleCrop to 256, random 224 crop), against OpenCV on the scaled frame; defaults unchanged."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.data import augment
from tsm_keras.data.clips import train_clip_from_frames, train_clip_from_jpegs


def _frames(t=2, h=36, w=54, seed=0):
    # Smooth content plus noise: bilinear resizes of it stay close to OpenCV's (within rounding).
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 4.0, y * 6.0, (x + y) * 2.0], -1)
    return np.clip(base[None] + rng.integers(0, 30, (t, h, w, 3)), 0, 255).astype(np.uint8)


def _reference(frames, seed, scale_size, crop_size, image_size):
    """OpenCV: short side -> scale_size (aspect kept), the MultiScaleCrop window of the *scaled* frame resized
    to crop_size, then the random image_size window of that."""
    t, h, w, _ = frames.shape
    sh, sw = (scale_size, int(w * scale_size / h)) if h <= w else (int(h * scale_size / w), scale_size)
    top, left, ch, cw = [int(v) for v in augment.multi_scale_crop_window(sh, sw, crop_size, seed)]
    rtop, rleft = [int(v) for v in augment.random_crop_window(crop_size, crop_size, image_size, seed)]
    out = []
    for frame in frames:
        scaled = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_LINEAR)
        cropped = cv2.resize(scaled[top:top + ch, left:left + cw], (crop_size, crop_size),
                             interpolation=cv2.INTER_LINEAR)
        out.append(cropped[rtop:rtop + image_size, rleft:rleft + image_size])
    return np.stack(out), (sh, sw)


@pytest.mark.parametrize("seed", [[0, 1], [3, 7], [11, 5]])
def test_scaled_multi_scale_crop_then_random_crop_matches_opencv(seed):
    frames = _frames()
    seed = np.array(seed, np.int64)
    fn = lambda f, s: train_clip_from_frames(f, 24, False, s, scale_size=32, crop_size=28)  # noqa: E731
    eager = fn(tf.constant(frames), tf.constant(seed)).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors((frames, seed)).map(fn))).numpy()
    np.testing.assert_array_equal(eager, mapped)
    assert eager.shape == (2, 24, 24, 3) and eager.dtype == np.uint8
    expected, scaled_shape = _reference(frames, seed, 32, 28, 24)
    assert scaled_shape == (32, 48)
    # Two bilinear resizes, each rounded to uint8: at most 1 apart per resize.
    assert np.abs(eager.astype(int) - expected.astype(int)).max() <= 2


def test_crops_come_from_the_scaled_frame_not_the_decoded_one():
    # The MultiScaleCrop window is drawn in the 32 x 48 scaled frame: the crop sides are int(32 * scale) for
    # scales 1, 0.875, 0.75, 0.66 = 32, 28, 24, 21 (none within 3 px of 28 but 28 itself); from the
    # 36 x 54 decoded frame they would be 36, 31, 27 -> 28, 23.
    frames = _frames()
    sizes = set()
    for s in range(60):
        seed = np.array([s, 2], np.int64)
        top, left, ch, cw = [int(v) for v in augment.multi_scale_crop_window(32, 48, 28, seed)]
        assert top + ch <= 32 and left + cw <= 48
        sizes |= {ch, cw}
    assert sizes == {32, 28, 24, 21}
    # And the clip is not what the unscaled 36 x 54 frames give for the same seed.
    seed = np.array([3, 7], np.int64)
    scaled = train_clip_from_frames(tf.constant(frames), 24, False, seed, scale_size=32, crop_size=28).numpy()
    unscaled = train_clip_from_frames(tf.constant(frames), 24, False, seed, crop_size=28).numpy()
    assert unscaled.shape == scaled.shape and not np.array_equal(scaled, unscaled)


def test_jpeg_path_equals_the_decoded_frames_path():
    frames = _frames(3)
    jpegs = tf.stack([tf.io.encode_jpeg(f, quality=95) for f in frames])
    decoded = tf.stack([tf.io.decode_jpeg(j, channels=3) for j in jpegs])
    seed = tf.constant([4, 4], tf.int64)
    for scale_size, crop_size in ((32, 28), (0, 28)):
        from_jpegs = train_clip_from_jpegs(jpegs, 3, 24, True, seed, scale_size=scale_size, crop_size=crop_size)
        from_frames = train_clip_from_frames(decoded, 24, True, seed, scale_size=scale_size, crop_size=crop_size)
        assert from_jpegs.shape == (3, 24, 24, 3)
        np.testing.assert_array_equal(from_jpegs.numpy(), from_frames.numpy())


def test_defaults_keep_the_multi_scale_crop_to_image_size():
    frames = _frames()
    seed = np.array([5, 9], np.int64)
    out = train_clip_from_frames(tf.constant(frames), 24, False, seed).numpy()
    np.testing.assert_array_equal(out, augment.multi_scale_crop(tf.constant(frames), 24, seed).numpy())


def test_multi_scale_crop_smaller_than_image_size_is_refused():
    with pytest.raises(ValueError, match="--multi_scale_crop_size=20 is smaller than --image_size=24"):
        train_clip_from_frames(tf.constant(_frames()), 24, False, tf.constant([0, 0], tf.int64), crop_size=20)
