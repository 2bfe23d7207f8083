"""Serving artefacts: versioned SavedModel (TF Serving), TF-TRT, ONNX and TFLite.

`python app.py --mode=export --weights=<run folder | .keras | .pdparams ...> --export_dir=saved_models/tsm`
    [--export_format=saved_model|onnx|tflite] [--export_precision=float32|bfloat16 (SavedModel)]
    [--tflite_quant=float32|float16|dynamic_int8]
    [--trt_precision=FP32|FP16|INT8] [--streaming (a uni-directional model's per-frame step; see export/streaming.py)]

Kept import-light: each format's module imports TensorFlow (and tf2onnx, onnxruntime) itself.
"""

import os
import sys

from tsm_keras import disk
from tsm_keras.errors import ExistingOutputError, UsageError

__all__ = ["export_model"]


def export_model(config):
    """`--mode=export`: write the artefact `--export_format` asks for; print where it went; returns its path."""
    if config.export_format not in ("saved_model", "onnx", "tflite"):
        raise UsageError(f"--export_format must be saved_model, onnx or tflite, got {config.export_format!r}.")
    if config.export_precision != "float32" and config.export_format != "saved_model":
        raise UsageError(f"--export_precision={config.export_precision} is for --export_format=saved_model (TFLite "
                         "has --tflite_quant=float16|dynamic_int8).")
    if config.streaming and (config.export_precision != "float32" or config.trt_precision):
        raise UsageError("--streaming exports float32 only: drop --export_precision and --trt_precision (TFLite has "
                         "--tflite_quant=dynamic_int8).")
    if config.trt_precision:
        if config.export_format != "saved_model":
            raise UsageError("--trt_precision converts the SavedModel: use it with --export_format=saved_model.")
        from tsm_keras.export.trt import require_tensorrt

        require_tensorrt()  # before any work: no SavedModel-only result passed off as a TRT one
    if config.export_precision == "bfloat16":
        from tsm_keras import runtime

        warning = runtime.bfloat16_serving_warning(runtime.read_cpuinfo(), runtime.detect_gpus())
        if warning:  # serving machines differ from exporting ones, so the export still goes ahead
            print(warning, file=sys.stderr, flush=True)
    from tsm_keras.loading import load_trained

    model, run_config, label_names = load_trained(config, config.weights or config.model_dir)
    if config.streaming:
        return _export_streaming(model, run_config, label_names, config)
    if config.export_format == "saved_model":
        return _export_saved_model(model, run_config, label_names, config)
    model = _fixed_size(model, run_config)
    if config.export_format == "onnx":
        return _export_onnx(model, config)
    return _export_tflite(model, config)


def _fixed_size(model, run_config):
    """ONNX and TFLite graphs have a fixed image size: a model built without one is rebuilt at
    `--image_size` (the run's, or the flag), with its own number of segments and its weights."""
    from tsm_keras.models.inference import at_image_size, model_input_spec

    num_segments, image_size = model_input_spec(model)
    if image_size is not None:
        return model
    model = at_image_size(model, run_config.image_size)
    print(f"export: the model has no fixed image size; rebuilt at {run_config.image_size} px (--image_size), "
          f"{num_segments} segments, same weights")
    return model


def _export_saved_model(model, run_config, label_names, config):
    from tsm_keras.export.saved_model import export_saved_model, model_input_spec

    _, image_size = model_input_spec(model)
    path = export_saved_model(model, config.export_dir, label_names=label_names, scale_size=run_config.scale_size,
                              image_size=image_size or run_config.image_size, top_k=config.top_k,
                              precision=config.export_precision)
    print(f"export: {config.export_precision} SavedModel version {os.path.basename(path)} in {path} (signatures "
          f"serving_default: uint8 frames, serving_clips: float32 clips)")
    print(f"  check it: saved_model_cli show --dir {path} --all")
    if config.trt_precision:
        from tsm_keras.export.trt import convert_saved_model

        calibration = _calibration_clips(run_config) if config.trt_precision == "INT8" else None
        trt_dir = os.path.join(f"{config.export_dir.rstrip('/')}_trt_{config.trt_precision.lower()}",
                               os.path.basename(path))
        convert_saved_model(path, trt_dir, config.trt_precision, calibration_clips=calibration)
        print(f"export: TF-TRT {config.trt_precision} SavedModel in {trt_dir}")
    return path


def _calibration_clips(run_config, limit=32):
    """float32 `[1, T, S, S, 3]` centre clips of the first `limit` validation videos (INT8 ranges)."""
    from tsm_keras.data import list_inputs, load_video_clips

    if not run_config.val_list:
        raise UsageError("INT8 TF-TRT calibrates on validation videos: set --val_list (and --data_root).")
    for path in list_inputs(run_config.val_list, run_config.data_root, run_config.frame_template)[:limit]:
        clips = load_video_clips(path, run_config.num_segments, scale_size=run_config.scale_size,
                                 image_size=run_config.image_size, frame_template=run_config.frame_template)
        yield clips[:1].astype("float32")


def _new_file(config, suffix):
    os.makedirs(config.export_dir, exist_ok=True)
    path = os.path.join(config.export_dir, suffix)
    if os.path.exists(path):
        raise ExistingOutputError(f"{path} exists; exports are never overwritten: remove it or choose another "
                              f"--export_dir.")
    return path


def _parity_clip(model):
    import numpy as np

    from tsm_keras.export.saved_model import model_input_spec

    num_segments, image_size = model_input_spec(model)
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (1, num_segments, image_size, image_size, 3)).astype("float32")


def _reference_logits(model, clips):
    from tsm_keras.export.saved_model import ClipClassifier

    return ClipClassifier(model)(clips).numpy()


def _export_onnx(model, config):
    import numpy as np

    from tsm_keras.export.onnx import check_standard_ops, export_onnx, onnxruntime_session

    path = _new_file(config, f"{model.name}.onnx")
    ops = []

    def write_checked(tmp):
        export_onnx(model, tmp)
        ops.extend(check_standard_ops(tmp))

    _write_atomically(path, write_checked, "ONNX export")
    print(f"export: ONNX in {path}; input clips float32 [batch, T, S, S, 3] RGB 0-255 centre-cropped, outputs "
          f"logits, probabilities; ops: {', '.join(ops)}")
    try:
        session = onnxruntime_session(path)
    except ImportError:
        print("  (onnxruntime not installed: parity not checked)")
        return path
    clips = _parity_clip(model)
    logits = session.run(["logits"], {"clips": clips})[0]
    diff = float(np.abs(logits - _reference_logits(model, clips)).max())
    print(f"  onnxruntime vs Keras: max |logit diff| {diff:.2e}")
    return path


def _export_tflite(model, config):
    import numpy as np

    from tsm_keras.export.tflite import TFLiteRunner, export_tflite

    path = _new_file(config, f"{model.name}_{config.tflite_quant}.tflite")
    _write_atomically(path, lambda tmp: export_tflite(model, tmp, config.tflite_quant), "TFLite export")
    clips = _parity_clip(model)
    logits = TFLiteRunner(path)(clips)["logits"]
    diff = float(np.abs(logits - _reference_logits(model, clips)).max())
    print(f"export: TFLite {config.tflite_quant} in {path} ({os.path.getsize(path) / 2**20:.1f} MiB); input clips "
          f"float32 [1, T, S, S, 3] RGB 0-255 centre-cropped; max |logit diff| vs Keras {diff:.2e}")
    return path


def _export_streaming(model, run_config, label_names, config):
    """`--streaming`: the per-frame step of a uni-directional model, in `--export_format`."""
    import numpy as np

    from tsm_keras.export import streaming
    from tsm_keras.models.inference import model_input_spec

    streaming.check_streamable(model)  # a bi-directional model: the fix (--shift=unidirectional) before any work
    image_size = model_input_spec(model)[1] or run_config.image_size
    if config.export_format == "saved_model":
        path = streaming.export_streaming_saved_model(model, config.export_dir, label_names=label_names,
                                                      scale_size=run_config.scale_size, image_size=image_size,
                                                      top_k=config.top_k)
        print(f"export: streaming SavedModel version {os.path.basename(path)} in {path} (signatures init_states: "
              f"batch_size -> zero states; call: uint8 frame [batch, H, W, 3] + states -> probabilities, top-k, "
              f"new states)")
        return path
    stream, _ = streaming.streaming_form(model, image_size, fold_batchnorm=False)  # the reference: as trained
    frames = np.random.default_rng(0).uniform(0, 255, (4, 1, image_size, image_size, 3)).astype("float32")
    states, expected = stream.init_states(1), []
    for frame in frames:
        logits, states = stream({"frame": frame, **states})
        expected.append(np.asarray(logits))
    if config.export_format == "onnx":
        from tsm_keras.export.onnx import check_standard_ops, onnxruntime_session

        path = _new_file(config, f"{model.name}_streaming.onnx")
        ops = []

        def write_checked(tmp):
            streaming.export_streaming_onnx(model, tmp, image_size=image_size)
            ops.extend(check_standard_ops(tmp))

        _write_atomically(path, write_checked)
        session = onnxruntime_session(path)
        names = [output.name for output in session.get_outputs()]
        states, got = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs() if i.name != "frame"}, []
        for frame in frames:
            out = dict(zip(names, session.run(None, {"frame": frame, **states})))
            states = {name: out[streaming.ONNX_NEW_STATE_PREFIX + name] for name in states}
            got.append(out["logits"])
        what = f"ONNX in {path}; ops: {', '.join(ops)}"
    else:
        path = _new_file(config, f"{model.name}_streaming_{config.tflite_quant}.tflite")
        _write_atomically(path, lambda tmp: streaming.export_streaming_tflite(model, tmp, config.tflite_quant,
                                                                              image_size=image_size))
        runner = streaming.TFLiteStreamingRunner(path)
        states, got = runner.init_states(), []
        for frame in frames:
            out, states = runner(frame, states)
            got.append(out["logits"])
        what = f"TFLite {config.tflite_quant} in {path} ({os.path.getsize(path) / 2**20:.1f} MiB)"
    diff = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
    print(f"export: streaming {what}; input frame float32 [1, {image_size}, {image_size}, 3] RGB 0-255 "
          f"centre-cropped + {len(stream.state_names)} states; max |logit diff| vs Keras over 4 frames {diff:.2e}")
    return path


def _write_atomically(path, write, what="export"):
    tmp = f"{path}.tmp-{os.getpid()}"
    with disk.writing(path, what, cleanup=[tmp]):
        write(tmp)
        os.replace(tmp, path)


def load_keras_model(weights, config):
    """Deprecated (kept for one release): `tsm_keras.loading.load_trained(config, weights)`."""
    from tsm_keras.loading import load_trained

    return load_trained(config, weights)


export_from_config = export_model  # deprecated name (kept for one release)
