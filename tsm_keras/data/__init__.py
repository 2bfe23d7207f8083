"""Video input: lists -> sampling -> decode -> augment -> tf.data pipeline; TFRecords; the embedded dataset.

`build_dataset(config, split)` is the entry point; `load_label_names(config)` gives the class names;
`load_video_clips(path, ...)` gives the evaluation views of one video for prediction;
`num_samples(config, split)` counts the videos of a split;
`BAD_SAMPLES.take()` says how many samples were skipped since it was last asked.
"""

from tsm_keras.data.decode import BAD_SAMPLES, BadSampleCounter, BadSampleError
from tsm_keras.data.lists import ListFileError, read_label_map, read_list
from tsm_keras.data.pipeline import build_dataset, load_label_names, load_video_clips, num_samples, resolve_lists

__all__ = ["BAD_SAMPLES", "BadSampleCounter", "BadSampleError", "ListFileError", "build_dataset",
           "load_label_names", "load_video_clips", "num_samples", "read_label_map", "read_list", "resolve_lists"]
