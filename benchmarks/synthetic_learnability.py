"""Does the embedded dataset need time? A small TSM vs the same net without shift (TSN), printed as JSON.

    python benchmarks/synthetic_learnability.py [--epochs 8] [--image_size 64] [--root data_cache/synthetic]

Trains, on the embedded synthetic dataset read through `tsm_keras.data.build_dataset`, a small
per-frame conv net (4 conv blocks, 8 segments) twice: with a TemporalShift before each block (TSM)
and without (TSN: frames averaged at the end). Reports val top-1 and the accuracy of telling each
class from its time-reversed partner. TSN cannot beat chance (50%) on the pairs; TSM should.
A cheap check of the dataset's design, not of the ResNet recipe (that is `--mode=train`). The JSON
names the machine (`tsm_keras.runtime.machine_info()`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def small_video_net(num_segments, image_size, num_classes, shift):
    import keras

    from tsm_keras.layers import FrameNormalization, TemporalShift

    clips = keras.Input((num_segments, image_size, image_size, 3), dtype="uint8")
    x = FrameNormalization()(clips)
    x = keras.ops.reshape(x, (-1, image_size, image_size, 3))  # frames of a clip consecutive
    for filters in (32, 64, 96, 128):
        if shift:
            x = TemporalShift(num_segments, shift_div=4)(x)
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(num_classes)(x)
    x = keras.ops.mean(keras.ops.reshape(x, (-1, num_segments, num_classes)), axis=1)
    return keras.Model(clips, x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--root", default="")
    parser.add_argument("--models", default="tsm,tsn", help="comma-separated subset of tsm,tsn")
    args = parser.parse_args()
    from tsm_keras import runtime  # first: turns oneDNN on before TensorFlow loads

    import keras
    import tensorflow as tf

    from tsm_keras.config import Config
    from tsm_keras.data import build_dataset
    from tsm_keras.data.synthetic import SYNTHETIC_CLASSES

    config = Config(data_format="synthetic", data_root=args.root, num_classes=len(SYNTHETIC_CLASSES),
                    num_segments=8, image_size=args.image_size, scale_size=args.image_size, flip=False,
                    batch_size=args.batch_size, seed=0)
    train = build_dataset(config, "train")
    val = build_dataset(config, "val")
    results = {}
    for name, shift in (("tsm", True), ("tsn", False)):
        if name not in args.models.split(","):
            continue
        keras.utils.set_random_seed(0)
        model = small_video_net(8, args.image_size, len(SYNTHETIC_CLASSES), shift)
        model.compile(optimizer=keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(train, epochs=args.epochs, verbose=0)
        logits, labels = [], []
        for clips, y in val:
            logits.append(model(clips, training=False).numpy())
            labels.append(y.numpy())
        logits, labels = np.concatenate(logits), np.concatenate(labels)
        top1 = float(np.mean(logits.argmax(1) == labels))
        partner = labels ^ 1  # classes 2k and 2k+1 are time-reverses
        rows = np.arange(len(labels))
        pair = float(np.mean(logits[rows, labels] > logits[rows, partner]))
        results[name] = dict(val_top1=round(top1, 3), pair_accuracy=round(pair, 3),
                             train_seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(dict(benchmark="synthetic_learnability", epochs=args.epochs, image_size=args.image_size,
                          num_val=int(len(labels)), tensorflow=tf.__version__, machine=runtime.machine_info(),
                          results=results), indent=2))


if __name__ == "__main__":
    main()
