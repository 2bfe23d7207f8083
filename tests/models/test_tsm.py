"""The TSM classifier: size, cost, structure, serialization, precision and input shapes."""

import os
import sys

import numpy as np
import pytest
import keras
import tensorflow as tf

import tsm_keras
from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD, TemporalShift
from tsm_keras.models.flops import count_macs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import consumers  # noqa: E402


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def small_clip(batch=1, t=4, size=64, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, t, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet50_tsm_and_tsn():
    return tsm_keras.build_tsm(400), tsm_keras.build_tsm(400, shift="none")


def test_resnet50_has_the_papers_parameter_count(resnet50_tsm_and_tsn):
    tsm, tsn = resnet50_tsm_and_tsn
    # torchvision ResNet-50 without fc: 23,508,032; + 2048*400 + 400.
    assert trainable_count(tsm) == 24_327_632
    assert trainable_count(tsn) == 24_327_632
    assert sum(isinstance(layer, TemporalShift) for layer in tsm.layers) == 16
    assert not any(isinstance(layer, TemporalShift) for layer in tsn.layers)


def test_resnet50_costs_33g_macs_at_8x224(resnet50_tsm_and_tsn):
    tsm, tsn = resnet50_tsm_and_tsn
    counted = count_macs(tsm, (1, 8, 224, 224, 3))
    assert abs(counted["macs"] - 32.9e9) / 32.9e9 < 0.02, counted
    # The shift adds no arithmetic: TSN counts the same.
    assert count_macs(tsn, (1, 8, 224, 224, 3))["macs"] == counted["macs"]
    assert counted["shift_macs"] > 0


def test_layer_names_follow_paddle_caffe_scheme(resnet50_tsm_and_tsn):
    names = {layer.name for layer in resnet50_tsm_and_tsn[0].layers}
    for name in ["conv1", "bn_conv1", "res2a_branch2a", "bn2a_branch2a", "res2a_branch1", "bn2a_branch1",
                 "res2c_branch2c", "res3d_branch2b", "res4f_branch2c", "res5c_branch2c", "fc", "res2a_shift"]:
        assert name in names, name
    r101 = {layer.name for layer in tsm_keras.build_tsm(10, backbone="resnet101").layers}
    assert {"res4a_branch2a", "res4b1_branch2a", "res4b22_branch2c"} <= r101


def test_parameter_counts_of_other_depths():
    # torchvision's numbers without fc: resnet18 11,176,512; resnet34 21,284,672; resnet101 42,500,160;
    # torchvision's ResNet(BasicBlock, [1, 1, 1, 1]) (counted in PyTorch, which has no named resnet10) 4,905,792.
    for backbone, body in [("resnet10", 4_905_792), ("resnet18", 11_176_512), ("resnet34", 21_284_672),
                           ("resnet101", 42_500_160)]:
        channels = 512 if backbone in ("resnet10", "resnet18", "resnet34") else 2048
        model = tsm_keras.build_tsm(10, backbone=backbone)
        assert trainable_count(model) == body + channels * 10 + 10, backbone


def test_shift_place_blockres_shifts_only_the_residual_branch():
    blockres = tsm_keras.build_tsm(10, backbone="resnet18", shift_place="blockres")
    assert consumers(blockres, "res3a_shift") == {"res3a_branch2a_pad"}  # stride-2 3x3 conv padding
    assert consumers(blockres, "res2b_shift") == {"res2b_branch2a"}
    block = tsm_keras.build_tsm(10, backbone="resnet18", shift_place="block")
    assert consumers(block, "res3a_shift") == {"res3a_branch2a_pad", "res3a_branch1"}
    assert consumers(block, "res2b_shift") == {"res2b_branch2a", "res2b_add"}


def test_head_init_and_dropout():
    model = tsm_keras.build_tsm(7, backbone="resnet18", dropout=0.8)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.get_layer("fc").weights)
    assert kernel.shape == (512, 7) and np.all(bias == 0)
    assert 0.0007 < kernel.std() < 0.0013
    assert model.get_layer("dropout").rate == 0.8


def test_logits_are_the_time_average_of_per_frame_scores():
    model = tsm_keras.build_tsm(5, num_segments=4, backbone="resnet18", shift="none")
    clip = small_clip(batch=2, t=4, size=32)
    per_frame = keras.Model(model.input, model.get_layer("fc").output)
    frames = per_frame(clip).numpy().reshape(2, 4, 5)
    np.testing.assert_allclose(model(clip).numpy(), frames.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_tsn_ignores_frame_order_and_tsm_does_not():
    clip = small_clip(t=4, size=32, seed=3)
    reversed_clip = clip[:, ::-1]
    tsn = tsm_keras.build_tsm(5, num_segments=4, backbone="resnet18", shift="none")
    tsm = tsm_keras.build_tsm(5, num_segments=4, backbone="resnet18")
    for m in (tsn, tsm):  # make the head large enough to see differences
        m.get_layer("fc").kernel.assign(np.random.default_rng(0).normal(size=(512, 5)).astype(np.float32))
    np.testing.assert_allclose(tsn(clip).numpy(), tsn(reversed_clip).numpy(), rtol=1e-4, atol=1e-4)
    assert np.abs(tsm(clip).numpy() - tsm(reversed_clip).numpy()).max() > 1e-3


def test_keras_file_round_trip_gives_identical_logits(tmp_path):
    model = tsm_keras.build_tsm(6, num_segments=4, backbone="resnet18", convention="paddle",
                                normalize_input=True, shift="unidirectional")
    path = str(tmp_path / "tsm.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, tsm_keras.TSM)
    assert restored.get_config() == model.get_config()
    clip = np.random.default_rng(4).integers(0, 256, size=(2, 4, 48, 48, 3)).astype(np.float32)
    np.testing.assert_array_equal(restored(clip).numpy(), model(clip).numpy())


def test_normalize_input_accepts_uint8_and_matches_external_normalization():
    raw = tsm_keras.build_tsm(4, num_segments=4, backbone="resnet18", normalize_input=True)
    plain = tsm_keras.build_tsm(4, num_segments=4, backbone="resnet18")
    plain.set_weights(raw.get_weights())
    frames = np.random.default_rng(5).integers(0, 256, size=(1, 4, 40, 40, 3)).astype(np.uint8)
    normalized = (frames.astype(np.float32) - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    expected = plain(normalized).numpy()
    np.testing.assert_allclose(raw(tf.constant(frames)).numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(raw.predict(frames, verbose=0), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_gives_float32_logits_and_compute_dtype_activations(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    model = tsm_keras.build_tsm(5, num_segments=4, backbone="resnet18", normalize_input=True)
    compute = policy.split("_")[1]
    probe = keras.Model(model.input, [model.get_layer("res3a_shift").output, model.get_layer("fc").output,
                                      model.output])
    shifted, scores, logits = probe(np.random.default_rng(6).integers(0, 256, size=(1, 4, 32, 32, 3)).astype(np.uint8))
    assert keras.backend.standardize_dtype(shifted.dtype) == compute
    assert keras.backend.standardize_dtype(scores.dtype) == compute
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    assert np.all(np.isfinite(logits.numpy()))


@pytest.mark.parametrize("num_segments", [4, 8, 16])
@pytest.mark.parametrize("size", [112, 160, 224])
def test_input_sizes_and_segment_counts(num_segments, size):
    model = tsm_keras.build_tsm(3, num_segments=num_segments, backbone="resnet18", image_size=size)
    logits = model(small_clip(t=num_segments, size=size))
    assert logits.shape == (1, 3) and logits.dtype == tf.float32


def test_any_image_size_when_unset():
    model = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet18")
    assert model(small_clip(t=2, size=96)).shape == (1, 3)
    assert model(np.zeros((2, 2, 64, 80, 3), np.float32)).shape == (2, 3)


def test_stride_in_1x1_moves_the_stride():
    model = tsm_keras.build_tsm(3, backbone="resnet50", stride_in_1x1=True, image_size=64)
    assert model.get_layer("res3a_branch2a").strides == (2, 2)
    assert model.get_layer("res3a_branch2b").strides == (1, 1)
    default = tsm_keras.build_tsm(3, backbone="resnet50", image_size=64)
    assert default.get_layer("res3a_branch2a").strides == (1, 1)
    assert default.get_layer("res3a_branch2b").strides == (2, 2)


def test_strided_convs_pad_symmetrically_like_the_references():
    # An all-ones 7x7/2 kernel on all-ones input counts the input pixels each output sees. With the
    # references' padding (3 on every side) output i covers input rows [2i-3, 2i+3]; Keras' "same"
    # would cover [2i-2, 2i+4].
    model = tsm_keras.build_tsm(3, num_segments=1, backbone="resnet18", shift="none")
    stem = keras.Model(model.input, model.get_layer("conv1").output)
    model.get_layer("conv1").kernel.assign(np.ones((7, 7, 3, 64), np.float32))
    out = stem(np.ones((1, 1, 32, 32, 3), np.float32)).numpy()[0, :, :, 0]
    rows = np.array([len(set(range(2 * i - 3, 2 * i + 4)) & set(range(32))) for i in range(16)])
    np.testing.assert_array_equal(out, 3.0 * np.outer(rows, rows))


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=3, backbone="resnet152"), "backbone"),
    (dict(num_classes=3, shift="forward"), "shift"),
    (dict(num_classes=3, shift_place="conv"), "shift_place"),
    (dict(num_classes=3, dropout=1.5), "dropout"),
    (dict(num_classes=3, image_size=8), "image_size"),
])
def test_build_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tsm_keras.build_tsm(**kwargs)


def test_with_raw_frame_input_moves_normalization_inside():
    from tsm_keras.models.inference import with_raw_frame_input

    for convention in ("imagenet", "caffe"):
        plain = tsm_keras.build_tsm(4, num_segments=2, backbone="resnet18", input_convention=convention)
        raw = with_raw_frame_input(plain)
        assert raw.normalize_input and raw.input_convention == convention
        frames = np.random.default_rng(8).integers(0, 256, size=(1, 2, 32, 32, 3)).astype(np.float32)
        if convention == "imagenet":
            normalized = (frames - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
        else:
            normalized = frames[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
        np.testing.assert_allclose(raw(frames).numpy(), plain(normalized).numpy(), rtol=1e-4, atol=1e-5)
        assert with_raw_frame_input(raw) is raw


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_fold_batchnorm_gives_the_same_logits_without_batchnorm_layers(backbone):
    from tsm_keras.models import fold_batchnorm

    model = tsm_keras.build_tsm(7, num_segments=4, backbone=backbone, image_size=64, normalize_input=True)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-looking statistics, so that folding has something to fold
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert all(layer.use_bias for layer in folded.layers
               if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D))
    assert folded.get_config()["fold_batchnorm"] is True
    clips = rng.integers(0, 256, (2, 4, 64, 64, 3)).astype(np.uint8)
    expected = model(clips, training=False).numpy()
    np.testing.assert_allclose(folded(clips, training=False).numpy(), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    assert fold_batchnorm(folded) is folded
