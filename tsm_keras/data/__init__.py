"""Video input: lists -> sampling -> decode -> augment -> clips; readers per format; the tf.data pipeline.

The data contract, what training and evaluation need of a data module (this package, or a stand-in
of the same shape in tests):
- `build_dataset(config, split, *, batch_size, shuffle, repeat, num_shards, shard_index, seed)`:
  `(clips uint8 [batch, T, H, W, 3] or [batch, views, T, H, W, 3], labels int32 [batch])`;
- `load_label_names(config)`: the class names, index order;
- `num_samples(config, split)`: the videos of a split;
- optionally `BAD_SAMPLES`: `.take()` says how many samples were skipped since it was last asked.
Also here: `load_video_clips(path, ...)` (one video's evaluation views, for prediction),
`list_inputs(spec)` (the videos `--input` names), `resolve_lists(config)`.
"""

from tsm_keras.data.bad_samples import BAD_SAMPLES, BadSampleCounter, BadSampleError
from tsm_keras.data.clips import load_video_clips
from tsm_keras.data.lists import (ListFileError, list_inputs, load_label_names, read_label_map, read_list,
                                  resolve_lists)
from tsm_keras.data.pipeline import build_dataset, num_samples

__all__ = ["BAD_SAMPLES", "BadSampleCounter", "BadSampleError", "ListFileError", "build_dataset", "list_inputs",
           "load_label_names", "load_video_clips", "num_samples", "read_label_map", "read_list", "resolve_lists"]
