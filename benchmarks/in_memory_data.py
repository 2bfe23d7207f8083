"""The training benchmarks' data source: one fixed batch of random uint8 clips, repeated.

Passed as `tsm_keras.training.loop.train(config, data=InMemoryData)`, it stands in for the data
pipeline (`load_label_names` and `build_dataset`), so the loop's clips/s measures the model step, not
decoding. Import it after `tsm_keras` (which sets oneDNN before TensorFlow loads).
"""

import numpy as np
import tensorflow as tf


class InMemoryData:
    @staticmethod
    def load_label_names(config):
        return [str(i) for i in range(config.num_classes)]

    @staticmethod
    def build_dataset(config, split, *, batch_size=None, shuffle=None, repeat=False, num_shards=1, shard_index=0,
                      seed=None):
        rng = np.random.default_rng(0)
        clips = rng.integers(0, 256, (batch_size, config.num_segments, config.image_size, config.image_size, 3),
                             dtype=np.uint8)
        labels = rng.integers(0, config.num_classes, (batch_size,), dtype=np.int32)
        dataset = tf.data.Dataset.from_tensors((clips, labels))
        return dataset.repeat() if split == "train" else dataset  # one validation batch at the end
