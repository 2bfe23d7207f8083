"""The tf.data input pipeline: list or TFRecords -> sampled, decoded, augmented uint8 clips in batches.

`build_dataset(config, split)` yields `(clips, labels)`:
- clips uint8 `[batch, T, H, W, 3]` RGB 0-255 (the model normalizes itself), or with
  `config.test_clips * config.test_crops > 1` on val/test `[batch, views, T, H, W, 3]`;
- labels int32 `[batch]`.
Train batches drop the remainder (static shapes for distribution); val/test keep every video.
Bad samples (unreadable video, missing frame) are dropped and counted in `BAD_SAMPLES` under
`on_bad_sample=skip`, or stop the pipeline naming the file under `fail`.

TFRecord shards with an index (`tfrecords.index_shard`, written by the conversion) are read by random
access: each element is one video of the index tables, and only the sampled frames' JPEG bytes are
read (`pread` on cached file descriptors). Shards without an index are streamed record by record.
"""

import glob
import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from tsm_keras.data import augment, decode, lists, sampling, tfrecords
from tsm_keras.data.decode import BAD_SAMPLES, BadSampleError

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffer for TFRecord elements (after frame selection: ~T JPEGs each); list entries are
# shuffled in full.
TFRECORD_SHUFFLE_BUFFER = 256
# Records are whole videos (MBs): read them in large chunks.
TFRECORD_READ_BUFFER = 8 << 20
# Elements whose JPEG bytes one Python call reads (frames and indexed TFRecords): each numpy_function
# call takes the GIL and converts its results; grouping 8 gave +1 to +14 % clips per core (4 paired
# one-core runs of the training transform on input_speed.py's frames).
READ_GROUP = 8
TFRECORD_CONTEXT = {
    "label": tf.io.FixedLenFeature([], tf.int64),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "path": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
TFRECORD_SEQUENCE = {"frames": tf.io.FixedLenSequenceFeature([], tf.string)}
# Stands in for the frames of a bad sample until it is filtered out.
_PLACEHOLDER_JPEG = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _is_training(split):
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return split == "train"


def _views(config, training):
    if training:
        return 1, 1
    return max(1, int(config.test_clips)), max(1, int(config.test_crops))


def load_label_names(config):
    """Class names, index i -> name: the label map, the synthetic classes, or "0".."num_classes-1"."""
    if config.label_map:
        return lists.read_label_map(config.label_map)
    if config.data_format == "synthetic":
        from tsm_keras.data.synthetic import SYNTHETIC_CLASSES
        return list(SYNTHETIC_CLASSES)
    if config.data_format == "tfrecord":
        # The conversion recorded the names it was given (index names when it had no label map).
        manifest_path = os.path.join(config.tfrecord_dir, "manifest.json")
        if os.path.isfile(manifest_path):
            with open(manifest_path) as f:
                names = json.load(f).get("label_names")
            if names and not all(name == str(i) for i, name in enumerate(names)):
                return list(names)
    return [str(i) for i in range(int(config.num_classes))]


def _split_list(config, split):
    path = config.train_list if split == "train" else config.val_list
    if not path:
        flag = "--train_list" if split == "train" else "--val_list"
        raise lists.ListFileError(f"no list file for split {split!r}: pass {flag}=<list file>")
    return path


def resolve_lists(config):
    """(config with data_format frames|videos and lists filled in, label names) for any data_format."""
    if config.data_format == "synthetic":
        from tsm_keras.data.synthetic import default_synthetic_root, ensure_synthetic_dataset
        root = config.data_root or default_synthetic_root()
        paths = ensure_synthetic_dataset(root, reuse_existing=True)
        config = config.replace(data_format="videos", data_root=root, train_list=paths["train_list"],
                                val_list=paths["val_list"], label_map="")
        return config, list(paths["classes"])
    return config, load_label_names(config)


def _plan(num_frames, num_segments, training, num_clips, rng):
    """Frame indices of one element: [T] when training, [clips, T] otherwise."""
    if training:
        return sampling.sample_segment_indices(num_frames, num_segments, True, rng)
    return sampling.sample_test_clips(num_frames, num_segments, num_clips)


def _rng(rand):
    return np.random.default_rng(int(rand) % (2 ** 63))


def _as_bad_sample(error, path):
    if isinstance(error, BadSampleError):
        return error
    return BadSampleError(path, f"cannot be read ({type(error).__name__}: {error})")


def _skip_or_raise(error, policy):
    if policy == "fail":
        raise BadSampleError(error.path, f"{error.reason} (--on_bad_sample=fail; use skip to drop such samples)")
    BAD_SAMPLES.record(error)


def _frames_reader(template, num_segments, training, num_clips, policy):
    """Python side of the frames format: sample indices, read the JPEG bytes (decoding stays in TF)."""
    size = num_segments * num_clips

    def read(frame_dir, num_frames, rand):
        frame_dir = frame_dir.decode("utf-8")
        try:
            num_frames = int(num_frames)
            if num_frames <= 0:
                num_frames = decode.count_frame_files(frame_dir, template)
                if num_frames <= 0:
                    raise BadSampleError(frame_dir, "frame folder missing or empty")
            indices = _plan(num_frames, num_segments, training, num_clips, _rng(rand)).reshape(-1)
            paths = [decode.frame_path(frame_dir, template, i) for i in indices]
            try:
                data = decode.read_jpeg_files(paths)
            except BadSampleError:
                # The list's frame count may be wrong: plan again from the frames really present.
                true_count = decode.count_frame_files(frame_dir, template)
                if true_count <= 0 or true_count >= num_frames:
                    raise
                indices = _plan(true_count, num_segments, training, num_clips, _rng(rand)).reshape(-1)
                data = decode.read_jpeg_files([decode.frame_path(frame_dir, template, i) for i in indices])
            return np.array(data, dtype=object), np.bool_(True)
        except Exception as error:  # any failure on one sample is that sample's, never the epoch's
            _skip_or_raise(_as_bad_sample(error, frame_dir), policy)
            return np.array([_PLACEHOLDER_JPEG] * size, dtype=object), np.bool_(False)

    return read


def _video_reader(num_segments, training, num_clips, policy):
    """Python side of the videos format: OpenCV decodes only the sampled frames."""
    size = num_segments * num_clips

    def read(path, rand):
        path = path.decode("utf-8")
        rng_seed = int(rand)
        try:
            frames, _ = decode.decode_video(
                path, lambda n: _plan(n, num_segments, training, num_clips, _rng(rng_seed)).reshape(-1))
            return frames, np.bool_(True)
        except Exception as error:  # e.g. frames changing size mid-stream, an OpenCV error
            _skip_or_raise(_as_bad_sample(error, path), policy)
            return np.zeros([size, 8, 8, 3], np.uint8), np.bool_(False)

    return read


def _index_planner(num_segments, training, num_clips, policy):
    """Python side of the TFRecord format: indices into the stored frames."""
    size = num_segments * num_clips

    def plan(num_frames, path, rand):
        num_frames = int(num_frames)
        if num_frames <= 0:
            _skip_or_raise(BadSampleError(path.decode("utf-8"), "TFRecord element has no frames"), policy)
            return np.full([size], -1, np.int64), np.bool_(False)
        return _plan(num_frames, num_segments, training, num_clips, _rng(rand)).reshape(-1), np.bool_(True)

    return plan


def _is_remote(path):
    return "://" in path


class _ShardFiles:
    """Open read-only descriptors of indexed shards, cached per process (thread-safe).

    Keyed by (path, inode, size) as checked when the dataset was built, so a shard replaced since is
    opened again (and checked) rather than read at stale offsets. At most `max_open` descriptors stay
    open (a quarter of the open-files limit); beyond that a shard is opened for one read and closed.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._fds = {}
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, ValueError, OSError):
            soft = 1024
        self.max_open = 256 if soft in (-1, None) or soft <= 0 else max(8, min(1024, soft // 4))

    @staticmethod
    def _open(key):
        path, inode, size = key
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        stat = os.fstat(fd)
        if stat.st_ino != inode or stat.st_size != size:
            os.close(fd)
            raise BadSampleError(path, "TFRecord shard changed after the dataset was built (rebuild the dataset; "
                                 "rerun --mode=tfrecords if it was rewritten)")
        return fd

    def read(self, key, ranges):
        """Bytes of each (offset, length) row of `ranges` in the shard `key`."""
        fd = self._fds.get(key)
        transient = False
        if fd is None:
            with self._lock:
                fd = self._fds.get(key)
                if fd is None:
                    fd = self._open(key)
                    if len(self._fds) < self.max_open:
                        self._fds[key] = fd
                    else:
                        transient = True
        try:
            return _read_ranges(key[0], ranges, lambda offset, length: os.pread(fd, length, offset))
        finally:
            if transient:
                os.close(fd)


_SHARD_FILES = _ShardFiles()


def _read_ranges(path, ranges, read_at):
    """Bytes of each (offset, length) row of `ranges`, read by `read_at(offset, length)`."""
    out = []
    for offset, length in ranges.tolist():
        data = read_at(offset, length)
        if len(data) != length:
            raise BadSampleError(path, f"short read at offset {offset} ({len(data)} of {length} bytes): "
                                 "the shard is truncated; rerun --mode=tfrecords")
        out.append(data)
    return out


def _read_remote(path, ranges):
    with tf.io.gfile.GFile(path, "rb") as f:
        def read_at(offset, length):
            f.seek(offset)
            return f.read(length)

        return _read_ranges(path, ranges, read_at)


_LOGGED = set()


def _log_once(message, *args):
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info(message, *args)


def _load_tfrecord_indexes(files):
    """The shards' indexes ([(key, offsets, index dict)]), or None when any shard has none.

    Every shard is checked: one whose recorded file size differs from its size now raises (the index
    is stale), even when others have no index.
    """
    loaded, missing = [], 0
    for path in files:
        index = tfrecords.read_index(path)
        if index is None:
            missing += 1
            continue
        if _is_remote(path):
            size, inode = tf.io.gfile.stat(path).length, 0
        else:
            stat = os.stat(path)
            size, inode = stat.st_size, stat.st_ino
        if size != index["file_size"]:
            raise ValueError(f"{path}: the TFRecord index is stale (it was made for a {index['file_size']}-byte "
                             f"shard, the file has {size} bytes): rerun --mode=tfrecords to index it again")
        loaded.append(((path, inode, size), index))
    if missing:
        if loaded:
            log.warning("%d of %d TFRecord shards have no index: streaming them all (rerun --mode=tfrecords to "
                        "index them)", missing, len(files))
        return None
    indexes = []
    for key, index in loaded:
        index_file = tfrecords.index_path(key[0])
        if _is_remote(index_file):
            import io
            with tf.io.gfile.GFile(index_file, "rb") as f:
                offsets = np.load(io.BytesIO(f.read()))
        else:
            offsets = np.load(index_file, mmap_mode="r")  # large datasets: only the rows read are paged in
        if offsets.shape != (index["frames"], 2):
            raise ValueError(f"{key[0]}: the TFRecord index {index_file} has {offsets.shape[0]} rows, its sidecar "
                             f"says {index['frames']}: rerun --mode=tfrecords to index it again")
        indexes.append((key, offsets, index))
    return indexes


def _video_table(indexes):
    """int64 [videos, 3] = (first index row in its shard, num_frames, label) over all shards, in order."""
    return np.concatenate([np.asarray(i["videos"], np.int64).reshape(-1, 3) for _, _, i in indexes])


def _indexed_reader(indexes, table, num_segments, training, num_clips, policy):
    """Python side of indexed TFRecords: plan the frames of video `video`, read their JPEG bytes."""
    size = num_segments * num_clips
    shard_of = np.concatenate([np.full(len(i["videos"]), s, np.int64) for s, (_, _, i) in enumerate(indexes)])
    first, counts = table[:, 0], table[:, 1]
    keys = [key for key, _, _ in indexes]
    offsets = [rows for _, rows, _ in indexes]
    paths = [p for _, _, i in indexes for p in i["paths"]]

    def name(video):
        shard = os.path.basename(keys[shard_of[video]][0])
        return f"{paths[video]} (in {shard})" if paths[video] else f"{shard} video {video}"

    def read(video, rand):
        video = int(video)
        try:
            num_frames = int(counts[video])
            if num_frames <= 0:
                raise BadSampleError(name(video), "TFRecord element has no frames")
            indices = _plan(num_frames, num_segments, training, num_clips, _rng(rand)).reshape(-1)
            shard = int(shard_of[video])
            ranges = np.asarray(offsets[shard][first[video] + indices])
            key = keys[shard]
            data = _read_remote(key[0], ranges) if _is_remote(key[0]) else _SHARD_FILES.read(key, ranges)
            return np.array(data, dtype=object), np.bool_(True)
        except Exception as error:  # any failure on one sample is that sample's, never the epoch's
            _skip_or_raise(_as_bad_sample(error, name(video)), policy)
            return np.array([_PLACEHOLDER_JPEG] * size, dtype=object), np.bool_(False)

    return read


_DROPPED_REASON = ("an error inside the tf.data pipeline, e.g. a JPEG whose body does not decode; "
                   "tf.data's warning above names the error")


def _record_dropped(count):
    BAD_SAMPLES.record_unknown(int(count), _DROPPED_REASON)
    return np.int64(count)


def _streamed_count(files, num_shards, shard_index):
    """Elements a streaming TFRecord pipeline yields, from the shards' sidecar counts (None if unknown)."""
    counts = []
    for path in files:
        try:
            with open(f"{path}.json") as f:
                counts.append(int(json.load(f)["videos"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if num_shards <= 1:
        return sum(counts)
    if len(files) >= num_shards:
        return sum(counts[shard_index::num_shards])
    return len(range(shard_index, sum(counts), num_shards))


def _count_dropped(dataset, total):
    """Count the elements `ignore_errors` dropped: `(index, clip, label, ok)` -> `(clip, label, ok)`.

    Indices are consecutive before the decoding map; a sequential scan finds the gaps and records them
    in BAD_SAMPLES. `total` (the number of indices of a finite dataset, None when unknown or infinite)
    ends the stream with a sentinel (ok False, filtered later) so that drops at the very end count too.
    """
    if total is not None:
        clip_spec = dataset.element_spec[1]
        empty_clip = tf.zeros([d or 0 for d in clip_spec.shape.as_list()], clip_spec.dtype)
        sentinel = (tf.constant(total, tf.int64), empty_clip,
                    tf.zeros([], dataset.element_spec[2].dtype), tf.constant(False))
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(sentinel))

    def step(expected, element):
        index = element[0]
        gap = index - expected
        recorded = tf.cond(gap > 0, lambda: tf.reshape(tf.numpy_function(_record_dropped, [gap], tf.int64), []),
                           lambda: tf.zeros([], tf.int64))
        with tf.control_dependencies([recorded]):
            following = tf.identity(index + 1)
        return following, element[1:]

    return dataset.scan(tf.constant(0, tf.int64), step)


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


def _train_clip_from_jpegs(jpegs, num_segments, image_size, flip, seed):
    """[T] JPEG strings -> [T, S, S, 3] uint8: decode only the MultiScaleCrop window of each frame."""
    shape = tf.image.extract_jpeg_shape(jpegs[0])
    window = tf.stack(augment.multi_scale_crop_window(shape[0], shape[1], image_size, seed))
    frames = tf.stack([tf.io.decode_and_crop_jpeg(jpegs[t], window, channels=3) for t in range(num_segments)])
    clip = augment.resize_frames(frames, image_size, image_size)
    return augment.random_flip(clip, seed) if flip else clip


def _train_clip_from_frames(frames, image_size, flip, seed):
    clip = augment.multi_scale_crop(frames, image_size, seed)
    return augment.random_flip(clip, seed) if flip else clip


def _eval_clip(frames, config, num_clips, num_crops):
    views = augment.eval_views(frames, num_clips, num_crops, config.scale_size, config.image_size)
    return views[0] if num_clips * num_crops == 1 else views


def _tfrecord_files(config, split):
    name = "train" if split == "train" else "val"
    folder = config.tfrecord_dir
    files = sorted(glob.glob(os.path.join(folder, f"{name}-*-of-*.tfrecord")))
    manifest_path = os.path.join(folder, "manifest.json")
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            expected = json.load(f).get(name, {}).get("num_shards")
        if expected is not None and len(files) != expected:
            raise FileNotFoundError(f"{folder}: {len(files)} of {expected} {name} shards present; rerun "
                                    "--mode=tfrecords to finish the conversion")
    if not files:
        raise FileNotFoundError(f"no {name}-*-of-*.tfrecord shards in {folder!r}: convert first with "
                                f"python app.py --mode=tfrecords --tfrecord_dir={folder} ...")
    return files


def num_samples(config, split):
    """Videos in `split` before any skipping: the list's entries, or the TFRecord manifest's count."""
    _is_training(split)
    if config.data_format == "tfrecord":
        name = "train" if split == "train" else "val"
        manifest_path = os.path.join(config.tfrecord_dir, "manifest.json")
        if not os.path.isfile(manifest_path):
            raise FileNotFoundError(f"{manifest_path} not found: convert first with --mode=tfrecords")
        with open(manifest_path) as f:
            entry = json.load(f).get(name)
        if not entry:
            raise FileNotFoundError(f"{manifest_path} has no {name!r} split: convert its list with --mode=tfrecords")
        return int(entry["videos"])
    config, label_names = resolve_lists(config)
    return len(lists.read_list(_split_list(config, split), config.data_format, config.data_root,
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

    indexes = None
    if config.data_format == "tfrecord":
        files = _tfrecord_files(config, split)
        indexes = _load_tfrecord_indexes(files)
    if indexes is not None:
        _log_once("TFRecords: reading the sampled frames through the shard indexes (random access)")
        table = _video_table(indexes)
        labels = table[:, 2]
        dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(labels), dtype=tf.int64),
                                                      tf.constant(labels, tf.int32)))
        if num_shards > 1:
            dataset = dataset.shard(num_shards, shard_index)
        if shuffle:
            dataset = dataset.shuffle(max(1, len(labels)), seed=seed, reshuffle_each_iteration=True)
    elif config.data_format == "tfrecord":
        _log_once("TFRecords: streaming whole records (shards without an index; rerun --mode=tfrecords to "
                  "index them for random access)")
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
        config, label_names = resolve_lists(config)
        records = lists.read_list(_split_list(config, split), config.data_format, config.data_root,
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
    if repeat:
        dataset = dataset.repeat()

    def _from_jpegs(jpegs, label, ok, rand):
        if training:
            clip = _train_clip_from_jpegs(jpegs, num_segments, config.image_size, config.flip, _seed_pair(rand))
        else:
            frames = tf.stack([tf.io.decode_jpeg(jpegs[i], channels=3) for i in range(size)])
            clip = _eval_clip(frames, config, num_clips, num_crops)
        return clip, label, ok

    # Formats whose Python side only reads JPEG bytes: (reader, (element, rand) -> (reader inputs, label)).
    read_group = None
    if indexes is not None:
        reader = _indexed_reader(indexes, table, num_segments, training, num_clips, policy)
        read_group = (reader, lambda element, rand: ([element[0], rand], element[1]))
    elif config.data_format == "tfrecord":
        planner = _index_planner(num_segments, training, num_clips, policy)

        def select(serialized, rand):
            """Whole video record -> the JPEGs of the sampled frames (small, so shuffling them is cheap)."""
            context, sequence = tf.io.parse_single_sequence_example(serialized, TFRECORD_CONTEXT, TFRECORD_SEQUENCE)
            indices, ok = tf.numpy_function(planner, [context["num_frames"], context["path"], rand],
                                            [tf.int64, tf.bool], stateful=False)
            ok = tf.reshape(ok, [])
            jpegs = tf.cond(ok, lambda: tf.gather(sequence["frames"], tf.maximum(indices, 0)),
                            lambda: tf.fill([size], tf.constant(_PLACEHOLDER_JPEG)))
            return tf.reshape(jpegs, [size]), tf.cast(context["label"], tf.int32), ok, rand

        dataset = dataset.map(select, num_parallel_calls=AUTOTUNE, deterministic=True)
        if shuffle:
            dataset = dataset.shuffle(TFRECORD_SHUFFLE_BUFFER, seed=seed + 1, reshuffle_each_iteration=True)
        load = _from_jpegs
    elif config.data_format == "frames":
        reader = _frames_reader(config.frame_template, num_segments, training, num_clips, policy)
        read_group = (reader, lambda element, rand: ([element[0], element[1], rand], element[2]))
    elif config.data_format == "videos":
        reader = _video_reader(num_segments, training, num_clips, policy)

        def load(element, rand):
            path, _, label = element
            frames, ok = tf.numpy_function(reader, [path, rand], [tf.uint8, tf.bool], stateful=False)
            frames = tf.ensure_shape(frames, [size, None, None, 3])
            if training:
                clip = _train_clip_from_frames(frames, config.image_size, config.flip, _seed_pair(rand))
            else:
                clip = _eval_clip(frames, config, num_clips, num_crops)
            return clip, label, tf.reshape(ok, [])
    else:
        raise ValueError(f"data_format must be frames, videos, tfrecord or synthetic, got {config.data_format!r}")

    numbered = policy == "skip"
    if numbered:
        # Last line of defence for data the Python checks cannot see (a corrupt JPEG body): tf.data drops
        # the failing elements; numbering them before the map lets _count_dropped count the gaps.
        total = int(dataset.cardinality())
        if total < 0 and not repeat and config.data_format == "tfrecord":
            total = _streamed_count(files, num_shards, shard_index)
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
    # (every epoch of training, every validation) waited for the tuner, which a busy CPU starves: 6-9 s
    # per epoch boundary after ~12 epochs of the quickstart, none without; the pipeline alone was no
    # slower (benchmarks/input_speed.py measures it).
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(AUTOTUNE)


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
