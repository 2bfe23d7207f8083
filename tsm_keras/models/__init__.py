"""Backbones and the video classifier."""

from tsm_keras.models.resnet import BACKBONES, resnet_tsm_features
from tsm_keras.models.tsm import TSM, build_tsm, fold_batchnorm

__all__ = ["BACKBONES", "TSM", "build_tsm", "fold_batchnorm", "resnet_tsm_features"]
