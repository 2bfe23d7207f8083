"""Clips from frames: the training clip ([short side] + MultiScaleCrop + [random crop] + flip), the evaluation
views, one video's views.

Training clips from JPEG bytes decode only the crop window of each frame (whole frames when the short
side is scaled first: the window is then in the scaled frame). `load_video_clips` gives the
evaluation views of one video or frame folder outside tf.data (prediction), with the same sampling and
crops as `build_dataset(config, "test")`.
"""

import os

import tensorflow as tf

from tsm_keras.data import augment, decode, sampling
from tsm_keras.data.bad_samples import BadSampleError


def train_clip_from_jpegs(jpegs, num_segments, image_size, flip, seed, allow_duplication=augment.ALLOW_DUPLICATION,
                          scale_size=0, crop_size=0):
    """[T] JPEG strings -> [T, S, S, 3] uint8: decode only the MultiScaleCrop window of each frame.

    With `scale_size` the frames are decoded whole (the window is in the scaled frame), then as
    `train_clip_from_frames`."""
    if scale_size:
        frames = tf.stack([tf.io.decode_jpeg(jpegs[t], channels=3) for t in range(num_segments)])
        return train_clip_from_frames(frames, image_size, flip, seed, allow_duplication, scale_size, crop_size)
    check_train_crop_sizes(image_size, crop_size)
    crop_size = crop_size or image_size
    shape = tf.image.extract_jpeg_shape(jpegs[0])
    window = tf.stack(augment.multi_scale_crop_window(shape[0], shape[1], crop_size, seed,
                                                      allow_duplication=allow_duplication))
    frames = tf.stack([tf.io.decode_and_crop_jpeg(jpegs[t], window, channels=3) for t in range(num_segments)])
    return _finish_train_clip(augment.resize_frames(frames, crop_size, crop_size), crop_size, image_size, flip, seed)


def train_clip_from_frames(frames, image_size, flip, seed, allow_duplication=augment.ALLOW_DUPLICATION,
                           scale_size=0, crop_size=0):
    """[T, H, W, 3] uint8 -> [T, S, S, 3] uint8: short side to `scale_size` (0: as they are), MultiScaleCrop
    to `crop_size` (0: `image_size`), a random `image_size` crop when `crop_size` is larger, flip."""
    check_train_crop_sizes(image_size, crop_size)
    crop_size = crop_size or image_size
    if scale_size:
        frames = augment.resize_short_side(frames, scale_size)
    clip = augment.multi_scale_crop(frames, crop_size, seed, allow_duplication=allow_duplication)
    return _finish_train_clip(clip, crop_size, image_size, flip, seed)


def check_train_crop_sizes(image_size, crop_size):
    if crop_size and crop_size < image_size:
        raise ValueError(f"--multi_scale_crop_size={crop_size} is smaller than --image_size={image_size}: the random "
                         "crop after MultiScaleCrop needs at least --image_size (or 0: MultiScaleCrop to "
                         "--image_size).")


def _finish_train_clip(clip, crop_size, image_size, flip, seed):
    if crop_size != image_size:
        clip = augment.random_crop(clip, image_size, seed)
    return augment.random_flip(clip, seed) if flip else clip


def eval_clip(frames, config, num_clips, num_crops):
    views = augment.eval_views(frames, num_clips, num_crops, config.scale_size, config.image_size)
    return views[0] if num_clips * num_crops == 1 else views


def load_video_clips(path, num_segments, num_clips=1, crops=1, scale_size=256, image_size=224,
                     frame_template="img_{:05d}.jpg"):
    """Test-time views of one video file or frame folder: uint8 numpy [views, T, image_size, image_size, 3].

    The same segment-centre sampling and crops as evaluation (`build_dataset(config, "test")`), views
    ordered clip-major. Raises BadSampleError (a ValueError) naming the file when it cannot be read.
    """
    def plan(n):
        return sampling.sample_test_clips(n, num_segments, num_clips).reshape(-1)

    if os.path.isdir(path):
        count = decode.count_frame_files(path, frame_template)
        if count <= 0:
            raise BadSampleError(path, f"no frame files {frame_template.format(1)}, ... in the folder")
        jpegs = decode.read_jpeg_files([decode.frame_path(path, frame_template, i) for i in plan(count)])
        frames = tf.stack([tf.io.decode_jpeg(j, channels=3) for j in jpegs])
    else:
        frames, _ = decode.decode_video(path, plan)
    views = augment.eval_views(tf.convert_to_tensor(frames), num_clips, crops, scale_size, image_size)
    return views.numpy()
