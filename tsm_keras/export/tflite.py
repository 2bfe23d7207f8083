"""TFLite export: float32, float16 weights, and dynamic-range int8 weights.

Graph: input `clips` float32 `[batch, T, S, S, 3]` RGB 0-255, centre-cropped; outputs `logits` and
`probabilities` float32 `[batch, classes]` (normalization inside, as in the ONNX export).

Agreement with the Keras model (max |logit diff| / max(1, max |logit|); `tests/export/test_tflite.py`
asserts the tolerance, brackets give what a ResNet-18 TSM at 4x64^2 measures):
    float32       1e-4  [1e-6]  same arithmetic, different kernels (XNNPACK)
    float16       5e-3  [6e-4]  weights stored as float16, computed in float32; half the file size
    dynamic_int8  1e-1  [2e-2]  int8 weights per channel, activations quantized on the fly; a quarter
                                of the size and top-1 kept in the test, but check accuracy on your
                                validation list before serving it
"""

import tempfile
import warnings

import numpy as np
import tensorflow as tf

import keras

from tsm_keras.errors import UsageError
from tsm_keras.models.inference import ClipClassifier, inference_form, model_input_spec

QUANTIZATIONS = ("float32", "float16", "dynamic_int8")


def export_tflite(model, path, quantization="float32", batch_size=1, fold_batchnorm=True):
    """Write `model` as a `.tflite` flatbuffer at `path`; return `path`.

    `batch_size=1` gives a fixed-shape model (what mobile delegates want); None keeps it dynamic
    (resize the input tensor before allocating). `fold_batchnorm` exports the inference form
    (BatchNorm folded into the convs).
    """
    model = inference_form(model, fold_batchnorm)
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"tflite_quant must be one of {QUANTIZATIONS}, got {quantization!r}.")
    num_segments, image_size = model_input_spec(model)
    if image_size is None:
        raise ValueError("TFLite export needs a model built with a fixed image_size.")
    classifier = ClipClassifier(model)
    spec = tf.TensorSpec([batch_size, num_segments, image_size, image_size, 3], tf.float32, name="clips")

    def clips_to_scores(clips):
        logits = classifier(clips)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    # Through a SavedModel, as Keras' own LiteRT export does: converting a concrete function
    # directly loses the Keras 3 variables (the flatbuffer comes out without weights).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", clips_to_scores, input_signature=[spec])
    with tempfile.TemporaryDirectory() as saved_model_dir:
        archive.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        flatbuffer = _convert(converter, quantization)
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def _convert(converter, quantization):
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic_int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


class TFLiteRunner:
    """Run a `.tflite` file from `export_tflite`: `runner(clips)` -> {"logits", "probabilities"}.

    Uses `tf.lite.Interpreter` (deprecated in favour of the `ai_edge_litert` package, which has
    the same API: `from ai_edge_litert.interpreter import Interpreter`).
    """

    def __init__(self, path, threads=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, clips):
        return self.runner(clips=np.asarray(clips, np.float32))
