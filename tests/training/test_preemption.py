"""StopRequest's signal handlers, in process: what a signal does during training, after a stop, and after."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tsm_keras.training.preemption import StopRequest, TrainingPreempted


@pytest.fixture
def seen():
    """A handler of the test's own as the "previous" SIGTERM handler, recording what reaches it."""
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_a_signal_only_sets_the_flag_and_the_handlers_come_back_after_a_normal_end(seen):
    with StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.signal_name == "SIGTERM"
    assert seen == []
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]


def test_after_a_stop_repeats_are_ignored_until_the_handlers_are_restored(seen, capfd):
    with pytest.raises(TrainingPreempted) as stopped:
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested()
            raise TrainingPreempted("stopped by SIGTERM after step 4")
    os.kill(os.getpid(), signal.SIGTERM)  # the scheduler's second SIGTERM: must not kill the exiting process
    assert seen == []
    assert "already stopped" in capfd.readouterr().err
    stopped.value.restore_signal_handlers()
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [signal.SIGTERM]


def test_after_a_stop_repeats_stay_ignored_through_the_interpreter_shutdown():
    """The 2nd SIGTERM can land while the exiting interpreter tears down, after Python has put its own
    handlers back to SIG_DFL: the process must keep ignoring it (SIG_IGN survives the shutdown), or exit
    status 75 becomes death by SIGTERM. The last `atexit` callback to run reads the disposition that
    the shutdown will keep (a Python function there would be reset to SIG_DFL)."""
    code = textwrap.dedent("""
        import atexit, os, signal, sys
        from tsm_keras.training.preemption import StopRequest, TrainingPreempted
        atexit.register(lambda: print("at exit:", signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, flush=True))  # last
        try:
            with StopRequest():
                os.kill(os.getpid(), signal.SIGTERM)
                raise TrainingPreempted("stopped")
        except TrainingPreempted as stopped:
            sys.exit(stopped.status)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 75, done.stderr
    assert "at exit: True" in done.stdout, done.stdout
