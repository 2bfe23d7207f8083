"""Deprecated module (kept for one release): the format is `tsm_keras.data.tfrecord_format`, the writer
`tsm_keras.data.tfrecord_writer` (`convert` is now `write_tfrecords`)."""

from tsm_keras.data.tfrecord_format import *  # noqa: F401,F403
from tsm_keras.data.tfrecord_format import ShardFormatError, has_valid_index, index_path, read_index  # noqa: F401
from tsm_keras.data.tfrecord_writer import *  # noqa: F401,F403
from tsm_keras.data.tfrecord_writer import index_shard, write_tfrecords  # noqa: F401

convert = write_tfrecords
