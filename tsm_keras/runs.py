"""The run folder (`--model_dir`): what a training run leaves and what eval, export and predict read.

    <model_dir>/config.json          the run's Config (the network fields decide how to rebuild it)
    <model_dir>/labels.txt           class names, one per line, index order
    <model_dir>/model.weights.h5     final weights; best.weights.h5: best validation top-1 (--validate)
    <model_dir>/checkpoints/         resumable checkpoints (tsm_keras.training.checkpoints)
    <model_dir>/metrics.jsonl        one line per epoch; tensorboard/; evaluation reports
    <model_dir>/.lock                the trainer holding the folder: {"host", "pid", "started"}

Only this module knows these names. It imports no TensorFlow.
"""

import dataclasses
import json
import logging
import os
import socket
import time

from tsm_keras import disk
from tsm_keras.config import MODEL_FIELDS, Config
from tsm_keras.errors import MissingInputError, RunLockedError, UsageError

WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.weights.h5"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".lock"
# Fields that must match for a resume to continue the same run (TSN has TSM's variables, exactly).
SAME_RUN_FIELDS = MODEL_FIELDS + ("image_size", "precision")


def write_text_atomic(path, text):
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_run_files(model_dir, config, label_names):
    """`config.json` and `labels.txt` of a run (so eval/predict/export need only the folder)."""
    os.makedirs(model_dir, exist_ok=True)
    config.save(os.path.join(model_dir, CONFIG_FILE))
    write_text_atomic(os.path.join(model_dir, LABELS_FILE), "".join(f"{name}\n" for name in label_names))


def read_labels(model_dir):
    """The run's class names from `labels.txt`, or None when the folder has none."""
    path = os.path.join(model_dir, LABELS_FILE) if model_dir else ""
    if not path or not os.path.exists(path):
        return None
    return [line for _, line in disk.read_text_lines(path)]


def is_run_folder(model_dir):
    return bool(model_dir) and os.path.exists(os.path.join(model_dir, CONFIG_FILE))


def find_weights(model_dir):
    """The final weights of a run folder, else its best ones; FileNotFoundError naming what to pass."""
    for name in (WEIGHTS_FILE, BEST_WEIGHTS_FILE):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            return path
    raise MissingInputError(f"no {WEIGHTS_FILE} in {model_dir!r}: pass --weights=<file> or the "
                            "--model_dir of a finished `--mode=train` run.")


def resolve_run(config):
    """`(run_config, weights_path, model_dir)` for `--weights` / `--model_dir`.

    `--weights` may be a run folder, a weights file (its folder is then the run folder) or empty
    (`--model_dir`'s final weights). The network's fields come from the run's saved `config.json`;
    data and evaluation fields given on the command line (anything that differs from the defaults)
    override the saved ones.
    """
    weights, model_dir = config.weights, config.model_dir
    if weights and os.path.isdir(weights):
        model_dir, weights = weights, ""
    elif weights:
        model_dir = os.path.dirname(os.path.abspath(weights))
    if not weights:
        weights = find_weights(model_dir)
    run_config = config
    if is_run_folder(model_dir):
        saved = Config.load(os.path.join(model_dir, CONFIG_FILE))
        defaults = Config()
        changes = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)
                   if f.name not in MODEL_FIELDS and getattr(config, f.name) != getattr(defaults, f.name)}
        run_config = saved.replace(**changes)
    return run_config.replace(weights=weights, model_dir=model_dir), weights, model_dir


def check_same_run(config, model_dir):
    """Refuse to resume a run of another network from `model_dir` (it holds checkpoints of that run)."""
    saved_path = os.path.join(model_dir, CONFIG_FILE)
    checkpoints = os.path.join(model_dir, CHECKPOINTS_DIR)
    if not (os.path.exists(saved_path) and os.path.isdir(checkpoints) and os.listdir(checkpoints)):
        return
    saved = Config.load(saved_path)
    diffs = [f"{f}={getattr(saved, f)!r} there, {getattr(config, f)!r} here" for f in SAME_RUN_FIELDS
             if getattr(saved, f) != getattr(config, f)]
    if diffs:
        raise UsageError(f"--model_dir={model_dir} holds checkpoints of another run ({'; '.join(diffs)}): "
                         "pass another --model_dir, or delete that folder to start over.")


# ------------------------------------------------------------------------------------------ the lock
log = logging.getLogger(__name__)


def _process_start(pid):
    """The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid, start):
    """Whether `pid` runs on this host and is the process that took the lock (a reused pid is not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """`<model_dir>/.lock`: one trainer per run folder (a context manager; `acquire()` / `release()`).

    Taken at the start of training, with the holder's host, pid and start time. A second trainer stops
    with `RunLockedError` naming the holder. A lock whose process is gone (same host, pid not running or
    reused) is stale and taken over with a warning; a lock from another host cannot be checked and is
    never taken over. Eval, export and predict take no lock: they read complete checkpoints only.
    """

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self.held = False

    def _record(self):
        pid = os.getpid()
        return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def _read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: treated as held by an unknown process

    def acquire(self):
        os.makedirs(self.model_dir, exist_ok=True)
        record = self._record()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if holder is None:
                    continue  # released meanwhile: try again
                if not self._stale(holder):
                    raise RunLockedError(self._held_message(holder))
                log.warning("%s: taking over a stale lock of pid %s on %s (started %s; that process is gone)",
                            self.path, holder.get("pid"), holder.get("host"), holder.get("started"))
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self.held = True
            return self
        raise RunLockedError(f"{self.path}: could not take the run folder's lock (another trainer keeps taking it)")

    def _stale(self, holder):
        if not holder or "pid" not in holder:
            # An unreadable lock older than a minute is left over, not being written.
            try:
                return time.time() - os.path.getmtime(self.path) > 60
            except FileNotFoundError:
                return True
        return holder.get("host") == socket.gethostname() and not _alive(holder["pid"], holder.get("start"))

    def _held_message(self, holder):
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"
               if holder else "a process that is writing it now")
        return (f"{self.model_dir} is being trained by {who}: one trainer per run folder. Use another "
                f"--model_dir, or stop that trainer; if it is gone (e.g. on another host), remove {self.path}.")

    def release(self):
        if self.held:
            holder = self._read()
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                os.remove(self.path)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def is_chief_process(environ=None):
    """Whether this process is the writing worker of its TF_CONFIG cluster (True without one).

    Read from the environment (no TensorFlow): the `chief` task, else worker 0 when there is no chief.
    """
    environ = os.environ if environ is None else environ
    try:
        tf_config = json.loads(environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task, cluster = tf_config.get("task") or {}, tf_config.get("cluster") or {}
    if not cluster or not task:
        return True
    return task.get("type") == "chief" or (task.get("type") == "worker" and int(task.get("index", 0)) == 0
                                           and "chief" not in cluster)
