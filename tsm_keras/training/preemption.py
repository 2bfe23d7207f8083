"""SIGTERM/SIGINT during training: finish the current step, checkpoint, exit with `PREEMPTED_STATUS`.

Clusters preempt jobs with SIGTERM (and people press Ctrl-C). `StopRequest` replaces the two handlers
for the length of a training run: a signal only sets a flag, which the loop reads after each step.
Under `multi_worker` the flag is all-reduced (summed) after every step, so every worker stops after the
same step even when only one was signalled (the idea of TF's `PreemptionCheckpointHandler`, one
scalar collective per step). A signal while the checkpoint is being written is reported and
ignored: the save (a temporary folder renamed into place) completes. Once training has stopped on a
signal, repeats of it stay ignored until the process exits (a preempted job's scheduler often signals
twice; the second must not turn exit status 75 into death by SIGTERM); a caller that catches
`TrainingPreempted` and carries on calls its `restore_signal_handlers()`. Python puts its own handlers
back to the default action when the interpreter shuts down (after the `atexit` callbacks), so a repeat
arriving while TensorFlow tears down would still kill the process: an `atexit` callback turns the
ignoring handlers into `SIG_IGN`, which the shutdown keeps.
"""

import atexit
import signal
import sys
import threading

# EX_TEMPFAIL (sysexits.h): "temporary failure; the user is invited to retry" -- rerun to resume.
PREEMPTED_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingPreempted(Exception):
    """Training stopped on a signal after writing a checkpoint; `str()` says where and how to resume."""

    status = PREEMPTED_STATUS
    _previous_handlers = {}

    def restore_signal_handlers(self):
        """Put back the SIGTERM/SIGINT handlers training replaced (repeats are ignored until then)."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}


class StopRequest:
    """Context manager: installs the handlers (main thread only) and restores the previous ones."""

    def __init__(self, strategy=None):
        self.signal_name = None
        self.saving = False
        self._previous = {}
        self._agree = _agreement(strategy)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type, exc, traceback):
        if isinstance(exc, TrainingPreempted) and self._previous:
            # Stopped on a signal: keep ignoring repeats until the process exits with status 75.
            exc._previous_handlers = dict(self._previous)
            for signum in self._previous:
                signal.signal(signum, _ignore_repeat)
            atexit.unregister(_ignore_repeats_through_shutdown)
            atexit.register(_ignore_repeats_through_shutdown)
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.saving:
            print(f"{name} received while the checkpoint is being written: finishing the save first",
                  file=sys.stderr, flush=True)
        elif self.signal_name is None:
            print(f"{name} received: finishing this step, then writing a checkpoint and stopping",
                  file=sys.stderr, flush=True)
        self.signal_name = self.signal_name or name

    def requested(self):
        """Whether to stop after this step: this process was signalled, or (multi_worker) any worker was."""
        local = self.signal_name is not None
        if self._agree is None:
            return local
        agreed = bool(self._agree(local))
        if agreed and not local:
            self.signal_name = "a signal to another worker"
        return agreed


def _ignore_repeat(signum, frame):
    print(f"{signal.Signals(signum).name} received: already stopped, checkpoint written", file=sys.stderr, flush=True)


def _ignore_repeats_through_shutdown():
    """At exit: a Python handler is reset to SIG_DFL by the interpreter's shutdown, SIG_IGN is kept."""
    for signum in SIGNALS:
        if signal.getsignal(signum) is _ignore_repeat:
            signal.signal(signum, signal.SIG_IGN)


def _agreement(strategy):
    """A function all-reducing a bool over the workers, or None with a single process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or resolver is None or not resolver.cluster_spec().jobs:
        return None
    import tensorflow as tf

    @tf.function
    def any_worker(flag):
        per_replica = strategy.run(lambda: tf.cast(flag, tf.int32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)  # ReduceOp has no MAX

    return lambda local: int(any_worker(tf.constant(local)).numpy()) > 0
