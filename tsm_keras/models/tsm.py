"""The TSM video classifier: a per-frame 2D backbone (ResNet, ResNet-vd, MobileNetV2) with temporal shifts,
averaged over time."""

import keras
from keras import layers

from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD, FoldTime, FrameNormalization, SegmentConsensus
from tsm_keras.models.mobilenetv2 import MOBILENET_BACKBONES, mobilenetv2_tsm_features
from tsm_keras.models.resnet import BACKBONES as RESNET_BACKBONES
from tsm_keras.models.resnet import SHIFT_PLACES, SHIFTS, resnet_tsm_features
from tsm_keras.models.resnet_vd import VD_BACKBONES, resnet_vd_tsm_features

BACKBONES = {**RESNET_BACKBONES, **VD_BACKBONES, **MOBILENET_BACKBONES}
# Std of the classifier's N(0, std) kernel: PaddleVideo's TSMHead 0.001; ppTSMHead (the vd backbones) 0.01.
HEAD_INIT_STD = {"tsm": 0.001, "pptsm": 0.01}

CONVENTIONS = ("tsm", "paddle")
# How raw 0-255 RGB frames are normalized for a given set of weights.
INPUT_CONVENTIONS = {
    "imagenet": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order="rgb"),
    # keras.applications ResNet50 (Caffe): BGR, mean subtraction, no std.
    "caffe": dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="bgr"),
}


@keras.saving.register_keras_serializable(package="tsm_keras")
class TSM(keras.Model):
    """TSM (or TSN with `shift="none"`) classifier: `[batch, T, H, W, 3]` -> float32 logits `[batch, classes]`.

    Inputs are ImageNet-normalized float frames, or with `normalize_input=True` raw 0-255 frames
    (uint8 or float) that the model normalizes itself, the form serving and the input pipeline
    pass. Frames are folded into the batch, the backbone runs per frame, then global average
    pooling, dropout, a Dense layer (N(0, 0.001) kernel, zero bias) and the average over time.

    `backbone="resnet50_vd"` / `"resnet101_vd"` is PP-TSM (PaddleVideo's ResNetTweaksTSM + ppTSMHead):
    the ResNet-vd of `resnet_vd.py` and a kernel drawn from N(0, 0.01). ppTSMHead averages the pooled
    features over time before its fc, this model the fc's outputs after it: for a linear layer (and
    dropout on the per-frame features in both) the same logits to float rounding. Pass
    `convention="paddle"` for PP-TSM's own shift (converted .pdparams are built so).

    `backbone="mobilenetv2"` is the official MobileNetV2-TSM (`archs/mobilenet_v2.py`, the torchvision /
    keras.applications layout), `"mobilenetv2_paddle"` PaddleVideo's `pptsm_mv2.py` (an expansion conv in the
    first block too); both shift on the expansion conv's input in the residual blocks (`mobilenetv2.py`),
    so `shift_place` is "blockres" and `shift_every` 1 for them. The 1280 pooled features feed the same head.

    `fold_batchnorm=True` builds the inference form (each Conv+BatchNorm one Conv with bias); make
    one from a trained model with `fold_batchnorm(model)`.

    The constructor arguments are the whole config: `get_config` returns them and loading a
    `.keras` file rebuilds the same graph.
    """

    def __init__(self, num_classes, num_segments=8, backbone="resnet50", shift="bidirectional",
                 shift_div=8, shift_place="blockres", convention="tsm", dropout=0.5, image_size=None,
                 normalize_input=False, stride_in_1x1=False, shift_every=1,
                 input_convention="imagenet", fold_batchnorm=False, **kwargs):
        _validate(num_classes, num_segments, backbone, shift, shift_place, convention, dropout,
                  image_size, input_convention, stride_in_1x1, shift_every)
        height, width = _image_hw(image_size)
        frames = keras.Input((num_segments, height, width, 3), name="frames")
        x = FoldTime(name="fold_time")(frames)
        if normalize_input:
            x = FrameNormalization(**INPUT_CONVENTIONS[input_convention], name="normalize")(x)
        shifts = dict(num_segments=num_segments, shift=shift, shift_div=shift_div, shift_place=shift_place,
                      convention=convention, shift_every=shift_every, fold_batchnorm=fold_batchnorm)
        if backbone in VD_BACKBONES:
            x = resnet_vd_tsm_features(x, depth=VD_BACKBONES[backbone], **shifts)
        elif backbone in MOBILENET_BACKBONES:
            x = mobilenetv2_tsm_features(x, backbone=backbone, num_segments=num_segments, shift=shift,
                                         shift_div=shift_div, convention=convention, fold_batchnorm=fold_batchnorm)
        else:
            x = resnet_tsm_features(x, depth=BACKBONES[backbone], stride_in_1x1=stride_in_1x1, **shifts)
        head_std = HEAD_INIT_STD[head_kind(backbone)]
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(num_classes, name="fc",
                         kernel_initializer=keras.initializers.RandomNormal(0.0, head_std),
                         bias_initializer="zeros")(x)
        logits = SegmentConsensus(num_segments, name="consensus")(x)
        kwargs.setdefault("name", f"tsm_{backbone}" if shift != "none" else f"tsn_{backbone}")
        super().__init__(inputs=frames, outputs=logits, **kwargs)

        self.num_classes = num_classes
        self.num_segments = num_segments
        self.backbone = backbone
        self.shift = shift
        self.shift_div = shift_div
        self.shift_place = shift_place
        self.convention = convention
        self.dropout = dropout
        self.image_size = image_size
        self.normalize_input = normalize_input
        self.stride_in_1x1 = stride_in_1x1
        self.shift_every = shift_every
        self.input_convention = input_convention
        self.fold_batchnorm = fold_batchnorm

    def get_config(self):
        return dict(name=self.name, trainable=self.trainable, num_classes=self.num_classes,
                    num_segments=self.num_segments, backbone=self.backbone, shift=self.shift,
                    shift_div=self.shift_div, shift_place=self.shift_place, convention=self.convention,
                    dropout=self.dropout, image_size=self.image_size, normalize_input=self.normalize_input,
                    stride_in_1x1=self.stride_in_1x1, shift_every=self.shift_every,
                    input_convention=self.input_convention, fold_batchnorm=self.fold_batchnorm)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_tsm(num_classes, num_segments=8, backbone="resnet50", shift="bidirectional", shift_div=8,
              shift_place="blockres", convention="tsm", dropout=0.5, image_size=None,
              normalize_input=False, **kwargs):
    """Build a TSM (or, with `shift="none"`, TSN) video classifier; see `TSM` for the arguments.

    Extra keyword arguments: `stride_in_1x1` (Keras/Caffe ResNet v1 layout), `shift_every`
    (shift every n-th block), `input_convention` ("imagenet" or "caffe", used with
    `normalize_input=True`), and Keras' `name`/`dtype`.
    """
    return TSM(num_classes, num_segments=num_segments, backbone=backbone, shift=shift,
               shift_div=shift_div, shift_place=shift_place, convention=convention, dropout=dropout,
               image_size=image_size, normalize_input=normalize_input, **kwargs)


def head_kind(backbone):
    """"pptsm" (ppTSMHead) for the ResNet-vd backbones, PP-TSM's; "tsm" (TSMHead) for the others."""
    return "pptsm" if backbone in VD_BACKBONES else "tsm"


def _image_hw(image_size):
    if image_size is None:
        return None, None
    if isinstance(image_size, int):
        return image_size, image_size
    return tuple(image_size)


def _validate(num_classes, num_segments, backbone, shift, shift_place, convention, dropout, image_size,
              input_convention, stride_in_1x1, shift_every):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be a positive int, got {num_segments!r}.")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}.")
    if backbone in MOBILENET_BACKBONES and (shift_place != "blockres" or shift_every != 1 or stride_in_1x1):
        raise ValueError(f"{backbone} shifts the residual branch of every residual block, as the official code and "
                         f"PaddleVideo do: leave shift_place='blockres', shift_every=1 and stride_in_1x1=False (got "
                         f"{shift_place!r}, {shift_every!r}, {stride_in_1x1!r}).")
    if stride_in_1x1 and backbone in VD_BACKBONES:
        raise ValueError(f"stride_in_1x1=True is the keras.applications ResNet layout; {backbone} has its stride "
                         "in the 3x3 conv (as PaddleVideo's): leave stride_in_1x1=False.")
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r} (use 'none' for TSN).")
    if shift_place not in SHIFT_PLACES:
        raise ValueError(f"shift_place must be one of {SHIFT_PLACES}, got {shift_place!r}.")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
    if input_convention not in INPUT_CONVENTIONS:
        raise ValueError(f"input_convention must be one of {sorted(INPUT_CONVENTIONS)}, got {input_convention!r}.")
    if image_size is not None:
        hw = _image_hw(image_size)
        if len(hw) != 2 or any(int(s) < 32 for s in hw):
            raise ValueError(f"image_size must be None, an int or (height, width) of at least 32, got {image_size!r}.")
