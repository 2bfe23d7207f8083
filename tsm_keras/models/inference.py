"""The inference form of a trained TSM: what evaluation, export and predict run.

- `with_raw_frame_input(model)`: the same network taking raw 0-255 frames (normalization inside).
- `fold_batchnorm(model)`: every Conv+BatchNorm pair merged into one Conv with bias.
- `inference_form(model, precision)`: the graph to serve (folded, float32 or bfloat16).
- `ClipClassifier(model)`: the model as a function of 0-255 float clips, whatever its `normalize_input`.
- `model_input_spec(model)`: (num_segments, image_size) it was built for.
- `at_image_size(model, image_size)`: the same network built for a fixed input size.
"""

import keras
import tensorflow as tf
from keras import layers

from tsm_keras.layers import FrameNormalization
from tsm_keras.models.tsm import INPUT_CONVENTIONS, TSM


def with_raw_frame_input(model):
    """The same network taking raw 0-255 frames: a TSM built with `normalize_input=False` (e.g. a
    converted checkpoint, which expects normalized frames) is rebuilt with the normalization inside,
    in the model's own `input_convention`, and given the same weights. Other models are returned as is.
    """
    if not isinstance(model, TSM) or model.normalize_input:
        return model
    config = dict(model.get_config(), normalize_input=True)
    raw = TSM.from_config(config)
    raw.set_weights(model.get_weights())  # FrameNormalization has no weights: the lists align
    return raw


def fold_batchnorm(model, dtype_policy=None):
    """The inference form of a TSM: every Conv+BatchNorm pair (depthwise convs too) merged into one conv with bias.

    With BatchNorm in inference mode, `bn(conv(x)) = conv(x) * s + (beta - mean * s)` where
    `s = gamma / sqrt(moving_variance + epsilon)`: the kernel's output channels are scaled by `s`
    and the shift becomes the bias. Same outputs to float32 rounding, fewer passes over the
    activations (the export paths use it: serving never trains). Returns a new model;
    the other layers' weights are copied by name. A model already folded is returned as is,
    unless `dtype_policy` (a Keras policy name, e.g. "bfloat16") asks for a rebuild under that policy.
    """
    import numpy as np

    if not isinstance(model, TSM):
        raise TypeError(f"fold_batchnorm needs a TSM model (tsm_keras.build_tsm), got {type(model).__name__}.")
    if model.fold_batchnorm and dtype_policy is None:
        return model
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(dtype_policy or previous)
    try:
        folded = TSM.from_config(dict(model.get_config(), fold_batchnorm=True))
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    batchnorm_after = _batchnorm_after_conv(model)
    for layer in folded.layers:
        weights = [np.asarray(w, np.float64) for w in model.get_layer(layer.name).get_weights()]
        if layer.name in batchnorm_after:
            bn = batchnorm_after[layer.name]
            gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in bn.get_weights())
            scale = gamma / np.sqrt(variance + bn.epsilon)
            # Conv2D kernels are [h, w, in, out], depthwise ones [h, w, channels, 1]: scale the output channels.
            per_channel = scale if isinstance(layer, layers.Conv2D) else scale[:, None]
            weights = [weights[0] * per_channel, beta - mean * scale]
        if weights:
            layer.set_weights([w.astype(np.float32) for w in weights])
    return folded


def _batchnorm_after_conv(model):
    """`{conv layer name: the BatchNormalization layer fed by it}` for the (depthwise) convs without bias,
    read from the graph, so it holds for every backbone's naming."""
    found = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        producer = layer.input._keras_history.operation
        if isinstance(producer, (layers.Conv2D, layers.DepthwiseConv2D)) and not producer.use_bias:
            found[producer.name] = layer
    return found


# inference_form has an argument of that name.
_fold_batchnorm = fold_batchnorm


class ClipClassifier:
    """The Keras TSM model as a function of 0-255 float clips, whatever its `normalize_input`.

    `__call__(clips)`: float32 `[batch, T, S, S, 3]` RGB 0-255 -> float32 logits `[batch, classes]`.
    Normalization follows the model's `input_convention` (mean/std from `INPUT_CONVENTIONS`, the
    one source of truth), applied here when the model does not normalize itself.
    """

    def __init__(self, model):
        self.model = model
        if getattr(model, "normalize_input", False):
            self.normalize = None
        else:
            convention = getattr(model, "input_convention", "imagenet")
            self.normalize = FrameNormalization(**INPUT_CONVENTIONS[convention], name="serving_normalize")

    def __call__(self, clips):
        x = clips if self.normalize is None else self.normalize(clips)
        return tf.cast(self.model(x, training=False), tf.float32)


PRECISIONS = ("float32", "bfloat16")


def inference_form(model, fold_batchnorm=True, precision="float32"):
    """The graph to export: a TSM with BatchNorm folded into its convs (same outputs to float32
    rounding, fewer passes over the activations), or the model as is.

    `precision="bfloat16"`: the folded TSM rebuilt under the `bfloat16` policy: weights stored in
    bfloat16 (half the bytes and no cast per call, against `mixed_bfloat16`, with the same rounding
    of weights), bfloat16 convolutions and activations;
    normalization, the average over time, logits and probabilities stay float32.
    """
    
    if precision not in PRECISIONS:
        raise ValueError(f"export precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "bfloat16":
        if not isinstance(model, TSM):
            raise ValueError(f"a bfloat16 export rebuilds the TSM under the bfloat16 policy; {type(model).__name__} "
                             "is not a TSM (tsm_keras.build_tsm): export it in float32.")
        return _fold_batchnorm(model, dtype_policy="bfloat16")
    if fold_batchnorm and isinstance(model, TSM):
        return _fold_batchnorm(model)
    return model


def model_input_spec(model):
    """(num_segments, image_size) the model was built for; image_size may be None (any size)."""
    config = model.get_config()
    image_size = config.get("image_size")
    if isinstance(image_size, (list, tuple)):
        if image_size[0] != image_size[1]:
            raise ValueError(f"serving crops squares; the model was built for {image_size}.")
        image_size = image_size[0]
    return int(config["num_segments"]), image_size


def at_image_size(model, image_size):
    """The same TSM built for `image_size` (fixed-shape formats: ONNX, TFLite), with the same weights.

    A TSM's weights do not depend on the input size (convolutions, BatchNorm, global pooling, the
    classifier), so a model built with `image_size=None` is rebuilt at the given size and its weights
    copied. A model already at a fixed size is returned as is; a non-TSM model without one is an error.
    """
    if model_input_spec(model)[1] is not None:
        return model
    if not isinstance(model, TSM):
        raise ValueError(f"{type(model).__name__} has no fixed image size and is not a TSM (tsm_keras.build_tsm), "
                         "so it cannot be rebuilt at one: build it with image_size=...")
    if not image_size or int(image_size) < 32:
        raise ValueError(f"the model has no fixed image size: pass --image_size (at least 32), got {image_size!r}")
    fixed = TSM.from_config(dict(model.get_config(), image_size=int(image_size)))
    fixed.set_weights(model.get_weights())
    return fixed
