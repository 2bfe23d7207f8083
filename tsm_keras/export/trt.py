"""TF-TRT: convert an exported SavedModel with `tf.experimental.tensorrt.Converter`.

Only TensorFlow builds with TensorRT can do this: TF <= 2.17 pip wheels on Linux with the TensorRT
libraries installed, or NVIDIA's TensorFlow containers. TF >= 2.18 wheels are built without it.
Where it is missing this stops with `TensorRTUnavailableError`: there is no silent fallback to an
unconverted model.
"""

import os

from tsm_keras.errors import UsageError, UserError

PRECISIONS = ("FP32", "FP16", "INT8")

UNAVAILABLE_HELP = (
    "use TensorFlow <= 2.17 built with TensorRT (Linux pip wheel plus the TensorRT libraries) or an NVIDIA "
    "TensorFlow container (nvcr.io/nvidia/tensorflow), or export ONNX instead "
    "(--export_format=onnx) and build an engine with TensorRT: "
    "`trtexec --onnx=model.onnx --saveEngine=model.plan --fp16`.")


class TensorRTUnavailableError(UserError, RuntimeError):
    """This TensorFlow cannot run TF-TRT."""


def tensorrt_status():
    """(available, reason): whether this TensorFlow can convert with TF-TRT, and why not."""
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    if not build.get("is_tensorrt_build", False):
        return False, (f"TensorFlow {tf.__version__} is built without TensorRT "
                       f"(tf.sysconfig.get_build_info()['is_tensorrt_build'] is False; TF >= 2.18 wheels "
                       f"ship without it)")
    try:
        from tensorflow.python.compiler.tensorrt import trt_convert

        if hasattr(trt_convert, "_pywrap_py_utils") and not trt_convert._pywrap_py_utils.is_tensorrt_enabled():
            return False, f"TensorFlow {tf.__version__} reports TensorRT disabled"
    except Exception as error:  # noqa: BLE001 - any failure here means no TF-TRT
        return False, f"TF-TRT does not load in TensorFlow {tf.__version__}: {error}"
    if not tf.config.list_physical_devices("GPU"):
        return False, "TF-TRT needs an NVIDIA GPU and none is visible to TensorFlow"
    return True, ""


def require_tensorrt():
    """Raise `TensorRTUnavailableError` (with what to do instead) unless TF-TRT can run here."""
    available, reason = tensorrt_status()
    if not available:
        raise TensorRTUnavailableError(f"TF-TRT conversion is not possible: {reason}. To convert, {UNAVAILABLE_HELP}")


def convert_saved_model(saved_model_dir, output_dir, precision="FP16", calibration_clips=None,
                        signature=None):
    """Convert `saved_model_dir` with TF-TRT and write the result to `output_dir`.

    `calibration_clips`: for INT8, an iterable of float32 `[1, T, S, S, 3]` 0-255 clips (for
    instance validation videos through `tsm_keras.data.load_video_clips`), fed to the
    `serving_clips` signature, which the conversion then targets.
    """
    precision = precision.upper()
    if precision not in PRECISIONS:
        raise UsageError(f"trt_precision must be one of {PRECISIONS}, got {precision!r}.")
    require_tensorrt()
    import tensorflow as tf
    from tsm_keras.saved_models import CLIPS_SIGNATURE, DEFAULT_SIGNATURE

    int8 = precision == "INT8"
    if int8 and calibration_clips is None:
        raise UsageError("INT8 TF-TRT needs calibration clips: set --val_list (and --data_root) so that "
                         "validation videos calibrate the ranges.")
    signature = signature or (CLIPS_SIGNATURE if int8 else DEFAULT_SIGNATURE)
    converter = tf.experimental.tensorrt.Converter(
        input_saved_model_dir=saved_model_dir, input_saved_model_signature_key=signature,
        precision_mode=precision, use_calibration=int8)
    if int8:
        def calibration_input_fn():
            for clip in calibration_clips:
                yield (tf.constant(clip, tf.float32),)

        converter.convert(calibration_input_fn=calibration_input_fn)
    else:
        converter.convert()
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    converter.save(output_dir)
    return output_dir
