"""Clip augmentation in TensorFlow ops: the same crop and flip for every frame of a clip.

All functions take and return uint8 clips `[time, height, width, 3]` RGB and run both eagerly and
inside `tf.data.Dataset.map`. Randomness is stateless: `seed` is an int tensor of shape [2], so a
pipeline given a seed is reproducible.

Train: `multi_scale_crop` (PaddleVideo/TSM `MultiScaleCrop`: crop side = shorter side x one of
MULTI_SCALE_CROP_SCALES per axis, the two axes at most `max_distort` scales apart, placed at one of 13
fixed offsets, then resized to `image_size`), optionally after `resize_short_side` and before `random_crop`
(PP-TSM: short side 256, MultiScaleCrop to 256, random 224 crop), and `random_flip`. Eval: `resize_short_side` +
`center_crop`; multi-view: `three_crops` along the long side. Resizing is bilinear without antialias
(OpenCV `INTER_LINEAR` semantics, as PaddleVideo's cv2 backend).
"""

import tensorflow as tf

from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD

MULTI_SCALE_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)
MAX_DISTORT = 1
# Every TSM yaml of PaddleVideo sets `allow_duplication: True` (the official code always offers all 13
# offsets): an offset that coincides with another (no free space along an axis) stays a candidate, so
# it is drawn more often. PaddleVideo's class default is False (duplicates dropped).
ALLOW_DUPLICATION = True
# Crop sizes this close to the output size snap to it (PaddleVideo: `abs(x - input_size) < 3`).
SNAP_PIXELS = 3
# The 13 fixed offsets in quarters of the free space (w_step, h_step), in PaddleVideo's order:
# 4 corners and the centre (only when the free space along that axis is non-zero), then 8 more.
FIXED_OFFSETS = ((0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
                 (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3))


def _crop_pairs(num_scales, max_distort):
    """(height scale index, width scale index) pairs allowed, in PaddleVideo's enumeration order."""
    return [(i, j) for i in range(num_scales) for j in range(num_scales) if abs(i - j) <= max_distort]


def multi_scale_crop_window(height, width, image_size, seed, scales=MULTI_SCALE_CROP_SCALES,
                            max_distort=MAX_DISTORT, allow_duplication=ALLOW_DUPLICATION):
    """Random MultiScaleCrop window for a frame of `height` x `width`: int32 (top, left, crop_h, crop_w).

    `allow_duplication`: all 13 offsets are candidates (the yamls, the official code); False: the
    corners and the centre only where there is free space along their axes (PaddleVideo's default)."""
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    base = tf.cast(tf.minimum(height, width), tf.float64)
    # int(base * scale) in float64, as Python computes it.
    sizes = tf.cast(base * tf.constant(scales, tf.float64), tf.int32)
    sizes = tf.where(tf.abs(sizes - image_size) < SNAP_PIXELS, tf.cast(image_size, tf.int32), sizes)
    pairs = tf.constant(_crop_pairs(len(scales), max_distort), tf.int32)
    seed = tf.cast(seed, tf.int64)
    pick = tf.random.stateless_uniform([], seed=seed, maxval=tf.shape(pairs)[0], dtype=tf.int32)
    crop_h = tf.gather(sizes, pairs[pick, 0])
    crop_w = tf.gather(sizes, pairs[pick, 1])

    w_step = tf.cast(width - crop_w, tf.float64) / 4.0
    h_step = tf.cast(height - crop_h, tf.float64) / 4.0
    w_free, h_free = tf.not_equal(w_step, 0.0), tf.not_equal(h_step, 0.0)
    valid = tf.stack([tf.constant(True), w_free, h_free, tf.logical_and(w_free, h_free),
                      tf.logical_or(w_free, h_free)] + [tf.constant(True)] * 8)
    if allow_duplication:
        valid = tf.ones([len(FIXED_OFFSETS)], tf.bool)
    # random.choice over the valid offsets: the k-th True of the mask.
    count = tf.reduce_sum(tf.cast(valid, tf.int32))
    k = tf.random.stateless_uniform([], seed=seed + [0, 1], maxval=count, dtype=tf.int32)
    position = tf.argmax(tf.cast(tf.logical_and(valid, tf.cumsum(tf.cast(valid, tf.int32)) == k + 1), tf.int32),
                         output_type=tf.int32)
    quarters = tf.gather(tf.constant(FIXED_OFFSETS, tf.float64), position)
    # PIL's crop rounds float boxes half-to-even, as tf.round does.
    left = tf.cast(tf.round(quarters[0] * w_step), tf.int32)
    top = tf.cast(tf.round(quarters[1] * h_step), tf.int32)
    return top, left, crop_h, crop_w


def resize_frames(frames, height, width):
    """Bilinear resize of uint8 frames [..., h, w, 3] to [..., height, width, 3] uint8."""
    # Cast first: TF's bilinear kernel is slower reading uint8 than float32 (same values out).
    resized = tf.image.resize(tf.cast(frames, tf.float32), tf.stack([height, width]), method="bilinear",
                              antialias=False)
    # Bilinear weights are convex: values stay in [0, 255], no clipping pass needed.
    return tf.cast(tf.round(resized), tf.uint8)


def multi_scale_crop(frames, image_size, seed, scales=MULTI_SCALE_CROP_SCALES, max_distort=MAX_DISTORT,
                     allow_duplication=ALLOW_DUPLICATION):
    """[T, H, W, 3] uint8 -> [T, image_size, image_size, 3] uint8: one MultiScaleCrop for all frames."""
    shape = tf.shape(frames)
    top, left, crop_h, crop_w = multi_scale_crop_window(shape[1], shape[2], image_size, seed, scales, max_distort,
                                                        allow_duplication)
    crop = frames[:, top:top + crop_h, left:left + crop_w, :]
    return resize_frames(crop, image_size, image_size)


def random_crop_window(height, width, size, seed):
    """Random `size` x `size` window of a `height` x `width` frame: int32 (top, left).

    PaddleVideo `RandomCrop`: `random.randint(0, free)` along each axis, both ends included."""
    seed = tf.cast(seed, tf.int64) + [0, 3]
    top = tf.random.stateless_uniform([], seed=seed, maxval=tf.cast(height, tf.int32) - size + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seed=seed + [0, 1], maxval=tf.cast(width, tf.int32) - size + 1,
                                       dtype=tf.int32)
    return top, left


def random_crop(frames, size, seed):
    """[T, H, W, 3] -> [T, size, size, 3]: one `random_crop_window` for all frames (H, W >= size)."""
    shape = tf.shape(frames)
    tf.debugging.assert_greater_equal(tf.minimum(shape[1], shape[2]), size,
                                      message=f"random_crop: the frames are smaller than the {size} px crop")
    top, left = random_crop_window(shape[1], shape[2], size, seed)
    return frames[:, top:top + size, left:left + size, :]


def random_flip(frames, seed):
    """Flip all frames of a [T, H, W, 3] clip left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([], seed=tf.cast(seed, tf.int64) + [0, 2]) < 0.5
    return tf.cond(flip, lambda: flip_left_right(frames), lambda: frames)


def flip_left_right(frames):
    """Reverse the width axis of [..., H, W, C] frames.

    Reversed as a 3-D [rows, W, C] view, which TF's ReverseV2 runs on its row-copy fast path:
    2.4x faster here than reversing axis 2 of the 4-D clip (Eigen's generic reverse).
    """
    shape = tf.shape(frames)
    rows = tf.reshape(frames, tf.stack([-1, shape[-2], shape[-1]]))
    return tf.reshape(tf.reverse(rows, axis=[1]), shape)


def short_side_size(height, width, size):
    """(new_h, new_w) with the short side `size`, the long side `int(long * size / short)` (PaddleVideo Scale)."""
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    size = tf.constant(size, tf.int32)
    long_h = tf.cast(tf.cast(height, tf.float64) * tf.cast(size, tf.float64) / tf.cast(width, tf.float64), tf.int32)
    long_w = tf.cast(tf.cast(width, tf.float64) * tf.cast(size, tf.float64) / tf.cast(height, tf.float64), tf.int32)
    new_h = tf.where(width <= height, long_h, size)
    new_w = tf.where(width <= height, size, long_w)
    return new_h, new_w


def resize_short_side(frames, size):
    """[..., H, W, 3] uint8 -> short side `size`, aspect kept; unchanged if it already is `size`."""
    shape = tf.shape(frames)
    height, width = shape[-3], shape[-2]
    new_h, new_w = short_side_size(height, width, size)
    unchanged = tf.logical_or(tf.logical_and(width <= height, tf.equal(width, size)),
                              tf.logical_and(height <= width, tf.equal(height, size)))
    return tf.cond(unchanged, lambda: frames, lambda: resize_frames(frames, new_h, new_w))


def _centered(free):
    """int(round(free / 2.0)) with Python's half-to-even rounding."""
    return tf.cast(tf.round(tf.cast(free, tf.float64) / 2.0), tf.int32)


def center_crop(frames, size):
    """[T, H, W, 3] -> [T, size, size, 3], the box at `round((W - size) / 2)`, `round((H - size) / 2)`."""
    shape = tf.shape(frames)
    top, left = _centered(shape[1] - size), _centered(shape[2] - size)
    return frames[:, top:top + size, left:left + size, :]


def three_crops(frames, size):
    """[T, H, W, 3] -> [3, T, size, size, 3]: start, centre and end of the long side, centred on the short one."""
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    long_free = tf.maximum(height, width) - size
    short_offset = _centered(tf.minimum(height, width) - size)
    crops = []
    for long_offset in (tf.constant(0), _centered(long_free), long_free):
        top = tf.where(height > width, long_offset, short_offset)
        left = tf.where(height > width, short_offset, long_offset)
        crops.append(frames[:, top:top + size, left:left + size, :])
    return tf.stack(crops)


def eval_views(frames, num_clips, num_crops, scale_size, image_size):
    """Test-time views: [num_clips * T, H, W, 3] uint8 -> [num_clips * num_crops, T, S, S, 3] uint8.

    Frames are grouped clip by clip; views are ordered clip-major (clip 0 crops 0..2, clip 1 ...).
    One crop is the centre crop; three are `three_crops`.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"test_crops must be 1 (centre) or 3 (along the long side), got {num_crops}")
    frames = resize_short_side(frames, scale_size)
    shape = tf.shape(frames)
    clips = tf.reshape(frames, tf.concat([[num_clips, -1], shape[1:]], 0))
    views = []
    for c in range(num_clips):
        if num_crops == 1:
            views.append(center_crop(clips[c], image_size)[tf.newaxis])
        else:
            views.append(three_crops(clips[c], image_size))
    views = tf.concat(views, 0)
    return tf.ensure_shape(views, [num_clips * num_crops, None, image_size, image_size, 3])


def normalize(frames):
    """uint8 [..., 3] RGB -> float32 `(x - mean) / std` with ImageNet statistics in 0-255 units.

    The pipeline itself yields uint8 (the model normalizes, the same graph serving uses); this is for
    consumers that want normalized frames.
    """
    frames = tf.cast(frames, tf.float32)
    return (frames - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def resize_and_center_crop(frames, scale_size, image_size):
    """Evaluation geometry in the graph: short side -> `scale_size`, centre crop `image_size`.

    `frames`: uint8 `[batch, T, height, width, 3]`, any height/width. Returns float32
    `[batch, T, image_size, image_size, 3]` RGB 0-255. The same ops as the data pipeline's
    evaluation views, so serving sees exactly the crops evaluation sees.
    """
    shape = tf.shape(frames)
    images = tf.reshape(frames, tf.concat([[-1], shape[2:]], 0))
    images = center_crop(resize_short_side(images, scale_size), image_size)
    clips = tf.reshape(images, tf.stack([shape[0], shape[1], image_size, image_size, 3]))
    return tf.cast(clips, tf.float32)
