"""Streaming TSM: frame-by-frame scores against the offline uni-directional model, its states, its errors.

The reference is the offline model itself (its shifts are depthwise convolutions over the whole clip,
`StreamingShift` a slice and a concatenation per frame): two independent implementations of the shift.
"""

import os
import sys

import numpy as np
import pytest
import keras

import tsm_keras
from tsm_keras.models.streaming import StreamingTSM, state_name, to_streaming

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import trained_looking  # noqa: E402

SIZE = 32
CLASSES = 5
# T = 1 (no neighbour), 2, lengths that do not divide the channels (3, 5: Paddle's fold C // T rounds), the
# K400 recipe's 8 and 16. Measured max relative error over T = 1..16, every length (both conventions): 0 (the
# shift copies values, and one frame goes through the same per-frame kernels either way); the bound leaves room
# for other CPUs' kernels.
LENGTHS = (1, 2, 3, 5, 8, 16)
PARITY = 1e-5


def online_tsm(num_segments, convention="tsm", backbone="resnet18", **kwargs):
    return tsm_keras.build_tsm(CLASSES, num_segments=num_segments, backbone=backbone, shift="unidirectional",
                               convention=convention, image_size=SIZE, dropout=0.0, normalize_input=True, **kwargs)


def per_frame_scores(model, clips):
    """The offline model's fc outputs before the average over time: `[batch, T, classes]`."""
    frame_scores = keras.Model(model.input, model.get_layer("fc").output)
    return frame_scores(clips, training=False).numpy().reshape(clips.shape[0], clips.shape[1], -1)


def stream_clip(stream, clips):
    """Feed `[batch, T, H, W, 3]` frame by frame from zero states: streamed logits `[batch, T, classes]`."""
    states = stream.init_states(clips.shape[0])
    scores = []
    for t in range(clips.shape[1]):
        logits, states = stream({"frame": clips[:, t], **states})
        scores.append(np.asarray(logits))
    return np.stack(scores, axis=1)


@pytest.fixture(scope="module")
def weights_by_convention():
    return {convention: trained_looking(online_tsm(8, convention)).get_weights() for convention in ("tsm", "paddle")}


@pytest.mark.parametrize("convention", ["tsm", "paddle"])
def test_streamed_frames_reproduce_the_offline_model(convention, weights_by_convention):
    clips = np.random.default_rng(1).uniform(0, 255, (2, max(LENGTHS), SIZE, SIZE, 3)).astype(np.float32)
    # With convention="tsm" the shift (C // shift_div) does not depend on T: one stream serves all lengths.
    # With "paddle" the offline model's ratio is 1/num_segments, so each length streams its own model.
    shared_stream = None
    worst = 0.0
    for length in LENGTHS:
        offline = online_tsm(length, convention)
        offline.set_weights(weights_by_convention[convention])
        if convention == "tsm":
            shared_stream = shared_stream or to_streaming(offline)
            stream = shared_stream
        else:
            stream = to_streaming(offline)
        clip = clips[:, :length]
        reference = per_frame_scores(offline, clip)
        streamed = stream_clip(stream, clip)
        error = float(np.abs(streamed - reference).max() / np.abs(reference).max())
        worst = max(worst, error)
        assert error <= PARITY, f"T={length}: relative error {error:.2e}"
        clip_logits = offline(clip, training=False).numpy()
        np.testing.assert_allclose(streamed.mean(axis=1), clip_logits, rtol=1e-5, atol=1e-6 * np.abs(clip_logits).max())
    # The check is sensitive: dropping the carried states (zeros at every frame) is far off.
    forgetful = np.stack([stream_clip(stream, clip[:, t:t + 1])[:, 0] for t in range(length)], axis=1)
    assert np.abs(forgetful - reference).max() / np.abs(reference).max() > 1e-2
    print(f"{convention}: max relative error over T in {LENGTHS}: {worst:.2e}")


def test_weights_are_the_offline_models(weights_by_convention):
    offline = online_tsm(4)
    stream = to_streaming(offline)
    assert len(stream.weights) == len(offline.weights)
    assert all(a is b for a, b in zip(stream.weights, offline.weights))
    # Training the offline model after the conversion changes the stream too: nothing was copied.
    fc = offline.get_layer("fc")
    before = stream_clip(stream, np.zeros((1, 1, SIZE, SIZE, 3), np.float32))
    fc.bias.assign(fc.bias.numpy() + 1.0)
    np.testing.assert_allclose(stream_clip(stream, np.zeros((1, 1, SIZE, SIZE, 3), np.float32)), before + 1.0,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("convention, num_segments, channels_kept", [
    ("tsm", 4, lambda c: c // 8),              # 1/shift_div of the shift's input channels
    ("paddle", 4, lambda c: int(c * 0.25)),    # PaddleVideo: int(C * 1/num_segments)
])
def test_init_states_are_zeros_shaped_like_the_shift_inputs(convention, num_segments, channels_kept):
    offline = online_tsm(num_segments, convention)
    stream = to_streaming(offline)
    shifts = [layer for layer in offline.layers if isinstance(layer, tsm_keras.TemporalShift)]
    states = stream.init_states(3, SIZE)
    assert sorted(states) == sorted(f"state_{layer.name}_buffer" for layer in shifts)
    assert "state_res3a_shift_buffer" in states
    for layer in shifts:
        _, height, width, channels = layer.input.shape
        state = np.asarray(states[state_name(layer.name)])
        assert state.shape == (3, height, width, channels_kept(channels)), layer.name
        assert state.dtype == np.float32 and not state.any()


def test_init_states_of_a_model_without_fixed_size():
    offline = tsm_keras.build_tsm(CLASSES, num_segments=2, backbone="resnet18", shift="unidirectional")
    stream = to_streaming(offline)
    with pytest.raises(ValueError, match="image_size"):
        stream.init_states(1)
    states = stream.init_states(1, 64)
    assert states["state_res2a_shift_buffer"].shape == (1, 16, 16, 8)
    assert states["state_res5b_shift_buffer"].shape == (1, 2, 2, 64)
    logits, new_states = stream({"frame": np.zeros((1, 64, 64, 3), np.float32), **states})
    assert logits.shape == (1, CLASSES)
    assert {name: tuple(x.shape) for name, x in new_states.items()} == {
        name: tuple(x.shape) for name, x in states.items()}


def test_bidirectional_model_cannot_stream():
    offline = tsm_keras.build_tsm(CLASSES, num_segments=2, backbone="resnet18", image_size=SIZE)
    with pytest.raises(ValueError, match="--shift=unidirectional"):
        to_streaming(offline)


def test_tsn_streams_without_states():
    offline = trained_looking(tsm_keras.build_tsm(CLASSES, num_segments=3, backbone="resnet18", shift="none",
                                                  image_size=SIZE, dropout=0.0))
    stream = to_streaming(offline)
    assert isinstance(stream, StreamingTSM) and stream.init_states(2) == {}
    clips = np.random.default_rng(2).normal(size=(2, 3, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(stream_clip(stream, clips), per_frame_scores(offline, clips), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone, convention, lengths", [("mobilenetv2", "tsm", (1, 4, 16)),
                                                           ("mobilenetv2_paddle", "paddle", (8,))])
def test_mobilenetv2_streams_like_its_offline_model(backbone, convention, lengths):
    """The online demo's backbone: shifts on the expansion input of the residual blocks, streamed."""
    clips = np.random.default_rng(2).uniform(0, 255, (1, max(lengths), SIZE, SIZE, 3)).astype(np.float32)
    weights, stream = None, None
    for length in lengths:
        offline = online_tsm(length, convention, backbone=backbone)
        if weights is None:
            weights = trained_looking(offline).get_weights()
        offline.set_weights(weights)
        stream = stream if (stream is not None and convention == "tsm") else to_streaming(offline)
        assert len(stream.init_states(1)) == 10  # the ten residual blocks' buffers
        clip = clips[:, :length]
        reference = per_frame_scores(offline, clip)
        error = float(np.abs(stream_clip(stream, clip) - reference).max() / np.abs(reference).max())
        assert error <= PARITY, f"{backbone} T={length}: relative error {error:.2e}"


def test_step_function_streams_like_the_offline_model_and_traces_once():
    """The compiled step gives the offline model's per-frame scores, carrying states, with one trace."""
    offline = online_tsm(4)
    offline.set_weights(trained_looking(offline).get_weights())
    stream = to_streaming(offline)
    step = stream.step_function(2, image_size=SIZE)
    clips = np.random.default_rng(3).uniform(0, 255, (2, 4, SIZE, SIZE, 3)).astype(np.float32)
    states, scores = stream.init_states(2, SIZE), []
    for t in range(clips.shape[1]):
        logits, states = step(clips[:, t], states)
        scores.append(np.asarray(logits))
    reference = per_frame_scores(offline, clips)
    np.testing.assert_allclose(np.stack(scores, axis=1), reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    assert step.experimental_get_tracing_count() == 1
