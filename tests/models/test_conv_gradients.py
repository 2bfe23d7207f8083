"""`tsm_keras.layers.Conv2D`'s GEMM gradients (AVX2-only CPUs) against numpy and against TensorFlow's own.

The reference is written from the definition of a stride-1 "same" convolution,
y[n, h, w, o] = sum_{i, j, c} xpad[n, h + i, w + j, c] * k[i, j, c, o], so for a loss sum(y * g):
dk[i, j, c, o] = sum_{n, h, w} xpad[n, h + i, w + j, c] * g[n, h, w, o] and
dxpad[n, h + i, w + j, c] += sum_o g[n, h, w, o] * k[i, j, c, o].
"""

import numpy as np
import pytest
import keras
import tensorflow as tf

from tsm_keras.layers import Conv2D
from tsm_keras.models.tsm import build_tsm


def conv_gradients_numpy(x, k, g):
    kh, kw = k.shape[:2]
    n, h, w, c = x.shape
    xpad = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    dk = np.zeros_like(k)
    dxpad = np.zeros_like(xpad)
    for i in range(kh):
        for j in range(kw):
            window = xpad[:, i:i + h, j:j + w, :]
            dk[i, j] = np.einsum("nhwc,nhwo->co", window, g)
            dxpad[:, i:i + h, j:j + w, :] += np.einsum("nhwo,co->nhwc", g, k[i, j])
    return dxpad[:, kh // 2:kh // 2 + h, kw // 2:kw // 2 + w, :], dk


def layer_gradients(layer, x, g, training=True):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * g)
    dx, dk, *rest = tape.gradient(loss, [x] + layer.trainable_variables)
    return y.numpy(), dx.numpy(), dk.numpy(), [r.numpy() for r in rest]


@pytest.mark.parametrize("shape, kernel, filters, bias", [
    ((2, 2, 2, 8), (3, 3), 4, False),     # the 1x1-position-per-tap corner (ResNet's last stage at 40 px)
    ((3, 5, 4, 6), (3, 3), 5, True),      # non-square input, bias
    ((1, 6, 6, 3), (5, 5), 2, False),     # a larger odd kernel
    ((2, 4, 7, 3), (1, 3), 4, False),     # non-square kernel
])
def test_gemm_gradients_equal_the_definition(monkeypatch, shape, kernel, filters, bias):
    monkeypatch.setenv("TSM_KERAS_CONV_GRADIENTS", "gemm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32)
    layer = Conv2D(filters, kernel, padding="same", use_bias=bias, bias_initializer="random_normal")
    layer.build(shape)
    assert layer._gemm_gradients(x)
    y_native = keras.layers.Conv2D.call(layer, tf.constant(x)).numpy()
    g = rng.normal(size=y_native.shape).astype(np.float32)
    y, dx, dk, rest = layer_gradients(layer, x, g)
    dx_ref, dk_ref = conv_gradients_numpy(x, layer.kernel.numpy(), g)
    np.testing.assert_allclose(y, y_native, atol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(rest[0], g.sum((0, 1, 2)), rtol=1e-4, atol=1e-4)
    # The same as TensorFlow's own backprop kernels.
    monkeypatch.setenv("TSM_KERAS_CONV_GRADIENTS", "native")
    _, dx_native, dk_native, _ = layer_gradients(layer, x, g)
    np.testing.assert_allclose(dx, dx_native, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dk, dk_native, rtol=1e-4, atol=1e-4)


def test_only_stride1_same_odd_convs_take_the_gemm_path():
    x = np.zeros((1, 7, 7, 4), np.float32)
    assert Conv2D(4, 3, padding="same")._gemm_gradients(x)
    assert not Conv2D(4, 3, padding="same")._gemm_gradients(np.zeros((1, 8, 7, 4), np.float32))  # > 49 positions
    assert not Conv2D(4, 1, padding="same")._gemm_gradients(x)           # a 1x1 conv: mixed results, native
    assert not Conv2D(4, 3, strides=2, padding="same")._gemm_gradients(x)
    assert not Conv2D(4, 3, padding="valid")._gemm_gradients(x)
    assert not Conv2D(4, 2, padding="same")._gemm_gradients(x)           # even: "same" pads asymmetrically
    assert not Conv2D(4, 3, padding="same", dilation_rate=2)._gemm_gradients(x)
    assert not Conv2D(4, 3, padding="same", groups=2)._gemm_gradients(x)


def test_gemm_gradients_under_mixed_bfloat16(monkeypatch):
    monkeypatch.setenv("TSM_KERAS_CONV_GRADIENTS", "gemm")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    layer = Conv2D(8, 3, padding="same", dtype="mixed_bfloat16")
    layer.build(x.shape)
    g = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    y, dx, dk, _ = layer_gradients(layer, x, g)
    assert y.dtype == tf.bfloat16.as_numpy_dtype and layer.kernel.dtype == "float32"
    x_rounded = tf.cast(tf.cast(x, tf.bfloat16), tf.float32).numpy()
    k_rounded = tf.cast(tf.cast(layer.kernel, tf.bfloat16), tf.float32).numpy()
    dx_ref, dk_ref = conv_gradients_numpy(x_rounded, k_rounded, g)
    np.testing.assert_allclose(dk, dk_ref, rtol=0.05, atol=0.1)       # bfloat16 has 8 bits of mantissa
    np.testing.assert_allclose(dx, dx_ref, rtol=0.05, atol=0.1)


def test_a_tsm_training_step_has_the_same_gradients_either_way(monkeypatch):
    model = build_tsm(5, num_segments=2, backbone="resnet18", image_size=32, dropout=0.0)
    clips = tf.random.stateless_normal([2, 2, 32, 32, 3], seed=[0, 1])
    labels = tf.constant([1, 3])
    grads = {}
    for kind in ("native", "gemm"):
        monkeypatch.setenv("TSM_KERAS_CONV_GRADIENTS", kind)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                    labels, model(clips, training=True), from_logits=True))
            return tape.gradient(loss, model.trainable_variables)

        grads[kind] = [g.numpy() for g in step()]
        graph = step.get_concrete_function().graph
        backprop_filters = [op for op in graph.get_operations() if op.type == "Conv2DBackpropFilter"]
        # native: all 20 convs; gemm: the 3 stride-1 3x3s of stages 3-5 (4x4, 2x2, 1x1 at 32 px) are GEMMs,
        # the strided ones (stem, first 3x3 and 1x1 shortcut of stages 3-5) and stage 2's (8x8 > 7x7) are not.
        assert len(backprop_filters) == (20 if kind == "native" else 11), (kind, len(backprop_filters))
    for variable, a, b in zip(model.trainable_variables, grads["native"], grads["gemm"]):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5 * max(1.0, np.abs(a).max()), err_msg=variable.path)
    # Inference is Keras' own conv whatever the setting: exported graphs do not change.
    monkeypatch.setenv("TSM_KERAS_CONV_GRADIENTS", "gemm")
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(clips).graph
    assert not [op for op in graph.get_operations() if op.type in ("IdentityN", "MatMul") and "Conv2D" in op.name]
