"""Run `tsm_keras.training.loop.train` on the fake data in a fresh process (tests of strategies, kill/resume).

usage: python run_train.py CONFIG_JSON [--logical_cpus=N] [--eval] [--sigterm_after_step=N]
  --eval: `evaluate` instead of `train`.
  --sigterm_after_step=N: the process sends itself SIGTERM as step N is reported (so the loop stops after
    exactly that step), then trains again in the same process, resuming from the checkpoint it wrote.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    with open(sys.argv[1]) as f:
        values = json.load(f)
    logical = [a for a in sys.argv[2:] if a.startswith("--logical_cpus=")]
    import tsm_keras  # noqa: F401  first: it turns oneDNN on, which it cannot once TensorFlow is loaded
    import tensorflow as tf

    tsm_keras.runtime.skip_exit_collection()  # as app.py: ends 0.7 s sooner

    if logical:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * int(logical[0].split("=")[1]))
    import fake_data
    from tsm_keras.config import Config
    from tsm_keras.modes import run_eval, run_train

    if "--eval" in sys.argv[2:]:
        return run_eval(Config(**values), data=fake_data)
    stop_at = [int(a.split("=")[1]) for a in sys.argv[2:] if a.startswith("--sigterm_after_step=")]
    if not stop_at:
        return run_train(Config(**values), data=fake_data)
    _sigterm_after_step(stop_at[0])
    status = run_train(Config(**values), data=fake_data)
    if status != 75:
        return f"expected the preempted status 75 after step {stop_at[0]}, got {status}"
    return run_train(Config(**values), data=fake_data)


def _sigterm_after_step(step):
    """SIGTERM to this process when the loop reports global step `step` (its handler runs before the
    loop asks whether to stop)."""
    import signal

    from tsm_keras.training import loop

    class Progress(loop.Progress):
        def update(self, done, *args):
            super().update(done, *args)
            if self.epoch * self.steps + done == step:
                os.kill(os.getpid(), signal.SIGTERM)

    loop.Progress = Progress


if __name__ == "__main__":
    sys.exit(main())
