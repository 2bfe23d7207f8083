"""ResNet-10/18/34/50/101 applied per frame, with temporal shifts inside the residual blocks.

Layer names follow the Caffe/PaddleVideo scheme (`conv1`, `bn_conv1`, `res2a_branch2a`,
`bn2a_branch2a`, `res2a_branch1`, ..., `res4b1_branch2a` for the 23-block stage of ResNet-101)
so that weight converters map checkpoints by name.
"""

import keras
from keras import layers

from tsm_keras.layers import Conv2D, FusedBatchNormalization, TemporalShift

# depth -> (block kind, blocks per stage). ResNet-10 is torchvision's ResNet(BasicBlock, [1, 1, 1, 1]): no
# pretrained weights, for from-scratch runs on small inputs (the quickstart), where a conv costs per call.
RESNET_SPECS = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BACKBONES = {f"resnet{depth}": depth for depth in RESNET_SPECS}
SHIFTS = ("bidirectional", "unidirectional", "none")
SHIFT_PLACES = ("blockres", "block")

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Keras convention: moving = 0.9 * moving + 0.1 * batch (PyTorch/Paddle 0.1/0.9)


def block_name(stage, index, num_blocks):
    """`res{stage}{a,b,c...}`; stages with more than 6 blocks (ResNet-101's 23) use a, b1, b2, ...

    This is PaddleVideo's (and Caffe's) naming, which its checkpoints' parameter names carry.
    """
    if num_blocks > 6:
        suffix = "a" if index == 0 else f"b{index}"
    else:
        suffix = chr(ord("a") + index)
    return f"{stage}{suffix}"


def _kernel_init():
    # torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu")
    return keras.initializers.VarianceScaling(2.0, mode="fan_out", distribution="untruncated_normal")


def conv_bn(x, filters, kernel, stride, conv_name, bn_name, relu=True, use_bias=False, fold_batchnorm=False,
            leaky_slope=None):
    """Conv (no bias) + BatchNorm(eps 1e-5, momentum 0.9) [+ ReLU], padding like the references.

    `leaky_slope` (with `relu=True`): a LeakyReLU of that negative slope instead (the ResNet-vd of PP-TSM).

    `fold_batchnorm=True` builds the inference form: one Conv with bias and no BatchNorm layer
    (`tsm_keras.models.fold_batchnorm` fills it from a trained model).

    Strided convs pad explicitly and symmetrically (ZeroPadding2D + "valid"): Keras' "same" pads
    (0, 1) on stride 2, the references (k//2, k//2). At stride 1 "same" *is* symmetric for odd
    kernels, so it is kept there and spares a copy of the activation.
    """
    if kernel > 1 and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{conv_name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=use_bias or fold_batchnorm,
                      kernel_initializer=_kernel_init(), name=conv_name)(x)
    if not fold_batchnorm:
        x = FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=bn_name)(x)
    if relu:
        x = activation(leaky_slope, f"{conv_name}_relu")(x)
    return x


def activation(leaky_slope, name):
    """ReLU, or LeakyReLU with `leaky_slope` (Keras' own default slope, 0.3, is not Paddle's 0.01)."""
    if leaky_slope is None:
        return layers.ReLU(name=name)
    return layers.LeakyReLU(negative_slope=leaky_slope, name=name)


def residual_block(x, kind, planes, stride, name, shift_layer, shift_place, stride_in_1x1, fold_batchnorm=False):
    """One basic or bottleneck block; `shift_layer` (or None) is applied per `shift_place`."""
    expansion = 4 if kind == "bottleneck" else 1
    in_channels = x.shape[-1]
    block_input = x
    if shift_layer is not None and shift_place == "block":
        block_input = x = shift_layer(x)
    branch = shift_layer(x) if shift_layer is not None and shift_place == "blockres" else x

    stage = name
    fold = dict(fold_batchnorm=fold_batchnorm)
    if kind == "bottleneck":
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        y = conv_bn(branch, planes, 1, s1, f"res{stage}_branch2a", f"bn{stage}_branch2a", **fold)
        y = conv_bn(y, planes, 3, s3, f"res{stage}_branch2b", f"bn{stage}_branch2b", **fold)
        y = conv_bn(y, planes * 4, 1, 1, f"res{stage}_branch2c", f"bn{stage}_branch2c", relu=False, **fold)
    else:
        y = conv_bn(branch, planes, 3, stride, f"res{stage}_branch2a", f"bn{stage}_branch2a", **fold)
        y = conv_bn(y, planes, 3, 1, f"res{stage}_branch2b", f"bn{stage}_branch2b", relu=False, **fold)

    if stride != 1 or in_channels != planes * expansion:
        shortcut = conv_bn(block_input, planes * expansion, 1, stride, f"res{stage}_branch1",
                           f"bn{stage}_branch1", relu=False, **fold)
    else:
        shortcut = block_input
    out = layers.Add(name=f"res{stage}_add")([y, shortcut])
    return layers.ReLU(name=f"res{stage}_relu")(out)


def resnet_tsm_features(frames, depth=50, num_segments=8, shift="bidirectional", shift_div=8,
                        shift_place="blockres", convention="tsm", stride_in_1x1=False,
                        shift_every=1, fold_batchnorm=False):
    """Per-frame ResNet features: `[batch*T, H, W, 3]` -> `[batch*T, H/32, W/32, C]`.

    `shift_every=2` shifts every other block of each stage (the official code does this for
    ResNet-101); the default shifts every block, as the paper and PaddleVideo do.
    `fold_batchnorm=True`: the inference form, every Conv+BatchNorm pair one Conv with bias.
    """
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}.")
    kind, stages = RESNET_SPECS[depth]
    x = layers.ZeroPadding2D(3, name="conv1_pad")(frames)
    x = layers.Conv2D(64, 7, strides=2, padding="valid", use_bias=fold_batchnorm,
                      kernel_initializer=_kernel_init(), name="conv1")(x)
    if not fold_batchnorm:
        x = FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn_conv1")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    # Zero padding equals the references' -inf padding here: the input is post-ReLU (>= 0).
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pool1")(x)

    for name, planes, stride, _, shift_layer in stage_blocks(stages, num_segments, shift, shift_div, convention,
                                                              shift_every):
        x = residual_block(x, kind, planes, stride, name, shift_layer, shift_place, stride_in_1x1, fold_batchnorm)
    return x


def stage_blocks(stages, num_segments, shift, shift_div, convention, shift_every=1):
    """The residual blocks of ResNet stages 2-5 (`stages`: blocks per stage), in order:
    `(name, planes, stride, first, shift_layer)`; `first` is res2a, `shift_layer` a TemporalShift or None."""
    for stage_index, num_blocks in enumerate(stages):
        planes = 64 * 2 ** stage_index
        for index in range(num_blocks):
            name = block_name(stage_index + 2, index, num_blocks)
            stride = 2 if index == 0 and stage_index > 0 else 1
            shift_layer = None
            if shift != "none" and index % shift_every == 0:
                shift_layer = TemporalShift(num_segments, shift_div=shift_div, direction=shift,
                                            convention=convention, name=f"res{name}_shift")
            yield name, planes, stride, stage_index == index == 0, shift_layer


def batchnorm_name(conv_name):
    """The BatchNorm layer that follows conv `conv_name`: `conv1` -> `bn_conv1`, `conv1_2` -> `bn_conv1_2`,
    `res2a_branch2a` -> `bn2a_branch2a`."""
    if conv_name == "conv1" or conv_name.startswith("conv1_"):  # conv1_1..conv1_3: the ResNet-vd stem
        return f"bn_{conv_name}"
    if conv_name.startswith("res"):
        return "bn" + conv_name[3:]
    raise ValueError(f"{conv_name!r} is not a ResNet conv layer name")
