"""MobileNetV2-TSM: size against keras.applications and the paper, where the shifts sit, folding, reload.

Logit parity with the official PyTorch code and PaddleVideo's pptsm_mv2.py:
tests/convert/test_mobilenetv2_checkpoints.py.
"""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tsm_keras
from tsm_keras.layers import TemporalShift
from tsm_keras.models import fold_batchnorm
from tsm_keras.models.flops import count_macs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import check_model_saving, check_serialization  # noqa: E402

# The paper's Table 2 (t, c, n, s), written here again rather than imported: the reference for the counts.
PAPER_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]
# torchvision's and keras.applications' MobileNetV2 (width 1.0, 1000 classes): 3,504,872 parameters
# (trainable; keras.applications' count_params() adds the 34,112 BatchNorm moving statistics).
TORCHVISION_PARAMETERS = 3_504_872
PAPER_MACS = 300e6  # Sandler et al. 2018, Table 4: 300M multiply-adds at 224^2
RESIDUAL_BLOCKS = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]  # stride 1 and c_in == c_out in PAPER_TABLE


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def analytic_macs(size=224, classes=1000, expand_first_block=False):
    """Multiply-accumulates of one frame from the table: convs (3x3 pads 1: out = ceil(in / stride)) + fc."""
    h = -(-size // 2)
    macs = h * h * 32 * 3 * 3 * 3
    cin = 32
    for t, c, n, s in PAPER_TABLE:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1 or expand_first_block:
                macs += h * h * cin * hidden
            h = -(-h // stride)
            macs += h * h * hidden * 9 + h * h * hidden * c
            cin = c
    return macs + h * h * 320 * 1280 + 1280 * classes


def randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])
    head = model.get_layer("fc")
    head.set_weights([rng.normal(0, 0.05, head.kernel.shape), rng.normal(0, 0.1, head.bias.shape)])


def test_parameters_match_keras_applications_and_torchvision():
    reference = keras.applications.MobileNetV2(weights=None)  # 224^2, 1000 classes
    model = tsm_keras.build_tsm(1000, backbone="mobilenetv2")
    assert trainable_count(model) == trainable_count(reference) == TORCHVISION_PARAMETERS
    assert model.count_params() == reference.count_params() == 3_538_984  # + BatchNorm moving mean/variance
    # PaddleVideo's layout: block 1 keeps a 32 -> 32 expansion conv + BatchNorm (1,024 + 64 parameters).
    paddle = tsm_keras.build_tsm(1000, backbone="mobilenetv2_paddle")
    assert trainable_count(paddle) == TORCHVISION_PARAMETERS + 32 * 32 + 2 * 32


@pytest.mark.parametrize("backbone,expand_first_block", [("mobilenetv2", False), ("mobilenetv2_paddle", True)])
def test_multiply_accumulates_per_frame(backbone, expand_first_block):
    model = tsm_keras.build_tsm(1000, num_segments=8, backbone=backbone, image_size=224)
    counted = count_macs(model, (1, 8, 224, 224, 3))
    per_frame = counted["macs"] / 8
    assert per_frame == analytic_macs(expand_first_block=expand_first_block)
    print(f"{backbone}: {per_frame / 1e6:.2f} M MACs per 224^2 frame (paper: 300 M for MobileNetV2 1.0)")
    assert abs(per_frame - PAPER_MACS) / PAPER_MACS < (0.02 if not expand_first_block else 0.05)
    assert counted["shift_macs"] > 0  # the shifts are counted apart, as data movement


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenetv2_paddle"])
def test_shift_sits_on_the_expansion_input_of_the_residual_branch(backbone):
    model = tsm_keras.build_tsm(3, num_segments=4, backbone=backbone, image_size=64)
    shifts = [layer for layer in model.layers if isinstance(layer, TemporalShift)]
    assert [layer.name for layer in shifts] == [f"block{i}_shift" for i in RESIDUAL_BLOCKS]
    for index in RESIDUAL_BLOCKS:
        shift = model.get_layer(f"block{index}_shift")
        block_input = shift.input
        assert model.get_layer(f"block{index}_expand").input is shift.output
        add = model.get_layer(f"block{index}_add")
        assert add.input[0] is block_input  # the identity path is not shifted
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert adds == [f"block{i}_add" for i in RESIDUAL_BLOCKS]
    assert ("block1_expand" in {layer.name for layer in model.layers}) == (backbone == "mobilenetv2_paddle")
    relu6 = [layer for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relu6 and {float(layer.max_value) for layer in relu6} == {6.0}
    assert model.get_layer("top_conv").output.shape[1:] == (2, 2, 1280)
    assert not any(isinstance(layer, TemporalShift)
                   for layer in tsm_keras.build_tsm(3, backbone=backbone, shift="none").layers)


def test_odd_sizes_round_up_like_the_references():
    model = tsm_keras.build_tsm(3, num_segments=2, backbone="mobilenetv2", image_size=75)
    # 75 -> 38 -> 19 -> 10 -> 5 -> 3: floor((n + 2 - 3) / 2) + 1 at each stride-2 3x3 (padding 1)
    assert model.get_layer("top_conv").output.shape[1:3] == (3, 3)


@pytest.mark.parametrize("backbone", ["mobilenetv2", "mobilenetv2_paddle"])
def test_folded_batchnorm_gives_the_same_logits_depthwise_included(backbone):
    """fold_batchnorm merges the BatchNorm after each depthwise conv too; checked eagerly and in a tf.function
    (where TensorFlow fuses conv + bias + Relu6)."""
    model = tsm_keras.build_tsm(5, num_segments=2, backbone=backbone, image_size=64, normalize_input=True)
    randomize_batchnorm(model, seed=1)
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert folded.get_layer("block2_depthwise").use_bias
    clips = np.random.default_rng(2).integers(0, 256, (2, 2, 64, 64, 3)).astype(np.float32)
    expected = model(clips, training=False).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(folded(clips, training=False).numpy(), expected, rtol=0, atol=1e-4 * scale)
    graph = tf.function(lambda x: folded(x, training=False))(clips).numpy()
    np.testing.assert_allclose(graph, expected, rtol=0, atol=1e-4 * scale)


def test_mobilenet_model_reloads(tmp_path):
    model = tsm_keras.build_tsm(4, num_segments=2, backbone="mobilenetv2_paddle", convention="paddle",
                                image_size=64)
    randomize_batchnorm(model, seed=3)
    clips = np.random.default_rng(4).normal(size=(1, 2, 64, 64, 3)).astype(np.float32)
    reloaded = check_model_saving(model, clips, tmp_path)
    assert (reloaded.backbone, reloaded.convention) == ("mobilenetv2_paddle", "paddle")
    check_serialization(model.get_layer("block3_shift"))


@pytest.mark.parametrize("kwargs", [dict(shift_place="block"), dict(shift_every=2), dict(stride_in_1x1=True)])
def test_mobilenet_refuses_resnet_only_settings(kwargs):
    with pytest.raises(ValueError, match="shift_place='blockres', shift_every=1 and stride_in_1x1=False"):
        tsm_keras.build_tsm(3, backbone="mobilenetv2", **kwargs)
