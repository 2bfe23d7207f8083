"""Samples that cannot be read: the error naming the file, the counter of skipped ones, the policy.

`--on_bad_sample=skip` drops a bad sample and counts it in `BAD_SAMPLES` (each path logged once);
`fail` stops with the file named. Readers return a placeholder of the right shape for a dropped
sample, filtered out before batching.

Under `skip`, an epoch none of whose samples could be read, or `UNREADABLE_STREAK` bad samples in a row,
stop the pipeline (an in-graph assert with the message `NOTHING_READABLE`, reported as
`NothingReadableError`): a list whose paths all miss (a wrong `--data_root`) would otherwise make a repeated
training dataset drop sample after sample forever without yielding a batch.
Errors raised inside the pipeline reach the caller wrapped in a TensorFlow error; `BAD_SAMPLES.raised`
keeps the originals (parallel reads may raise several), so that the CLI (`pipeline_user_error`) reports
the one that surfaced as one line.
"""

import collections
import functools
import logging
import threading

import numpy as np

from tsm_keras.errors import UserError

log = logging.getLogger(__name__)


class BadSampleError(UserError, ValueError):
    """A video or frame that cannot be read: `path` and `reason` say which and why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# Consecutive unreadable samples that end the run: with 90 % of a list unreadable, the longest run of bad ones
# in 10^6 reads is ~130; a list that points at nothing readable reaches it within a second or so.
UNREADABLE_STREAK = 500


class NothingReadableError(UserError, RuntimeError):
    """No sample of an epoch, or `UNREADABLE_STREAK` in a row, could be read (under `--on_bad_sample=skip`)."""


NOTHING_READABLE = (f"no sample of an epoch, or {UNREADABLE_STREAK} in a row, could be read (the last ones are named "
                    "above): check --data_root and the paths in the list file, or the files themselves "
                    "(--on_bad_sample=fail stops at the first)")


class BadSampleCounter:
    """Counts samples skipped under `--on_bad_sample=skip`; logs each bad path once. Thread-safe.

    The pipeline records into the module-level `BAD_SAMPLES`; the training loop reads
    `BAD_SAMPLES.take()` at the end of an epoch (count since the last take) or `.total`. `quiet`
    (set by `dispatch` when app.py's run fails with a user error) keeps counting without logging.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.total = 0
        self._since_take = 0
        self.paths = set()
        self.raised = collections.deque(maxlen=64)
        self.quiet = False

    def record(self, error):
        with self._lock:
            self.total += 1
            self._since_take += 1
            first = error.path not in self.paths
            self.paths.add(error.path)
        if first and not self.quiet:
            log.warning("skipping bad sample %s", error)

    def remember(self, error):
        """Keep `error`, about to be raised inside the pipeline, for `pipeline_user_error`; return it."""
        self.raised.append(error)
        return error

    def record_unknown(self, count, reason):
        """`count` samples dropped without a path to name (e.g. by tf.data's ignore_errors)."""
        count = int(count)
        if count <= 0:
            return
        with self._lock:
            self.total += count
            self._since_take += count
        if not self.quiet:
            log.warning("skipping %d bad sample%s (%s)", count, "" if count == 1 else "s", reason)

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
            self.raised.clear()
            self.quiet = False


BAD_SAMPLES = BadSampleCounter()


def as_bad_sample(error, path):
    """Any exception raised while reading `path` as a BadSampleError naming it."""
    if isinstance(error, BadSampleError):
        return error
    return BadSampleError(path, f"cannot be read ({type(error).__name__}: {error})")


def skip_or_raise(error, policy):
    """`policy` "fail": raise `error` (saying how to skip instead); "skip": count it."""
    if policy == "fail":
        raise BAD_SAMPLES.remember(BadSampleError(
            error.path, f"{error.reason} (--on_bad_sample=fail; use skip to drop such samples)"))
    BAD_SAMPLES.record(error)


def pipeline_user_error(error):
    """The user error raised inside the input pipeline that `error` (TensorFlow's wrapping of it) carries, or None."""
    message = str(error)
    if NOTHING_READABLE in message:  # the pipeline's in-graph check (it cannot carry a Python exception)
        return NothingReadableError(NOTHING_READABLE)
    for raised in reversed(BAD_SAMPLES.raised):
        if raised is not error and str(raised) in message:
            return raised
    return None


@functools.lru_cache(maxsize=1)
def placeholder_jpeg():
    """JPEG bytes of an 8x8 black image: stands in for the frames of a bad sample until it is filtered
    out (encoded on first use, by OpenCV: no TensorFlow op at import)."""
    import cv2

    ok, data = cv2.imencode(".jpg", np.zeros([8, 8, 3], np.uint8))
    if not ok:
        raise RuntimeError("OpenCV could not encode the placeholder JPEG")
    return data.tobytes()
