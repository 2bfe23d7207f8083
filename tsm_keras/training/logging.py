"""What training reports: the progress line, TensorBoard scalars, `metrics.jsonl`.

The progress line is redrawn on a TTY and printed every 15 s otherwise (logs of batch jobs).
"""

import json
import math
import sys
import time


class Progress:
    """One-line progress: epoch, step, bar, ETA, loss, lr, clips/s (redrawn on a TTY, else every 15 s)."""

    def __init__(self, epoch, epochs, steps, start, batch):
        self.epoch, self.epochs, self.steps, self.start = epoch, epochs, steps, start
        self.tty = sys.stdout.isatty()
        self.began = time.time()
        self.last = 0.0
        self.line = ""

    def update(self, done, loss, lr, clips_per_sec):
        now = time.time()
        rate = (done - self.start) / max(now - self.began, 1e-9)
        eta = (self.steps - done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * done / self.steps)
        bar = "=" * max(filled - 1, 0) + (">" if filled < width else "=") + "." * (width - filled)
        self.line = (f"epoch {self.epoch + 1}/{self.epochs} {done}/{self.steps} [{bar[:width]}] ETA "
                     f"{clock(eta)}  loss {loss:.4f}  lr {lr:.3g}  {clips_per_sec:.1f} clips/s")
        if self.tty and now - self.last > 0.2:
            sys.stdout.write("\r" + self.line)
            sys.stdout.flush()
            self.last = now
        elif not self.tty and (now - self.last > 15 or done == self.steps):
            print(self.line, flush=True)
            self.last = now

    def close(self):
        if self.tty and self.line:
            sys.stdout.write("\r" + self.line + "\n")
            sys.stdout.flush()


def write_scalar(name, value):
    """A TensorBoard scalar via core `tf.summary.write` (the `tensorboard` package is not a dependency)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata.SerializeToString())


def clock(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def append_metrics(path, record):
    """One JSON line per epoch in the run's `metrics.jsonl`."""
    from tsm_keras import disk

    disk.append_line(path, json.dumps(record) + "\n", what="metrics line")


def format_record(record):
    """`epoch=3  step=144  lr=0.0100  ...`: floats to 4 decimals; a value not measured (None in metrics.jsonl,
    e.g. the throughput of a one-step epoch, whose only step builds the graph) is `n/a`."""
    def text(value):
        if value is None:
            return "n/a"
        return f"{value:.4f}" if isinstance(value, float) else f"{value}"

    return "  ".join(f"{k}={text(v)}" for k, v in record.items())
