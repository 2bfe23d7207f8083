"""One trainer per run folder: `<model_dir>/.lock`, with two real trainer processes, and stale locks."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tsm_keras.errors import RunLockedError, UserError
from tsm_keras.runs import LOCK_FILE, RunLock, is_chief_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tests", "training", "run_train.py")


def _wait_for(path, process, seconds=120):
    deadline = time.time() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[0][-2000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_second_trainer_stops_naming_the_holder_then_a_killed_holder_is_taken_over(tmp_path, caplog):
    from tsm_keras.config import Config

    model_dir = tmp_path / "run"
    config = Config(model_dir=str(model_dir), data_format="synthetic", backbone="resnet10", num_classes=2,
                    num_segments=2, image_size=32, scale_size=32, batch_size=2, epochs=1, steps_per_epoch=100000,
                    strategy="one_device", checkpoint_every=0, validate=False)
    (tmp_path / "run.json").write_text(config.to_json())
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.Popen([sys.executable, RUNNER, str(tmp_path / "run.json")], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(model_dir / LOCK_FILE, first)
        holder = json.loads((model_dir / LOCK_FILE).read_text())
        assert (holder["pid"], holder["host"]) == (first.pid, socket.gethostname())
        # A second trainer on the same folder, as a user would start it.
        second = subprocess.run([sys.executable, os.path.join(REPO, "app.py"), "--mode=train",
                                 f"--model_dir={model_dir}", "--data_format=synthetic", "--num_classes=8"],
                                env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"is being trained by pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert first.poll() is None  # the holder goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # kill -9 leaves the lock; its pid is gone, so the next trainer takes it over with a warning.
    assert os.path.exists(model_dir / LOCK_FILE)
    with caplog.at_level(logging.WARNING), RunLock(str(model_dir)):
        assert json.loads((model_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"stale lock of pid {first.pid}" in caplog.text
    assert not os.path.exists(model_dir / LOCK_FILE)  # released on exit


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(RunLockedError, match="pid 1 on host elsewhere.*remove .*\\.lock") as raised:
        RunLock(str(tmp_path)).acquire()
    assert isinstance(raised.value, UserError)


def test_a_reused_pid_is_stale(tmp_path):
    # This process's pid with another start time: the lock's process is gone and the pid was reused.
    record = {"host": socket.gethostname(), "pid": os.getpid(), "start": 1, "started": "then"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    lock = RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["start"] != 1
    lock.release()


def test_only_the_writing_worker_locks():
    cluster = {"worker": ["a:1", "b:2"]}
    assert is_chief_process({})
    assert is_chief_process({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})})
    assert not is_chief_process({"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})})
    with_chief = dict(cluster, chief=["c:3"])
    assert not is_chief_process({"TF_CONFIG": json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})})
