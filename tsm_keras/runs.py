"""The run folder (`--model_dir`): what a training run leaves and what eval, export and predict read.

    <model_dir>/config.json          the run's Config (the network fields decide how to rebuild it)
    <model_dir>/labels.txt           class names, one per line, index order
    <model_dir>/model.weights.h5     final weights; best.weights.h5: best validation top-1 (--validate)
    <model_dir>/checkpoints/         resumable checkpoints (tsm_keras.training.checkpoints)
    <model_dir>/metrics.jsonl        one line per epoch; tensorboard/; evaluation reports

Only this module knows these names. It imports no TensorFlow.
"""

import dataclasses
import os

from tsm_keras.config import MODEL_FIELDS, Config

WEIGHTS_FILE = "model.weights.h5"
BEST_WEIGHTS_FILE = "best.weights.h5"
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Fields that must match for a resume to continue the same run (TSN has TSM's variables, exactly).
SAME_RUN_FIELDS = MODEL_FIELDS + ("image_size", "precision")


def write_text_atomic(path, text):
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
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
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def is_run_folder(model_dir):
    return bool(model_dir) and os.path.exists(os.path.join(model_dir, CONFIG_FILE))


def find_weights(model_dir):
    """The final weights of a run folder, else its best ones; FileNotFoundError naming what to pass."""
    for name in (WEIGHTS_FILE, BEST_WEIGHTS_FILE):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {WEIGHTS_FILE} in {model_dir!r}: pass --weights=<file> or the "
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
        raise ValueError(f"--model_dir={model_dir} holds checkpoints of another run ({'; '.join(diffs)}): "
                         "pass another --model_dir, or delete that folder to start over.")
