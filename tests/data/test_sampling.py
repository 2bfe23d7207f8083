"""Segment sampling against hand-computed PaddleVideo Sampler(select_left=True) numbers."""

import numpy as np
import pytest

from tsm_keras.data import sampling


def test_test_mode_is_segment_centres():
    # d = 300 / 8 = 37.5; int(18.75 + 37.5 i)
    np.testing.assert_array_equal(sampling.sample_segment_indices(300, 8, training=False),
                                  [18, 56, 93, 131, 168, 206, 243, 281])
    # d = 9 / 8 = 1.125: 0.5625, 1.6875, 2.8125, 3.9375, 5.0625, 6.1875, 7.3125, 8.4375
    np.testing.assert_array_equal(sampling.sample_segment_indices(9, 8, training=False), [0, 1, 2, 3, 5, 6, 7, 8])


@pytest.mark.parametrize("num_frames", [1, 5, 8])
def test_short_videos_repeat_frame_zero_as_the_references(num_frames):
    # PaddleVideo/TSM: test needs num_frames > num_segments, train needs num_frames // num_segments > 0.
    np.testing.assert_array_equal(sampling.sample_segment_indices(num_frames, 8, training=False), [0] * 8)
    if num_frames < 8:
        np.testing.assert_array_equal(sampling.sample_segment_indices(num_frames, 8, training=True), [0] * 8)


def test_train_mode_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    draws = np.stack([sampling.sample_segment_indices(300, 8, True, rng) for _ in range(2000)])
    segment = np.arange(8) * 37  # 300 // 8 = 37 frames per segment; frames 296..299 never used
    offsets = draws - segment
    assert offsets.min() == 0 and offsets.max() == 36
    assert set(np.unique(offsets)) == set(range(37))
    # 12 frames, 8 segments: one frame per segment, no choice.
    np.testing.assert_array_equal(sampling.sample_segment_indices(12, 8, True, rng), np.arange(8))


def test_train_mode_is_reproducible_from_the_generator():
    a = sampling.sample_segment_indices(100, 8, True, np.random.default_rng(5))
    b = sampling.sample_segment_indices(100, 8, True, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_n_clip_test_sampling():
    clips = sampling.sample_test_clips(300, 8, 2)
    # offsets 1/4 and 3/4 of d = 37.5 into each segment
    np.testing.assert_array_equal(clips[0], [9, 46, 84, 121, 159, 196, 234, 271])
    np.testing.assert_array_equal(clips[1], [28, 65, 103, 140, 178, 215, 253, 290])
    np.testing.assert_array_equal(sampling.sample_test_clips(300, 8, 1)[0],
                                  sampling.sample_segment_indices(300, 8, training=False))


def test_dense_sampling():
    clips = sampling.sample_dense_indices(300, 8, training=False)
    assert clips.shape == (10, 8)
    # windows start at linspace(0, 300 - 64, 10) truncated; stride 64 // 8 = 8
    np.testing.assert_array_equal(clips[:, 0], [0, 26, 52, 78, 104, 131, 157, 183, 209, 236])
    np.testing.assert_array_equal(clips[0], np.arange(0, 64, 8))
    # a 40-frame video wraps around
    np.testing.assert_array_equal(sampling.sample_dense_indices(40, 8, training=True),
                                  [0, 8, 16, 24, 32, 0, 8, 16])
    train = sampling.sample_dense_indices(300, 8, True, np.random.default_rng(1))
    assert np.all(np.diff(train) == 8) and 0 <= train[0] < 236


def test_zero_frames_is_an_error():
    with pytest.raises(ValueError, match="0 frames"):
        sampling.sample_segment_indices(0, 8, training=True)
