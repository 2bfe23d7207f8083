"""PaddleVideo's TSM optimizer recipe against hand-computed numbers and against Paddle itself."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

from tsm_keras.training.optimizer import (FC_BIAS_LR_MULT, FC_KERNEL_LR_MULT, PaddleMomentum,
                                          paddle_recipe_rules)
from tsm_keras.training.schedules import EpochSchedule


def _tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_conv1")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="fc")(x)
    return keras.Model(inputs, outputs)


def test_decay_and_lr_multipliers_follow_paddlevideo_param_attrs():
    model = _tiny_model()
    decay, lr_mult = paddle_recipe_rules(model, weight_decay=1e-4, fc_weight_decay=1e-4)
    assert decay == {"conv1/kernel": 1e-4, "fc/kernel": 1e-4}  # no BN gamma/beta, no FC bias
    assert lr_mult == {"fc/kernel": 5.0, "fc/bias": 10.0}
    assert (FC_KERNEL_LR_MULT, FC_BIAS_LR_MULT) == (5.0, 10.0)
    # UCF-101 fine-tuning: no decay on the backbone, the head keeps its own L2Decay(1e-4).
    decay, _ = paddle_recipe_rules(model, weight_decay=0.0, fc_weight_decay=1e-4)
    assert decay == {"fc/kernel": 1e-4}


def test_tsm_model_rules_cover_every_conv_kernel():
    from tsm_keras.models.tsm import build_tsm

    model = build_tsm(7, num_segments=2, backbone="resnet18", image_size=32)
    decay, lr_mult = paddle_recipe_rules(model, 1e-4, 1e-4)
    conv_kernels = [v.path for v in model.trainable_variables if v.path.endswith("kernel") and "fc" not in v.path]
    assert len(conv_kernels) == 20 and set(conv_kernels) <= set(decay)  # ResNet-18: 17 convs + 3 downsamples
    assert not [p for p in decay if "bn" in p or p.endswith("bias")]
    assert set(lr_mult) == {"fc/kernel", "fc/bias"}


def _reference_steps(w, b, grads, lrs, clip, wd_w, mult_b, momentum=0.9):
    """Paddle's update written out by hand: clip -> L2 -> v = m*v + g -> w -= lr*mult*v."""
    w, b = w.copy(), b.copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for (gw, gb), lr in zip(grads, lrs):
        norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        scale = clip / max(norm, clip)
        gw, gb = gw * scale + wd_w * w, gb * scale
        vw, vb = momentum * vw + gw, momentum * vb + gb
        w, b = w - lr * vw, b - lr * mult_b * vb
    return w, b


def _run(grads, schedule, clip=1.0, wd=0.1, mult_b=10.0):
    w = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32), name="w")
    b = keras.Variable(np.array([0.3, 0.0], np.float32), name="b")
    opt = PaddleMomentum(learning_rate=schedule, momentum=0.9, clip_norm=clip, decay={"w": wd}, lr_mult={"b": mult_b})
    for gw, gb in grads:
        opt.apply([keras.ops.convert_to_tensor(gw), keras.ops.convert_to_tensor(gb)], [w, b])
    return np.asarray(w.numpy()), np.asarray(b.numpy())


GRADS = [(np.array([3.0, 0.0, 4.0], np.float32), np.array([0.0, 0.0], np.float32)),  # norm 5: clipped to 1
         (np.array([0.1, 0.2, -0.1], np.float32), np.array([0.2, -0.1], np.float32)),
         (np.array([0.05, -0.1, 0.2], np.float32), np.array([-0.1, 0.3], np.float32)),
         (np.array([0.0, 0.3, 0.1], np.float32), np.array([0.1, 0.1], np.float32))]


def test_momentum_keeps_lr_outside_velocity_across_an_lr_drop():
    # 2 steps per epoch, lr 0.1 in epoch 0 and 0.01 from epoch 1: the drop happens between steps 2 and 3.
    schedule = EpochSchedule("piecewise", [0.1, 0.01], [1], steps_per_epoch=2, epochs=2)
    lrs = [0.1, 0.1, 0.01, 0.01]
    w, b = _run(GRADS, schedule)
    ref_w, ref_b = _reference_steps(np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.0]), GRADS, lrs, 1.0, 0.1, 10.0)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(b, ref_b, rtol=1e-6, atol=1e-7)
    # Hand-computed first step: g_w = [0.6, 0, 0.8] + 0.1*w0 = [0.7, -0.2, 0.85]; w1 = w0 - 0.1*g_w.
    w1, _ = _run(GRADS[:1], schedule)
    np.testing.assert_allclose(w1, [1.0 - 0.07, -2.0 + 0.02, 0.5 - 0.085], rtol=1e-6)
    # Keras SGD's convention (lr inside the velocity) gives other numbers after the drop: the test can tell.
    keras_w = np.array([1.0, -2.0, 0.5])
    keras_b = np.array([0.3, 0.0])
    vw, vb = np.zeros(3), np.zeros(2)
    for (gw, gb), lr in zip(GRADS, lrs):
        norm = np.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        gw, gb = gw * min(1.0, 1.0 / norm) + 0.1 * keras_w, gb * min(1.0, 1.0 / norm)
        vw, vb = 0.9 * vw - lr * gw, 0.9 * vb - lr * 10 * gb
        keras_w, keras_b = keras_w + vw, keras_b + vb
    assert np.abs(keras_w - ref_w).max() > 1e-3


def test_matches_paddle_momentum_with_clip_l2_and_param_lr():
    if importlib.util.find_spec("paddle") is None:
        pytest.skip("paddlepaddle is not installed")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddle_momentum_reference.py")
    grads = json.dumps([[gw.tolist(), gb.tolist()] for gw, gb in GRADS])
    result = subprocess.run([sys.executable, script, grads], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    paddle_values = json.loads(result.stdout.strip().splitlines()[-1])
    schedule = EpochSchedule("piecewise", [0.1, 0.01], [1], steps_per_epoch=2, epochs=2)
    ours_w, ours_b = _run(GRADS, schedule)
    np.testing.assert_allclose(ours_w, paddle_values["w"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours_b, paddle_values["b"], rtol=1e-5, atol=1e-6)


def test_dynamic_loss_scale_skips_non_finite_steps_and_halves_the_scale():
    w = keras.Variable(np.array([1.0, 2.0], np.float32), name="w")
    opt = PaddleMomentum(learning_rate=0.1, clip_norm=0.0, dynamic_loss_scale=True, initial_loss_scale=8.0,
                         loss_scale_period=2)
    opt.apply([keras.ops.convert_to_tensor(np.array([np.inf, 1.0], np.float32))], [w])
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0])
    assert float(opt.loss_scale) == 4.0
    opt.apply([keras.ops.convert_to_tensor(np.array([4.0, 8.0], np.float32))], [w])  # scaled by 4: g = [1, 2]
    np.testing.assert_allclose(w.numpy(), [0.9, 1.8], rtol=1e-6)
    opt.apply([keras.ops.convert_to_tensor(np.array([0.0, 0.0], np.float32))], [w])
    assert float(opt.loss_scale) == 8.0  # two finite steps in a row: doubled
