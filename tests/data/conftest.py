"""Tiny real media for the data tests: videos written by cv2.VideoWriter and JPEG frame folders.

Frame i of every test video is flat grey: the right half `frame_value(i % 32)`, the bottom-left
quarter `frame_value(i // 32)`, with a blue top-left corner, so a decoded frame tells which frame it
was even after lossy coding.
"""

import os

import cv2
import numpy as np
import pytest

HEIGHT, WIDTH = 48, 64


def frame_value(index):
    return 8 * index + 4


def _level(region):
    return int(round((float(region.mean()) - 4) / 8))


def frame_index(frame):
    """The index a decoded RGB frame encodes (read away from the edges between the grey parts)."""
    h, w = frame.shape[:2]
    low = _level(frame[h // 2 + 4:, w // 2 + 4:])
    high = _level(frame[h // 2 + 4:, 4:w // 2 - 4])
    return 32 * high + low


def make_frame(index, height=HEIGHT, width=WIDTH):
    """BGR frame encoding `index` (see the module docstring); pure blue (BGR 255,0,0) top-left corner."""
    frame = np.full((height, width, 3), frame_value(index % 32), np.uint8)
    frame[height // 2:, : width // 2] = frame_value(index // 32)
    frame[:8, :8] = (255, 0, 0)
    return frame


def write_video(path, num_frames, fourcc="MJPG", fps=10, height=HEIGHT, width=WIDTH):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {fourcc} to {path}"
    for i in range(num_frames):
        writer.write(make_frame(i, height, width))
    writer.release()
    return path


def write_frames(folder, num_frames, height=HEIGHT, width=WIDTH):
    os.makedirs(folder, exist_ok=True)
    for i in range(num_frames):
        cv2.imwrite(os.path.join(folder, f"img_{i + 1:05d}.jpg"), make_frame(i, height, width),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


@pytest.fixture
def media(tmp_path):
    """A data root with two 24-frame videos (avi MJPG, mp4 mp4v) and their frame folders."""
    root = tmp_path / "root"
    write_video(str(root / "videos" / "a.avi"), 24, "MJPG")
    write_video(str(root / "videos" / "b.mp4"), 24, "mp4v")
    write_frames(str(root / "frames" / "a"), 24)
    write_frames(str(root / "frames" / "b"), 24)
    return root
