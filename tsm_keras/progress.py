"""Progress of the long modes (eval, prepare, tfrecords, predict): one line, redrawn on a TTY, else printed
every `PROGRESS_SECONDS` (15 s, as training's line; `TSM_PROGRESS_SECONDS` overrides it) and at the end.

    videos 1200/19796 [====>...................]  3.1 videos/s  ETA 1:40:02  top1 0.7120

`note(message)` prints a line at once (a bad video as it happens), without breaking the redrawn line.
This module imports nothing heavy.
"""

import math
import os
import sys
import time

PROGRESS_SECONDS = 15.0


def clock(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _interval():
    try:
        return float(os.environ.get("TSM_PROGRESS_SECONDS", PROGRESS_SECONDS))
    except ValueError:
        return PROGRESS_SECONDS


class ProgressLine:
    """`ProgressLine(what, total, unit)`; `update(done, **fields)`; `note(text)`; `close()`.

    `fields` are shown after the ETA (`top1=0.71` -> `top1 0.7100`). `stream` defaults to stderr, so
    progress never mixes with a mode's results on stdout.
    """

    def __init__(self, what, total, unit="videos", stream=None, every=None):
        self.what, self.total, self.unit = what, int(total), unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = _interval() if every is None else float(every)
        self.began = time.time()
        self.last = None
        self.line = ""
        self.done = 0

    def update(self, done, **fields):
        self.done = int(done)
        now = time.time()
        elapsed = max(now - self.began, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * min(self.done, self.total) / max(self.total, 1))
        bar = ("=" * max(filled - 1, 0) + (">" if filled < width else "=") + "." * (width - filled))[:width]
        extra = "".join(f"  {key} {value:.4f}" if isinstance(value, float) else f"  {key} {value}"
                        for key, value in fields.items())
        self.line = (f"{self.what} {self.done}/{self.total} [{bar}] {rate:.1f} {self.unit}/s  ETA {clock(eta)}"
                     f"{extra}")
        finished = self.done >= self.total
        if self.tty:
            if self.last is None or now - self.last > 0.2 or finished:
                self.stream.write("\r\033[K" + self.line)
                self.stream.flush()
                self.last = now
        elif self.last is None or now - self.last >= self.every or finished:
            print(self.line, file=self.stream, flush=True)
            self.last = now

    def note(self, text):
        if self.tty and self.line:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)
        if self.tty and self.line:
            self.stream.write(self.line)
            self.stream.flush()

    def close(self):
        if self.tty and self.line:
            self.stream.write("\r\033[K" + self.line + "\n")
            self.stream.flush()
        self.line = ""
