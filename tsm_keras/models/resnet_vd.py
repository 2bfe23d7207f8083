"""ResNet-50/101-vd applied per frame with temporal shifts: PaddleVideo's `ResNetTweaksTSM`, the PP-TSM backbone.

What differs from `resnet.py` (He et al., "Bag of Tricks", ResNet-C and -D), as `resnet_tweaks_tsm.py` has it:

- the stem is three 3x3 convs (32, 32, 64 channels, the first at stride 2) instead of one 7x7;
- a downsampling shortcut averages 2x2 (stride 2, `ceil_mode=True`, padding excluded from the
  mean) before a stride-1 1x1 conv; the first block of stage 2 (`if_first`) keeps a plain 1x1 conv;
- every activation is a LeakyReLU of slope 0.01 (Paddle's default), the stem's and the blocks'
  (`UnfusedLeakyReLU` after each residual add, against a TensorFlow fusion bug).

Layer names: `conv1_1`..`conv1_3` with `bn_conv1_1`..`bn_conv1_3` for the stem, then the Caffe
scheme of `resnet.py` (`res3a_branch1_pool`, `res3a_branch1`, `bn3a_branch1`, ...): PaddleVideo's
block `bb_{stage-2}_{i}` is our `res{stage}{a,b,...}` (`a, b1..b22` in ResNet-101's stage 4).
"""

from keras import layers

from tsm_keras.layers import NegativeInfinityPadding2D, UnfusedLeakyReLU
from tsm_keras.models.resnet import RESNET_SPECS, activation, conv_bn, stage_blocks

VD_BACKBONES = {"resnet50_vd": 50, "resnet101_vd": 101}
LEAKY_SLOPE = 0.01  # paddle.nn.functional.leaky_relu's negative_slope
STEM = ((32, 2), (32, 1), (64, 1))  # (channels, stride) of conv1_1, conv1_2, conv1_3


def vd_block(x, planes, stride, name, shift_layer, shift_place, first, fold_batchnorm=False):
    """One bottleneck of ResNetTweaksTSM; `first` marks block res2a, whose shortcut is a plain 1x1 conv."""
    in_channels = x.shape[-1]
    block_input = x
    if shift_layer is not None and shift_place == "block":
        block_input = x = shift_layer(x)
    branch = shift_layer(x) if shift_layer is not None and shift_place == "blockres" else x

    common = dict(fold_batchnorm=fold_batchnorm, leaky_slope=LEAKY_SLOPE)
    y = conv_bn(branch, planes, 1, 1, f"res{name}_branch2a", f"bn{name}_branch2a", **common)
    y = conv_bn(y, planes, 3, stride, f"res{name}_branch2b", f"bn{name}_branch2b", **common)
    y = conv_bn(y, planes * 4, 1, 1, f"res{name}_branch2c", f"bn{name}_branch2c", relu=False, **common)

    shortcut = block_input
    if stride != 1 or in_channels != planes * 4:
        if not first:
            # ceil_mode=True with exclusive averaging is Keras' "same": an odd edge is averaged over
            # the values it has (TensorFlow pads (0, 1) and leaves the padding out of the count).
            shortcut = layers.AveragePooling2D(2, strides=2, padding="same", name=f"res{name}_branch1_pool")(shortcut)
        shortcut = conv_bn(shortcut, planes * 4, 1, 1, f"res{name}_branch1", f"bn{name}_branch1", relu=False,
                           **common)
    out = layers.Add(name=f"res{name}_add")([y, shortcut])
    # Not keras' LeakyReLU here: TensorFlow's graph optimizer fuses conv + bias + add + LeakyRelu with the wrong
    # slope (see UnfusedLeakyReLU), which is what this block becomes with BatchNorm folded.
    return UnfusedLeakyReLU(LEAKY_SLOPE, name=f"res{name}_relu")(out)


def resnet_vd_tsm_features(frames, depth=50, num_segments=8, shift="bidirectional", shift_div=8,
                           shift_place="blockres", convention="paddle", shift_every=1, fold_batchnorm=False):
    """Per-frame ResNet-vd features: `[batch*T, H, W, 3]` -> `[batch*T, ceil(H/32), ceil(W/32), 2048]`.

    The arguments mean what they mean for `resnet.resnet_tsm_features`; PP-TSM itself is
    `convention="paddle"` (1/T of the channels from t-1, 1/T from t+1), `shift_place="blockres"`.
    """
    depths = sorted(VD_BACKBONES.values())
    if depth not in depths:
        raise ValueError(f"ResNet-vd depth must be one of {depths}, got {depth}.")
    _, stages = RESNET_SPECS[depth]
    x = frames
    for index, (filters, stride) in enumerate(STEM, start=1):
        x = conv_bn(x, filters, 3, stride, f"conv1_{index}", f"bn_conv1_{index}", fold_batchnorm=fold_batchnorm,
                    leaky_slope=LEAKY_SLOPE)
    # The stem ends in a LeakyReLU, so values can be negative: pad with -inf, as Paddle's max pool ignores
    # its padding (zeros would win the max; Keras' "same" would pad (0, 1) on even sizes).
    x = NegativeInfinityPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pool1")(x)

    for name, planes, stride, first, shift_layer in stage_blocks(stages, num_segments, shift, shift_div, convention,
                                                                  shift_every):
        x = vd_block(x, planes, stride, name, shift_layer, shift_place, first=first, fold_batchnorm=fold_batchnorm)
    return x
