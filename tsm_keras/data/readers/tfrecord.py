"""TFRecord shards of SequenceExamples (`tsm_keras.data.tfrecord_format`).

Indexed shards are read by random access: each element is one video of the index tables, and only
the sampled frames' JPEG bytes are read (`pread` on cached file descriptors). Shards without an
index are streamed record by record; `index_planner` then picks the frames of each whole record.
"""

import json
import logging
import os
import threading

import numpy as np
import tensorflow as tf

from tsm_keras.data.bad_samples import BadSampleError, as_bad_sample, placeholder_jpeg, skip_or_raise
from tsm_keras.data.tfrecord_format import index_path, read_index
from tsm_keras.errors import UsageError

log = logging.getLogger(__name__)


def index_planner(plan_clip, size, policy):
    """Python side of the TFRecord format: indices into the stored frames."""

    def plan(num_frames, path, rand):
        num_frames = int(num_frames)
        if num_frames <= 0:
            skip_or_raise(BadSampleError(path.decode("utf-8"), "TFRecord element has no frames"), policy)
            return np.full([size], -1, np.int64), np.bool_(False)
        return plan_clip(num_frames, rand), np.bool_(True)

    return plan


def is_remote(path):
    return "://" in path


class ShardFiles:
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
            return read_ranges(key[0], ranges, lambda offset, length: os.pread(fd, length, offset))
        finally:
            if transient:
                os.close(fd)


_SHARD_FILES = ShardFiles()


def read_ranges(path, ranges, read_at):
    """Bytes of each (offset, length) row of `ranges`, read by `read_at(offset, length)`."""
    out = []
    for offset, length in ranges.tolist():
        data = read_at(offset, length)
        if len(data) != length:
            raise BadSampleError(path, f"short read at offset {offset} ({len(data)} of {length} bytes): "
                                 "the shard is truncated; rerun --mode=tfrecords")
        out.append(data)
    return out


def read_remote(path, ranges):
    with tf.io.gfile.GFile(path, "rb") as f:
        def read_at(offset, length):
            f.seek(offset)
            return f.read(length)

        return read_ranges(path, ranges, read_at)


_LOGGED = set()


def log_once(message, *args):
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info(message, *args)


def load_indexes(files):
    """The shards' indexes ([(key, offsets, index dict)]), or None when any shard has none.

    Every shard is checked: one whose recorded file size differs from its size now raises (the index
    is stale), even when others have no index.
    """
    loaded, missing = [], 0
    for path in files:
        index = read_index(path)
        if index is None:
            missing += 1
            continue
        if is_remote(path):
            size, inode = tf.io.gfile.stat(path).length, 0
        else:
            stat = os.stat(path)
            size, inode = stat.st_size, stat.st_ino
        if size != index["file_size"]:
            raise UsageError(f"{path}: the TFRecord index is stale (it was made for a {index['file_size']}-byte "
                             f"shard, the file has {size} bytes): rerun --mode=tfrecords to index it again")
        loaded.append(((path, inode, size), index))
    if missing:
        if loaded:
            log.warning("%d of %d TFRecord shards have no index: streaming them all (rerun --mode=tfrecords to "
                        "index them)", missing, len(files))
        return None
    indexes = []
    for key, index in loaded:
        index_file = index_path(key[0])
        if is_remote(index_file):
            import io
            with tf.io.gfile.GFile(index_file, "rb") as f:
                offsets = np.load(io.BytesIO(f.read()))
        else:
            offsets = np.load(index_file, mmap_mode="r")  # large datasets: only the rows read are paged in
        if offsets.shape != (index["frames"], 2):
            raise UsageError(f"{key[0]}: the TFRecord index {index_file} has {offsets.shape[0]} rows, its sidecar "
                             f"says {index['frames']}: rerun --mode=tfrecords to index it again")
        indexes.append((key, offsets, index))
    return indexes


def video_table(indexes):
    """int64 [videos, 3] = (first index row in its shard, num_frames, label) over all shards, in order."""
    return np.concatenate([np.asarray(i["videos"], np.int64).reshape(-1, 3) for _, _, i in indexes])


def indexed_reader(indexes, table, plan, size, policy):
    """Python side of indexed TFRecords: plan the frames of video `video`, read their JPEG bytes."""
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
            indices = plan(num_frames, rand)
            shard = int(shard_of[video])
            ranges = np.asarray(offsets[shard][first[video] + indices])
            key = keys[shard]
            data = read_remote(key[0], ranges) if is_remote(key[0]) else _SHARD_FILES.read(key, ranges)
            return np.array(data, dtype=object), np.bool_(True)
        except Exception as error:  # any failure on one sample is that sample's, never the epoch's
            skip_or_raise(as_bad_sample(error, name(video)), policy)
            return np.array([placeholder_jpeg()] * size, dtype=object), np.bool_(False)

    return read


def streamed_count(files, num_shards, shard_index):
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
