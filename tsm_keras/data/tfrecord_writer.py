"""Frames or videos lists -> sharded TFRecords of `tf.train.SequenceExample`s.

One SequenceExample per video: context `label`, `num_frames` (the frames really stored), `path`;
feature list `frames`: every frame JPEG-encoded (frame files are copied byte for byte unless
`short_side` asks for a resize). Shards `<split>-00003-of-00010.tfrecord` are written under a
temporary name and renamed when complete, with a `.json` sidecar of their counts; a rerun skips
finished shards. `manifest.json` records, per split, the shards, videos, frames and skipped samples.

Every shard is indexed before it gets its final name (`index_shard`): `<shard>.index.npy` holds each
frame's (file offset, length) of its JPEG bytes inside the shard, and the sidecar's `index` entry the
per-video table, so the pipeline reads just the sampled frames with `pread` instead of whole records.
A rerun indexes finished shards that lack a valid index (older conversions). Shards written by other
tools with the same SequenceExample schema are indexed from the file alone: `index_shard(path)`.

`python app.py --mode=tfrecords --data_format=frames|videos|synthetic --data_root=... --train_list=...
 --val_list=... --tfrecord_dir=tfrecords [--short_side=256] [--tfrecord_videos_per_shard=64]`
"""

import concurrent.futures
import json
import logging
import math
import multiprocessing
import os

import cv2
import numpy as np

from tsm_keras.data import decode, lists
from tsm_keras.data.tfrecord_format import (MANIFEST_FILE, has_valid_index, index_path, read_manifest,
                                            scan_shard, shard_name)
from tsm_keras import disk
from tsm_keras.errors import UsageError
from tsm_keras.progress import ProgressLine

log = logging.getLogger(__name__)
JPEG_QUALITY = 90


def _encode(frame_bgr):
    ok, data = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG frame")
    return data.tobytes()


def video_jpegs(record, data_format, short_side, frame_template):
    """All frames of one list record as JPEG bytes; raises BadSampleError when none can be read."""
    if data_format == "frames":
        count = decode.count_frame_files(record.path, frame_template)
        if count <= 0:
            raise decode.BadSampleError(record.path, "frame folder missing or empty")
        data = decode.read_jpeg_files([decode.frame_path(record.path, frame_template, i) for i in range(count)])
        if not short_side:
            return data
        frames = [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR) for d in data]
        return [_encode(decode.resize_short_side_np(f, short_side)) for f in frames]
    jpegs = [_encode(frame) for frame in decode.iter_frames(record.path, short_side)]
    if not jpegs:
        raise decode.BadSampleError(record.path, "no frame decodes (empty or corrupt video)")
    return jpegs


def sequence_example(jpegs, label, path):
    """Serialized tf.train.SequenceExample of one video."""
    import tensorflow as tf

    example = tf.train.SequenceExample()
    example.context.feature["label"].int64_list.value.append(int(label))
    example.context.feature["num_frames"].int64_list.value.append(len(jpegs))
    example.context.feature["path"].bytes_list.value.append(path.encode("utf-8"))
    frames = example.feature_lists.feature_list["frames"]
    for data in jpegs:
        frames.feature.add().bytes_list.value.append(data)
    return example.SerializeToString()




def _write_sidecar(name, entries):
    """Update `<name>.json` with `entries`, keeping its other keys (tmp, then rename)."""
    sidecar = {}
    if os.path.isfile(f"{name}.json"):
        with open(f"{name}.json") as f:
            sidecar = json.load(f)
    sidecar.update(entries)
    with open(f"{name}.json.tmp", "w") as f:
        json.dump(sidecar, f)
    os.replace(f"{name}.json.tmp", f"{name}.json")
    return sidecar


def _write_index(name, offsets):
    with open(f"{index_path(name)}.tmp", "wb") as f:
        np.save(f, offsets)
    os.replace(f"{index_path(name)}.tmp", index_path(name))


def index_shard(path, name=None):
    """Index the TFRecord shard `path`: writes `<name>.index.npy` and the `index` entry of `<name>.json`.

    `name` (default `path`) is the shard's final name when `path` is still its temporary file. The
    offsets are written first, the sidecar (which makes the index valid) last. Returns the index dict.
    Raises ShardFormatError naming the file and record for a truncated or foreign record.
    """
    name = name or path
    offsets, index = scan_shard(path)
    _write_index(name, offsets)
    _write_sidecar(name, {"index": index})
    return index




def write_shard(records, path, data_format, short_side, frame_template, policy):
    """Write one shard (tmp), index it, write its `.json` counts and index, then rename it; returns the counts."""
    import tensorflow as tf

    stats = dict(videos=0, frames=0, skipped=0, skipped_paths=[])
    tmp = f"{path}.tmp"
    with disk.writing(path, "TFRecord shard", cleanup=[tmp, f"{index_path(path)}.tmp", f"{path}.json.tmp"]):
        return _write_shard(records, path, tmp, data_format, short_side, frame_template, policy, stats, tf)


def _write_shard(records, path, tmp, data_format, short_side, frame_template, policy, stats, tf):
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            try:
                jpegs = video_jpegs(record, data_format, short_side, frame_template)
            except decode.BadSampleError as error:
                if policy == "fail":
                    raise decode.BadSampleError(error.path, f"{error.reason} ({record.source}; "
                                                "--on_bad_sample=fail)") from None
                log.warning("skipping bad sample %s (%s)", error, record.source)
                stats["skipped"] += 1
                stats["skipped_paths"].append(record.path)
                continue
            writer.write(sequence_example(jpegs, record.label, record.path))
            stats["videos"] += 1
            stats["frames"] += len(jpegs)
    # A shard file that exists is complete and indexed: index the temporary file under the final name.
    offsets, index = scan_shard(tmp)
    _write_index(path, offsets)
    _write_sidecar(path, dict(stats, index=index))
    os.replace(tmp, path)
    return stats


def convert_list(list_path, data_format, data_root, out_dir, split, *, videos_per_shard=64, short_side=0,
                 frame_template="img_{:05d}.jpg", on_bad_sample="skip", workers=1, num_classes=None):
    """Convert one list file into `<out_dir>/<split>-*-of-*.tfrecord`; returns the split's manifest entry."""
    records = lists.read_list(list_path, data_format, data_root, num_classes=num_classes)
    num_shards = max(1, math.ceil(len(records) / max(1, int(videos_per_shard))))
    os.makedirs(out_dir, exist_ok=True)
    # Round-robin so that every shard mixes classes even when the list is sorted by class.
    jobs = [(records[i::num_shards], os.path.join(out_dir, shard_name(split, i, num_shards)))
            for i in range(num_shards)]
    todo = [(shard, path) for shard, path in jobs if not os.path.isfile(path)]
    if len(todo) < len(jobs):
        log.info("%s: %d of %d shards already written, skipping them", split, len(jobs) - len(todo), len(jobs))
    # Finished shards of an older conversion (or changed since) get their index now.
    unindexed = [path for _, path in jobs if os.path.isfile(path) and not has_valid_index(path)]
    if unindexed:
        log.info("%s: indexing %d finished shards that have no valid index", split, len(unindexed))
    args = (data_format, short_side, frame_template, on_bad_sample)
    tasks = [(write_shard, (shard, path) + args) for shard, path in todo] + [(index_shard, (p,)) for p in unindexed]
    workers = max(1, min(int(workers), len(tasks)))
    line = ProgressLine(f"tfrecords {split}: shards", len(tasks), unit="shards")
    videos = 0

    def finished(done, result):
        nonlocal videos
        if isinstance(result, dict) and "skipped" in result:  # write_shard's counts (bad samples are logged
            videos += result["videos"] + result["skipped"]      # as they happen); index_shard gives no counts
        line.update(done, videos=f"{videos}/{len(records)}")

    if workers == 1:
        for done, (function, task_args) in enumerate(tasks, 1):
            finished(done, function(*task_args))
    else:
        # spawn: the workers start clean rather than forking a process that runs TensorFlow threads.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(function, *task_args) for function, task_args in tasks]
            for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
                finished(done, future.result())
    line.close()
    totals = dict(videos=0, frames=0, skipped=0, skipped_paths=[])
    for _, path in jobs:
        with open(f"{path}.json") as f:
            stats = json.load(f)
        for key in totals:
            totals[key] += stats[key]
    return dict(num_shards=num_shards, shards=[os.path.basename(p) for _, p in jobs], list=os.path.abspath(list_path),
                data_format=data_format, short_side=int(short_side), **totals)


def write_tfrecords(config):
    """`--mode=tfrecords`: convert --train_list and/or --val_list into --tfrecord_dir; returns the manifest dict."""
    if config.data_format == "tfrecord":
        raise UsageError("--mode=tfrecords converts a frames or videos list: pass "
                         "--data_format=frames|videos|synthetic")
    config, label_names = lists.resolve_lists(config)
    splits = [(name, path) for name, path in (("train", config.train_list), ("val", config.val_list)) if path]
    if not splits:
        raise lists.ListFileError("nothing to convert: pass --train_list and/or --val_list")
    workers = config.data_workers or os.cpu_count() or 1
    manifest_path = os.path.join(config.tfrecord_dir, MANIFEST_FILE)
    manifest = read_manifest(config.tfrecord_dir) or {}
    for split, list_path in splits:
        entry = convert_list(list_path, config.data_format, config.data_root, config.tfrecord_dir, split,
                             videos_per_shard=config.tfrecord_videos_per_shard, short_side=config.short_side,
                             frame_template=config.frame_template, on_bad_sample=config.on_bad_sample,
                             workers=workers, num_classes=len(label_names))
        manifest[split] = entry
        print(f"{split}: {entry['videos']} videos, {entry['frames']} frames in {entry['num_shards']} shards; "
              f"{entry['skipped']} skipped")
    manifest["label_names"] = label_names
    os.makedirs(config.tfrecord_dir, exist_ok=True)
    with open(f"{manifest_path}.tmp", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(f"{manifest_path}.tmp", manifest_path)
    return manifest
