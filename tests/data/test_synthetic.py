"""The embedded dataset: real MJPG videos + frame folders + lists, deterministic, classes time-reversed."""

import filecmp
import os

import cv2
import numpy as np
import pytest

from tsm_keras.data import lists
from tsm_keras.data.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset, generate_video
from tsm_keras.errors import ExistingOutputError

TINY = dict(train_per_class=2, val_per_class=1, num_frames=10, frame_size=40)


def _decode(path):
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fourcc = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    capture.release()
    return np.stack(frames), fourcc


def test_layout_lists_and_real_mjpg_videos(tmp_path):
    paths = ensure_synthetic_dataset(str(tmp_path / "ds"), seed=3, **TINY)
    assert paths["classes"] == SYNTHETIC_CLASSES and len(SYNTHETIC_CLASSES) % 2 == 0
    videos = lists.read_list(paths["train_list"], "videos", paths["root"], num_classes=len(SYNTHETIC_CLASSES))
    frames = lists.read_list(paths["val_frames_list"], "frames", paths["root"])
    assert len(videos) == 2 * len(SYNTHETIC_CLASSES) and len(frames) == len(SYNTHETIC_CLASSES)
    assert sorted({r.label for r in videos}) == list(range(len(SYNTHETIC_CLASSES)))
    # Written by parallel threads, listed in class, then index order.
    assert [os.path.basename(r.path) for r in videos] == [f"{name}_train_{i:03d}.avi" for name in SYNTHETIC_CLASSES
                                                          for i in range(2)]
    decoded, fourcc = _decode(videos[0].path)
    assert fourcc == "MJPG" and decoded.shape == (10, 40, 40, 3)
    assert all(r.num_frames == 10 and len(os.listdir(r.path)) == 10 for r in frames)
    assert lists.read_label_map(paths["label_map"]) == SYNTHETIC_CLASSES


def test_same_seed_same_dataset_other_seed_other_dataset(tmp_path):
    a = ensure_synthetic_dataset(str(tmp_path / "a"), seed=1, **TINY)
    b = ensure_synthetic_dataset(str(tmp_path / "b"), seed=1, **TINY)
    c = ensure_synthetic_dataset(str(tmp_path / "c"), seed=2, **TINY)
    for key in ("train_list", "val_list", "train_frames_list"):
        assert filecmp.cmp(a[key], b[key], shallow=False)
    for record in lists.read_list(a["train_list"], "videos", a["root"]):
        relative = os.path.relpath(record.path, a["root"])
        np.testing.assert_array_equal(_decode(record.path)[0], _decode(os.path.join(b["root"], relative))[0])
        assert not np.array_equal(_decode(record.path)[0], _decode(os.path.join(c["root"], relative))[0])


def test_existing_dataset_is_reused_and_other_sizes_regenerate(tmp_path):
    root = str(tmp_path / "ds")
    ensure_synthetic_dataset(root, seed=0, **TINY)
    marker = os.path.join(root, "videos", "train", SYNTHETIC_CLASSES[0])
    mtime = os.path.getmtime(marker)
    ensure_synthetic_dataset(root, seed=0, **TINY)
    ensure_synthetic_dataset(root, reuse_existing=True)
    assert os.path.getmtime(marker) == mtime
    paths = ensure_synthetic_dataset(root, seed=0, **dict(TINY, num_frames=6))
    assert lists.read_list(paths["train_frames_list"], "frames")[0].num_frames == 6


def _object_track(frames):
    """Per frame: (x, y) centroid and area of what differs from the video's temporal median, and brightness."""
    frames = frames.astype(np.float32)
    moving = np.abs(frames - np.median(frames, axis=0)).sum(-1) > 60
    ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]]
    area = moving.sum((1, 2))
    x = (moving * xs).sum((1, 2)) / np.maximum(area, 1)
    y = (moving * ys).sum((1, 2)) / np.maximum(area, 1)
    return x, y, area, frames.mean((1, 2, 3))


def _trend(values):
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def test_class_names_match_the_motion_and_pairs_are_reverses():
    names = {name: label for label, name in enumerate(SYNTHETIC_CLASSES)}
    checks = [("moving_right", "moving_left", 0), ("moving_down", "moving_up", 1), ("growing", "shrinking", 2),
              ("light_turning_on", "light_turning_off", 3)]
    for forward, backward, feature in checks:
        for index in range(4):
            a = _object_track(generate_video(names[forward], 0, "train", index, 12, 48))[feature]
            b = _object_track(generate_video(names[backward], 0, "train", index, 12, 48))[feature]
            # x grows for right, y for down (image rows), the area for growing, brightness for on.
            assert _trend(a) > 0 > _trend(b), (forward, index, a, b)
    # The second class of a pair is the first played backwards: the same frames in reverse order.
    rng_key = np.random.default_rng([0, 0, 1, 0])
    from tsm_keras.data.synthetic import _forward_video
    np.testing.assert_array_equal(generate_video(1, 0, "train", 0, 12, 48), _forward_video(0, rng_key, 12, 48)[::-1])


def test_a_folder_with_another_tools_manifest_is_never_deleted(tmp_path):
    """--data_root pointed at the user's data by mistake (a TFRecord conversion also writes a manifest.json): the
    synthetic dataset refuses it and leaves every file as it was, as it does a manifest that does not parse."""
    root = tmp_path / "tfrecords"
    root.mkdir()
    (root / "train-00000-of-00001.tfrecord").write_bytes(b"the user's shard")
    for manifest, message in [('{"num_shards": 1, "shards": ["train-00000-of-00001.tfrecord"]}',
                               "is not the manifest of a synthetic dataset"),
                              ('{"version": 1,\n "seed": 0,,', r"manifest.json:2: not valid JSON"),
                              ("[1, 2]", "is not the manifest of a synthetic dataset")]:
        (root / "manifest.json").write_text(manifest)
        with pytest.raises(ExistingOutputError, match=message + ".*delete it; otherwise pass an empty or new"):
            ensure_synthetic_dataset(str(root), seed=0, **TINY)
        assert sorted(os.listdir(root)) == ["manifest.json", "train-00000-of-00001.tfrecord"]
        assert (root / "manifest.json").read_text() == manifest
