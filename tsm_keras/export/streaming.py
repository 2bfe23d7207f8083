"""Streaming exports of an online (uni-directional) TSM: SavedModel, TFLite and ONNX of one step.

One step takes one frame and the states (one buffer per shift, `state_<block>_shift_buffer`, see
`tsm_keras.models.streaming`) and returns the frame's scores and the new states; the caller carries
the states from call to call, zeros at the start of a stream. The convention is TF Model Garden's
MoViNet's: a flat dict of named states in and out, an `init_states` signature, a `call` signature.

SavedModel (`export_streaming_saved_model`), `<export_dir>/<version>/`:
    init_states  batch_size int32 []            -> {state_...: float32 [batch_size, h, w, c1]} zeros
    call         frame uint8 [batch, height, width, 3] RGB, any size (short side resized to scale_size,
                 centre crop image_size, normalization: as serving_default does per frame), state_... ->
                 logits, probabilities float32 [batch, classes], top_k_indices int32 [batch, k],
                 top_k_labels string [batch, k], and the new state_... (same names as the inputs)
    serving_default  the same as call (what TF Serving runs when a request names no signature)
    `assets.extra/tsm_export.json` says `"streaming": true` and lists the states.
TFLite (`export_streaming_tflite`), batch 1, signature `call`: frame float32 [1, S, S, 3] RGB 0-255
    centre-cropped, state_... -> logits, probabilities, new state_... (same names); initial states are
    zeros of the input shapes (`TFLiteStreamingRunner.init_states`).
ONNX (`export_streaming_onnx`), batch 1: inputs frame float32 [1, S, S, 3] and state_...; outputs
    logits, probabilities and new_state_... (ONNX names each value once, so an output cannot reuse an
    input's name).

Agreement with the Keras streamed scores over 8 frames (max |logit diff| / max(1, max |logit|); the test's
bound, then what a ResNet-18 online TSM at 64 px measures; tests/export/test_streaming_exports.py):
    SavedModel           1e-5  [2e-6]  BatchNorm folded into the convs
    TFLite float32       1e-4  [2e-6]
    TFLite dynamic_int8  1e-1  [3e-2]  max |probability diff| 1e-2, top-1 kept on every frame; check
                                       accuracy on your validation list before serving it
    ONNX                 1e-4  [2e-6]  ops: Add Concat Conv Gemm GlobalAveragePool MaxPool Mul Pad
                                       ReduceMean Relu Reshape Slice Softmax Squeeze Sub Transpose
"""

import tempfile
import warnings

import numpy as np
import tensorflow as tf

import keras

from tsm_keras.data.augment import resize_and_center_crop
from tsm_keras.errors import UsageError
from tsm_keras.export.saved_model import _check_labels, _jsonable, write_archive
from tsm_keras.export.tflite import QUANTIZATIONS, _convert
from tsm_keras.models.inference import at_image_size, inference_form, model_input_spec, with_raw_frame_input
from tsm_keras.models.streaming import FRAME_INPUT, check_streamable, to_streaming
from tsm_keras.saved_models import DEFAULT_SIGNATURE, INIT_STATES_SIGNATURE, STREAMING_CALL_SIGNATURE

CALL_SIGNATURE = STREAMING_CALL_SIGNATURE
ONNX_NEW_STATE_PREFIX = "new_"


def streaming_form(model, image_size=None, fold_batchnorm=True):
    """The `StreamingTSM` to export: at a fixed image size, taking raw 0-255 frames, BatchNorm folded.

    Each step rebuilds the offline model with the same weights (serving never trains); the result
    streams as `to_streaming(model)` does, to float32 rounding of the folding."""
    check_streamable(model)  # before any rebuild: a bi-directional model fails with the fix in the message
    _, model_image_size = model_input_spec(model)
    image_size = int(image_size or model_image_size or 224)
    if model_image_size is not None and int(model_image_size) != image_size:
        raise UsageError(f"image_size={image_size} but the model was built for {model_image_size}.")
    model = at_image_size(model, image_size)
    model = inference_form(with_raw_frame_input(model), fold_batchnorm)
    return to_streaming(model), image_size


def _state_specs(stream, batch_size):
    return {name: tf.TensorSpec((batch_size,) + tuple(stream.state_shapes[name]), stream.state_dtypes[name],
                                name=name) for name in stream.state_names}


def _step(stream, state_names):
    """`step(frame, *states)` -> (float32 logits, {name: new state}); frame float32 0-255 cropped."""

    def step(frame, *states):
        logits, new_states = stream({FRAME_INPUT: frame, **dict(zip(state_names, states))}, training=False)
        return tf.cast(logits, tf.float32), new_states

    return step


def build_streaming_archive(model, label_names=None, scale_size=256, image_size=None, top_k=5,
                            fold_batchnorm=True):
    """A `keras.export.ExportArchive` with the `init_states` and `call` signatures, and its metadata."""
    stream, image_size = streaming_form(model, image_size, fold_batchnorm)
    if scale_size < image_size:
        raise UsageError(f"scale_size ({scale_size}) must be >= image_size ({image_size}): the short side is "
                         f"resized to scale_size, then an image_size centre crop is taken.")
    num_classes = int(stream.output_shape[0][-1])
    label_names = _check_labels(label_names, num_classes)
    k = max(1, min(int(top_k), num_classes))
    labels = tf.constant(label_names, dtype=tf.string)
    names = list(stream.state_names)
    specs = _state_specs(stream, None)
    step = _step(stream, names)

    def init_states(batch_size):
        return {name: tf.zeros(tf.concat([[batch_size], spec.shape[1:]], 0), spec.dtype)
                for name, spec in specs.items()}

    def call(frame, *states):
        frame = tf.ensure_shape(frame, [None, None, None, 3], name="frame")
        # One frame is a clip of one: the same resize and crop as serving_default's.
        cropped = resize_and_center_crop(frame[:, None], scale_size, image_size)[:, 0]
        logits, new_states = step(cropped, *states)
        probabilities = tf.nn.softmax(logits, axis=-1)
        top = tf.math.top_k(probabilities, k=k)
        return {"logits": logits, "probabilities": probabilities, "top_k_indices": top.indices,
                "top_k_labels": tf.gather(labels, top.indices), **new_states}

    archive = keras.export.ExportArchive()
    archive.track(stream)
    archive.add_endpoint(INIT_STATES_SIGNATURE, init_states,
                         input_signature=[tf.TensorSpec([], tf.int32, name="batch_size")])
    call_signature = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=FRAME_INPUT), *specs.values()]
    archive.add_endpoint(CALL_SIGNATURE, call, input_signature=call_signature)
    # Else the archive makes its first endpoint, init_states, the default: TF Serving's step must be the call.
    archive.add_endpoint(DEFAULT_SIGNATURE, call, input_signature=call_signature)
    metadata = {
        "format": "tsm_keras.saved_model/1",
        "streaming": True,
        "model_config": _jsonable(stream.source_config),
        "image_size": image_size,
        "scale_size": int(scale_size),
        "num_classes": num_classes,
        "top_k": k,
        "label_names": label_names,
        "states": {name: {"shape": [None, *spec.shape[1:]], "dtype": spec.dtype.name} for name, spec in specs.items()},
        "signatures": {
            INIT_STATES_SIGNATURE: {"inputs": {"batch_size": "int32 []"}, "outputs": names},
            CALL_SIGNATURE: {"inputs": {FRAME_INPUT: "uint8 [batch, height, width, 3] RGB", **{
                name: "the state of the previous call (init_states at the start)" for name in names}},
                "outputs": ["logits", "probabilities", "top_k_indices", "top_k_labels", *names]},
            DEFAULT_SIGNATURE: {"same_as": CALL_SIGNATURE},
        },
    }
    return archive, metadata


def export_streaming_saved_model(model, export_dir, label_names=None, scale_size=256, image_size=None, top_k=5,
                                 version=None, verbose=False, fold_batchnorm=True):
    """Write the streaming SavedModel of a uni-directional TSM as `<export_dir>/<version>/`; return that path.

    Versions behave as `export_saved_model`'s: the next integer by default, never overwritten.
    """
    archive, metadata = build_streaming_archive(model, label_names, scale_size, image_size, top_k, fold_batchnorm)
    return write_archive(archive, metadata, export_dir, version, streaming=True, verbose=verbose)


def export_streaming_tflite(model, path, quantization="float32", image_size=None, fold_batchnorm=True):
    """Write the batch-1 streaming step as a `.tflite` flatbuffer with a `call` signature; return `path`."""
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"tflite_quant must be one of {QUANTIZATIONS}, got {quantization!r}.")
    stream, image_size = streaming_form(model, image_size, fold_batchnorm)
    names = list(stream.state_names)
    step = _step(stream, names)

    def call(frame, *states):
        logits, new_states = step(frame, *states)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1), **new_states}

    # Through a SavedModel, as export_tflite does (a concrete function loses the Keras 3 variables).
    archive = keras.export.ExportArchive()
    archive.track(stream)
    archive.add_endpoint(CALL_SIGNATURE, call, input_signature=[
        tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name=FRAME_INPUT),
        *_state_specs(stream, 1).values()])
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[CALL_SIGNATURE])
        flatbuffer = _convert(converter, quantization)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


class TFLiteStreamingRunner:
    """Run a file from `export_streaming_tflite`: `init_states()`, then `runner(frame, states)` per frame
    -> ({"logits", "probabilities"}, new states). `frame`: float32 `[1, S, S, 3]` RGB 0-255, centre-cropped."""

    def __init__(self, path, threads=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(CALL_SIGNATURE)
        self.state_details = {name: detail for name, detail in self.runner.get_input_details().items()
                              if name != FRAME_INPUT}

    def init_states(self):
        return {name: np.zeros(detail["shape"], detail["dtype"]) for name, detail in self.state_details.items()}

    def __call__(self, frame, states):
        outputs = self.runner(**{FRAME_INPUT: np.asarray(frame, np.float32)}, **states)
        new_states = {name: outputs.pop(name) for name in self.state_details}
        return outputs, new_states


def export_streaming_onnx(model, path, opset=None, image_size=None, fold_batchnorm=True):
    """Write the batch-1 streaming step as ONNX at `path`; return `path`. Outputs: logits, probabilities,
    new_<state name> for each state."""
    from tsm_keras.export.onnx import DEFAULT_OPSET, _require_tf2onnx, convert_function

    _require_tf2onnx()
    stream, image_size = streaming_form(model, image_size, fold_batchnorm)
    names = list(stream.state_names)
    step = _step(stream, names)
    signature = [tf.TensorSpec([1, image_size, image_size, 3], tf.float32, name=FRAME_INPUT),
                 *_state_specs(stream, 1).values()]

    @tf.function(input_signature=signature)
    def call(frame, *states):
        logits, new_states = step(frame, *states)
        outputs = {"logits": tf.identity(logits, name="logits"),
                   "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities")}
        for name in names:
            new_name = ONNX_NEW_STATE_PREFIX + name
            outputs[new_name] = tf.identity(new_states[name], name=new_name)
        return outputs

    convert_function(call, signature, opset or DEFAULT_OPSET, output_path=str(path))
    return path
