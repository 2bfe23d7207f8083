"""TFRecord conversion: round-trip equality of frames and labels, resume, manifest, bad samples."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.config import Config
from tsm_keras.data import build_dataset
from tsm_keras.data.pipeline import TFRECORD_CONTEXT, TFRECORD_SEQUENCE
from tsm_keras.data.tfrecords import convert


def _read_all(folder, split):
    files = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*.tfrecord")))
    examples = []
    for serialized in tf.data.TFRecordDataset(files):
        context, sequence = tf.io.parse_single_sequence_example(serialized, TFRECORD_CONTEXT, TFRECORD_SEQUENCE)
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
    manifest = convert(_config(media))
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
    convert(config)
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
    manifest = convert(_config(media, data_format="videos", train_list=str(media / "videos.txt"),
                                           short_side=24, tfrecord_videos_per_shard=2))
    assert manifest["train"]["skipped"] == 1 and manifest["train"]["videos"] == 2
    examples = _read_all(str(media / "records"), "train")
    assert [(label, n) for _, label, n, _ in examples] == [(0, 24), (2, 24)]
    first = cv2.imdecode(np.frombuffer(examples[0][3][0], np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (24, 32, 3)  # 48 x 64 with the short side to 24


def test_rerun_skips_finished_shards_and_detects_missing_ones(media):
    (media / "frames.txt").write_text("frames/a 24 1\nframes/b 24 2\n")
    config = _config(media)
    convert(config)
    shard = os.path.join(media / "records", "train-00000-of-00002.tfrecord")
    os.utime(shard, (1, 1))
    convert(config)
    assert os.path.getmtime(shard) == 1
    with open(media / "records" / "manifest.json") as f:
        assert json.load(f)["train"]["shards"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="1 of 2 train shards"):
        build_dataset(config.replace(data_format="tfrecord"), "train")
    convert(config)
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
