"""The PP-TSM recipe flags end to end: `app.py --mode=train` on the embedded synthetic dataset with label
smoothing, mixup, precise BN and the scaled MultiScaleCrop + random crop all on, at tiny sizes. (Label
smoothing and mixup under a mirrored strategy: tests/training/test_loop.py's mirrored validation run.)"""

import json
import os
import subprocess
import sys

from tsm_keras.data.synthetic import ensure_synthetic_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RECIPE_FLAGS = dict(label_smoothing=0.1, mixup_alpha=0.2, precise_bn_every=1, precise_bn_steps=2,
                    train_scale_size=40, multi_scale_crop_size=36)


def test_train_with_all_recipe_flags_records_them(tmp_path):
    root = str(tmp_path / "synthetic")
    ensure_synthetic_dataset(root, seed=0, train_per_class=1, val_per_class=1, num_frames=8, frame_size=48)
    model_dir = tmp_path / "run"
    argv = [sys.executable, os.path.join(REPO, "app.py"), "--mode=train", f"--model_dir={model_dir}",
            "--data_format=synthetic", f"--data_root={root}", "--num_classes=8", "--backbone=resnet10",
            "--num_segments=2", "--image_size=32", "--scale_size=32", "--batch_size=4", "--lr_batch_size=0",
            "--lr=0.01", "--lr_values=0.01", "--lr_boundaries=", "--epochs=2", "--steps_per_epoch=2",
            "--dropout=0", "--strategy=one_device", "--precision=float32", "--checkpoint_every=0", "--novalidate",
            *[f"--{name}={value}" for name, value in RECIPE_FLAGS.items()]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    config = json.loads((model_dir / "config.json").read_text())
    assert {name: config[name] for name in RECIPE_FLAGS} == RECIPE_FLAGS
    # Precise BN after epoch 1 (0-based 0 % 1 == 0) and after the last, 12 BatchNorms of ResNet-10.
    assert output.count("precise BN: 12 BatchNorm layers' statistics from 2 training batches") == 2
    records = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("precise_bn_seconds" in r for r in records)
    assert all(0.0 <= r["train_top1"] <= 1.0 and r["train_loss"] > 0 for r in records)
    assert (model_dir / "model.weights.h5").exists()


def _run_fake(tmp_path, name, **changes):
    """tests/training/run_train.py on the fake data over two logical CPUs with a mirrored strategy."""
    from tsm_keras.config import Config

    values = dict(model_dir=str(tmp_path / name), data_format="synthetic", backbone="resnet10", num_classes=2,
                  num_segments=2, image_size=32, scale_size=32, batch_size=4, lr=0.01, lr_values=[0.01],
                  lr_boundaries=[], lr_batch_size=0, epochs=1, steps_per_epoch=2, dropout=0.0, strategy="mirrored",
                  checkpoint_every=0, validate=False, precision="float32", seed=0)
    values.update(changes)
    path = tmp_path / f"{name}.json"
    path.write_text(Config(**values).to_json())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    runner = os.path.join(REPO, "tests", "training", "run_train.py")
    return subprocess.run([sys.executable, runner, str(path), "--logical_cpus=2"], env=env, capture_output=True,
                          text=True, timeout=600)


def test_precise_bn_under_several_replicas_is_refused(tmp_path):
    run = _run_fake(tmp_path, "refused", precise_bn_every=1, precise_bn_steps=1)
    assert run.returncode != 0
    assert "--precise_bn_every runs on one replica only, this strategy has 2" in run.stdout + run.stderr
