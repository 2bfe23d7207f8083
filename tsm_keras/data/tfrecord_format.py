"""The TFRecord format of a conversion: record schema, shard names, shard indexes, the manifest.

One `tf.train.SequenceExample` per video: context `label`, `num_frames` (the frames really stored),
`path`; feature list `frames`: every frame JPEG-encoded. Shards `<split>-00003-of-00010.tfrecord`,
each with a `.json` sidecar (counts, and the `index` entry) and `<shard>.index.npy` (every frame's
file offset and length); `manifest.json` records, per split, the shards, videos, frames and skipped
samples, and the label names. The writer (`tfrecord_writer`) and the reader (`readers.tfrecord`)
share this module and nothing else.
"""

import glob
import json
import os
import struct

import numpy as np
import tensorflow as tf

from tsm_keras import disk
from tsm_keras.errors import MissingInputError, UserError

MANIFEST_FILE = "manifest.json"
INDEX_VERSION = 1
CONTEXT_FEATURES = {
    "label": tf.io.FixedLenFeature([], tf.int64),
    "num_frames": tf.io.FixedLenFeature([], tf.int64),
    "path": tf.io.FixedLenFeature([], tf.string, default_value=""),
}
SEQUENCE_FEATURES = {"frames": tf.io.FixedLenSequenceFeature([], tf.string)}


def shard_name(split, index, num_shards):
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


class ShardFormatError(UserError, ValueError):
    """A TFRecord shard that cannot be indexed (truncated, or not the SequenceExample schema)."""


def index_path(shard):
    """`<shard>.index.npy`: int64 [total frames, 2] = (file offset, length) of every frame's JPEG bytes."""
    return f"{shard}.index.npy"


def _records(path):
    """(offset of the data, data) of each record of a TFRecord file, from its framing alone.

    Framing: uint64 LE length, uint32 masked CRC of the length, data, uint32 masked CRC of the data.
    The CRCs are not verified (the lengths are); a record that runs past the end raises ShardFormatError.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset, number = 0, 0
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                raise ShardFormatError(f"{path}: record {number} is truncated (header of {len(header)} of 12 "
                                       f"bytes at offset {offset}); the shard is incomplete, convert it again")
            length = struct.unpack("<Q", header[:8])[0]
            end = offset + 12 + length + 4
            if end > size:
                raise ShardFormatError(f"{path}: record {number} is truncated (needs {length} bytes of data at "
                                       f"offset {offset + 12}, file ends at {size}); the shard is incomplete, "
                                       "convert it again")
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)
            yield offset + 12, data
            offset, number = end, number + 1


def scan_shard(path):
    """Index a finished TFRecord shard of SequenceExamples: (offsets int64 [frames, 2], index dict).

    The index dict: `file_size`, `frames` (rows of the offsets), `videos` [[first row, num_frames,
    label], ...] and `paths` (each video's context `path`, "" when absent). `num_frames` is the number
    of frames stored in the record. Each frame's bytes appear verbatim, in order, in the serialized
    record: they are found by searching from the end of the previous frame.
    """
    rows, videos, paths = [], [], []
    number = -1
    for number, (start, data) in enumerate(_records(path)):
        try:
            example = tf.train.SequenceExample.FromString(data)
        except Exception as error:  # protobuf's DecodeError
            raise ShardFormatError(f"{path}: record {number} is not a tf.train.SequenceExample ({error})") from None
        context = example.context.feature
        labels = context["label"].int64_list.value if "label" in context else []
        if len(labels) != 1:
            raise ShardFormatError(f"{path}: record {number} has no int64 context feature 'label'")
        video_path = context["path"].bytes_list.value[0].decode("utf-8", "replace") \
            if "path" in context and context["path"].bytes_list.value else ""
        frames = example.feature_lists.feature_list["frames"].feature \
            if "frames" in example.feature_lists.feature_list else []
        first, cursor = len(rows), 0
        for i, feature in enumerate(frames):
            if len(feature.bytes_list.value) != 1:
                raise ShardFormatError(f"{path}: record {number} frame {i} is not one bytes value")
            jpeg = feature.bytes_list.value[0]
            found = data.find(jpeg, cursor)
            if found < 0:
                raise ShardFormatError(f"{path}: record {number} frame {i}: bytes not found in the record")
            rows.append((start + found, len(jpeg)))
            cursor = found + len(jpeg)
        videos.append([first, len(rows) - first, int(labels[0])])
        paths.append(video_path)
    offsets = np.asarray(rows, np.int64).reshape(-1, 2)
    index = dict(version=INDEX_VERSION, file_size=os.path.getsize(path), frames=len(rows), videos=videos,
                 paths=paths)
    return offsets, index


def read_index(shard):
    """The shard's `index` dict if it has a complete index, else None (not checked against the shard)."""
    try:
        with open(f"{shard}.json") as f:
            index = json.load(f).get("index")
    except (OSError, ValueError):
        return None
    if not index or index.get("version") != INDEX_VERSION or not os.path.isfile(index_path(shard)):
        return None
    return index


def has_valid_index(shard):
    """True when the shard has an index recorded for its current file size."""
    index = read_index(shard)
    return index is not None and index["file_size"] == os.path.getsize(shard)


def read_manifest(folder):
    """The conversion's `manifest.json` as a dict, or None when the folder has none."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    return disk.read_json_object(path, "the conversion's manifest",
                                 "written by --mode=tfrecords: convert again into an empty --tfrecord_dir")


def manifest_videos(folder, split):
    """Videos of `split` in the conversion, from its manifest (FileNotFoundError saying what to run)."""
    name = "train" if split == "train" else "val"
    manifest = read_manifest(folder)
    path = os.path.join(folder, MANIFEST_FILE)
    if manifest is None:
        raise MissingInputError(f"{path} not found: convert first with --mode=tfrecords")
    entry = manifest.get(name)
    if not entry:
        raise MissingInputError(f"{path} has no {name!r} split: convert its list with --mode=tfrecords")
    return int(entry["videos"])


def shard_files(folder, split):
    """The complete `<split>-*-of-*.tfrecord` shards of a conversion (val and test read "val")."""
    name = "train" if split == "train" else "val"
    files = sorted(glob.glob(os.path.join(folder, f"{name}-*-of-*.tfrecord")))
    manifest = read_manifest(folder)
    if manifest is not None:
        expected = manifest.get(name, {}).get("num_shards")
        if expected is not None and len(files) != expected:
            raise MissingInputError(f"{folder}: {len(files)} of {expected} {name} shards present; rerun "
                                    "--mode=tfrecords to finish the conversion")
    if not files:
        raise MissingInputError(f"no {name}-*-of-*.tfrecord shards in {folder!r}: convert first with "
                                f"python app.py --mode=tfrecords --tfrecord_dir={folder} ...")
    return files
