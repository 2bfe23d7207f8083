"""One reader per storage format, one interface: the Python side of a tf.data element.

A reader is made from `plan(num_frames, rand) -> [size] frame indices` (`sampling.clip_planner`: the
readers know no sampling rule) and returns, for an element's fields and its random int64 `rand`, the
clip's data and an `ok` flag; a sample that cannot be read is reported through `bad_samples` (skipped and
counted, or raised under `--on_bad_sample=fail`) and comes back as a placeholder with `ok` False.

- `frames.frames_reader`: frame folders -> the sampled frames' JPEG bytes (decoded in TensorFlow);
- `videos.video_reader`: video files -> the sampled frames, decoded by OpenCV;
- `tfrecord`: indexed shards -> the sampled frames' JPEG bytes by `pread`; streamed shards -> indices.
"""
