"""TFLite float32 / float16 / dynamic-range int8 against the Keras model, with per-variant tolerances.

Tolerances are on logits, relative to max(1, max |logit|); measured here (ResNet-10, 4x64^2; ResNet-18 in
parentheses, AMD EPYC Zen 4) in brackets:
  float32       1e-4  [5e-7 (9e-7)]  same arithmetic, different kernels (XNNPACK)
  float16       5e-3  [3e-4 (7e-4)]  weights rounded to float16, computed in float32
  dynamic_int8  1e-1  [6e-3 (2e-2)]  int8 weights per channel, activations quantized on the fly; top-1 must hold
"""

import numpy as np
import pytest

TOLERANCES = {"float32": 1e-4, "float16": 5e-3, "dynamic_int8": 1e-1}


@pytest.mark.parametrize("quantization", sorted(TOLERANCES))
def test_tflite_matches_keras(quantization, tiny_tsm, clips, keras_logits, tmp_path):
    from tsm_keras.export.tflite import TFLiteRunner, export_tflite

    path = export_tflite(tiny_tsm, str(tmp_path / f"tsm_{quantization}.tflite"), quantization, batch_size=None)
    out = TFLiteRunner(path, threads=2)(clips)
    scale = max(1.0, float(np.abs(keras_logits).max()))
    error = float(np.abs(out["logits"] - keras_logits).max()) / scale
    assert error <= TOLERANCES[quantization], f"{quantization}: relative logit error {error:.2e}"
    np.testing.assert_array_equal(out["logits"].argmax(1), keras_logits.argmax(1))
    np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, atol=1e-5)


def test_rejects_unknown_quantization(tiny_tsm, tmp_path):
    from tsm_keras.export.tflite import export_tflite

    with pytest.raises(ValueError, match="dynamic_int8"):
        export_tflite(tiny_tsm, str(tmp_path / "x.tflite"), "int4")
