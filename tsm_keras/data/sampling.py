"""Which frames of a video make a clip: pure numpy functions, 0-based frame indices.

The TSN/TSM rules are PaddleVideo's `Sampler(select_left=True)` (the same as the official TSM
`TSNDataSet`): the video is split into `num_segments` equal segments;
- train: one random frame per segment (`i * (n // T) + randint(n // T)`); a video shorter than
  `num_segments` frames gives frame 0 repeated, as the references do;
- test: the centre of each segment, `int(d / 2 + d * i)` with `d = n / T`, when `n > T`; else frame 0.
Frame-list files are 1-based on disk: add 1 to these indices to name a file.
"""

import numpy as np

from tsm_keras.errors import UsageError

# ppTSM dense sampling: T frames spread over a 64-frame window, 10 windows at test time.
DENSE_WINDOW = 64
DENSE_TEST_CLIPS = 10


def sample_segment_indices(num_frames, num_segments, training, rng=None):
    """[num_segments] int64 frame indices of one clip (PaddleVideo `Sampler(select_left=True)`)."""
    n, t = int(num_frames), int(num_segments)
    if n <= 0:
        raise ValueError(f"cannot sample a clip from a video with {n} frames")
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        average = n // t
        if average > 0:
            return np.arange(t, dtype=np.int64) * average + rng.integers(average, size=t)
        return np.zeros(t, dtype=np.int64)
    return sample_test_clips(n, t, 1)[0]


def sample_test_clips(num_frames, num_segments, num_clips):
    """[num_clips, num_segments] int64 indices: clip k takes offset (k + 0.5) / num_clips in each segment.

    With one clip this is PaddleVideo's validation centre `int(d / 2 + d * i)`; with N clips the N
    offsets are spread evenly inside each segment so that the clips see different frames.
    """
    n, t = int(num_frames), int(num_segments)
    if n <= 0:
        raise ValueError(f"cannot sample a clip from a video with {n} frames")
    if n <= t:
        return np.zeros((num_clips, t), dtype=np.int64)
    duration = n / t
    clips = [[int(duration * (k + 0.5) / num_clips + duration * i) for i in range(t)] for k in range(num_clips)]
    return np.asarray(clips, dtype=np.int64)


def sample_dense_indices(num_frames, num_segments, training, rng=None, num_clips=DENSE_TEST_CLIPS, interval=None):
    """Dense sampling: T frames `interval` apart (default 64 // T: a 64-frame window) from one window,
    wrapping short videos (the official TSM `dense_sample`, PaddleVideo `Sampler(dense_sample=True)`,
    MMAction2 `SampleFrames(clip_len=T, frame_interval=interval)`).

    Returns [num_segments] indices when training (random window start), else [num_clips, num_segments]
    with window starts `linspace(0, n - window, num_clips)`.
    """
    n, t = int(num_frames), int(num_segments)
    if n <= 0:
        raise ValueError(f"cannot sample a clip from a video with {n} frames")
    stride = int(interval) if interval else DENSE_WINDOW // t
    if stride < 1:
        raise ValueError(f"dense sampling needs a frame interval >= 1, got {interval!r}")
    sample_positions = max(1, 1 + n - stride * t)
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        start = 0 if sample_positions == 1 else int(rng.integers(0, sample_positions - 1))
        return (np.arange(t, dtype=np.int64) * stride + start) % n
    starts = np.linspace(0, sample_positions - 1, num=num_clips, dtype=int)
    return np.stack([(np.arange(t, dtype=np.int64) * stride + s) % n for s in starts])


SAMPLINGS = ("uniform", "dense")


def clip_planner(num_segments, training, num_clips, sampling="uniform", dense_interval=0):
    """`plan(num_frames, rand) -> [num_clips * num_segments] int64 indices` of one tf.data element.

    `sampling`: "uniform" (TSN segments: random per segment in training, centres at test) or "dense"
    (`sample_dense_indices`, `dense_interval` frames apart, 0 = 64 // T). Training draws from the
    element's random int64 `rand`, so a seed gives the same clips."""
    if sampling not in SAMPLINGS:
        raise UsageError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if int(dense_interval) < 0:
        raise UsageError(f"--dense_interval must be >= 0 (0: 64 // num_segments), got {dense_interval}")

    def plan(num_frames, rand):
        rng = np.random.default_rng(int(rand) % (2 ** 63))
        if sampling == "dense":
            return sample_dense_indices(num_frames, num_segments, training, rng, num_clips, dense_interval).reshape(-1)
        if training:
            return sample_segment_indices(num_frames, num_segments, True, rng)
        return sample_test_clips(num_frames, num_segments, num_clips).reshape(-1)

    return plan
