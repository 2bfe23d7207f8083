"""MobileNetV2 (width 1.0) applied per frame, with temporal shifts inside its inverted-residual blocks.

Two layouts, as the references build them:

- `mobilenetv2`: the official TSM code's `archs/mobilenet_v2.py`, which is also torchvision's and
  keras.applications' MobileNetV2 (3,504,872 parameters with a 1000-class classifier). Its first block
  (expansion 1) has no expansion conv: depthwise 3x3 then the 1x1 projection.
- `mobilenetv2_paddle`: PaddleVideo's `pptsm_mv2.py` (PaddleClas' MobileNetV2), whose first block keeps a
  1x1 expansion conv of 32 -> 32 channels (+ BatchNorm + ReLU6) even at expansion 1: 1,088 parameters
  more, and a layer the other layout has not, so the two cannot share weights.

Where the shift goes is the same in both: on the input of the expansion 1x1 conv, residual branch only,
in the blocks that have a residual connection (stride 1, as many channels out as in): blocks 3, 5, 6, 8,
9, 10, 12, 13, 15 and 16. The official code wraps `conv[0]` of those blocks in its TemporalShift, PaddleVideo
calls `F.temporal_shift(x, T, 1/T)` when `ifshortcut`.

Layer names, block `i` being the official `features.i` (1..17; PaddleVideo's `conv{g}_{j}` in order):
`stem_conv` (+ `_pad`, `_bn`, `_relu`); `block{i}_expand`, `block{i}_expand_bn`, `block{i}_expand_relu`,
`block{i}_shift`, `block{i}_depthwise` (+ `_pad` before a stride 2, `_bn`, `_relu`), `block{i}_project`,
`block{i}_project_bn`, `block{i}_add`; `top_conv` (+ `_bn`, `_relu`: the 1x1 conv to 1280 channels).
Every BatchNorm is the conv's name + `_bn` (ε 1e-5, momentum 0.9 in Keras' sense, as both references);
every activation is ReLU6.
"""

import keras
from keras import layers

from tsm_keras.layers import FusedBatchNormalization, TemporalShift
from tsm_keras.models.resnet import BN_EPSILON, BN_MOMENTUM

# backbone -> whether the first block (expansion 1) has its 1x1 expansion conv
MOBILENET_BACKBONES = {"mobilenetv2": False, "mobilenetv2_paddle": True}
# (expansion t, output channels c, blocks n, stride s of the first) per group: the paper's Table 2.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
TOP_CHANNELS = 1280


def inverted_residual_blocks():
    """`[(index, in_channels, out_channels, stride, expansion)]` of blocks 1..17, the official `features.1..17`."""
    blocks, in_channels, index = [], STEM_CHANNELS, 1
    for expansion, channels, count, stride in INVERTED_RESIDUAL_SETTING:
        for repeat in range(count):
            blocks.append((index, in_channels, channels, stride if repeat == 0 else 1, expansion))
            in_channels, index = channels, index + 1
    return blocks


def residual_block_indices():
    """The blocks with a residual connection, where the shift goes: stride 1 and as many channels out as in."""
    return [index for index, cin, cout, stride, _ in inverted_residual_blocks() if stride == 1 and cin == cout]


def _conv_bn(x, filters, kernel, stride, name, relu=True, depthwise=False, fold_batchnorm=False):
    """Conv (no bias) or depthwise conv + BatchNorm [+ ReLU6]; symmetric (k//2) padding as the references.

    Keras' "same" pads a stride-2 conv (0, 1), the references (1, 1): strided convs pad explicitly.
    `fold_batchnorm=True`: the inference form, one conv with bias and no BatchNorm.
    """
    if kernel > 1 and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    if depthwise:
        # He init over the 3x3 taps each channel sees (torch's fan_out formula would count every channel).
        x = layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=fold_batchnorm,
                                   depthwise_initializer=keras.initializers.VarianceScaling(
                                       2.0, mode="fan_in", distribution="untruncated_normal"), name=name)(x)
    else:
        # The official _initialize_weights: N(0, sqrt(2 / (k * k * out_channels))).
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=fold_batchnorm,
                          kernel_initializer=keras.initializers.VarianceScaling(
                              2.0, mode="fan_out", distribution="untruncated_normal"), name=name)(x)
    if not fold_batchnorm:
        x = FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)
    return x


def inverted_residual(x, index, out_channels, stride, expansion, shift_layer, expand_always, fold_batchnorm):
    """Block `index`: [shift ->] 1x1 expansion + ReLU6 -> 3x3 depthwise + ReLU6 -> 1x1 projection [+ input]."""
    in_channels = x.shape[-1]
    residual = stride == 1 and in_channels == out_channels
    name = f"block{index}"
    y = shift_layer(x) if shift_layer is not None else x
    if expansion != 1 or expand_always:
        y = _conv_bn(y, in_channels * expansion, 1, 1, f"{name}_expand", fold_batchnorm=fold_batchnorm)
    y = _conv_bn(y, None, 3, stride, f"{name}_depthwise", depthwise=True, fold_batchnorm=fold_batchnorm)
    y = _conv_bn(y, out_channels, 1, 1, f"{name}_project", relu=False, fold_batchnorm=fold_batchnorm)
    if residual:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenetv2_tsm_features(frames, backbone="mobilenetv2", num_segments=8, shift="bidirectional", shift_div=8,
                             convention="tsm", fold_batchnorm=False):
    """Per-frame MobileNetV2 features: `[batch*T, H, W, 3]` -> `[batch*T, ceil(H/32), ceil(W/32), 1280]`.

    `shift="none"` is TSN; `"unidirectional"` the online TSM (channels [0, C/div) from t-1 only).
    `convention`: "tsm" (official: [0, C/8) take t+1, [C/8, 2C/8) t-1) or "paddle" (PaddleVideo: [0, C/T)
    take t-1, [C/T, 2C/T) t+1); the converted checkpoints say which.
    """
    if backbone not in MOBILENET_BACKBONES:
        raise ValueError(f"MobileNetV2 backbone must be one of {sorted(MOBILENET_BACKBONES)}, got {backbone!r}.")
    expand_always = MOBILENET_BACKBONES[backbone]
    shifted = set(residual_block_indices()) if shift != "none" else set()
    x = _conv_bn(frames, STEM_CHANNELS, 3, 2, "stem_conv", fold_batchnorm=fold_batchnorm)
    for index, _, out_channels, stride, expansion in inverted_residual_blocks():
        shift_layer = None
        if index in shifted:
            shift_layer = TemporalShift(num_segments, shift_div=shift_div, direction=shift, convention=convention,
                                        name=f"block{index}_shift")
        x = inverted_residual(x, index, out_channels, stride, expansion, shift_layer, expand_always, fold_batchnorm)
    return _conv_bn(x, TOP_CHANNELS, 1, 1, "top_conv", fold_batchnorm=fold_batchnorm)
