"""Frame folders (`img_00001.jpg` ...): sample the indices, read the JPEG bytes (decoding stays in TF)."""

import numpy as np

from tsm_keras.data import decode
from tsm_keras.data.bad_samples import BadSampleError, as_bad_sample, placeholder_jpeg, skip_or_raise


def frames_reader(template, plan, size, policy):
    """Python side of the frames format: sample indices, read the JPEG bytes (decoding stays in TF)."""

    def read(frame_dir, num_frames, rand):
        frame_dir = frame_dir.decode("utf-8")
        try:
            num_frames = int(num_frames)
            if num_frames <= 0:
                num_frames = decode.count_frame_files(frame_dir, template)
                if num_frames <= 0:
                    raise BadSampleError(frame_dir, "frame folder missing or empty")
            indices = plan(num_frames, rand)
            paths = [decode.frame_path(frame_dir, template, i) for i in indices]
            try:
                data = decode.read_jpeg_files(paths)
            except BadSampleError:
                # The list's frame count may be wrong: plan again from the frames really present.
                true_count = decode.count_frame_files(frame_dir, template)
                if true_count <= 0 or true_count >= num_frames:
                    raise
                indices = plan(true_count, rand)
                data = decode.read_jpeg_files([decode.frame_path(frame_dir, template, i) for i in indices])
            return np.array(data, dtype=object), np.bool_(True)
        except Exception as error:  # any failure on one sample is that sample's, never the epoch's
            skip_or_raise(as_bad_sample(error, frame_dir), policy)
            return np.array([placeholder_jpeg()] * size, dtype=object), np.bool_(False)

    return read
