"""Reading the frames a clip needs: JPEG files of a frame folder, or frames decoded from a video by OpenCV.

Video decoding plans the clip from the container's frame count but never trusts it: frames are read in
order up to the last one needed (`grab()` skips a frame without colour conversion, `retrieve()` keeps
it); when the stream ends early the clip is planned again from the frames that really decoded.
"""

import logging
import os
import time

import cv2
import numpy as np

from tsm_keras.data.bad_samples import BAD_SAMPLES, BadSampleCounter, BadSampleError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def frame_path(frame_dir, template, index):
    """Path of 0-based frame `index`; frame files are numbered from 1 (`img_00001.jpg`)."""
    return os.path.join(frame_dir, template.format(int(index) + 1))


def _read_file(path):
    """The whole file: os.open/fstat/read, cheaper per small file than a buffered open()."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        chunks, remaining = [], size
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def read_jpeg_files(paths):
    """Bytes of each JPEG file; a missing, empty or truncated (no end marker) file raises BadSampleError."""
    contents = []
    for path in paths:
        try:
            data = _read_file(path)
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


# Seek (keyframe + decode forward) rather than grab when the next kept frame is this far ahead.
SEEK_MIN_GAP = 24


def _read_indices(path, indices, limit, capture=None, allow_seek=True):
    """Decode frames `indices` (sorted unique) reading at most `limit` frames.

    Frames between kept ones are skipped with `grab()` (no colour conversion); across a gap of
    SEEK_MIN_GAP frames or more OpenCV seeks instead (keyframe, then decode forward), as long as
    seeking proves cheaper than grabbing for this video (a long keyframe interval makes it dearer:
    the first seek is timed against the grabs and seeking stops if it lost).
    Returns ({index: RGB frame}, position, seeked): when frames are missing and nothing was
    seeked, `position` is the true number of frames (the stream ended early there).
    """
    capture = capture or _open(path)
    kept = {}
    position = 0
    grab_seconds, grabs, seek, seeked = 0.0, 0, allow_seek, False
    try:
        for index in (int(i) for i in indices):
            if index >= limit:
                break
            gap = index - position
            if seek and gap >= SEEK_MIN_GAP:
                start = time.perf_counter()
                if (not capture.set(cv2.CAP_PROP_POS_FRAMES, index)
                        or int(capture.get(cv2.CAP_PROP_POS_FRAMES)) != index):
                    break
                position, seeked = index, True
                if not capture.grab():
                    break
                seek_seconds = time.perf_counter() - start
                if grabs and seek_seconds > gap * grab_seconds / grabs:
                    seek = False
            else:
                start = time.perf_counter()
                while position < index:
                    if not capture.grab():
                        return kept, position, seeked
                    position += 1
                if not capture.grab():
                    break
                grab_seconds += time.perf_counter() - start
                grabs += gap + 1
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                break
            kept[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position = index + 1
    finally:
        capture.release()
    return kept, position, seeked


def decode_video(path, plan):
    """Decode the frames a clip needs: `plan(num_frames) -> int indices (any shape)`.

    Returns (frames uint8 [*indices.shape, H, W, 3] RGB, num_frames actually usable).
    Raises BadSampleError for a file that cannot be opened or yields no frame.
    """
    capture = _open(path)
    reported = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if reported <= 0:
        capture.release()
        capture = None
    num_frames = reported if reported > 0 else count_video_frames(path)
    for _ in range(4):
        if num_frames <= 0:
            raise BadSampleError(path, "no frame decodes (empty or corrupt video)")
        indices = np.asarray(plan(num_frames), dtype=np.int64)
        unique = np.unique(indices)
        kept, decoded, seeked = _read_indices(path, unique, limit=num_frames, capture=capture)
        capture = None
        if seeked and not all(int(i) in kept for i in unique):
            # Seeking past the real end proves nothing about the true count: read in order to find it.
            kept, decoded, _ = _read_indices(path, unique, limit=num_frames, allow_seek=False)
        if all(int(i) in kept for i in unique):
            return np.stack([kept[int(i)] for i in indices.reshape(-1)]).reshape(
                indices.shape + kept[int(unique[0])].shape), num_frames
        # The container's count lied (truncated file): plan again from the frames that decoded.
        if decoded == 0 or (int(unique.max()) < decoded):
            raise BadSampleError(path, "no frame decodes (empty or corrupt video)")
        num_frames = min(decoded, num_frames - 1)
    raise BadSampleError(path, "frame count keeps changing while decoding")


def iter_frames(path, short_side=0):
    """Every frame of a video in order, BGR uint8 `[H, W, 3]` as OpenCV decodes it (short side resized
    to `short_side` unless 0). The capture is released when the loop ends or is left."""
    capture = _open(path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield resize_short_side_np(frame, short_side)
    finally:
        capture.release()


def iter_rgb_frames(path, frame_template="img_{:05d}.jpg"):
    """Every frame of a video file or frame folder in order, RGB uint8 `[H, W, 3]`, decoded one at a time
    (for streaming). Raises BadSampleError naming the file when it cannot be opened or yields no frame."""
    if os.path.isdir(path):
        count = count_frame_files(path, frame_template)
        if count <= 0:
            raise BadSampleError(path, f"no frame files {frame_template.format(1)}, ... in the folder")
        for index in range(count):
            name = frame_path(path, frame_template, index)
            image = cv2.imread(name, cv2.IMREAD_COLOR)
            if image is None:
                raise BadSampleError(name, "cannot decode the frame (not an image, or corrupt)")
            yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        return
    decoded = 0
    for frame in iter_frames(path):
        decoded += 1
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if decoded == 0:
        raise BadSampleError(path, "no frame decodes (empty or corrupt video)")


def read_video_all(path, short_side=0):
    """Every frame of a video as RGB uint8 [N, H, W, 3] (optionally short side resized); for preparation."""
    frames = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in iter_frames(path, short_side)]
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
