"""Reading the frames a clip needs: JPEG files of a frame folder, or frames decoded from a video by OpenCV.

Video decoding plans the clip from the container's frame count but never trusts it: frames are read in
order up to the last one needed (`grab()` skips a frame without colour conversion, `retrieve()` keeps
it); when the stream ends early the clip is planned again from the frames that really decoded.
"""

import logging
import os
import threading

import cv2
import numpy as np

log = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A video or frame that cannot be read: `path` and `reason` say which and why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BadSampleCounter:
    """Counts samples skipped under `--on_bad_sample=skip`; logs each bad path once. Thread-safe.

    The pipeline records into the module-level `BAD_SAMPLES`; the training loop reads
    `BAD_SAMPLES.take()` at the end of an epoch (count since the last take) or `.total`.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.total = 0
        self._since_take = 0
        self.paths = set()

    def record(self, error):
        with self._lock:
            self.total += 1
            self._since_take += 1
            first = error.path not in self.paths
            self.paths.add(error.path)
        if first:
            log.warning("skipping bad sample %s", error)

    def take(self):
        """Samples skipped since the previous `take()` (and reset that count)."""
        with self._lock:
            count, self._since_take = self._since_take, 0
            return count

    def reset(self):
        with self._lock:
            self.total = 0
            self._since_take = 0
            self.paths = set()


BAD_SAMPLES = BadSampleCounter()


def frame_path(frame_dir, template, index):
    """Path of 0-based frame `index`; frame files are numbered from 1 (`img_00001.jpg`)."""
    return os.path.join(frame_dir, template.format(int(index) + 1))


def read_jpeg_files(paths):
    """Bytes of each JPEG file; a missing, empty or truncated (no end marker) file raises BadSampleError."""
    contents = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as error:
            raise BadSampleError(path, f"cannot read frame ({error.strerror})") from None
        # A JPEG starts with SOI (FFD8) and ends with EOI (FFD9); cut files lose the end marker.
        if len(data) < 4 or data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-16:]:
            raise BadSampleError(path, "not a complete JPEG file")
        contents.append(data)
    return contents


def count_frame_files(frame_dir, template):
    """Number of consecutive frame files 1, 2, ... in `frame_dir` (the true count of a frame folder)."""
    if not os.path.isdir(frame_dir):
        return 0
    names = set(os.listdir(frame_dir))
    count = 0
    while template.format(count + 1) in names:
        count += 1
    return count


def _open(path):
    if not os.path.isfile(path):
        raise BadSampleError(path, "video file not found")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise BadSampleError(path, "OpenCV cannot open the video")
    return capture


def count_video_frames(path):
    """Frames that really decode (slow: reads the whole stream)."""
    capture = _open(path)
    count = 0
    try:
        while capture.grab():
            count += 1
    finally:
        capture.release()
    return count


def _read_indices(path, indices, limit):
    """Decode frames `indices` (sorted unique) reading at most `limit` frames.

    Returns ({index: RGB frame}, decoded) where `decoded` < limit means the stream ended early there.
    """
    capture = _open(path)
    wanted = set(int(i) for i in indices)
    last = max(wanted)
    kept = {}
    position = 0
    try:
        while position <= last and position < limit:
            if not capture.grab():
                break
            if position in wanted:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    break
                kept[position] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position += 1
    finally:
        capture.release()
    return kept, position


def decode_video(path, plan):
    """Decode the frames a clip needs: `plan(num_frames) -> int indices (any shape)`.

    Returns (frames uint8 [*indices.shape, H, W, 3] RGB, num_frames actually usable).
    Raises BadSampleError for a file that cannot be opened or yields no frame.
    """
    capture = _open(path)
    reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    num_frames = reported if reported > 0 else count_video_frames(path)
    for _ in range(4):
        if num_frames <= 0:
            raise BadSampleError(path, "no frame decodes (empty or corrupt video)")
        indices = np.asarray(plan(num_frames), dtype=np.int64)
        unique = np.unique(indices)
        kept, decoded = _read_indices(path, unique, limit=num_frames)
        if all(int(i) in kept for i in unique):
            return np.stack([kept[int(i)] for i in indices.reshape(-1)]).reshape(
                indices.shape + kept[int(unique[0])].shape), num_frames
        # The container's count lied (truncated file): plan again from the frames that decoded.
        if decoded == 0 or (int(unique.max()) < decoded):
            raise BadSampleError(path, "no frame decodes (empty or corrupt video)")
        num_frames = min(decoded, num_frames - 1)
    raise BadSampleError(path, "frame count keeps changing while decoding")


def read_video_all(path, short_side=0):
    """Every frame of a video as RGB uint8 [N, H, W, 3] (optionally short side resized); for preparation."""
    capture = _open(path)
    frames = []
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            frames.append(resize_short_side_np(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), short_side))
    finally:
        capture.release()
    if not frames:
        raise BadSampleError(path, "no frame decodes (empty or corrupt video)")
    return frames


def resize_short_side_np(image, size):
    """numpy/OpenCV twin of augment.resize_short_side for one [H, W, 3] image; size 0 keeps it."""
    if not size:
        return image
    height, width = image.shape[:2]
    if min(height, width) == size:
        return image
    if width <= height:
        new_w, new_h = size, int(height * size / width)
    else:
        new_h, new_w = size, int(width * size / height)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
