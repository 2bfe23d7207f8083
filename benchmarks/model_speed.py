"""TSM vs TSN speed on this machine: forward and train-step clips/s, same backbone and batch.

    python benchmarks/model_speed.py [--backbone=resnet50 --batch_size=1 --image_size=224
                                      --num_segments=8 --rounds=5 --steps=3 --precision=float32]

Prints one JSON object. TSM and TSN are measured in alternating rounds within the same process
(so drift in machine load hits both), and the ratio TSM time / TSN time is reported per mode.

`shift_floor` times the model's temporal shifts alone on tensors of their input shapes, and a plain
memory copy of the same tensors (a multiply by a variable holding 1: Eigen's multi-threaded
elementwise pass, faster here than DeepCopy's memcpy): any shift that writes its output costs at least that
copy, so `copy_over_tsn_forward` is the inference overhead no materialized shift can go below.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tsm_keras  # noqa: E402  (first: turns oneDNN on before TensorFlow loads)
from tsm_keras import runtime  # noqa: E402

import numpy as np  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("backbone", "resnet50", "Backbone.")
flags.DEFINE_integer("batch_size", 1, "Clips per step.")
flags.DEFINE_integer("image_size", 224, "Frame size.")
flags.DEFINE_integer("num_segments", 8, "Frames per clip.")
flags.DEFINE_integer("rounds", 5, "Alternating TSM/TSN rounds; the median round time is reported.")
flags.DEFINE_integer("steps", 3, "Steps per round.")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_bfloat16", "mixed_float16"], "Dtype policy.")
FLAGS = flags.FLAGS


def make_steps(shift):
    model = tsm_keras.build_tsm(400, num_segments=FLAGS.num_segments, backbone=FLAGS.backbone, shift=shift,
                                image_size=FLAGS.image_size)
    optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def forward(x):
        return model(x, training=False)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return forward, train_step


def shift_floor(rounds, steps):
    """(seconds of all shifts, seconds of copying the same tensors) per forward, medians over rounds."""
    model = tsm_keras.build_tsm(400, num_segments=FLAGS.num_segments, backbone=FLAGS.backbone,
                                image_size=FLAGS.image_size)
    shifts = [layer for layer in model._flatten_layers() if isinstance(layer, tsm_keras.TemporalShift)]
    frames = FLAGS.batch_size * FLAGS.num_segments
    tensors = [tf.random.stateless_normal((frames,) + tuple(layer.input.shape[1:]), seed=(i, 1),
                                          dtype=keras.mixed_precision.dtype_policy().compute_dtype)
               for i, layer in enumerate(shifts)]

    @tf.function
    def shift_all(xs):
        return tf.add_n([tf.reduce_sum(layer(x)[0, 0, 0]) for layer, x in zip(shifts, xs)])

    one = tf.Variable(1.0, dtype=tensors[0].dtype)  # a variable, so Grappler cannot fold the multiply away

    @tf.function
    def copy_all(xs):
        return tf.add_n([tf.reduce_sum((x * one)[0, 0, 0]) for x in xs])

    times = {shift_all: [], copy_all: []}
    for fn in times:
        timed(fn, (tensors,), 1)
    for _ in range(rounds):
        for fn in times:
            times[fn].append(timed(fn, (tensors,), steps))
    return float(np.median(times[shift_all])), float(np.median(times[copy_all])), len(shifts)


def timed(fn, args, steps):
    start = time.perf_counter()
    for _ in range(steps):
        result = fn(*args)
    float(tf.reduce_sum(result))  # wait for the last step
    return (time.perf_counter() - start) / steps


def main(argv):
    del argv
    keras.mixed_precision.set_dtype_policy(FLAGS.precision)
    shape = (FLAGS.batch_size, FLAGS.num_segments, FLAGS.image_size, FLAGS.image_size, 3)
    x = tf.random.stateless_normal(shape, seed=(1, 2))
    y = tf.zeros((FLAGS.batch_size,), tf.int32)
    steps = {name: make_steps(shift) for name, shift in (("tsm", "bidirectional"), ("tsn", "none"))}
    for forward, train_step in steps.values():  # trace and warm up
        timed(forward, (x,), 1)
        timed(train_step, (x, y), 1)
    times = {(name, mode): [] for name in steps for mode in ("forward", "train_step")}
    for _ in range(FLAGS.rounds):
        for name, (forward, train_step) in steps.items():
            times[(name, "forward")].append(timed(forward, (x,), FLAGS.steps))
            times[(name, "train_step")].append(timed(train_step, (x, y), FLAGS.steps))
    result = {
        "benchmark": "model_speed",
        "machine": runtime.machine_info(),
        "config": {"backbone": FLAGS.backbone, "batch_size": FLAGS.batch_size, "num_segments": FLAGS.num_segments,
                   "image_size": FLAGS.image_size, "precision": FLAGS.precision, "rounds": FLAGS.rounds,
                   "steps_per_round": FLAGS.steps},
    }
    for mode in ("forward", "train_step"):
        med = {name: float(np.median(times[(name, mode)])) for name in steps}
        result[mode] = {
            "tsm_clips_per_s": FLAGS.batch_size / med["tsm"],
            "tsn_clips_per_s": FLAGS.batch_size / med["tsn"],
            "tsm_over_tsn_time": med["tsm"] / med["tsn"],
        }
    shift_s, copy_s, count = shift_floor(FLAGS.rounds, FLAGS.steps)
    tsn_forward = FLAGS.batch_size / result["forward"]["tsn_clips_per_s"]
    result["shift_floor"] = {"shifts": count, "shift_seconds": shift_s, "copy_seconds": copy_s,
                             "shift_over_tsn_forward": shift_s / tsn_forward,
                             "copy_over_tsn_forward": copy_s / tsn_forward}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
