"""TemporalShift against an independent numpy implementation, written from the two papers' codes."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from tsm_keras.layers import FoldTime, FrameNormalization, SegmentConsensus, TemporalShift


def source_frame_numpy(channels, num_segments, shift_div, convention, direction):
    """Per channel, the time offset it reads from (0 = unchanged), straight from the references.

    Official TSM (`shift`): out[:, :-1, :fold] = x[:, 1:, :fold]; out[:, 1:, fold:2*fold] = x[:, :-1, fold:2*fold].
    PaddleVideo (`temporal_shift` kernel): c1 = int(c * ratio), c2 = int(c * 2 * ratio) in float32;
    ic < c1 reads it - 1, c1 <= ic < c2 reads it + 1.
    Online TSM: the first fold reads the previous frame's cached features.
    """
    offsets = np.zeros(channels, int)
    if convention == "tsm":
        fold = channels // shift_div
        c1, c2 = fold, 2 * fold
        first, second = +1, -1
    else:
        ratio = np.float32(1.0 / num_segments)
        c1 = int(np.float32(channels) * ratio)
        c2 = int(np.float32(channels * 2) * ratio)
        first, second = -1, +1
    if direction == "unidirectional":
        offsets[:c1] = -1
    else:
        offsets[:c1] = first
        offsets[c1:c2] = second
    return offsets


def shift_numpy(x, num_segments, offsets):
    """x: [N*T, H, W, C]; out[n, t, ..., c] = x[n, t + offsets[c], ..., c] or 0 outside the clip."""
    nt, h, w, c = x.shape
    clips = x.reshape(nt // num_segments, num_segments, h, w, c)
    out = np.zeros_like(clips)
    for ch in range(c):
        for t in range(num_segments):
            src = t + offsets[ch]
            if 0 <= src < num_segments:
                out[:, t, :, :, ch] = clips[:, src, :, :, ch]
    return out.reshape(x.shape)


def reverse_shift_numpy(u, num_segments, offsets):
    """Adjoint of shift_numpy: d<shift(x), u>/dx."""
    return shift_numpy(u, num_segments, -offsets)


CASES = [
    # (T, C, shift_div): C not divisible by the fold, tiny C, T from 1 to 16
    (1, 8, 8), (2, 16, 8), (3, 13, 8), (4, 24, 4), (5, 37, 8), (8, 64, 8), (8, 30, 8),
    (12, 50, 8), (16, 33, 8), (16, 7, 8), (7, 100, 3),
]


@pytest.mark.parametrize("convention", ["tsm", "paddle"])
@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("num_segments,channels,shift_div", CASES)
def test_shift_matches_numpy(num_segments, channels, shift_div, convention, direction):
    rng = np.random.default_rng(num_segments * 100 + channels)
    x = rng.normal(size=(2 * num_segments, 3, 2, channels)).astype(np.float32)
    layer = TemporalShift(num_segments, shift_div=shift_div, direction=direction, convention=convention)
    offsets = source_frame_numpy(channels, num_segments, shift_div, convention, direction)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), shift_numpy(x, num_segments, offsets))


@pytest.mark.parametrize("convention", ["tsm", "paddle"])
@pytest.mark.parametrize("direction", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("num_segments,channels", [(1, 8), (3, 13), (8, 64), (16, 33)])
def test_shift_gradient_is_reverse_shift(num_segments, channels, convention, direction):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.normal(size=(num_segments, 2, 3, channels)).astype(np.float32))
    upstream = rng.normal(size=x.shape).astype(np.float32)
    layer = TemporalShift(num_segments, direction=direction, convention=convention)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x) * upstream)
    grad = tape.gradient(y, x).numpy()
    offsets = source_frame_numpy(channels, num_segments, 8, convention, direction)
    np.testing.assert_array_equal(grad, reverse_shift_numpy(upstream, num_segments, offsets))


def test_paddle_fold_uses_int_of_twice_ratio():
    # C=12, T=8: int(12/8)=1 but int(2*12/8)=3, so the second group has 2 channels, not 1.
    offsets = source_frame_numpy(12, 8, 8, "paddle", "bidirectional")
    assert list(offsets[:4]) == [-1, 1, 1, 0]
    x = np.arange(8 * 12, dtype=np.float32).reshape(8, 1, 1, 12)
    out = keras.ops.convert_to_numpy(TemporalShift(8, convention="paddle")(x))
    np.testing.assert_array_equal(out, shift_numpy(x, 8, offsets))


def test_shift_with_unknown_batch_and_spatial_size_in_a_model():
    inputs = keras.Input((None, None, 16))
    model = keras.Model(inputs, TemporalShift(4)(inputs))
    x = np.random.default_rng(0).normal(size=(8, 5, 3, 16)).astype(np.float32)
    offsets = source_frame_numpy(16, 4, 8, "tsm", "bidirectional")
    np.testing.assert_array_equal(model.predict(x, verbose=0), shift_numpy(x, 4, offsets))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_shift_keeps_compute_dtype(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    layer = TemporalShift(4)
    x = keras.ops.cast(np.random.default_rng(1).normal(size=(8, 2, 2, 16)), layer.compute_dtype)
    y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == layer.compute_dtype == policy.split("_")[1]
    offsets = source_frame_numpy(16, 4, 8, "tsm", "bidirectional")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32")),
                                  shift_numpy(keras.ops.convert_to_numpy(keras.ops.cast(x, "float32")), 4, offsets))


def test_layers_serialize_round_trip():
    for layer in [TemporalShift(6, shift_div=4, direction="unidirectional", convention="paddle", shift_ratio=0.2),
                  FrameNormalization(channel_order="bgr"), FoldTime(), SegmentConsensus(5)]:
        restored = keras.layers.deserialize(keras.layers.serialize(layer))
        assert type(restored) is type(layer)
        config = layer.get_config()
        assert {k: v for k, v in restored.get_config().items() if k != "dtype"} == \
               {k: v for k, v in config.items() if k != "dtype"}


def test_compute_output_shapes():
    assert TemporalShift(8).compute_output_shape((16, 7, 7, 32)) == (16, 7, 7, 32)
    assert FoldTime().compute_output_shape((2, 8, 7, 7, 3)) == (16, 7, 7, 3)
    assert FoldTime().compute_output_shape((None, 8, None, None, 3)) == (None, None, None, 3)
    assert SegmentConsensus(8).compute_output_shape((16, 10)) == (2, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_segments=0), "num_segments"),
    (dict(num_segments=8, direction="forward"), "direction"),
    (dict(num_segments=8, convention="mmaction"), "convention"),
    (dict(num_segments=8, shift_div=0), "shift_div"),
])
def test_shift_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemporalShift(**kwargs)


def test_frame_normalization_matches_numpy_for_uint8_and_float():
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 4, 4, 3)).astype(np.uint8)
    mean = np.array([0.485, 0.456, 0.406]) * 255
    std = np.array([0.229, 0.224, 0.225]) * 255
    expected = (frames.astype(np.float64) - mean) / std
    for x in (frames, frames.astype(np.float32)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(FrameNormalization()(x)), expected, rtol=1e-5, atol=1e-5)
    bgr = keras.ops.convert_to_numpy(FrameNormalization(mean=(1, 2, 3), std=(1, 1, 1), channel_order="bgr")(frames))
    np.testing.assert_allclose(bgr, frames[..., ::-1].astype(np.float32) - np.array([1, 2, 3]), atol=1e-5)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_fused_batchnorm_matches_keras_batchnorm(policy):
    """Outputs, gradients and moving statistics (biased variance) as Keras' own layer, training and inference."""
    from tsm_keras.layers import FusedBatchNormalization

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        rng = np.random.default_rng(0)
        x = tf.constant(rng.normal(1.0, 2.0, (4, 6, 6, 5)).astype(np.float32))
        weights = [rng.uniform(0.5, 1.5, 5), rng.normal(0, 1, 5), rng.normal(0, 1, 5), rng.uniform(0.5, 2, 5)]
        # A loss that is not constant per channel, so that the input gradient is not zero.
        upstream = tf.constant(rng.normal(0.0, 1.0, x.shape).astype(np.float32))
        results = []
        for layer in (keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9),
                      FusedBatchNormalization(epsilon=1e-5, momentum=0.9)):
            layer.build(x.shape)
            layer.set_weights(weights)
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
            grads = tape.gradient(loss, [x] + layer.trainable_variables)
            results.append(dict(dtype=y.dtype, train=np.asarray(tf.cast(y, tf.float32)),
                                grads=[np.asarray(g) for g in grads],
                                moving=[np.asarray(v) for v in layer.non_trainable_variables],
                                infer=np.asarray(tf.cast(layer(x, training=False), tf.float32))))
        keras_bn, fused = results
        tol = 1e-5 if policy == "float32" else 2e-2
        assert fused["dtype"] == keras_bn["dtype"]
        np.testing.assert_allclose(fused["train"], keras_bn["train"], atol=tol * 10)
        np.testing.assert_allclose(fused["infer"], keras_bn["infer"], atol=tol * 10)
        for ours, theirs in zip(fused["grads"], keras_bn["grads"]):
            np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * np.abs(theirs).max())
        for ours, theirs in zip(fused["moving"], keras_bn["moving"]):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    finally:
        keras.mixed_precision.set_global_policy(previous)
