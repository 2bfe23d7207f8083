"""What every layer and model of tsm_keras must pass (after keras-hub's `TestCase.run_layer_test`).

- `check_serialization(obj)`: `get_config` -> `from_config` (through Keras' registry) gives the same
  config, and with `inputs` the same outputs.
- `check_precision(build, inputs)`: under `mixed_float16`, `mixed_bfloat16` and the pure `bfloat16`
  policy (what the bfloat16 export runs), the object builds, computes in the policy's dtype, keeps its
  variables in the policy's variable dtype, and agrees with its float32 self (same weights) to that
  dtype's precision.
- `check_model_saving(model, inputs, tmp_path)`: a `.keras` file reloads to identical outputs.

And `trained_looking(model)`, which gives a freshly built model the weights that make such checks mean something,
and `consumers(model, layer_name)`, the layers that read a layer's output (where a shift sits in the graph).
"""

import os

import keras
import numpy as np

POLICIES = ("mixed_float16", "mixed_bfloat16", "bfloat16")
# Agreement with float32, relative to the largest float32 output: a few units of the dtype's
# rounding (fp16: 2^-11, bf16: 2^-8), compounded over the layers of a network.
TOLERANCE = {"float16": 2e-2, "bfloat16": 8e-2}


def trained_looking(model, seed=0):
    """Random BatchNorm statistics and shifts and a classifier (`fc`) of trained scale, in place; returns `model`.

    At their initial values (mean 0, variance 1, beta 0, fc ~ N(0, 0.001)) BatchNorm is nearly the identity
    and the logits are ~0.001: a wrong statistic or a dropped bias would go unseen by a parity check.
    """
    rng = np.random.default_rng(seed)
    weights = []
    for variable in model.weights:
        value = variable.numpy()
        if "moving_variance" in variable.path:
            value = rng.uniform(0.5, 2.0, value.shape)
        elif "moving_mean" in variable.path or "beta" in variable.path:
            value = rng.normal(0.0, 0.1, value.shape)
        elif "fc" in variable.path:  # kernel and bias: logits of a usable size, not ~0.001
            value = rng.normal(0.0, 0.1, value.shape)
        weights.append(value.astype(np.float32))
    model.set_weights(weights)
    return model


def consumers(model, layer_name):
    """Names of the layers of functional `model` that read the output of `layer_name`."""
    target = model.get_layer(layer_name).output
    return {layer.name for layer in model.layers for node in layer._inbound_nodes
            if any(tensor is target for tensor in keras.tree.flatten(node.input_tensors))}


def _numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _config_without_dtype(obj):
    return {k: v for k, v in obj.get_config().items() if k != "dtype"}


def check_serialization(obj, inputs=None):
    """`obj` (a layer or a model) survives `keras.saving.serialize_keras_object` and back."""
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj)
    assert _config_without_dtype(restored) == _config_without_dtype(obj)
    if inputs is not None:
        expected = obj(inputs)
        if obj.weights:
            restored(inputs)  # build
            restored.set_weights(obj.get_weights())
        np.testing.assert_array_equal(_numpy(restored(inputs)), _numpy(expected))
    return restored


def check_precision(build, inputs, policies=POLICIES, output_dtype=None, weights_from_float32=True):
    """Run `build()` (a new layer or model) under each policy in `policies` against its float32 self.

    `inputs`: a float32 numpy array (cast to the compute dtype for each policy, as a previous layer
    would give it). `output_dtype`: the dtype the output must have (default: the compute dtype; the
    TSM's logits are float32 whatever the policy). Returns {policy: max relative difference}.
    """
    previous = keras.mixed_precision.dtype_policy()
    differences = {}
    try:
        keras.mixed_precision.set_dtype_policy("float32")
        reference_obj = build()
        reference = _numpy(reference_obj(inputs))
        scale = max(float(np.abs(reference).max()), 1e-12)
        for name in policies:
            keras.mixed_precision.set_dtype_policy(name)
            policy = keras.mixed_precision.dtype_policy()
            obj = build()
            x = keras.ops.cast(inputs, policy.compute_dtype) if np.issubdtype(np.asarray(inputs).dtype, np.floating) \
                else inputs
            out = obj(x)
            if weights_from_float32 and reference_obj.weights:
                obj.set_weights(reference_obj.get_weights())
                out = obj(x)
            expected_dtype = output_dtype or policy.compute_dtype
            assert keras.backend.standardize_dtype(out.dtype) == expected_dtype, \
                f"{name}: output {out.dtype}, expected {expected_dtype}"
            for variable in obj.weights:
                if variable.trainable:
                    assert keras.backend.standardize_dtype(variable.dtype) == policy.variable_dtype, \
                        f"{name}: {variable.path} is {variable.dtype}, expected {policy.variable_dtype}"
            difference = float(np.abs(_numpy(out) - reference).max()) / scale
            assert difference <= TOLERANCE[policy.compute_dtype], \
                f"{name}: max |difference| to float32 is {difference:.3g} of the output's range"
            differences[name] = difference
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
    return differences


def check_model_saving(model, inputs, tmp_path):
    """`model.save(.keras)` + `keras.saving.load_model` gives identical outputs."""
    path = os.path.join(str(tmp_path), f"{model.name}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(_numpy(restored(inputs)), _numpy(model(inputs)))
    return restored
