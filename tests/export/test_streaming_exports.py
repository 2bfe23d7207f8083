"""Streaming exports (SavedModel, TFLite, ONNX) carrying states across calls, against the Keras streamed scores.

The reference is `to_streaming` of the Keras model (itself checked against the offline model in
tests/models/test_streaming.py), fed frame by frame; the exports fold BatchNorm, so they agree to rounding.
Measured here (ResNet-18 online TSM, 64 px, 8 frames; max |logit diff| / max(1, max |logit|)), with the
asserted bound first:
    SavedModel     1e-5   [2e-6]
    TFLite float32 1e-4   [2e-6]
    TFLite int8    1e-1   [3e-2]  (max |probability diff| ~1e-2 printed by the test; top-1 kept)
    ONNX           1e-4   [2e-6]
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from export_fixtures import IMAGE_SIZE, LABELS, SCALE_SIZE, scale_head

FRAMES = 8
TOLERANCES = {"float32": 1e-4, "dynamic_int8": 1e-1}


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def online_tsm():
    import keras

    from tsm_keras import build_tsm

    keras.utils.set_random_seed(0)
    model = build_tsm(len(LABELS), num_segments=4, backbone="resnet18", shift="unidirectional",
                      image_size=IMAGE_SIZE, dropout=0.0, normalize_input=True)
    return scale_head(model)


@pytest.fixture(scope="module")
def frames():
    """uint8 `[2, FRAMES, SCALE_SIZE, 96, 3]`: short side already scale_size, so serving only centre-crops."""
    return np.random.default_rng(2).integers(0, 256, (2, FRAMES, SCALE_SIZE, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def cropped(frames):
    top, left = (SCALE_SIZE - IMAGE_SIZE) // 2, (96 - IMAGE_SIZE) // 2
    return frames[:, :, top:top + IMAGE_SIZE, left:left + IMAGE_SIZE].astype(np.float32)


@pytest.fixture(scope="module")
def keras_streamed(online_tsm, cropped):
    """Keras streamed logits `[batch, FRAMES, classes]` on the centre crops."""
    from tsm_keras import to_streaming

    stream = to_streaming(online_tsm)
    states = stream.init_states(cropped.shape[0])
    logits = []
    for t in range(FRAMES):
        step_logits, states = stream({"frame": cropped[:, t], **states})
        logits.append(np.asarray(step_logits))
    return np.stack(logits, axis=1)


def relative(a, b):
    return float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))


# A fresh interpreter with `-I` and tsm_keras blocked: the streaming SavedModel needs plain TensorFlow only.
FRESH_PROCESS = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tsm_keras":
                raise ImportError("tsm_keras must not be imported here")
    sys.meta_path.insert(0, Block())
    import numpy as np, tensorflow as tf
    saved_model_dir, inputs_path, outputs_path = sys.argv[1:4]
    frames = np.load(inputs_path)["frames"]
    loaded = tf.saved_model.load(saved_model_dir)
    assert sorted(loaded.signatures) == ["call", "init_states", "serving_default"]
    states = loaded.signatures["init_states"](batch_size=tf.constant(frames.shape[0]))
    outputs = {"probabilities": [], "logits": [], "top_k_indices": [], "top_k_labels": []}
    for t in range(frames.shape[1]):
        out = loaded.signatures["call"](frame=tf.constant(frames[:, t]), **states)
        states = {name: out[name] for name in states}
        for key in outputs:
            outputs[key].append(out[key].numpy())
    np.savez(outputs_path, state_names=np.array(sorted(states)),
             **{key: np.stack(values, axis=1) for key, values in outputs.items()})
    assert not any(m.startswith("tsm_keras") for m in sys.modules)
""")


def test_saved_model_streams_in_a_fresh_process_without_tsm_keras(online_tsm, frames, keras_streamed, tmp_path):
    from tsm_keras.export.streaming import export_streaming_saved_model

    path = export_streaming_saved_model(online_tsm, str(tmp_path / "stream"), label_names=LABELS,
                                        scale_size=SCALE_SIZE, top_k=3)
    assert os.path.basename(path) == "1"
    np.savez(tmp_path / "inputs.npz", frames=frames)
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_PROCESS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([sys.executable, "-I", str(script), path, str(tmp_path / "inputs.npz"),
                             str(tmp_path / "outputs.npz")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(np.load(tmp_path / "outputs.npz", allow_pickle=True))  # top_k_labels: bytes objects

    assert relative(out["logits"], keras_streamed) <= 1e-5
    np.testing.assert_allclose(out["probabilities"], softmax(keras_streamed), atol=1e-6)
    top3 = np.argsort(-keras_streamed, axis=-1)[..., :3]
    np.testing.assert_array_equal(out["top_k_indices"], top3)
    assert out["top_k_labels"][0, 0].tolist() == [LABELS[i].encode() for i in top3[0, 0]]
    shifts = [layer.name for layer in online_tsm.layers if layer.name.endswith("_shift")]
    assert out["state_names"].tolist() == sorted(f"state_{name}_buffer" for name in shifts)
    with open(os.path.join(path, "assets.extra", "tsm_export.json")) as f:
        metadata = json.load(f)
    assert metadata["streaming"] is True and sorted(metadata["states"]) == out["state_names"].tolist()
    assert metadata["states"]["state_res2a_shift_buffer"]["shape"] == [None, 16, 16, 8]


@pytest.mark.parametrize("quantization", sorted(TOLERANCES))
def test_tflite_signature_runner_carries_states(quantization, online_tsm, cropped, keras_streamed, tmp_path):
    from tsm_keras.export.streaming import TFLiteStreamingRunner, export_streaming_tflite

    path = export_streaming_tflite(online_tsm, str(tmp_path / f"stream_{quantization}.tflite"), quantization)
    runner = TFLiteStreamingRunner(path, threads=2)
    states = runner.init_states()
    assert states["state_res2a_shift_buffer"].shape == (1, 16, 16, 8)
    logits, probabilities = [], []
    for t in range(FRAMES):
        out, states = runner(cropped[:1, t], states)
        logits.append(out["logits"])
        probabilities.append(out["probabilities"])
    logits, probabilities = np.stack(logits, axis=1), np.stack(probabilities, axis=1)
    reference = keras_streamed[:1]
    error = relative(logits, reference)
    drift = float(np.abs(probabilities - softmax(reference)).max())
    print(f"TFLite {quantization}: relative logit error {error:.2e}, max |probability diff| {drift:.2e}")
    assert error <= TOLERANCES[quantization], f"{quantization}: relative logit error {error:.2e}"
    np.testing.assert_array_equal(logits.argmax(-1), reference.argmax(-1))


def test_onnx_step_has_standard_ops_and_streams(online_tsm, cropped, keras_streamed, tmp_path):
    from tsm_keras.export.onnx import check_standard_ops, onnxruntime_session
    from tsm_keras.export.streaming import export_streaming_onnx

    path = export_streaming_onnx(online_tsm, str(tmp_path / "stream.onnx"))
    ops = check_standard_ops(path)
    print("ONNX streaming step ops:", ", ".join(ops))
    session = onnxruntime_session(path, threads=2)
    output_names = [output.name for output in session.get_outputs()]
    states = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != "frame"}
    assert "state_res3a_shift_buffer" in states and "new_state_res3a_shift_buffer" in output_names
    logits = []
    for t in range(FRAMES):
        out = dict(zip(output_names, session.run(None, {"frame": cropped[:1, t], **states})))
        states = {name: out[f"new_{name}"] for name in states}
        logits.append(out["logits"])
    assert relative(np.stack(logits, axis=1), keras_streamed[:1]) <= 1e-4


def test_bidirectional_model_is_refused_before_any_export(tmp_path):
    from tsm_keras import build_tsm
    from tsm_keras.export.streaming import export_streaming_saved_model

    model = build_tsm(len(LABELS), num_segments=2, backbone="resnet18", image_size=32)
    with pytest.raises(ValueError, match="--shift=unidirectional"):
        export_streaming_saved_model(model, str(tmp_path / "stream"))
    assert not os.path.exists(tmp_path / "stream")


def test_export_mode_writes_each_streaming_format(tmp_path, capsys):
    """`--mode=export --streaming --export_format=saved_model|tflite|onnx` from a `.keras` file; a folder holds
    one kind of SavedModel, and predict says what to do with a streaming one. A ResNet-10 (the formats' numbers
    are the tests above; here, what the mode writes and the agreement it prints)."""
    import keras
    import tensorflow as tf

    import tsm_keras
    from tsm_keras.config import Config
    from tsm_keras.errors import UsageError
    from tsm_keras.export import export_model
    from tsm_keras.export.saved_model import export_saved_model

    keras.utils.set_random_seed(0)
    online_tsm = scale_head(tsm_keras.build_tsm(len(LABELS), num_segments=4, backbone="resnet10",
                                                shift="unidirectional", image_size=IMAGE_SIZE, dropout=0.0,
                                                normalize_input=True))
    source = str(tmp_path / "online.keras")
    online_tsm.save(source)
    config = Config(weights=source, export_dir=str(tmp_path / "online"), num_classes=len(LABELS),
                    image_size=IMAGE_SIZE, scale_size=SCALE_SIZE, streaming=True)
    path = export_model(config)
    assert sorted(tf.saved_model.load(path).signatures) == ["call", "init_states", "serving_default"]
    for export_format in ("tflite", "onnx"):
        export_model(config.replace(export_format=export_format))
        printed = capsys.readouterr().out
        diff = float(printed.rsplit("over 4 frames ", 1)[1].split()[0])
        assert diff <= 1e-4, printed
    assert sorted(os.listdir(tmp_path / "online")) == ["1", "tsm_resnet10_streaming.onnx",
                                                        "tsm_resnet10_streaming_float32.tflite"]

    with pytest.raises(UsageError, match="holds streaming exports"):
        export_saved_model(online_tsm, str(tmp_path / "online"), scale_size=SCALE_SIZE)
    with pytest.raises(UsageError, match="streaming export.*--online"):  # it streams (tests/test_predict_online.py)
        tsm_keras.load(path).predict_video(str(tmp_path / "clip.mp4"))
