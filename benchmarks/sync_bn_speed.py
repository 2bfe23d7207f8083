"""Cost of `--sync_bn`: training clips/s under `mirrored` on two logical CPUs, with and without it.

    python benchmarks/sync_bn_speed.py [--backbone=resnet50 --image_size=112 --batch_size=4 --steps=4 --repeats=2]

Each run is the training loop itself (`tsm_keras.training.loop.train`, the loop's clips/s of epoch 2,
which excludes its first step) on in-memory uint8 clips, in its own subprocess (logical devices are
set before TensorFlow starts), in rounds `local, synced` so load drift hits both. With `--sync_bn`
every BatchNorm layer all-reduces its sums, squared sums and counts in the forward pass (and their
gradients in the backward pass). Prints one JSON object: machine, versions, runs, medians, the ratio.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from child_process import run_json_child

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_child(args, sync_bn):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO)
    import tsm_keras  # noqa: F401  (before TensorFlow runs: oneDNN)

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tsm_keras.config import Config
    from tsm_keras.training.loop import train

    sys.path.insert(0, HERE)
    from in_memory_data import InMemoryData

    with tempfile.TemporaryDirectory() as model_dir:
        config = Config(mode="train", model_dir=model_dir, backbone=args.backbone, num_classes=400, num_segments=8,
                        image_size=args.image_size, batch_size=args.batch_size, epochs=2,
                        steps_per_epoch=args.steps + 1, precision="float32", strategy="mirrored",
                        checkpoint_every=0, validate=False, sync_bn=sync_bn)
        train(config, data=InMemoryData)
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
            return dict(clips_per_sec=json.loads(f.readlines()[-1])["clips_per_sec"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default="")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args, args.child == "synced")))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, REPO)
    from tsm_keras import runtime

    runs = {"local": [], "synced": []}
    for _ in range(args.repeats):
        for name in runs:
            command = [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--backbone={args.backbone}",
                       f"--image_size={args.image_size}", f"--batch_size={args.batch_size}", f"--steps={args.steps}"]
            runs[name].append(run_json_child(command))
            print(json.dumps({name: runs[name][-1]}), file=sys.stderr, flush=True)
    medians = {name: statistics.median([r["clips_per_sec"] for r in results if "clips_per_sec" in r])
               for name, results in runs.items() if any("clips_per_sec" in r for r in results)}
    ratio = round(medians["synced"] / medians["local"], 3) if len(medians) == 2 else None
    print(json.dumps(dict(
        benchmark="sync_bn_speed", strategy="mirrored, 2 logical CPUs", backbone=args.backbone,
        image_size=args.image_size, batch_size=args.batch_size, steps=args.steps, repeats=args.repeats,
        machine=runtime.machine_info(), clips_per_sec_median={k: round(v, 3) for k, v in medians.items()},
        ratios={"synced/local": ratio}, runs=runs), indent=2))


if __name__ == "__main__":
    main()
