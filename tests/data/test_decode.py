"""Decoding real files written by cv2.VideoWriter / cv2.imwrite: right frames, RGB order, bad files."""

import os

import numpy as np
import pytest

from conftest import frame_index, write_frames, write_video
from tsm_keras.data import decode


@pytest.mark.parametrize("name", ["a.avi", "b.mp4"])
def test_decodes_exactly_the_planned_frames_in_rgb(media, name):
    wanted = np.array([[3, 0, 3], [23, 7, 11]])
    frames, count = decode.decode_video(str(media / "videos" / name), lambda n: wanted)
    assert count == 24
    assert frames.shape == (2, 3, 48, 64, 3) and frames.dtype == np.uint8
    assert [[frame_index(f) for f in row] for row in frames] == wanted.tolist()
    # The corner was written as BGR (255, 0, 0): blue, so RGB (0, 0, 255).
    np.testing.assert_allclose(frames[0, 0, 2, 2], [0, 0, 255], atol=8)


@pytest.mark.parametrize("name, fourcc", [("long.mp4", "mp4v"), ("long.avi", "MJPG")])
def test_seeking_across_long_gaps_gives_the_same_frames(tmp_path, name, fourcc):
    path = write_video(str(tmp_path / name), 120, fourcc)
    wanted = np.array([2, 30, 31, 64, 100, 119])  # gaps of 24+ frames are seeked
    frames, _ = decode.decode_video(path, lambda n: wanted)
    assert [frame_index(f) for f in frames] == wanted.tolist()
    for order in (np.array([119, 0]), np.array([60, 60, 3])):
        frames, _ = decode.decode_video(path, lambda n: order)
        assert [frame_index(f) for f in frames] == order.tolist()


def test_truncated_video_is_resampled_from_the_frames_that_decode(tmp_path):
    path = write_video(str(tmp_path / "full.avi"), 30, "MJPG")
    cut = tmp_path / "cut.avi"
    data = open(path, "rb").read()
    cut.write_bytes(data[: len(data) // 2])  # the header still says 30 frames
    plans = []

    def plan(n):
        plans.append(n)
        return np.array([0, n - 1])

    frames, count = decode.decode_video(str(cut), plan)
    assert plans[0] == 30 and count < 30 and plans[-1] == count
    assert [frame_index(f) for f in frames] == [0, count - 1]


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100])
def test_unreadable_video_raises_bad_sample(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(decode.BadSampleError, match="broken.mp4"):
        decode.decode_video(str(path), lambda n: np.arange(min(n, 8)))


def test_missing_video_raises_bad_sample(tmp_path):
    with pytest.raises(decode.BadSampleError, match="not found"):
        decode.decode_video(str(tmp_path / "nope.mp4"), lambda n: [0])


def test_cut_mp4_without_index_raises_bad_sample(tmp_path):
    path = write_video(str(tmp_path / "v.mp4"), 30, "mp4v")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(decode.BadSampleError):
        decode.decode_video(path, lambda n: [0])


def test_read_jpeg_files_and_bad_frames(tmp_path):
    folder = write_frames(str(tmp_path / "f"), 3)
    assert decode.count_frame_files(folder, "img_{:05d}.jpg") == 3
    data = decode.read_jpeg_files([decode.frame_path(folder, "img_{:05d}.jpg", i) for i in (0, 2)])
    assert data[0] == open(os.path.join(folder, "img_00001.jpg"), "rb").read()
    with pytest.raises(decode.BadSampleError, match="img_00004.jpg"):
        decode.read_jpeg_files([decode.frame_path(folder, "img_{:05d}.jpg", 3)])
    cut = os.path.join(folder, "img_00002.jpg")
    content = open(cut, "rb").read()
    open(cut, "wb").write(content[: len(content) // 2])
    with pytest.raises(decode.BadSampleError, match="not a complete JPEG"):
        decode.read_jpeg_files([cut])


def test_bad_sample_counter_counts_and_logs_each_path_once(caplog):
    counter = decode.BadSampleCounter()
    for path in ("a", "a", "b"):
        counter.record(decode.BadSampleError(path, "broken"))
    assert counter.total == 3 and counter.take() == 3 and counter.take() == 0
    assert sum("skipping bad sample a" in r.message for r in caplog.records) == 1
