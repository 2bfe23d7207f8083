"""ONNX export (tf2onnx, the `export` extra) for ONNX Runtime and TensorRT.

Graph: input `clips` float32 `[batch, T, S, S, 3]` RGB on the 0-255 scale, centre-cropped (the
SavedModel's `serving_clips` input); outputs `logits` and `probabilities` float32 `[batch, classes]`.
Normalization is inside. The temporal shift is a depthwise `Conv` with 0/1 taps, so the graph holds
only standard ONNX operators (`check_standard_ops`) and TensorRT builds an engine from it.
"""

import tensorflow as tf

from tsm_keras.models.inference import ClipClassifier, inference_form, model_input_spec

DEFAULT_OPSET = 17
# Operators whose presence we accept: all in the default ai.onnx domain, all supported by
# TensorRT's ONNX parser. Clip is MobileNetV2's ReLU6 (constant min 0 and max 6).
STANDARD_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "Max", "MaxPool", "Mul", "Pad",
    "ReduceMean", "Relu", "Reshape", "Shape", "Slice", "Softmax", "Squeeze", "Sub", "Transpose", "Unsqueeze",
})


def _require_tf2onnx():
    try:
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs tf2onnx and onnx: pip install 'tsm-keras[export]' "
                          "(tf2onnx, onnx, onnxruntime).") from error
    try:  # tf2onnx 1.17 predates NumPy 2; Keras ships the patch it uses for its own ONNX export.
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    except ImportError:
        pass
    return tf2onnx


def export_onnx(model, path, opset=DEFAULT_OPSET, batch_size=None, fold_batchnorm=True):
    """Write `model` as ONNX to `path` (a `.onnx` file); return `path`.

    `batch_size=None` keeps the batch dimension dynamic; `fold_batchnorm` exports the inference
    form (BatchNorm folded into the convs).
    """
    model = inference_form(model, fold_batchnorm)
    tf2onnx = _require_tf2onnx()
    num_segments, image_size = model_input_spec(model)
    if image_size is None:
        raise ValueError("ONNX export needs a model built with a fixed image_size.")
    classifier = ClipClassifier(model)
    spec = tf.TensorSpec([batch_size, num_segments, image_size, image_size, 3], tf.float32, name="clips")

    @tf.function(input_signature=[spec])
    def clips_to_scores(clips):
        logits = classifier(clips)
        return {"logits": tf.identity(logits, name="logits"),
                "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities")}

    tf2onnx.convert.from_function(clips_to_scores, input_signature=[spec], opset=opset,
                                  output_path=str(path))
    return path


def onnx_op_types(path):
    """Sorted `(domain, op_type)` pairs of every node in the ONNX graph at `path`."""
    import onnx

    graph = onnx.load(str(path)).graph
    return sorted({(node.domain or "ai.onnx", node.op_type) for node in graph.node})


def check_standard_ops(path):
    """Raise ValueError if the graph has a node outside the default domain or `STANDARD_OPS`."""
    unexpected = [f"{domain}::{op}" for domain, op in onnx_op_types(path)
                  if domain != "ai.onnx" or op not in STANDARD_OPS]
    if unexpected:
        raise ValueError(f"{path}: non-standard or unvetted ONNX ops {unexpected}; TensorRT may not parse them.")
    return [op for _, op in onnx_op_types(path)]


def onnxruntime_session(path, threads=None):
    """A CPU `onnxruntime.InferenceSession` for `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
