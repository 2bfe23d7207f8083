"""keras.applications ResNet50 weights -> TSM backbone: same features with the shift off and T=1.

The reference is keras.applications itself with random weights and random BN statistics (its
layout differs from ours: stride on the first 1x1, convs with bias, BN epsilon 1.001e-5).
"""

import h5py
import keras
import numpy as np
import pytest

from tsm_keras.convert import ConversionError, detect_format, load_model_from_source

SIZE = 64


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape, name = tuple(weight.shape), weight.path.split("/")[-1]
            if name == "kernel":
                fan_in = np.prod(shape[:-1])
                values.append(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape))
            elif name == "gamma":
                values.append(rng.uniform(0.5, 1.5, shape))
            elif name == "moving_variance":
                values.append(rng.uniform(0.5, 2.0, shape))
            elif name == "moving_mean":
                values.append(rng.normal(0.0, 0.2, shape))
            else:  # bias, beta
                values.append(rng.normal(0.0, 0.1, shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])


def write_like_keras_download(model, path):
    """The HDF5 layout of Keras' downloadable weights (resnet50_..._notop.h5): root attribute
    `layer_names`, per layer `weight_names` like b"conv1_conv/kernel:0" (bytes, with ":0")."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.path.split('/')[-1]}:0".encode() for w in layer.weights]
            group.attrs["weight_names"] = np.array(names)
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name.decode(), data=np.asarray(weight))


@pytest.fixture(scope="module")
def resnet50_notop():
    model = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg", input_shape=(None, None, 3))
    randomize(model, seed=0)
    frames = np.random.default_rng(1).normal(0.0, 50.0, size=(2, SIZE, SIZE, 3)).astype(np.float32)
    return model, frames, np.asarray(model(frames, training=False))


def _pooled_features(tsm_model, frames):
    features = keras.Model(tsm_model.input, tsm_model.get_layer("avg_pool").output)
    return np.asarray(features(frames[:, None], training=False))  # each image a clip of T=1


@pytest.mark.parametrize("layout", ["keras_download_h5", "keras3_weights_h5"])
def test_features_match_keras_applications(resnet50_notop, tmp_path, layout):
    app_model, frames, want = resnet50_notop
    if layout == "keras_download_h5":
        path = str(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
        write_like_keras_download(app_model, path)
    else:
        path = str(tmp_path / "resnet50_notop.weights.h5")
        app_model.save_weights(path)
    assert detect_format(path) == "keras-applications"
    model = load_model_from_source(path, num_classes=3, num_segments=1, shift="none")
    assert model.stride_in_1x1 and model.input_convention == "caffe" and not model.normalize_input
    got = _pooled_features(model, frames)
    delta = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    print(f"keras.applications {layout}: max|dfeature| = {delta:.3g} abs, {delta / scale:.3g} relative "
          f"(max|feature| {scale:.3g})")
    assert delta <= 1e-4 * scale


def test_imagenet_head_becomes_fc_logits(tmp_path):
    """With the classifier (`predictions`, taken without its softmax) the logits match at 1000 classes."""
    app_model = keras.applications.ResNet50(weights=None, include_top=True, classifier_activation=None,
                                            input_shape=(SIZE, SIZE, 3))
    randomize(app_model, seed=2)
    path = str(tmp_path / "resnet50.h5")
    write_like_keras_download(app_model, path)
    frames = np.random.default_rng(3).normal(0.0, 50.0, size=(1, SIZE, SIZE, 3)).astype(np.float32)
    want = np.asarray(app_model(frames, training=False))
    with pytest.raises(ConversionError, match="1000 classes"):
        load_model_from_source(path, num_classes=10, num_segments=1, shift="none")
    model = load_model_from_source(path, num_segments=1, shift="none")
    got = np.asarray(model(frames[:, None], training=False))
    delta, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
    print(f"keras.applications with head: max|dlogit| = {delta:.3g} abs, {delta / scale:.3g} relative")
    assert model.num_classes == 1000 and delta <= 1e-4 * scale


def test_conflicting_build_arguments_are_refused(resnet50_notop, tmp_path):
    path = str(tmp_path / "notop.h5")
    write_like_keras_download(resnet50_notop[0], path)
    with pytest.raises(ConversionError, match="stride_in_1x1=True"):
        load_model_from_source(path, num_classes=3, stride_in_1x1=False)
    with pytest.raises(ConversionError, match="backbone='resnet50'.*--backbone=resnet50"):
        load_model_from_source(path, num_classes=3, backbone="resnet101")


def test_caffe_input_convention_with_raw_frames(resnet50_notop, tmp_path):
    """normalize_input=True on caffe weights: raw RGB 0-255 in, keras' own preprocess_input as reference."""
    app_model = resnet50_notop[0]
    path = str(tmp_path / "notop.h5")
    write_like_keras_download(app_model, path)
    model = load_model_from_source(path, num_classes=3, num_segments=1, shift="none", normalize_input=True)
    raw = np.random.default_rng(5).uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype(np.float32)
    want = np.asarray(app_model(keras.applications.resnet50.preprocess_input(raw.copy()), training=False))
    got = _pooled_features(model, raw)
    assert float(np.max(np.abs(got - want))) <= 1e-4 * float(np.max(np.abs(want)))


def test_app_train_pretrained_on_keras_applications_h5_builds_the_caffe_layout(resnet50_notop, tmp_path, capsys):
    """`python app.py --mode=train --pretrained=<keras.applications ResNet50 .h5>`: training builds the layout
    the weights need (stride in the first 1x1, Caffe input), starts from them, and the run folder rebuilds it.
    app.py's flags and main run in this process (what is tested is flags -> config -> training, not the process)."""
    import json
    import os
    import sys

    from tsm_keras.config import Config
    from tsm_keras.loading import load_trained

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    import app

    app_model = resnet50_notop[0]
    path = str(tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_like_keras_download(app_model, path)
    run = str(tmp_path / "run")
    # A small synthetic dataset, read as it is (8 videos a split instead of 384 + 96): the one training step
    # needs two clips, and the final evaluation has no more to show with 96.
    from tsm_keras.data.synthetic import ensure_synthetic_dataset

    ensure_synthetic_dataset(tmp_path / "synthetic", train_per_class=1, val_per_class=1, num_frames=8, frame_size=48)
    # lr 0: the step leaves the kernels as loaded (BatchNorm statistics still move).
    argv = ["--mode=train", f"--model_dir={run}",
            "--data_format=synthetic", f"--data_root={tmp_path / 'synthetic'}", "--num_classes=8",
            "--backbone=resnet50", "--num_segments=2", "--image_size=40", "--scale_size=40", "--batch_size=2",
            "--epochs=1", "--steps_per_epoch=1", "--novalidate", "--lr=0", "--lr_values=0",
            "--lr_boundaries=", "--precision=float32", f"--pretrained={path}"]
    app.F.unparse_flags()
    app.F(["app.py", *argv])
    status = app.main([])
    out = capsys.readouterr()
    assert status == 0, (out.out + out.err)[-3000:]
    assert "stride_in_1x1=True, input_convention=caffe" in out.out
    with open(os.path.join(run, "config.json")) as f:
        saved = json.load(f)
    assert (saved["stride_in_1x1"], saved["input_convention"], saved["convention"]) == (True, "caffe", "tsm")
    model, _, _ = load_trained(Config(weights=run))
    assert model.stride_in_1x1 and model.input_convention == "caffe"
    np.testing.assert_array_equal(model.get_layer("res2a_branch2a").get_weights()[0],
                                  app_model.get_layer("conv2_block1_1_conv").get_weights()[0])
