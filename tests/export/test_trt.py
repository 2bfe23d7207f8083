"""TF-TRT: on TensorFlow builds without TensorRT (every TF >= 2.18 wheel, this machine) export stops
with a message that says what to use instead, before writing anything."""

import os

import pytest


def test_unavailable_here_with_a_clear_message():
    import tensorflow as tf

    from tsm_keras.export.trt import TensorRTUnavailableError, require_tensorrt, tensorrt_status

    if tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        pytest.skip("this TensorFlow has TensorRT")
    available, reason = tensorrt_status()
    assert not available and "built without TensorRT" in reason
    with pytest.raises(TensorRTUnavailableError) as error:
        require_tensorrt()
    message = str(error.value)
    for needed in (tf.__version__, "TensorFlow <= 2.17", "NVIDIA TensorFlow container", "--export_format=onnx",
                   "trtexec"):
        assert needed in message, needed


@pytest.mark.parametrize("precision", ["FP32", "FP16", "INT8"])
def test_export_mode_stops_before_loading_or_writing(precision, tmp_path):
    import tensorflow as tf

    from tsm_keras.config import Config
    from tsm_keras.export import export_model
    from tsm_keras.export.trt import TensorRTUnavailableError

    if tf.sysconfig.get_build_info().get("is_tensorrt_build", False):
        pytest.skip("this TensorFlow has TensorRT")
    export_dir = tmp_path / "tsm"
    config = Config(mode="export", weights=str(tmp_path / "no-such-weights.keras"), export_dir=str(export_dir),
                    trt_precision=precision)
    with pytest.raises(TensorRTUnavailableError, match="not possible"):
        export_model(config)
    assert not os.path.exists(export_dir)


def test_converter_rejects_unknown_precision():
    from tsm_keras.export.trt import convert_saved_model

    with pytest.raises(ValueError, match="FP32"):
        convert_saved_model("unused", "unused", precision="INT4")
