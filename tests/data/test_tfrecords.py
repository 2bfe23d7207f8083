"""TFRecord conversion: round-trip equality of frames and labels, resume, manifest, bad samples, shard indexes."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from conftest import write_frames
from tsm_keras.config import Config
from tsm_keras.data import BAD_SAMPLES, build_dataset
from tsm_keras.data.tfrecord_format import CONTEXT_FEATURES, SEQUENCE_FEATURES, ShardFormatError, has_valid_index, \
    index_path
from tsm_keras.data.tfrecord_writer import index_shard, sequence_example, write_tfrecords


def _read_all(folder, split):
    files = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*.tfrecord")))
    examples = []
    for serialized in tf.data.TFRecordDataset(files):
        context, sequence = tf.io.parse_single_sequence_example(serialized, CONTEXT_FEATURES, SEQUENCE_FEATURES)
        examples.append((context["path"].numpy().decode(), int(context["label"]), int(context["num_frames"]),
                         [f for f in sequence["frames"].numpy()]))
    return sorted(examples)


def _config(media, **changes):
    base = dict(data_format="frames", data_root=str(media), train_list=str(media / "frames.txt"),
                tfrecord_dir=str(media / "records"), tfrecord_videos_per_shard=1, num_classes=3, num_segments=4,
                image_size=32, scale_size=40, batch_size=2, data_workers=1)
    base.update(changes)
    return Config(**base)


def test_frames_round_trip_byte_for_byte(media):
    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\n")
    manifest = write_tfrecords(_config(media))
    examples = _read_all(str(media / "records"), "train")
    assert [(os.path.basename(p), label, n) for p, label, n, _ in examples] == [("a", 1, 24), ("b", 2, 24)]
    for path, _, _, frames in examples:
        for i, data in enumerate(frames):
            assert data == open(os.path.join(path, f"img_{i + 1:05d}.jpg"), "rb").read()
    assert manifest["train"]["num_shards"] == 2 and manifest["train"]["videos"] == 2
    from tsm_keras.data import num_samples
    assert num_samples(_config(media, data_format="tfrecord"), "train") == 2
    assert num_samples(_config(media), "train") == 2
    assert manifest["train"]["frames"] == 48 and manifest["train"]["skipped"] == 0
    assert not [f for f in os.listdir(media / "records") if f.endswith(".tmp")]


def test_pipeline_reads_the_same_clips_from_tfrecords_as_from_frames(media):
    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\n")
    config = _config(media, val_list=str(media / "frames.txt"), train_list="")
    write_tfrecords(config)
    from_frames = sorted((int(y), x.tobytes()) for xb, yb in build_dataset(config, "val")
                         for x, y in zip(xb.numpy(), yb.numpy()))
    from_records = sorted((int(y), x.tobytes()) for xb, yb in build_dataset(config.replace(data_format="tfrecord"), "val")
                          for x, y in zip(xb.numpy(), yb.numpy()))
    assert from_frames == from_records
    train = build_dataset(config.replace(data_format="tfrecord", train_list=""), "val", batch_size=1)
    assert sum(1 for _ in train) == 2


def test_videos_with_short_side_and_a_bad_video(media):
    (media / "videos" / "broken.mp4").write_bytes(b"junk" * 100)
    (media / "videos.txt").write_text("videos/a.avi 0\nvideos/broken.mp4 1\nvideos/b.mp4 2\n")
    manifest = write_tfrecords(_config(media, data_format="videos", train_list=str(media / "videos.txt"),
                                           short_side=24, tfrecord_videos_per_shard=2))
    assert manifest["train"]["skipped"] == 1 and manifest["train"]["videos"] == 2
    examples = _read_all(str(media / "records"), "train")
    assert [(label, n) for _, label, n, _ in examples] == [(0, 24), (2, 24)]
    first = cv2.imdecode(np.frombuffer(examples[0][3][0], np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (24, 32, 3)  # 48 x 64 with the short side to 24


def test_rerun_skips_finished_shards_and_detects_missing_ones(media):
    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\n")
    config = _config(media)
    write_tfrecords(config)
    shard = os.path.join(media / "records", "train-00000-of-00002.tfrecord")
    os.utime(shard, (1, 1))
    write_tfrecords(config)
    assert os.path.getmtime(shard) == 1
    with open(media / "records" / "manifest.json") as f:
        assert json.load(f)["train"]["shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="1 of 2 train shards"):
        build_dataset(config.replace(data_format="tfrecord"), "train")
    write_tfrecords(config)
    assert os.path.getmtime(shard) > 1


def test_tfrecord_format_without_shards_says_what_to_do(tmp_path):
    config = Config(data_format="tfrecord", tfrecord_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="--mode=tfrecords"):
        build_dataset(config, "train")


def test_app_tfrecords_mode(media):
    import subprocess
    import sys

    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\n")
    app = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "app.py")
    run = subprocess.run([sys.executable, app, "--mode=tfrecords", "--data_format=frames", f"--data_root={media}",
                          f"--train_list={media / 'frames.txt'}", f"--tfrecord_dir={media / 'out'}",
                          "--num_classes=3", "--data_workers=2", "--tfrecord_videos_per_shard=1"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train: 2 videos, 48 frames in 2 shards; 0 skipped" in run.stdout
    assert sorted(f for f in os.listdir(media / "out") if f.endswith(".tfrecord")) == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]


def _three_videos(media):
    """frames a (24), b (24), c (30): two shards of two and one videos."""
    write_frames(str(media / "frames" / "c"), 30)
    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\nframes/c 30 0\n")
    return _config(media, val_list=str(media / "frames.txt"), tfrecord_videos_per_shard=2)


def _shards(media, split="val"):
    return sorted(str(p) for p in (media / "records").glob(f"{split}-*.tfrecord"))


def _drop_index(shard):
    """Make `shard` look like an older conversion: no offsets file, no `index` in the sidecar."""
    os.remove(index_path(shard))
    with open(f"{shard}.json") as f:
        sidecar = json.load(f)
    del sidecar["index"]
    with open(f"{shard}.json", "w") as f:
        json.dump(sidecar, f)


def _clips(dataset):
    return [(int(y), x.tobytes()) for xb, yb in dataset for x, y in zip(xb.numpy(), yb.numpy())]


def test_index_points_at_every_frames_jpeg_bytes(media):
    config = _three_videos(media)
    write_tfrecords(config)
    shards = _shards(media)
    assert len(shards) == 2
    for shard in shards:
        assert has_valid_index(shard)
        with open(f"{shard}.json") as f:
            sidecar = json.load(f)
        assert {"videos", "frames", "skipped", "skipped_paths"} <= set(sidecar)  # the counts are kept
        index = sidecar["index"]
        offsets = np.load(index_path(shard))
        assert index["file_size"] == os.path.getsize(shard) and offsets.shape == (index["frames"], 2)
        blob = open(shard, "rb").read()
        stored = []
        for serialized in tf.data.TFRecordDataset(shard):
            context, sequence = tf.io.parse_single_sequence_example(serialized, CONTEXT_FEATURES, SEQUENCE_FEATURES)
            stored.append((int(context["label"]), context["path"].numpy().decode(), list(sequence["frames"].numpy())))
        assert [[n, label] for _, n, label in index["videos"]] == [[len(f), label] for label, _, f in stored]
        assert index["paths"] == [path for _, path, _ in stored]
        for (first, n, _), (_, _, frames) in zip(index["videos"], stored):
            for i, jpeg in enumerate(frames):
                offset, length = offsets[first + i]
                assert blob[offset:offset + length] == jpeg
    assert not [f for f in os.listdir(media / "records") if f.endswith(".tmp")]


def test_indexed_pipeline_reads_what_streaming_reads(media):
    config = _three_videos(media)
    write_tfrecords(config)
    records = config.replace(data_format="tfrecord")
    indexed_val = _clips(build_dataset(records, "val"))
    indexed_train = _clips(build_dataset(records, "train", batch_size=1))
    for shard in _shards(media) + _shards(media, "train"):
        _drop_index(shard)
    streamed_val = _clips(build_dataset(records, "val"))
    streamed_train = _clips(build_dataset(records, "train", batch_size=1))
    assert sorted(indexed_val) == sorted(streamed_val) and len(indexed_val) == 3
    assert sorted(indexed_val) == sorted(_clips(build_dataset(config, "val")))  # and what the frames give
    assert sorted(y for y, _ in indexed_train) == sorted(y for y, _ in streamed_train) == [0, 1, 2]
    # Multi-view test elements: clips x T frames read per video.
    multi = build_dataset(records.replace(test_clips=2, test_crops=3), "test")
    assert next(iter(multi))[0].shape[1:] == (6, 4, 32, 32, 3)


def test_indexed_pipeline_shards_by_video_and_repeats(media):
    config = _three_videos(media)
    write_tfrecords(config)
    records = config.replace(data_format="tfrecord")
    seen = [sorted(y for y, _ in _clips(build_dataset(records, "val", batch_size=1, num_shards=3, shard_index=i)))
            for i in range(3)]
    assert [len(s) for s in seen] == [1, 1, 1] and sorted(sum(seen, [])) == [0, 1, 2]
    first = _clips(build_dataset(records, "train", batch_size=1))
    assert first == _clips(build_dataset(records, "train", batch_size=1))  # same seed, same clips
    assert sum(1 for _ in build_dataset(records, "train", batch_size=2, repeat=True).take(5)) == 5


def test_old_shards_stream_and_a_rerun_indexes_them(media):
    config = _three_videos(media)
    write_tfrecords(config)
    for shard in _shards(media) + _shards(media, "train"):
        _drop_index(shard)
        os.utime(shard, (1, 1))
        assert not has_valid_index(shard)
    assert sorted(y for y, _ in _clips(build_dataset(config.replace(data_format="tfrecord"), "val"))) == [0, 1, 2]
    manifest = write_tfrecords(config)
    assert manifest["val"]["videos"] == 3
    for shard in _shards(media) + _shards(media, "train"):
        assert has_valid_index(shard) and os.path.getmtime(shard) == 1  # indexed, not written again


def test_stale_index_names_the_shard_and_a_rerun_fixes_it(media):
    config = _three_videos(media)
    write_tfrecords(config)
    shard = _shards(media)[1]  # one video: write it twice, as another conversion might have
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
    with tf.io.TFRecordWriter(shard) as writer:
        for data in serialized * 2:
            writer.write(data)
    records = config.replace(data_format="tfrecord")
    with pytest.raises(ValueError, match=rf"{os.path.basename(shard)}.*stale.*--mode=tfrecords"):
        build_dataset(records, "val")
    _drop_index(_shards(media)[0])  # still an error when another shard has no index (not a silent stream)
    with pytest.raises(ValueError, match=rf"{os.path.basename(shard)}.*stale.*--mode=tfrecords"):
        build_dataset(records, "val")
    write_tfrecords(config)
    assert sorted(y for y, _ in _clips(build_dataset(records, "val"))) == [0, 1, 2, 2]


def test_truncated_shard_names_the_file_and_record(media):
    config = _three_videos(media)
    write_tfrecords(config)
    shard = _shards(media)[0]
    blob = open(shard, "rb").read()
    cut = str(media / "cut.tfrecord")
    with open(cut, "wb") as f:
        f.write(blob[:-100])
    with pytest.raises(ShardFormatError, match=r"cut.tfrecord: record 1 is truncated"):
        index_shard(cut)
    with open(cut, "wb") as f:
        f.write(blob[:5])
    with pytest.raises(ShardFormatError, match=r"cut.tfrecord: record 0 is truncated"):
        index_shard(cut)
    assert not os.path.exists(index_path(cut))


def test_shards_of_another_tool_are_indexed_from_the_file_alone(tmp_path, media):
    folder = tmp_path / "foreign"
    folder.mkdir()
    frames = [open(media / "frames" / "a" / f"img_{i + 1:05d}.jpg", "rb").read() for i in range(24)]
    empty = tf.train.SequenceExample()
    empty.context.feature["label"].int64_list.value.append(2)
    shard = str(folder / "val-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(shard) as writer:
        writer.write(sequence_example(frames, 1, "a"))
        writer.write(empty.SerializeToString())  # no frames, no path: a bad sample
        writer.write(sequence_example(frames[:12], 0, "half"))
    index = index_shard(shard)
    assert index["videos"] == [[0, 24, 1], [24, 0, 2], [24, 12, 0]] and index["paths"] == ["a", "", "half"]
    config = Config(data_format="tfrecord", tfrecord_dir=str(folder), num_segments=4, image_size=32, scale_size=40,
                    batch_size=1, num_classes=3)
    before = BAD_SAMPLES.total
    assert sorted(y for y, _ in _clips(build_dataset(config, "val"))) == [0, 1]
    assert BAD_SAMPLES.total == before + 1
    with pytest.raises(tf.errors.OpError, match="val-00000-of-00001.tfrecord.*no frames"):
        _clips(build_dataset(config.replace(on_bad_sample="fail"), "val"))


def test_a_corrupt_jpeg_body_is_counted_on_both_tfrecord_paths(media):
    config = _three_videos(media)
    frame = media / "frames" / "b" / "img_00004.jpg"  # frame 3: a segment centre of 24 frames
    frame.write_bytes(b"\xff\xd8" + bytes(range(7, 250)) * 8 + b"\xff\xd9")
    write_tfrecords(config)
    records = config.replace(data_format="tfrecord")
    before = BAD_SAMPLES.total
    assert sorted(y for y, _ in _clips(build_dataset(records, "val"))) == [0, 1]
    assert BAD_SAMPLES.total == before + 1
    for shard in _shards(media):
        _drop_index(shard)
    assert sorted(y for y, _ in _clips(build_dataset(records, "val"))) == [0, 1]
    assert BAD_SAMPLES.total == before + 2
