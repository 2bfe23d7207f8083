"""The training loop end to end on tiny inputs: train + eval, strategies, kill -9 + resume, precisions.

ResNet-10 TSM, 4 segments x 32 px, two time-reversed classes (tests/training/fake_data.py).
Strategy and kill tests run the loop in subprocesses (logical CPU devices and TF_CONFIG must be set
before TensorFlow starts).
"""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import fake_data
from tsm_keras.config import Config
from tsm_keras.errors import UsageError
from tsm_keras.evaluation import evaluate
from tsm_keras.models import build_tsm
from tsm_keras.modes import run_eval, run_train
from tsm_keras.training.loop import NonFiniteLossError, train

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "run_train.py")
REPO = os.path.dirname(os.path.dirname(HERE))


def _config(model_dir, **changes):
    values = dict(model_dir=str(model_dir), data_format="synthetic", backbone="resnet10", num_classes=2,
                  num_segments=4, image_size=32, scale_size=32, batch_size=4, lr=0.02, lr_values=[0.02],
                  lr_boundaries=[], lr_batch_size=0, epochs=2, steps_per_epoch=4, dropout=0.0,
                  strategy="one_device", checkpoint_every=0, validate=True, seed=0)
    values.update(changes)
    return Config(**values)


def _run(config, *extra, env=None, wait=True):
    path = os.path.join(config.model_dir + ".json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(config.to_json())
    full_env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    process = subprocess.Popen([sys.executable, RUNNER, path, *extra], env=full_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return _finish(process) if wait else process


def _finish(process):
    """The output of a `_run(..., wait=False)` process, once it has ended successfully."""
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def _weights(config, path=None):
    model = build_tsm(**config.model_kwargs(normalize_input=True))
    model.load_weights(path or os.path.join(config.model_dir, "model.weights.h5"))
    return model.get_weights()


def test_train_then_eval_reproduces_top1_and_writes_artefacts(tmp_path, capsys):
    config = _config(tmp_path / "run", checkpoint_every=3)
    assert run_train(config, data=fake_data) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    metrics = json.loads((run / "eval_metrics.json").read_text())  # the final weights' report
    assert out.splitlines()[-1] == f"top1={metrics['top1']:.4f} top5={metrics['top5']:.4f}"
    for name in ("config.json", "labels.txt", "model.weights.h5", "best.weights.h5", "metrics.jsonl",
                 "eval_metrics.json", "per_class_accuracy.csv", "confusion_matrix.png"):
        assert (run / name).exists(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and all("val_top1" in r for r in lines)
    assert sorted(os.listdir(run / "checkpoints"))[-1] == "ckpt-000000008"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run / "tensorboard"))
    # Eval needs only the run folder: the model comes from config.json, the names from labels.txt.
    assert run_eval(Config(mode="eval", weights=str(run)),
                    dataset=fake_data.build_dataset(config, "val", batch_size=4, shuffle=False)) == 0
    eval_metrics = json.loads((run / "eval_metrics.json").read_text())
    assert eval_metrics["top1"] == metrics["top1"] and eval_metrics["top5"] == metrics["top5"]
    assert capsys.readouterr().out.splitlines()[-1] == f"top1={metrics['top1']:.4f} top5={metrics['top5']:.4f}"


def test_validate_every_runs_epochs_n_2n_and_the_last_which_is_the_final_result(tmp_path, monkeypatch):
    from tsm_keras.training import loop

    calls = []
    real_run = loop.Evaluator.run

    def counted_run(self, *args, **kwargs):  # the real evaluation, counted
        calls.append(1)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(loop.Evaluator, "run", counted_run)
    config = _config(tmp_path / "run", epochs=3, steps_per_epoch=2, validate_every=2)
    final = train(config, data=fake_data)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [("val_top1" in r) for r in lines] == [False, True, True]
    assert len(calls) == 2  # epochs 2 and 3; the last one is reused as the final evaluation
    assert final["top1"] == lines[-1]["val_top1"] and "confusion" in final
    with pytest.raises(UsageError, match="--validate_every must be >= 1"):
        train(_config(tmp_path / "bad", validate_every=0), data=fake_data)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    config = _config(tmp_path / "run", lr=1e30, lr_values=[1e30], clip_norm=0.0, epochs=1, validate=False)
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written yet: lower --lr"):
        train(config, data=fake_data)


def test_a_batch_larger_than_the_training_list_says_so_and_trains_one_step_an_epoch(tmp_path, capsys):
    config = _config(tmp_path / "run", batch_size=2 * fake_data.NUM_TRAIN, steps_per_epoch=0, epochs=1,
                     validate=False)
    train(config, data=fake_data)
    out = capsys.readouterr().out
    assert (f"note: --batch_size={2 * fake_data.NUM_TRAIN} is more than the {fake_data.NUM_TRAIN} training samples: "
            "each epoch is one step") in out
    assert "clips_per_sec=n/a" in out  # one step: it builds the graph, no throughput to report
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    train(_config(tmp_path / "fits", steps_per_epoch=0, epochs=1, validate=False), data=fake_data)
    assert "note: --batch_size" not in capsys.readouterr().out


def test_a_missing_or_malformed_validation_list_stops_before_the_first_epoch(tmp_path, monkeypatch):
    """Both used to stop the run at the first validation, after a whole epoch of training."""
    from tsm_keras.data import ListFileError
    from tsm_keras.data.synthetic import ensure_synthetic_dataset
    from tsm_keras.training import step

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the validation list was read")

    paths = ensure_synthetic_dataset(str(tmp_path / "data"), train_per_class=1, val_per_class=1, num_frames=8,
                                     frame_size=32)
    config = _config(tmp_path / "run", data_format="frames", data_root=paths["root"], num_classes=8,
                     train_list=paths["train_frames_list"], label_map=paths["label_map"], val_list="",
                     steps_per_epoch=0)
    with monkeypatch.context() as patch:
        patch.setattr(step, "make_train_step", no_training)
        with pytest.raises(ListFileError, match="no list file for split 'val': pass --val_list"):
            train(config)
        with pytest.raises(ListFileError, match=r"val_videos\.txt:1: expected \"<frame_dir> <num_frames> <label>\""):
            train(config.replace(val_list=paths["val_list"]))  # a videos list given to the frames format
    train(config.replace(val_list=paths["val_frames_list"], epochs=1))


def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path, monkeypatch):
    # Every global batch holds one clip 4 times: per-replica BatchNorm statistics (2 clips) then equal
    # the single device's (4 clips), so any difference would come from the gradient aggregation.
    env = {"FAKE_REPEAT_EACH": "4"}
    # A small lr keeps the 4 steps out of the chaotic regime where float summation order gets amplified.
    small = dict(epochs=1, validate=False, lr=1e-4, lr_values=[1e-4])
    single = _config(tmp_path / "single", **small)
    mirrored = _config(tmp_path / "mirrored", strategy="mirrored", **small)
    process = _run(mirrored, "--logical_cpus=2", env=env, wait=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    train(single, data=fake_data)  # one device: in this process, while the mirrored run starts
    output = _finish(process)
    assert "top1=" in output
    if platform.machine().lower() in ("x86_64", "amd64"):  # the runner imports tsm_keras before TensorFlow
        assert "oneDNN: on (" in output, output[:2000]
    assert "  conv gradients: gemm (" in output or "  conv gradients: native (" in output, output[:2000]
    initial = _initial_weights(single)
    names = [v.path for v in build_tsm(**single.model_kwargs(normalize_input=True)).weights]
    moved = 0
    for name, w0, wa, wb in zip(names, initial, _weights(single), _weights(mirrored)):
        step_a, step_b = wa - w0, wb - w0
        scale = np.abs(step_a).max()
        moved += scale > 0
        np.testing.assert_allclose(step_b, step_a, rtol=0, atol=1e-2 * scale + 1e-7, err_msg=name)
    assert moved > 50


def _single_device_metrics(config, num_val):
    """Metrics of the run's final weights on the fake validation list, on one device, in this process."""
    os.environ["FAKE_NUM_VAL"] = str(num_val)
    try:
        dataset = fake_data.build_dataset(config, "val", batch_size=config.batch_size, shuffle=False)
        return evaluate(Config(mode="eval", weights=config.model_dir), dataset=dataset)
    finally:
        del os.environ["FAKE_NUM_VAL"]


def test_mirrored_validation_runs_on_every_replica_and_matches_one_device(tmp_path):
    # 13 clips, batches of 4 over 2 replicas: the last global batch is partial (one clip, one replica empty).
    # The recipe's label smoothing and mixup (per replica) train under the strategy on the way.
    config = _config(tmp_path / "mirrored", strategy="mirrored", epochs=1, steps_per_epoch=2, label_smoothing=0.1,
                     mixup_alpha=0.2)
    output = _run(config, "--logical_cpus=2", env={"FAKE_NUM_VAL": "13"})
    with open(os.path.join(config.model_dir, "metrics.jsonl")) as f:
        record = json.loads(f.read().splitlines()[-1])
    assert 0.0 < record["train_loss"] < 10.0 and 0.0 <= record["train_top1"] <= 1.0
    with open(os.path.join(config.model_dir, "eval_metrics.json")) as f:
        distributed = json.load(f)
    single = _single_device_metrics(config, 13)
    assert distributed["num_samples"] == single["num_samples"] == 13
    for key in ("top1", "top5", "per_class_support"):
        assert distributed[key] == single[key], key
    assert f"top1={single['top1']:.4f} top5={single['top5']:.4f}" in output


def test_eval_mode_with_a_mirrored_strategy_matches_one_device(tmp_path):
    """`--mode=eval --strategy=mirrored`: every replica evaluates its share; the metrics are one device's."""
    # A batch of 3 does not split over 2 replicas: evaluation rounds it up to 4.
    config = _config(tmp_path / "run", epochs=1, steps_per_epoch=2, validate=False, batch_size=3)
    train(config, data=fake_data)
    single = _single_device_metrics(config, 13)
    eval_config = Config(mode="eval", weights=config.model_dir, strategy="mirrored")
    output = _run(eval_config.replace(model_dir=str(tmp_path / "eval")), "--logical_cpus=2", "--eval",
                  env={"FAKE_NUM_VAL": "13"})
    assert f"top1={single['top1']:.4f} top5={single['top5']:.4f}" in output
    assert "13 videos" in output


def _wait_for_checkpoint(process, checkpoints, step):
    deadline = time.time() + 300
    while not (checkpoints / f"ckpt-{step:09d}").exists():
        assert process.poll() is None and time.time() < deadline, f"no checkpoint at step {step}"
        time.sleep(0.02)


# The kill -9, SIGTERM and SIGINT runs: two epochs, so a resume from a mid-epoch-1 checkpoint also crosses an
# epoch end; deterministic ops, so a resumed run can match the uninterrupted one bit for bit.
RESUME_RUN = dict(epochs=2, steps_per_epoch=12, checkpoint_every=4, deterministic=True, dropout=0.5, validate=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights of RESUME_RUN without interruption: one run shared by the resume tests, started when
    the first of them asks and running alongside it; call the fixture's value for the weights (waits)."""
    config = _config(tmp_path_factory.mktemp("uninterrupted") / "run", **RESUME_RUN)
    process = _run(config, wait=False)
    weights = []

    def final_weights():
        if not weights:
            _finish(process)
            weights.append(_weights(config))
        return weights[0]

    yield final_weights
    if process.poll() is None:
        process.kill()
        process.wait()


def _initial_weights(config):
    import keras

    keras.utils.set_random_seed(config.seed)
    return build_tsm(**config.model_kwargs(normalize_input=True)).get_weights()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_multi_worker_completes_and_workers_agree(tmp_path):
    # Validation is sharded over the workers: 13 clips give them 7 and 6, so one worker runs out first.
    config = _config(tmp_path / "run", epochs=1, strategy="multi_worker", validate=False)
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(_run(config, env={"TF_CONFIG": tf_config, "FAKE_NUM_VAL": "13"}, wait=False))
    outputs = [_finish(process) for process in processes]
    finals = [[line for line in out.splitlines() if line.startswith("top1=")][-1] for out in outputs]
    assert finals[0] == finals[1]
    single = _single_device_metrics(config, 13)
    assert finals[0] == f"top1={single['top1']:.4f} top5={single['top5']:.4f}"
    chief = _weights(config)
    other = _weights(config, os.path.join(config.model_dir, "workers", "worker-1.weights.h5"))
    names = [v.path for v in build_tsm(**config.model_kwargs(normalize_input=True)).weights]
    for name, a, b in zip(names, chief, other):
        # BatchNorm moving statistics too: each worker updates its own from its shard, and the workers set
        # theirs to the mean of all at each epoch's end (without that they differ by far more than below).
        # Each worker applies the update itself from the all-reduced gradients; the two processes' float
        # reductions (global norm, collective sums) may round differently in the last bit (seen in CI:
        # 3.7e-9 on 0.04 % of one kernel), so agreement is to float32 rounding, not bit for bit.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * max(float(np.abs(a).max()), 1e-3), err_msg=name)


def test_kill_9_mid_epoch_then_rerun_ends_with_the_same_weights(tmp_path, uninterrupted):
    # A checkpoint every step, so the kill may land in a save (its temporary folder must not stop the resume).
    # How often checkpoints are written does not change the weights: the shared run (every 4) is the reference.
    interrupted = _config(tmp_path / "interrupted", **dict(RESUME_RUN, checkpoint_every=1))
    process = _run(interrupted, wait=False)
    checkpoints = tmp_path / "interrupted" / "checkpoints"
    _wait_for_checkpoint(process, checkpoints, 3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Resume from step 3 (mid-epoch 1), as if the kill had come right after that checkpoint.
    for name in os.listdir(checkpoints):
        if name.startswith("ckpt-") and int(name.split("-")[1]) > 3:
            import shutil
            shutil.rmtree(checkpoints / name)
    output = _run(interrupted)
    assert "resumed from" in output and "at step 3" in output
    for a, b in zip(uninterrupted(), _weights(interrupted)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps_run_and_lower_the_loss(precision):
    import keras
    import tensorflow as tf

    from tsm_keras.training.optimizer import build_optimizer
    from tsm_keras.training.precision import set_precision

    set_precision(precision)
    # 2 segments: float16 convolutions are emulated on CPU, slowly.
    config = _config("unused", precision=precision, lr=0.01, lr_values=[0.01], num_segments=2)
    model = build_tsm(**config.model_kwargs(normalize_input=True))
    assert model.get_layer("res2a_branch2a").compute_dtype == precision.split("_")[1]
    optimizer = build_optimizer(config, model, 0.01)
    optimizer.build(model.trainable_variables)
    clips, labels = fake_data.make_clips(4, 2, 32, seed=3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(clips, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, model.trainable_variables), model.trainable_variables)
        return loss, logits

    losses = []
    for _ in range(4):
        loss, logits = step()
        losses.append(float(loss))
    assert logits.dtype == tf.float32 and all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
    if precision == "mixed_float16":
        assert float(optimizer.loss_scale) > 1.0


def _tree_digest(folder):
    import hashlib

    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            digest.update(name.encode())
            with open(os.path.join(root, name), "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_non_finite_loss_keeps_the_last_good_checkpoint_and_a_lower_lr_resumes_from_it(tmp_path):
    good = _config(tmp_path / "run", epochs=1, validate=False)
    train(good, data=fake_data)
    checkpoints = os.path.join(good.model_dir, "checkpoints")
    before = _tree_digest(checkpoints)
    # Epoch 2 at an lr that overflows: the run stops within two steps, naming the step-4 checkpoint.
    diverging = good.replace(epochs=2, lr=0.02, lr_values=[0.02, 1e30], lr_boundaries=[1], clip_norm=0.0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step [56]: stopping\. The last good checkpoint is .*ckpt-0+4;"):
        train(diverging, data=fake_data)
    assert _tree_digest(checkpoints) == before  # nothing written over it, nothing newer
    # The same command with a lower lr resumes from it and ends with finite weights.
    with pytest.MonkeyPatch.context() as patch:
        lines = []
        patch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
        train(diverging.replace(lr_values=[0.02, 0.002]), data=fake_data)
    assert any("resumed from" in line and "at step 4" in line for line in lines), lines
    assert all(np.isfinite(w).all() for w in _weights(good))


def _interrupt(tmp_path, signum):
    """A training subprocess signalled (twice: the second during or just before the save) after its step-4
    checkpoint; returns (config, the step it stopped after)."""
    config = _config(tmp_path / "interrupted", **RESUME_RUN)
    process = _run(config, wait=False)
    checkpoints = tmp_path / "interrupted" / "checkpoints"
    _wait_for_checkpoint(process, checkpoints, 4)
    process.send_signal(signum)
    time.sleep(0.01)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 75, output[-3000:]
    stopped = [line for line in output.splitlines() if line.startswith(f"stopped by {signal.Signals(signum).name}")]
    assert len(stopped) == 1, output[-3000:]
    step = int(stopped[0].split("after step ")[1].split()[0])
    total = RESUME_RUN["epochs"] * RESUME_RUN["steps_per_epoch"]
    assert 4 <= step < total and f"ckpt-{step:09d}" in stopped[0], stopped[0]
    assert sorted(os.listdir(checkpoints))[-1] == f"ckpt-{step:09d}"
    assert os.path.exists(checkpoints / f"ckpt-{step:09d}" / "state.json")  # complete
    assert not os.path.exists(tmp_path / "interrupted" / ".lock")
    # TensorBoard's writer keeps scalars up to 2 minutes before writing them: the stop closes it, so step 1's
    # are on disk (the loop flushes it only at epochs' ends).
    assert ("train/loss", 1) in _logged_scalars(tmp_path / "interrupted"), output[-3000:]
    return config, step


def _logged_scalars(run):
    """{(tag, step)} of the run's TensorBoard event files."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    found = set()
    for name in os.listdir(run / "tensorboard"):
        for record in tf.data.TFRecordDataset(str(run / "tensorboard" / name)):
            event = event_pb2.Event.FromString(record.numpy())
            found.update((value.tag, event.step) for value in event.summary.value)
    return found


def test_sigterm_mid_epoch_checkpoints_exits_75_and_the_rerun_ends_with_the_same_weights(tmp_path, uninterrupted):
    interrupted, step = _interrupt(tmp_path, signal.SIGTERM)
    assert f"at step {step}" in _run(interrupted)
    for a, b in zip(uninterrupted(), _weights(interrupted)):
        np.testing.assert_array_equal(a, b)


def test_sigint_also_checkpoints_and_exits_75(tmp_path):
    _interrupt(tmp_path, signal.SIGINT)


def test_multi_worker_sigterm_to_one_worker_stops_both_after_the_same_step(tmp_path):
    config = _config(tmp_path / "run", strategy="multi_worker", epochs=1, steps_per_epoch=40, checkpoint_every=4,
                     dropout=0.5, validate=False)
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(_run(config, env={"TF_CONFIG": tf_config}, wait=False))
    _wait_for_checkpoint(processes[0], tmp_path / "run" / "checkpoints", 4)
    processes[1].send_signal(signal.SIGTERM)  # only the non-chief worker is preempted
    steps = []
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 75, output[-3000:]
        line = [line for line in output.splitlines() if line.startswith("stopped by")][0]
        steps.append(int(line.split("after step ")[1].split()[0]))
    assert steps[0] == steps[1]
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints"))[-1] == f"ckpt-{steps[0]:09d}"


def test_sync_bn_mirrored_gives_the_moving_statistics_of_one_device_on_the_whole_batch(tmp_path):
    # Two replicas of 2 clips each; one device sees the 4. Per-replica statistics (no --sync_bn) differ.
    small = dict(epochs=1, steps_per_epoch=2, validate=False, lr=1e-4, lr_values=[1e-4], precision="float32")
    single = _config(tmp_path / "single", **small)
    synced = _config(tmp_path / "synced", strategy="mirrored", sync_bn=True, **small)
    local = _config(tmp_path / "local", strategy="mirrored", **small)
    # The per-replica run is preempted after step 1 and resumes from its checkpoint (in the same process).
    processes = [_run(synced, "--logical_cpus=2", wait=False),
                 _run(local, "--logical_cpus=2", "--sigterm_after_step=1", wait=False)]
    train(single, data=fake_data)  # one device: in this process
    outputs = [_finish(process) for process in processes]
    assert "sync_bn: 12 BatchNorm layers use statistics over all 2 replicas" in outputs[0]
    assert "stopped by SIGTERM after step 1" in outputs[1] and "at step 1" in outputs[1], outputs[1][-3000:]
    names = [v.path for v in build_tsm(**single.model_kwargs(normalize_input=True)).weights]
    initial = _initial_weights(single)
    worst = dict(synced=0.0, local=0.0, local_stem=0.0)
    for name, w0, a, b, c in zip(names, initial, _weights(single), _weights(synced), _weights(local)):
        if "moving" not in name:
            continue
        scale = max(float(np.abs(a - w0).max()), 1e-12)  # how far the statistics moved in 2 steps
        worst["synced"] = max(worst["synced"], float(np.abs(b - a).max()) / scale)
        key = "local_stem" if name.startswith("bn_conv1/") else "local"
        worst[key] = max(worst[key], float(np.abs(c - a).max()) / scale)
    assert worst["synced"] < 1e-3, worst
    assert worst["local"] > 1e-2, worst  # the test can tell per-replica statistics apart
    # Per-replica statistics are averaged over the replicas at the epoch's end and before the preempted
    # run's checkpoint. The moving statistics' update is linear in the batch's, so the averaged copies are
    # what averaging only at the end would give. The stem's BatchNorm sees the same convolution of the same
    # clips on the replicas as on the one device, so there the mean of the replicas' copies is one device's
    # (exactly for the means; for the variances up to the spread of the replicas' means, small at the stem:
    # 3e-5 of the movement, measured). Had the checkpoint held replica 0's copy, the resumed run would carry
    # it (measured without the sync: 0.029).
    assert worst["local_stem"] < 1e-3, worst
