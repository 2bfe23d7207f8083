"""Video files: OpenCV decodes only the sampled frames."""

import numpy as np

from tsm_keras.data import decode
from tsm_keras.data.bad_samples import as_bad_sample, skip_or_raise


def video_reader(plan, size, policy):
    """Python side of the videos format: OpenCV decodes only the sampled frames."""

    def read(path, rand):
        path = path.decode("utf-8")
        rng_seed = int(rand)
        try:
            frames, _ = decode.decode_video(
                path, lambda n: plan(n, rng_seed))
            return frames, np.bool_(True)
        except Exception as error:  # e.g. frames changing size mid-stream, an OpenCV error
            skip_or_raise(as_bad_sample(error, path), policy)
            return np.zeros([size, 8, 8, 3], np.uint8), np.bool_(False)

    return read
