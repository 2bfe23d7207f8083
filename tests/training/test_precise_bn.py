"""Precise BN (PaddleVideo do_preciseBN) against numpy: after a pass over M batches every BatchNorm's moving
mean/variance is the mean over those batches of the per-batch mean/(biased) variance of that layer's input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tsm_keras.layers import FusedBatchNormalization
from tsm_keras.models import build_tsm
from tsm_keras.training.precise_bn import (batch_norm_layers, check_precise_bn, precise_bn_due,
                                           recompute_batch_norm_statistics)


def _reference(model, layers, batches):
    """numpy: mean over batches of each BN input's per-channel batch mean and biased variance, the inputs taken
    in training mode (a BN after another sees the one before normalized with its batch statistics)."""
    taps = keras.Model(model.inputs, [layer.input for layer in layers])
    means, variances = [[] for _ in layers], [[] for _ in layers]
    for clips in batches:
        outputs = taps(clips, training=True)
        for i, x in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            means[i].append(x.mean(0))
            variances[i].append(x.var(0))  # ddof=0: Paddle's and Keras' moving variance
    return [np.mean(m, 0) for m in means], [np.mean(v, 0) for v in variances]


def _small_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = FusedBatchNormalization(momentum=0.9, name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(5, 3)(x)
    x = FusedBatchNormalization(momentum=0.9, name="bn_b")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_moving_statistics_are_the_mean_over_the_batches():
    model = _small_model()
    rng = np.random.default_rng(0)
    # Batches with different statistics, so a running (momentum) average or the last batch would differ.
    batches = [(rng.normal(size=(4, 6, 6, 3)) * (1 + i) + i).astype(np.float32) for i in range(3)]
    layers = batch_norm_layers(model)
    assert [layer.name for layer in layers] == ["bn_a", "bn_b"]
    for layer in layers:  # stale statistics the pass must replace
        layer.moving_mean.assign(np.full(layer.moving_mean.shape, 7.0, np.float32))
        layer.moving_variance.assign(np.full(layer.moving_variance.shape, 9.0, np.float32))
    expected_means, expected_vars = _reference(model, layers, batches)
    weights = [w.copy() for w in model.get_weights()]
    trainable = [v.numpy().copy() for v in model.trainable_variables]

    assert recompute_batch_norm_statistics(model, ((b, np.zeros(4)) for b in batches), 3) == 2
    for layer, mean, var in zip(layers, expected_means, expected_vars):
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.moving_variance.numpy(), var, rtol=1e-5, atol=1e-6)
        assert layer.momentum == 0.9
    for before, after in zip(trainable, model.trainable_variables):
        np.testing.assert_array_equal(before, after.numpy())
    assert len(weights) == len(model.get_weights())


def test_first_batch_norm_of_a_tsm_model():
    model = build_tsm(num_classes=3, num_segments=2, backbone="resnet18", image_size=32, normalize_input=True)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (2, 2, 32, 32, 3)).astype(np.float32) for _ in range(2)]
    first = batch_norm_layers(model)[0]
    assert first.name == "bn_conv1"
    (mean,), (var,) = _reference(model, [first], batches)
    recompute_batch_norm_statistics(model, [(b, None) for b in batches], 2)
    np.testing.assert_allclose(first.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first.moving_variance.numpy(), var, rtol=1e-4, atol=1e-4)


def test_prepare_transforms_each_batch_first():
    model = _small_model()
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(4, 6, 6, 3)).astype(np.float32) for _ in range(2)]
    layers = batch_norm_layers(model)
    expected_means, _ = _reference(model, layers, [b * 3.0 for b in batches])
    recompute_batch_norm_statistics(model, [(b, None) for b in batches], 2, prepare=lambda x, y, i: x * 3.0)
    np.testing.assert_allclose(layers[0].moving_mean.numpy(), expected_means[0], rtol=1e-5, atol=1e-6)


def test_too_few_batches_fail_clearly():
    model = _small_model()
    with pytest.raises(RuntimeError, match="precise BN needs 3 training batches but the data gave 1"):
        recompute_batch_norm_statistics(model, [(np.zeros((2, 6, 6, 3), np.float32), None)], 3)
    assert all(layer.momentum == 0.9 for layer in batch_norm_layers(model))


def test_schedule_is_paddlevideos():
    # PaddleVideo: after 0-based epoch e when e % interval == 0 or e == epochs - 1.
    assert [e for e in range(12) if precise_bn_due(e, 5, 12)] == [0, 5, 10, 11]
    assert [e for e in range(3) if precise_bn_due(e, 1, 3)] == [0, 1, 2]
    assert not any(precise_bn_due(e, 0, 12) for e in range(12))


def test_several_replicas_are_refused():
    check_precise_bn(5, 200, 1)
    check_precise_bn(0, 200, 4)
    with pytest.raises(ValueError, match="one replica only, this strategy has 2"):
        check_precise_bn(5, 200, 2)
    with pytest.raises(ValueError, match="--precise_bn_steps >= 1"):
        check_precise_bn(5, 0, 1)
