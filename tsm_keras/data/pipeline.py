"""The tf.data input pipeline: list or TFRecords -> sampled, decoded, augmented uint8 clips in batches.

`build_dataset(config, split)` yields `(clips, labels)`:
- clips uint8 `[batch, T, H, W, 3]` RGB 0-255 (the model normalizes itself), or with
  `config.test_clips * config.test_crops > 1` on val/test `[batch, views, T, H, W, 3]`;
- labels int32 `[batch]`.
Train batches drop the remainder (static shapes for distribution); val/test keep every video.
Bad samples (unreadable video, missing frame) are dropped and counted in `BAD_SAMPLES` under
`on_bad_sample=skip`, or stop the pipeline naming the file under `fail`.

Per format, the Python side of an element is a reader (`tsm_keras.data.readers`); this module
composes them with the clip transforms (`tsm_keras.data.clips`) into one tf.data pipeline.
"""

import numpy as np
import tensorflow as tf

from tsm_keras.data import lists, sampling, tfrecord_format
from tsm_keras.data.bad_samples import BAD_SAMPLES, NOTHING_READABLE, UNREADABLE_STREAK, placeholder_jpeg
from tsm_keras.data.clips import eval_clip, train_clip_from_frames, train_clip_from_jpegs
from tsm_keras.data.readers import tfrecord as tfrecord_reader
from tsm_keras.data.readers.frames import frames_reader
from tsm_keras.data.readers.videos import video_reader

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffer for TFRecord elements (after frame selection: ~T JPEGs each); list entries are
# shuffled in full.
TFRECORD_SHUFFLE_BUFFER = 256
# Records are whole videos (MBs): read them in large chunks.
TFRECORD_READ_BUFFER = 8 << 20
# Elements whose JPEG bytes one Python call reads (frames and indexed TFRecords): each numpy_function
# call takes the GIL and converts its results, so fewer, larger calls cost less
# (benchmarks/input_speed.py measures it).
READ_GROUP = 8


def _is_training(split):
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return split == "train"


def _views(config, training):
    if training:
        return 1, 1
    return max(1, int(config.test_clips)), max(1, int(config.test_crops))


_DROPPED_REASON = ("an error inside the tf.data pipeline, e.g. a JPEG whose body does not decode; "
                   "tf.data's warning above names the error")


def _record_dropped(count):
    BAD_SAMPLES.record_unknown(int(count), _DROPPED_REASON)
    return np.int64(count)


def _end_with_sentinel(dataset, total):
    """Append one `(total, empty clip, 0, ok False)` element (filtered later) so that _count_dropped sees the
    end of every epoch, and counts the elements dropped just before it. Unchanged when `total` is None."""
    if total is None:
        return dataset
    clip_spec = dataset.element_spec[1]
    empty_clip = tf.zeros([d or 0 for d in clip_spec.shape.as_list()], clip_spec.dtype)
    sentinel = (tf.constant(total, tf.int64), empty_clip, tf.zeros([], dataset.element_spec[2].dtype),
                tf.constant(False))
    return dataset.concatenate(tf.data.Dataset.from_tensors(sentinel))


def _count_dropped(dataset, total):
    """Count the elements `ignore_errors` dropped: `(index, clip, label, ok)` -> `(clip, label, ok)`;
    a whole epoch of unreadable ones (not ok, or dropped), or `UNREADABLE_STREAK` in a row, raise
    NothingReadableError.

    Indices are consecutive within an epoch, 0 to `total` - 1 (the number of elements of one epoch, None
    when unknown), each epoch ending with _end_with_sentinel's element of index `total`; a sequential scan
    finds the gaps and records them in BAD_SAMPLES.
    """
    end = tf.constant(-1 if total is None else total, tf.int64)

    def step(state, element):
        expected, streak = state
        index, ok = element[0], element[-1]
        gap = index - expected
        recorded = tf.cond(gap > 0, lambda: tf.reshape(tf.numpy_function(_record_dropped, [gap], tf.int64), []),
                           lambda: tf.zeros([], tf.int64))
        # Unreadable in a row, the dropped ones included (the sentinel is not a sample): a list that points at
        # nothing readable would otherwise make a repeated dataset drop sample after sample forever.
        # An Assert with a fixed message: no Python call per element (pipeline_user_error reports it).
        # At the sentinel, a streak of a whole epoch (every element of it unreadable) needs no more epochs: a
        # short list whose every JPEG body is corrupt stops after one epoch's warnings, not after 500 drops.
        at_end = tf.equal(index, end)
        streak = tf.where(ok, tf.zeros([], tf.int64), streak + gap + tf.cast(tf.logical_not(at_end), tf.int64))
        whole_epoch = tf.logical_and(at_end, tf.logical_and(end > 0, streak >= end))
        readable = tf.debugging.Assert(tf.logical_and(streak < UNREADABLE_STREAK, tf.logical_not(whole_epoch)),
                                       [NOTHING_READABLE])
        with tf.control_dependencies([recorded, readable]):
            following = tf.where(at_end, tf.zeros([], tf.int64), index + 1)  # the next epoch counts from 0
        return (following, streak), element[1:]

    return dataset.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), step)


def _is_good(clip, label, ok):
    del clip, label
    return ok


def _drop_flag(clip, label, ok):
    del ok
    return clip, label


def _seed_pair(rand):
    return tf.stack([tf.cast(rand, tf.int64), tf.constant(0x5EED, tf.int64)])


def _read_group_function(reader):
    """Apply `reader(*row)` -> (jpegs [size], ok) to each row of a group: (jpegs [n, size], ok [n])."""
    def read(*columns):
        results = [reader(*row) for row in zip(*columns)]
        return np.stack([jpegs for jpegs, _ in results]), np.array([ok for _, ok in results], np.bool_)

    return read


def _read_in_groups(dataset, reader, arguments, size):
    """`(index, (element, rand))` -> `(index, (jpegs [size], label, ok, rand))`, READ_GROUP elements per
    Python call. `arguments(element, rand)` gives the reader's inputs and the label (batched tensors)."""
    read = _read_group_function(reader)

    def read_group(index, element):
        element, rand = element
        inputs, label = arguments(element, rand)
        jpegs, ok = tf.numpy_function(read, inputs, [tf.string, tf.bool], stateful=False)
        return index, (tf.reshape(jpegs, [-1, size]), label, tf.reshape(ok, [-1]), rand)

    return dataset.batch(READ_GROUP).map(read_group, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()


def num_samples(config, split):
    """Videos in `split` before any skipping: the list's entries, or the TFRecord manifest's count."""
    _is_training(split)
    if config.data_format == "tfrecord":
        return tfrecord_format.manifest_videos(config.tfrecord_dir, split)
    config, label_names = lists.resolve_lists(config)
    return len(lists.read_list(lists.split_list(config, split), config.data_format, config.data_root,
                               num_classes=len(label_names)))


def build_dataset(config, split, *, batch_size=None, shuffle=None, repeat=False, num_shards=1, shard_index=0,
                  seed=None):
    """tf.data.Dataset of `(clips uint8 [batch, T, H, W, 3] or [batch, views, T, H, W, 3], labels int32 [batch])`.

    Args:
      config: `tsm_keras.config.Config` (data_format, data_root, train_list/val_list, label_map,
        num_segments, image_size, scale_size, frame_template, on_bad_sample, tfrecord_dir, flip,
        test_clips, test_crops, seed, batch_size).
      split: "train" (random segment sampling, MultiScaleCrop, flip if config.flip) or "val"/"test"
        (segment centres, short side to scale_size, centre or three crops).
      batch_size: default config.batch_size; 0 yields single unbatched elements.
      shuffle: default True for train. repeat: repeat forever.
      num_shards, shard_index: this input pipeline's share (one per worker).
      seed: default config.seed; the same seed gives the same clips in the same order.
    """
    training = _is_training(split)
    if config.on_bad_sample not in ("skip", "fail"):
        raise ValueError(f"on_bad_sample must be 'skip' or 'fail', got {config.on_bad_sample!r}")
    batch_size = config.batch_size if batch_size is None else batch_size
    shuffle = training if shuffle is None else shuffle
    seed = int(config.seed if seed is None else seed)
    num_segments = int(config.num_segments)
    num_clips, num_crops = _views(config, training)
    size = num_segments * num_clips
    policy = config.on_bad_sample
    plan = sampling.clip_planner(num_segments, training, num_clips, config.sampling, config.dense_interval)

    indexes = None
    if config.data_format == "tfrecord":
        files = tfrecord_format.shard_files(config.tfrecord_dir, split)
        indexes = tfrecord_reader.load_indexes(files)
    if indexes is not None:
        tfrecord_reader.log_once("TFRecords: reading the sampled frames through the shard indexes (random access)")
        table = tfrecord_reader.video_table(indexes)
        labels = table[:, 2]
        dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(labels), dtype=tf.int64),
                                                      tf.constant(labels, tf.int32)))
        if num_shards > 1:
            dataset = dataset.shard(num_shards, shard_index)
        if shuffle:
            dataset = dataset.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True)
    elif config.data_format == "tfrecord":
        tfrecord_reader.log_once("TFRecords: streaming whole records (shards without an index; rerun "
                                 "--mode=tfrecords to index them for random access)")
        dataset = tf.data.Dataset.from_tensor_slices(files)
        shard_files = len(files) >= num_shards
        if shard_files and num_shards > 1:
            dataset = dataset.shard(num_shards, shard_index)
        if shuffle:
            dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=TFRECORD_READ_BUFFER),
                                     cycle_length=min(len(files), 8), block_length=1,
                                     num_parallel_calls=AUTOTUNE, deterministic=True)
        if not shard_files and num_shards > 1:
            dataset = dataset.shard(num_shards, shard_index)
    else:
        config, label_names = lists.resolve_lists(config)
        records = lists.read_list(lists.split_list(config, split), config.data_format, config.data_root,
                                  num_classes=len(label_names))
        dataset = tf.data.Dataset.from_tensor_slices((
            tf.constant([r.path for r in records]),
            tf.constant([r.num_frames for r in records], tf.int64),
            tf.constant([r.label for r in records], tf.int32)))
        if num_shards > 1:
            dataset = dataset.shard(num_shards, shard_index)
        if shuffle:
            dataset = dataset.shuffle(len(records), seed=seed, reshuffle_each_iteration=True)

    # One random int64 per element, new every epoch, drives both the frame sampling and the crop.
    dataset = tf.data.Dataset.zip((dataset, tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True)))

    def _from_jpegs(jpegs, label, ok, rand):
        if training:
            clip = train_clip_from_jpegs(jpegs, num_segments, config.image_size, config.flip, _seed_pair(rand),
                                         config.allow_duplication, config.train_scale_size,
                                         config.multi_scale_crop_size)
        else:
            frames = tf.stack([tf.io.decode_jpeg(jpegs[i], channels=3) for i in range(size)])
            clip = eval_clip(frames, config, num_clips, num_crops)
        return clip, label, ok

    # Formats whose Python side only reads JPEG bytes: (reader, (element, rand) -> (reader inputs, label)).
    read_group = None
    if indexes is not None:
        reader = tfrecord_reader.indexed_reader(indexes, table, plan, size, policy)
        read_group = (reader, lambda element, rand: ([element[0], rand], element[1]))
    elif config.data_format == "tfrecord":
        planner = tfrecord_reader.index_planner(plan, size, policy)

        def select(serialized, rand):
            """Whole video record -> the JPEGs of the sampled frames (small, so shuffling them is cheap)."""
            context, sequence = tf.io.parse_single_sequence_example(
                serialized, tfrecord_format.CONTEXT_FEATURES, tfrecord_format.SEQUENCE_FEATURES)
            indices, ok = tf.numpy_function(planner, [context["num_frames"], context["path"], rand],
                                            [tf.int64, tf.bool], stateful=False)
            ok = tf.reshape(ok, [])
            jpegs = tf.cond(ok, lambda: tf.gather(sequence["frames"], tf.maximum(indices, 0)),
                            lambda: tf.fill([size], tf.constant(placeholder_jpeg())))
            return tf.reshape(jpegs, [size]), tf.cast(context["label"], tf.int32), ok, rand

        dataset = dataset.map(select, num_parallel_calls=AUTOTUNE, deterministic=True)
        if shuffle:
            dataset = dataset.shuffle(TFRECORD_SHUFFLE_BUFFER, seed=seed + 1, reshuffle_each_iteration=True)
        load = _from_jpegs
    elif config.data_format == "frames":
        reader = frames_reader(config.frame_template, plan, size, policy)
        read_group = (reader, lambda element, rand: ([element[0], element[1], rand], element[2]))
    elif config.data_format == "videos":
        reader = video_reader(plan, size, policy)

        def load(element, rand):
            path, _, label = element
            frames, ok = tf.numpy_function(reader, [path, rand], [tf.uint8, tf.bool], stateful=False)
            frames = tf.ensure_shape(frames, [size, None, None, 3])
            if training:
                clip = train_clip_from_frames(frames, config.image_size, config.flip, _seed_pair(rand),
                                               config.allow_duplication, config.train_scale_size,
                                               config.multi_scale_crop_size)
            else:
                clip = eval_clip(frames, config, num_clips, num_crops)
            return clip, label, tf.reshape(ok, [])
    else:
        raise ValueError(f"data_format must be frames, videos, tfrecord or synthetic, got {config.data_format!r}")

    numbered = policy == "skip"
    if numbered:
        # Last line of defence for data the Python checks cannot see (a corrupt JPEG body): tf.data drops
        # the failing elements; numbering them before the map lets _count_dropped count the gaps.
        total = int(dataset.cardinality())  # one epoch's elements (the repeat comes after the reading)
        if total < 0 and config.data_format == "tfrecord":
            total = tfrecord_reader.streamed_count(files, num_shards, shard_index)
        total = total if total is not None and total >= 0 else None
    dataset = dataset.enumerate()  # numbered under both policies: one element structure for the maps below
    if read_group is not None:
        reader, arguments = read_group
        dataset = _read_in_groups(dataset, reader, arguments, size)
        load = _from_jpegs

    def load_numbered(index, element):
        return (index,) + tuple(load(*element))

    dataset = dataset.map(load_numbered, num_parallel_calls=AUTOTUNE, deterministic=True)
    if numbered:
        # The end-of-epoch sentinel goes in before the repeat: then even an epoch whose every element
        # ignore_errors drops (every JPEG body corrupt) reaches the scan, whose streak check ends the run.
        dataset = _end_with_sentinel(dataset, total)
    if repeat:
        dataset = dataset.repeat()
    if numbered:
        dataset = _count_dropped(dataset.ignore_errors(log_warning=True), total)
    else:
        dataset = dataset.map(lambda index, *rest: rest)
    dataset = dataset.filter(_is_good).map(_drop_flag)
    if batch_size:
        dataset = dataset.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE,
                                deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    # No autotuning: AUTOTUNE parallelism stays at min(16, cores). With it, destroying an iterator
    # (every epoch of training, every validation) waited for the tuner, which a busy CPU starves:
    # seconds per epoch boundary (README, "Speed on your CPU"); the pipeline alone is no slower
    # (benchmarks/input_speed.py measures it).
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(AUTOTUNE)
