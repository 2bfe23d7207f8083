"""Every recipe flagfile parses into the Config it promises (PaddleVideo's numbers)."""

import glob
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

sys.path.insert(0, os.path.join(REPO, "tests"))

import app  # noqa: E402
from harness import consumers  # noqa: E402
from tsm_keras.config import config_from_flags  # noqa: E402
from tsm_keras.training.schedules import scaled_lr_values  # noqa: E402


def _parse(*argv):
    app.F.unparse_flags()
    app.F(["app.py", *argv])
    return config_from_flags(app.F)


@pytest.mark.parametrize("name", ["tsm_k400_frames", "tsm_k400_videos", "tsm_k400_frames_nhwc"])
def test_k400_recipes(name):
    c = _parse(f"--flagfile={REPO}/flags/{name}.flags")
    assert (c.mode, c.backbone, c.num_classes, c.num_segments, c.epochs, c.batch_size) == ("train", "resnet50", 400, 8, 50, 128)
    assert scaled_lr_values(c) == pytest.approx([0.02, 0.002, 0.0002]) and c.lr_boundaries == [20, 40]
    assert (c.weight_decay, c.fc_weight_decay, c.clip_norm, c.dropout, c.momentum) == (1e-4, 1e-4, 20.0, 0.5, 0.9)
    assert c.precision == ("mixed_float16" if name.endswith("nhwc") else "float32")
    # Flags after the flagfile override it; the lr follows the batch linearly.
    c = _parse(f"--flagfile={REPO}/flags/{name}.flags", "--batch_size=32")
    assert scaled_lr_values(c) == pytest.approx([0.005, 0.0005, 0.00005])


@pytest.mark.parametrize("name", ["tsm_ucf101_frames", "tsm_ucf101_videos", "tsm_ucf101_frames_nhwc"])
def test_ucf101_recipes(name):
    c = _parse(f"--flagfile={REPO}/flags/{name}.flags")
    assert (c.num_classes, c.epochs, c.batch_size, c.dropout, c.weight_decay, c.fc_weight_decay) == (101, 25, 64, 0.8, 0.0, 1e-4)
    assert scaled_lr_values(c) == pytest.approx([0.001, 0.0001, 0.00001]) and c.lr_boundaries == [10, 20]
    assert c.pretrained


def test_quickstart():
    c = _parse(f"--flagfile={REPO}/flags/quickstart.flags")
    assert (c.data_format, c.backbone, c.flip, c.validate, c.mode) == ("synthetic", "resnet10", False, True, "train")
    # The precision fits the machine; an explicit flag wins over the flagfile's auto.
    assert c.precision == "auto"
    assert _parse(f"--flagfile={REPO}/flags/quickstart.flags", "--precision=float32").precision == "float32"
    assert _parse(f"--flagfile={REPO}/flags/quickstart.flags", "--amp").precision == "mixed_float16"
    # No ResNet stage at 1x1 (where TensorFlow's Eigen conv gradients are pathologically slow), in the model
    # the flagfile builds.
    import tsm_keras

    model = tsm_keras.build_tsm(**c.model_kwargs(image_size=c.image_size))
    stages = [layer.output.shape[1:3] for layer in model.layers if layer.name.endswith("_relu")
              and layer.name.startswith("res")]
    assert stages and min(min(shape) for shape in stages) >= 2, stages
    assert c.image_size > 32
    # The shift on the block's input, so the identity path reads the shifted frames too (it learns the
    # motion classes in fewer epochs here than the residual shift: README, "Quickstart").
    assert consumers(model, "res2a_shift") == {"res2a_branch2a", "res2a_add"}


def test_precision_flag_defaults_to_auto():
    assert _parse("--mode=train").precision == "auto"


@pytest.mark.parametrize("name", ["tsm_sthv2_frames", "tsm_sthv2_videos"])
def test_sthv2_recipes(name):
    """The official repo's SSv2 command: lr 0.01 for 64 clips, steps at 20/40 of 50 epochs, wd 5e-4, no flip."""
    c = _parse(f"--flagfile={REPO}/flags/{name}.flags")
    assert (c.num_classes, c.epochs, c.batch_size, c.dropout, c.flip) == (174, 50, 64, 0.5, False)
    assert scaled_lr_values(c) == pytest.approx([0.01, 0.001, 0.0001]) and c.lr_boundaries == [20, 40]
    assert (c.weight_decay, c.fc_weight_decay, c.clip_norm, c.shift_div) == (5e-4, 5e-4, 20.0, 8)
    assert c.label_map.endswith("labels.json") and c.data_format == name.rsplit("_", 1)[1]


def test_pptsm_k400_frames_uniform_recipe():
    """pptsm_k400_frames_uniform.yaml's numbers, on the PP-TSM backbone."""
    c = _parse(f"--flagfile={REPO}/flags/pptsm_k400_frames_uniform.flags")
    assert (c.backbone, c.convention) == ("resnet50_vd", "auto")
    assert (c.mode, c.data_format, c.num_classes, c.num_segments, c.sampling, c.epochs, c.batch_size) == (
        "train", "frames", 400, 8, "uniform", 80, 128)
    assert (c.train_scale_size, c.multi_scale_crop_size, c.image_size, c.scale_size) == (256, 256, 224, 256)
    assert (c.flip, c.allow_duplication, c.test_clips, c.test_crops) == (True, False, 1, 1)
    assert (c.label_smoothing, c.mixup_alpha, c.precise_bn_every, c.precise_bn_steps) == (0.1, 0.2, 5, 200)
    assert (c.lr_schedule, c.warmup_epochs, c.lr_boundaries) == ("cosine", 10.0, [])
    assert scaled_lr_values(c) == pytest.approx([0.01])
    assert (c.momentum, c.weight_decay, c.fc_weight_decay, c.fc_lr_mult, c.fc_bias_lr_mult) == (0.9, 1e-4, 1e-4, 5, 10)
    assert (c.clip_norm, c.dropout) == (0.0, 0.5)
    assert c.pretrained.endswith("ResNet50_vd_ssld_v2_pretrained.pdparams")


def test_recipe_flags_default_off():
    c = _parse("--mode=train")
    assert (c.label_smoothing, c.mixup_alpha, c.precise_bn_every, c.train_scale_size, c.multi_scale_crop_size) == (
        0.0, 0.0, 0, 0, 0)


def test_online_mobilenetv2():
    """The online recipe: the quickstart's data and schedule on a uni-directional MobileNetV2, in float32."""
    c = _parse(f"--flagfile={REPO}/flags/tsm_online_mobilenetv2.flags")
    assert (c.mode, c.data_format, c.num_classes, c.backbone, c.shift) == (
        "train", "synthetic", 8, "mobilenetv2", "unidirectional")
    assert (c.flip, c.validate, c.precision) == (False, True, "float32")
    assert c.image_size > 32 and c.scale_size >= c.image_size
    # Its run streams: the uni-directional model passes to_streaming's check.
    import tsm_keras
    from tsm_keras.models.streaming import check_streamable

    check_streamable(tsm_keras.build_tsm(**c.model_kwargs(num_segments=2, image_size=c.image_size)))


@pytest.mark.parametrize("argv, message", [
    (["--batch_size=0"], "0 is not a positive integer"),
    (["--lr=-1"], "-1.0 is not a non-negative number"),
    (["--image_size=16"], "16 is not integer >= 32"),
    (["--image_size=288"], "--scale_size (the short side before the evaluation crop) must be at least --image_size"),
    (["--image_size=64", "--multi_scale_crop_size=48", "--scale_size=64"],
     "--multi_scale_crop_size must be 0 or at least --image_size"),
    (["--test_crops=2"], "--test_crops must be 1 (centre) or 3"),
    (["--dropout=1"], "--dropout must be in [0, 1)"),
    (["--label_smoothing=-0.1"], "--label_smoothing must be in [0, 1)"),
    (["--lr_boundaries=20,x"], "--lr_boundaries must be whole epochs >= 0"),
    (["--lr_values="], "--lr_values must be learning rates >= 0"),
    (["--ucf101_split=4"], "4 is not an integer in the range [1, 3]"),
])
def test_a_bad_value_stops_at_parsing_before_any_work(argv, message):
    """Each of these used to surface later: a traceback at build time, or an error after an epoch of training
    (--test_crops=2, a --scale_size below --image_size)."""
    from absl import flags

    with pytest.raises(flags.IllegalFlagValueError) as caught:
        _parse("--mode=train", *argv)
    assert message in str(caught.value)
    app.F.unparse_flags()
    assert _parse("--mode=train", "--image_size=288", "--scale_size=320").image_size == 288
