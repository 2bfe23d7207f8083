"""tsm-keras: Temporal Shift Module (TSM) video classifiers in TensorFlow/Keras."""

__version__ = "0.1.0"

from tsm_keras.layers import FoldTime, FrameNormalization, SegmentConsensus, TemporalShift
from tsm_keras.models import TSM, build_tsm

__all__ = ["FoldTime", "FrameNormalization", "SegmentConsensus", "TSM", "TemporalShift", "build_tsm",
           "__version__"]
