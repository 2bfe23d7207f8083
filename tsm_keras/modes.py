"""What `python app.py --mode=<mode>` runs: one `run_<mode>(config) -> exit code` per mode.

Each entry calls the one library function of its mode and turns its result into what a user sees
last and the process's exit status. Only this module prints the final `top1=... top5=...` line.
Imports are inside the entries, so a mode loads only what it needs.

`dispatch` runs one and turns a user error (`tsm_keras.errors.UserError`, one raised inside the input
pipeline, or an OSError about a path: in the way, no permission, read-only, no parent) into one
`error: <message>` line on stderr and exit status 2; other exceptions keep their traceback (bugs,
environment failures).
"""

import errno
import sys

from tsm_keras.errors import UserError

USER_ERROR_STATUS = 2


def _print_accuracy(metrics):
    if metrics:
        print(f"top1={metrics['top1']:.4f} top5={metrics['top5']:.4f}", flush=True)


def run_summary(config):
    from tsm_keras.models.summary import print_summary

    print_summary(config)
    return 0


def run_train(config, **options):
    """`options`: `tsm_keras.training.loop.train`'s (a stand-in data module in tests).

    The writing worker holds `<model_dir>/.lock` for the whole run (`tsm_keras.runs.RunLock`). Stopped by
    SIGTERM/SIGINT after a checkpoint, it returns `training.preemption.PREEMPTED_STATUS` (75).
    """
    from tsm_keras import runs
    from tsm_keras.training.loop import train
    from tsm_keras.training.preemption import TrainingPreempted

    try:
        if not runs.is_chief_process():
            _print_accuracy(train(config, **options))
            return 0
        with runs.RunLock(config.model_dir):
            _print_accuracy(train(config, **options))
        return 0
    except TrainingPreempted as stopped:  # SIGTERM/SIGINT: checkpointed; the status says "rerun me"
        print(stopped, file=sys.stderr, flush=True)
        return stopped.status


def run_eval(config, **options):
    """`options`: `tsm_keras.evaluation.evaluate`'s (`dataset`, `data`)."""
    from tsm_keras.evaluation import evaluate

    _print_accuracy(evaluate(config, **options))
    return 0


def run_convert(config):
    from tsm_keras.convert import convert_checkpoint

    convert_checkpoint(config)
    return 0


def run_export(config):
    from tsm_keras import runtime
    from tsm_keras.export import export_model

    with runtime.library_info_hidden():
        export_model(config)
    return 0


def run_predict(config):
    """1 when some videos could not be read (reported; the others are still classified)."""
    from tsm_keras.predict import predict_videos

    return 1 if predict_videos(config)["failed"] else 0


def run_tfrecords(config):
    from tsm_keras.data.tfrecord_writer import write_tfrecords

    write_tfrecords(config)
    return 0


def run_prepare(config):
    from tsm_keras.data.prepare import prepare

    prepare(config)
    return 0


MODES = {
    "summary": run_summary,
    "train": run_train,
    "eval": run_eval,
    "convert": run_convert,
    "export": run_export,
    "predict": run_predict,
    "tfrecords": run_tfrecords,
    "prepare": run_prepare,
}


_PATH_ERRORS = (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError)


def _path_error(error):
    """An OSError about a path the user chose (a file where a folder must go, no permission, a read-only disk, a
    parent that does not exist): the path and the reason, or None for anything else."""
    if not isinstance(error, OSError) or not error.filename:
        return None
    if not isinstance(error, _PATH_ERRORS) and error.errno != errno.EROFS:
        return None
    return (f"{error.filename}: {error.strerror or error}" + (f" ({error.filename2})" if error.filename2 else "")
            + "; check the paths given (--debug shows where it failed)")


def dispatch(mode, config, debug=False, ending=False):
    """Run `mode`; a `UserError` prints `error: <message>` and gives status 2 (`debug=True`: re-raised), also one
    raised inside the input pipeline (which reaches here wrapped in a TensorFlow error) and an OSError about a
    path (`_path_error`). `ending`: the process ends after this call (app.py), so the input pipeline's skip
    warnings stop before the error line: its threads may still read meanwhile, and the error is the last word."""
    from tsm_keras.data.bad_samples import BAD_SAMPLES, pipeline_user_error

    try:
        return MODES[mode](config)
    except Exception as error:  # noqa: BLE001  (anything else is re-raised as it was)
        user_error = error if isinstance(error, UserError) else pipeline_user_error(error) or _path_error(error)
        if user_error is None or debug:
            raise
        if ending:
            BAD_SAMPLES.quiet = True
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        return USER_ERROR_STATUS
