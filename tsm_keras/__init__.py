"""tsm-keras: Temporal Shift Module (TSM) video classifiers in TensorFlow/Keras."""

__version__ = "0.1.0"

# Before TensorFlow loads: oneDNN on every x86 CPU (unless TF_ENABLE_ONEDNN_OPTS is set), and TensorFlow's
# start-up lines filtered by TF_CPP_MIN_LOG_LEVEL (see tsm_keras.runtime).
from tsm_keras import runtime  # noqa: E402  (imports no TensorFlow)

runtime.prefer_onednn()
with runtime.quiet_tensorflow_startup():
    import tensorflow as _tf  # noqa: E402

    _tf.config.list_physical_devices("GPU")  # the cuInit probe, inside the filter; starts no runtime

from tsm_keras.layers import FoldTime, FrameNormalization, SegmentConsensus, TemporalShift  # noqa: E402
from tsm_keras.models import TSM, build_tsm, to_streaming  # noqa: E402

__all__ = ["FoldTime", "FrameNormalization", "SegmentConsensus", "TSM", "TemporalShift", "build_tsm",
           "load", "to_streaming", "__version__"]


def load(path, config=None, num_clips=None, num_crops=None, top_k=None):
    """A video classifier with `.predict_video(path)` and `.predict_frames(frames)`, from a SavedModel
    export, a training run folder, a `.keras` file or a converter source; see `tsm_keras.predict.load`.
    (Imported on call: predict pulls in the data pipeline and OpenCV.)"""
    from tsm_keras.predict import load as load_classifier

    return load_classifier(path, config=config, num_clips=num_clips, num_crops=num_crops, top_k=top_k)
