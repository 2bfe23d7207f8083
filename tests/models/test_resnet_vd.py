"""ResNet-vd (PP-TSM's backbone): size, names, the pooling semantics it needs, the head init, folding.

Logit parity with PaddleVideo's own ResNetTweaksTSM + ppTSMHead is in tests/convert/test_pptsm.py.
"""

import sys
import os

import keras
import numpy as np
import pytest

import tsm_keras
from tsm_keras.models.flops import count_macs
from tsm_keras.layers import NegativeInfinityPadding2D, TemporalShift, UnfusedLeakyReLU

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import check_precision, check_serialization  # noqa: E402


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def paddle_avg_pool_ceil_exclusive(x):
    """Paddle AvgPool2D(2, 2, padding=0, ceil_mode=True, exclusive=True) on NHWC, written from its definition:
    output ceil(H/2) x ceil(W/2); a window sticking out of the input averages the values it covers."""
    n, h, w, c = x.shape
    out = np.zeros((n, -(-h // 2), -(-w // 2), c), np.float64)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    return out


def paddle_max_pool_3x3_s2_p1(x):
    """Paddle MaxPool2D(3, stride=2, padding=1): padding never wins (it is -inf), output floor((H-1)/2)+1."""
    n, h, w, c = x.shape
    out = np.zeros((n, (h - 1) // 2 + 1, (w - 1) // 2 + 1, c), x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            rows, cols = slice(max(2 * i - 1, 0), 2 * i + 2), slice(max(2 * j - 1, 0), 2 * j + 2)
            out[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("size", [(6, 6), (5, 7), (3, 3)])
def test_shortcut_average_pool_is_paddles_ceil_mode(size):
    x = np.random.default_rng(0).normal(size=(2,) + size + (3,)).astype(np.float32)
    got = keras.layers.AveragePooling2D(2, strides=2, padding="same")(x)
    np.testing.assert_allclose(np.asarray(got), paddle_avg_pool_ceil_exclusive(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (19, 38)])
def test_stem_max_pool_ignores_its_padding_on_negative_inputs(size):
    x = np.random.default_rng(1).normal(-3.0, 1.0, size=(2,) + size + (4,)).astype(np.float32)  # all < 0 mostly
    padded = NegativeInfinityPadding2D(1)(x)
    got = keras.layers.MaxPooling2D(3, strides=2, padding="valid")(padded)
    np.testing.assert_array_equal(np.asarray(got), paddle_max_pool_3x3_s2_p1(x))


def test_negative_infinity_padding_serializes_and_keeps_the_policy_dtype():
    layer = NegativeInfinityPadding2D(2)
    x = np.random.default_rng(2).normal(size=(1, 3, 4, 2)).astype(np.float32)
    check_serialization(layer, x)
    assert layer.compute_output_shape((None, 3, None, 2)) == (None, 7, None, 2)
    # With the max pool it is made for (-inf itself would make the float32 comparison nan).
    check_precision(lambda: keras.Sequential([NegativeInfinityPadding2D(1), keras.layers.MaxPooling2D(3, 2)]), x)
    with pytest.raises(ValueError, match="padding"):
        NegativeInfinityPadding2D(-1)


def test_unfused_leaky_relu_is_leaky_relu():
    x = np.random.default_rng(3).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(UnfusedLeakyReLU(0.01)(x)),
                                  np.asarray(keras.layers.LeakyReLU(negative_slope=0.01)(x)))
    check_serialization(UnfusedLeakyReLU(0.02), x)
    check_precision(lambda: UnfusedLeakyReLU(0.01), x)
    with pytest.raises(ValueError, match="negative_slope"):
        UnfusedLeakyReLU(1.5)


def test_folded_vd_model_gives_the_same_logits_inside_a_tf_function():
    """TensorFlow's graph optimizer fuses conv + bias + add + LeakyRelu with slope 0.2 whatever the layer's
    slope; the folded model (what export, predict and eval run, in graphs) must not meet that pattern."""
    import tensorflow as tf

    from tsm_keras.models import fold_batchnorm

    model = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet50_vd", image_size=40, normalize_input=True)
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])
    folded = fold_batchnorm(model)
    clips = rng.integers(0, 256, (2, 2, 40, 40, 3)).astype(np.float32)
    eager = model(clips, training=False).numpy()
    graph = tf.function(lambda x: folded(x, training=False))(clips).numpy()
    np.testing.assert_allclose(graph, eager, rtol=0, atol=1e-4 * np.abs(eager).max())


def test_resnet50_vd_has_paddles_parameter_count_and_pptsm_head_init():
    model = tsm_keras.build_tsm(400, backbone="resnet50_vd")
    # PaddleVideo ResNetTweaksTSM(depth=50)'s trainable parameters: 23,527,264 (test_pptsm.py counts them
    # in Paddle); + 2048*400 + 400.
    assert trainable_count(model) == 23_527_264 + 2048 * 400 + 400
    assert sum(isinstance(layer, TemporalShift) for layer in model.layers) == 16
    kernel = model.get_layer("fc").kernel.numpy()
    assert 0.009 < kernel.std() < 0.011  # ppTSMHead: N(0, 0.01); TSMHead's 0.001 for the plain ResNets
    assert tsm_keras.build_tsm(400, backbone="resnet50").get_layer("fc").kernel.numpy().std() < 0.0011
    names = {layer.name for layer in model.layers}
    assert {"conv1_1", "bn_conv1_1", "conv1_3", "bn_conv1_3", "pool1", "res2a_branch1", "res3a_branch1_pool",
            "res3a_branch1", "bn3a_branch1", "res5c_branch2c"} <= names
    assert "res2a_branch1_pool" not in names and "conv1" not in names  # stage 2's shortcut has no pool (if_first)
    # PaddleClas gives ResNet50_vd 4.35 GFLOPs (multiply-accumulates) per 224^2 frame, R50 4.11.
    macs = count_macs(model, (1, 8, 224, 224, 3))["macs"]
    assert abs(macs - 8 * 4.35e9) / (8 * 4.35e9) < 0.02, macs
    leaky = [layer for layer in model.layers if isinstance(layer, (keras.layers.LeakyReLU, UnfusedLeakyReLU))]
    assert len(leaky) == 3 + 16 * 3 and {layer.negative_slope for layer in leaky} == {0.01}
    assert not any(isinstance(layer, keras.layers.ReLU) for layer in model.layers)


def test_resnet101_vd_names_and_size():
    model = tsm_keras.build_tsm(10, backbone="resnet101_vd")
    assert trainable_count(model) == 42_519_392 + 2048 * 10 + 10  # Paddle's ResNetTweaksTSM(depth=101)
    names = {layer.name for layer in model.layers}
    assert {"res4a_branch1_pool", "res4b1_branch2a", "res4b22_branch2c", "res5c_branch2c"} <= names


def test_odd_sizes_round_up_like_paddle():
    model = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet50_vd", image_size=75)
    # 75 -> conv1_1 38 -> pool1 19 -> 10 -> 5 -> 3 (Paddle: floor((n + 2 - 3) / 2) + 1, ceil(n / 2) on the shortcut)
    assert model.get_layer("res5c_relu").output.shape[1:3] == (3, 3)
    assert model(np.zeros((1, 2, 75, 75, 3), np.float32)).shape == (1, 3)


def test_vd_refuses_stride_in_1x1():
    with pytest.raises(ValueError, match="stride_in_1x1"):
        tsm_keras.build_tsm(3, backbone="resnet50_vd", stride_in_1x1=True)


def test_vd_model_reloads_and_folds_batchnorm(tmp_path):
    from tsm_keras.models import fold_batchnorm

    model = tsm_keras.build_tsm(5, num_segments=2, backbone="resnet50_vd", image_size=64, convention="paddle",
                                normalize_input=True)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])
    clips = rng.integers(0, 256, (1, 2, 64, 64, 3)).astype(np.uint8)
    expected = model(clips, training=False).numpy()
    model.save(tmp_path / "vd.keras")
    reloaded = keras.saving.load_model(tmp_path / "vd.keras")
    assert reloaded.backbone == "resnet50_vd"
    np.testing.assert_array_equal(reloaded(clips, training=False).numpy(), expected)
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    np.testing.assert_allclose(folded(clips, training=False).numpy(), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
