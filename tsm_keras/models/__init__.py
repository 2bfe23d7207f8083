"""Backbones, the video classifier, its inference form and its streaming (online) form."""

from tsm_keras.models.inference import ClipClassifier, fold_batchnorm, inference_form, with_raw_frame_input
from tsm_keras.models.mobilenetv2 import mobilenetv2_tsm_features
from tsm_keras.models.resnet import resnet_tsm_features
from tsm_keras.models.resnet_vd import resnet_vd_tsm_features
from tsm_keras.models.streaming import StreamingTSM, to_streaming
from tsm_keras.models.tsm import BACKBONES, TSM, build_tsm

__all__ = ["BACKBONES", "ClipClassifier", "StreamingTSM", "TSM", "build_tsm", "fold_batchnorm", "inference_form",
           "mobilenetv2_tsm_features", "resnet_tsm_features", "resnet_vd_tsm_features", "to_streaming",
           "with_raw_frame_input"]
