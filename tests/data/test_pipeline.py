"""build_dataset end to end on real files: shapes, sampled frames, determinism, sharding, bad samples."""

import re

import numpy as np
import pytest
import tensorflow as tf

from conftest import frame_index, write_frames
from tsm_keras.config import Config
from tsm_keras.data import BAD_SAMPLES, BadSampleError, ListFileError, build_dataset, load_video_clips, sampling
from tsm_keras.data.synthetic import ensure_synthetic_dataset

TINY = dict(train_per_class=2, val_per_class=1, num_frames=12, frame_size=48)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic") / "ds")
    ensure_synthetic_dataset(root, seed=0, **TINY)
    return root


def _config(**changes):
    base = dict(num_segments=4, image_size=32, scale_size=40, batch_size=2, num_classes=3, seed=1)
    base.update(changes)
    return Config(**base)


def _lists(root, videos):
    (root / "videos.txt").write_text("".join(f"{v} {i % 3}\n" for i, v in enumerate(videos)))
    return str(root / "videos.txt")


def _take_all(dataset):
    clips, labels = [], []
    for x, y in dataset:
        clips.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(clips), np.concatenate(labels)


def _centre_indices(num_frames, num_segments):
    return sampling.sample_segment_indices(num_frames, num_segments, training=False).tolist()


@pytest.mark.parametrize("data_format, entries", [("videos", ["videos/a.avi 1", "videos/b.mp4 2"]),
                                                  ("frames", ["frames/a 24 1", "frames/b 24 2"])])
def test_val_clips_hold_the_segment_centres(media, data_format, entries):
    (media / "list.txt").write_text("\n".join(entries) + "\n")
    config = _config(data_format=data_format, data_root=str(media), val_list=str(media / "list.txt"),
                     image_size=48, scale_size=48)
    clips, labels = _take_all(build_dataset(config, "val"))
    assert clips.shape == (2, 4, 48, 48, 3) and clips.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [1, 2]
    expected = _centre_indices(24, 4)  # [3, 9, 15, 21]
    for clip in clips:
        assert [frame_index(np.pad(f, ((0, 0), (8, 8), (0, 0)), mode="edge")) for f in clip] == expected


def test_train_batches_shapes_types_and_frames_from_their_segments(media):
    (media / "list.txt").write_text("videos/a.avi 0\nvideos/b.mp4 1\nvideos/a.avi 2\n")
    config = _config(data_format="videos", data_root=str(media), train_list=str(media / "list.txt"))
    dataset = build_dataset(config, "train")
    assert dataset.element_spec[0].shape.as_list() == [2, 4, 32, 32, 3]
    assert dataset.element_spec[0].dtype == tf.uint8 and dataset.element_spec[1].dtype == tf.int32
    batches = list(dataset)
    assert len(batches) == 1  # 3 videos, batch 2: the train remainder is dropped


def test_same_seed_same_clips_new_epoch_new_clips(synthetic_root):
    config = _config(data_format="synthetic", data_root=synthetic_root, num_classes=8)
    first, labels = _take_all(build_dataset(config, "train"))
    again, labels_again = _take_all(build_dataset(config, "train"))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    other, _ = _take_all(build_dataset(config, "train", seed=2))
    assert not np.array_equal(first, other)
    dataset = build_dataset(config, "train")
    epoch1, _ = _take_all(dataset)
    epoch2, _ = _take_all(dataset)
    assert not np.array_equal(epoch1, epoch2)


def test_repeat_and_shards_partition_the_videos(synthetic_root):
    config = _config(data_format="synthetic", data_root=synthetic_root, num_classes=8)
    seen = []
    for index in range(2):
        _, labels = _take_all(build_dataset(config, "val", batch_size=1, num_shards=2, shard_index=index))
        seen.append(sorted(labels.tolist()))
    assert sorted(seen[0] + seen[1]) == list(range(8)) and len(seen[0]) == 4
    repeated = build_dataset(config, "val", batch_size=3, repeat=True).take(5)
    assert sum(1 for _ in repeated) == 5


def test_multi_view_val_elements(synthetic_root):
    config = _config(data_format="synthetic", data_root=synthetic_root, num_classes=8, test_clips=2, test_crops=3,
                     scale_size=32)
    clips, _ = _take_all(build_dataset(config, "test", batch_size=3))
    assert clips.shape == (8, 6, 4, 32, 32, 3)


def test_load_video_clips_equals_the_test_pipeline(media):
    (media / "list.txt").write_text("videos/b.mp4 0\n")
    config = _config(data_format="videos", data_root=str(media), val_list=str(media / "list.txt"), test_clips=2,
                     test_crops=3)
    clips, _ = _take_all(build_dataset(config, "test"))
    views = load_video_clips(str(media / "videos" / "b.mp4"), 4, num_clips=2, crops=3, scale_size=40, image_size=32)
    assert views.shape == (6, 4, 32, 32, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views, clips[0])
    folder_views = load_video_clips(str(media / "frames" / "b"), 4, num_clips=2, crops=3, scale_size=40,
                                    image_size=32)
    assert folder_views.shape == (6, 4, 32, 32, 3)
    with pytest.raises(BadSampleError, match="nope.mp4"):
        load_video_clips(str(media / "nope.mp4"), 4)
    (media / "empty").mkdir()
    with pytest.raises(BadSampleError, match="no frame files"):
        load_video_clips(str(media / "empty"), 4)


def test_bad_samples_are_skipped_and_counted(media):
    (media / "videos" / "broken.mp4").write_bytes(b"garbage" * 50)
    write_frames(str(media / "frames" / "short"), 3)  # the list below claims 24 frames
    (media / "videos.txt").write_text("videos/a.avi 0\nvideos/missing.avi 1\nvideos/broken.mp4 2\nvideos/b.mp4 1\n")
    (media / "frames.txt").write_text("frames/a 24 0\nframes/gone 24 1\nframes/short 24 2\n")
    BAD_SAMPLES.take()
    config = _config(data_format="videos", data_root=str(media), val_list=str(media / "videos.txt"))
    _, labels = _take_all(build_dataset(config, "val"))
    assert labels.tolist() == [0, 1] and BAD_SAMPLES.take() == 2
    config = _config(data_format="frames", data_root=str(media), val_list=str(media / "frames.txt"))
    _, labels = _take_all(build_dataset(config, "val"))
    # "short" is planned again from the 3 frames really present; "gone" is skipped.
    assert labels.tolist() == [0, 2] and BAD_SAMPLES.take() == 1


def _garbage_body(path):
    """A frame file whose markers pass the Python checks (SOI ... EOI) but whose body TF cannot decode."""
    path.write_bytes(b"\xff\xd8" + bytes(range(7, 250)) * 8 + b"\xff\xd9")


@pytest.mark.parametrize("where", ["middle", "last"])
def test_corrupt_jpeg_bodies_are_skipped_and_counted(media, where, caplog):
    write_frames(str(media / "frames" / "bad"), 24)
    _garbage_body(media / "frames" / "bad" / "img_00004.jpg")  # frame 3: a segment centre of 24 frames
    rows = ["frames/a 24 0", "frames/bad 24 1", "frames/b 24 2"]
    if where == "last":
        rows = [rows[0], rows[2], rows[1]]
    (media / "frames.txt").write_text("\n".join(rows) + "\n")
    config = _config(data_format="frames", data_root=str(media), val_list=str(media / "frames.txt"),
                     train_list=str(media / "frames.txt"))
    before = BAD_SAMPLES.total
    _, labels = _take_all(build_dataset(config, "val"))
    assert labels.tolist() == [0, 2] and BAD_SAMPLES.total == before + 1
    assert "skipping 1 bad sample (an error inside the tf.data pipeline" in caplog.text  # not the Python checks
    # Training: every frame of "bad" is corrupt, so whichever are sampled fail, in whichever order.
    for i in range(24):
        _garbage_body(media / "frames" / "bad" / f"img_{i + 1:05d}.jpg")
    before = BAD_SAMPLES.total
    _, labels = _take_all(build_dataset(config, "train", batch_size=1))
    assert sorted(labels.tolist()) == [0, 2] and BAD_SAMPLES.total == before + 1
    before = BAD_SAMPLES.total
    assert sum(1 for _ in build_dataset(config, "train", batch_size=1, repeat=True).take(6)) == 6
    assert BAD_SAMPLES.total - before >= 2  # one per epoch passed (prefetching may read further)


def test_a_repeated_list_whose_every_jpeg_body_is_corrupt_stops_instead_of_spinning(media):
    """tf.data drops every element of such a list, so nothing would reach the streak check without the
    end-of-epoch sentinel: the repeated dataset dropped sample after sample forever."""
    from tsm_keras.data.bad_samples import NOTHING_READABLE, NothingReadableError, pipeline_user_error

    for name in ("c1", "c2"):
        for i in range(8):
            path = media / "frames" / name / f"img_{i + 1:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            _garbage_body(path)
    (media / "corrupt.txt").write_text("frames/c1 8 0\nframes/c2 8 1\n")
    config = _config(data_format="frames", data_root=str(media), train_list=str(media / "corrupt.txt"))
    before = BAD_SAMPLES.total
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(NOTHING_READABLE[:40])) as raised:
        next(iter(build_dataset(config, "train", batch_size=1, repeat=True)))
    assert isinstance(pipeline_user_error(raised.value), NothingReadableError)
    # A whole epoch unreadable ends it at that epoch's end: 2 drops (and 2 warnings), not 500 in a row.
    assert BAD_SAMPLES.total - before == 2
    # One readable sample per epoch keeps the run going: only the streak check is left, and it never fires.
    write_frames(str(media / "frames" / "ok"), 8)
    (media / "mixed.txt").write_text("frames/c1 8 0\nframes/ok 8 1\nframes/c2 8 0\n")
    mixed = config.replace(train_list=str(media / "mixed.txt"))
    labels = [int(y[0]) for _, y in build_dataset(mixed, "train", batch_size=1, repeat=True).take(300)]
    assert labels == [1] * 300


def test_bad_sample_fail_policy_names_the_file(media):
    (media / "videos.txt").write_text("videos/a.avi 0\nvideos/missing.avi 1\n")
    config = _config(data_format="videos", data_root=str(media), val_list=str(media / "videos.txt"),
                     on_bad_sample="fail")
    with pytest.raises(tf.errors.OpError, match="missing.avi"):
        _take_all(build_dataset(config, "val"))


def test_list_errors_fail_before_any_clip(media):
    (media / "videos.txt").write_text("videos/a.avi 0\nvideos/b.mp4 7\n")
    config = _config(data_format="videos", data_root=str(media), train_list=str(media / "videos.txt"))
    with pytest.raises(ListFileError, match=r"videos.txt:2: label 7 is outside the label map \[0, 3\)"):
        build_dataset(config, "train")
    with pytest.raises(ListFileError, match="--val_list"):
        build_dataset(config, "val")
    with pytest.raises(ValueError, match="split"):
        build_dataset(config, "training")


def test_frames_read_in_groups_keep_order_and_counts_across_group_edges(media, monkeypatch):
    """READ_GROUP elements share one Python call: a missing folder, a corrupt JPEG body and a partial last
    group give the same clips, order and counts as reading one element per call."""
    from tsm_keras.data import pipeline

    write_frames(str(media / "frames" / "bad"), 24)
    _garbage_body(media / "frames" / "bad" / "img_00004.jpg")  # frame 3: a segment centre of 24 frames
    rows = [f"frames/{'ab'[i % 2]} 24 {i % 3}" for i in range(11)]
    rows[2], rows[9] = "frames/gone 24 1", "frames/bad 24 2"  # in the first group and in the last, partial one
    (media / "frames.txt").write_text("\n".join(rows) + "\n")
    config = _config(data_format="frames", data_root=str(media), val_list=str(media / "frames.txt"))
    results = []
    for group in (1, 3, 8):
        monkeypatch.setattr(pipeline, "READ_GROUP", group)
        before = BAD_SAMPLES.total
        clips, labels = _take_all(build_dataset(config, "val"))
        results.append((clips, labels.tolist(), BAD_SAMPLES.total - before))
    expected_labels = [int(r.split()[2]) for i, r in enumerate(rows) if i not in (2, 9)]
    for clips, labels, dropped in results:
        assert labels == expected_labels and dropped == 2
        np.testing.assert_array_equal(clips, results[0][0])


def test_dense_sampling_through_build_dataset_gives_the_hand_computed_frames(media):
    """`--sampling=dense` (T=4: 64 // 4 = 16 frames apart in a 64-frame window) on a 100-frame video:
    3 test clips start at linspace(0, 100 - 64, 3) = 0, 18, 36; training windows start in [0, 36)."""
    write_frames(str(media / "frames" / "long"), 100)
    (media / "long.txt").write_text("frames/long 100 1\n")
    config = _config(data_format="frames", data_root=str(media), val_list=str(media / "long.txt"),
                     train_list=str(media / "long.txt"), sampling="dense", test_clips=3, image_size=48,
                     scale_size=48, batch_size=1)
    clips, _ = _take_all(build_dataset(config, "val"))
    assert clips.shape == (1, 3, 4, 48, 48, 3)
    got = [[frame_index(np.pad(f, ((0, 0), (8, 8), (0, 0)), mode="edge")) for f in clip] for clip in clips[0]]
    assert got == [[0, 16, 32, 48], [18, 34, 50, 66], [36, 52, 68, 84]]
    # Another interval: 5 frames apart, one clip from the first window.
    clips, _ = _take_all(build_dataset(config.replace(dense_interval=5, test_clips=1), "val"))
    assert [frame_index(np.pad(f, ((0, 0), (8, 8), (0, 0)), mode="edge")) for f in clips[0]] == [0, 5, 10, 15]
    # Training: uniform grey frames (value 8 * i + 4 for frame i < 32) read the same through any crop.
    import cv2

    folder = media / "frames" / "grey"
    folder.mkdir()
    for i in range(30):
        cv2.imwrite(str(folder / f"img_{i + 1:05d}.jpg"), np.full((40, 48, 3), 8 * i + 4, np.uint8))
    (media / "grey.txt").write_text("frames/grey 30 0\n")
    starts = set()
    for seed in range(8):
        train = config.replace(train_list=str(media / "grey.txt"), dense_interval=3, image_size=32, seed=seed)
        clip = next(iter(build_dataset(train, "train", batch_size=0)))[0].numpy()
        indices = [int(round((float(np.median(frame)) - 4) / 8)) for frame in clip]
        # 4 frames 3 apart from a window of 12: starts in [0, 30 - 12) (the references' randint(0, 18)).
        assert [b - a for a, b in zip(indices, indices[1:])] == [3, 3, 3] and 0 <= indices[0] < 18, indices
        starts.add(indices[0])
    assert len(starts) > 1


def test_unknown_sampling_is_refused(media):
    with pytest.raises(ValueError, match="sampling must be one of"):
        build_dataset(_config(data_format="frames", data_root=str(media), val_list="x.txt", sampling="tsn"), "val")
    # Refused when the dataset is built, not sample by sample inside the readers (every video skipped).
    with pytest.raises(ValueError, match="--dense_interval must be >= 0"):
        build_dataset(_config(data_format="frames", data_root=str(media), val_list="x.txt", sampling="dense",
                              dense_interval=-2), "val")


@pytest.mark.parametrize("data_format", ["frames", "videos"])
def test_train_scale_size_and_multi_scale_crop_size_reach_the_training_clips(media, data_format):
    rows = "frames/a 24 0\nframes/b 24 1\n" if data_format == "frames" else "videos/a.avi 0\nvideos/b.mp4 1\n"
    (media / "train.txt").write_text(rows)
    config = _config(data_format=data_format, data_root=str(media), train_list=str(media / "train.txt"),
                     image_size=24, train_scale_size=32, multi_scale_crop_size=28)
    clips, labels = _take_all(build_dataset(config, "train", shuffle=False))
    # Wiring only (tests/data/test_train_clips.py checks the geometry against OpenCV): the config's sizes
    # reach both training readers.
    assert clips.shape == (2, 4, 24, 24, 3) and clips.dtype == np.uint8 and labels.tolist() == [0, 1]
