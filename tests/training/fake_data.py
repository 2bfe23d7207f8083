"""A tiny in-memory stand-in for `tsm_keras.data`: two time-reversed classes (a bar moving right / left).

Same interface as the real pipeline (`build_dataset(config, split, *, batch_size, shuffle, repeat,
num_shards, shard_index, seed)`, `load_label_names`), but nothing to decode: loop tests stay fast.
"""

import os

import numpy as np
import tensorflow as tf

CLASSES = ["moving_right", "moving_left"]
NUM_TRAIN, NUM_VAL = 32, 16


def make_clips(count, num_segments, size, seed):
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 40, (count, num_segments, size, size, 3)).astype(np.uint8)
    labels = np.arange(count) % 2
    for i in range(count):
        start = rng.integers(0, size // 4)
        for t in range(num_segments):
            x = start + t * (size // (num_segments + 1))
            clips[i, t, :, x:x + 4, :] = 220
        if labels[i]:
            clips[i] = clips[i, ::-1]
    return clips, labels.astype(np.int32)


def load_label_names(config):
    return list(CLASSES)


def num_samples(config, split):
    return NUM_TRAIN if split == "train" else int(os.environ.get("FAKE_NUM_VAL", NUM_VAL))


def build_dataset(config, split, *, batch_size=None, shuffle=None, repeat=False, num_shards=1, shard_index=0,
                  seed=None):
    training = split == "train"
    # FAKE_NUM_VAL=n: a validation list of n clips (uneven shards and partial batches).
    count = NUM_TRAIN if training else int(os.environ.get("FAKE_NUM_VAL", NUM_VAL))
    clips, labels = make_clips(count, config.num_segments, config.image_size, 1 if training else 2)
    ds = tf.data.Dataset.from_tensor_slices((clips, labels))
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    if training if shuffle is None else shuffle:
        ds = ds.shuffle(count, seed=config.seed if seed is None else seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    # FAKE_REPEAT_EACH=n: each clip n times in a row, so that with n = the global batch every replica
    # sees the same clips and per-replica BatchNorm statistics equal the global ones.
    each = int(os.environ.get("FAKE_REPEAT_EACH", "1"))
    if each > 1 and training:
        ds = ds.flat_map(lambda clip, label: tf.data.Dataset.from_tensors((clip, label)).repeat(each))
    return ds.batch(batch_size or config.batch_size, drop_remainder=training)
