"""Format detection, `--mode=convert`, `.keras`/`.weights.h5` sources and error paths (no Paddle, no torch)."""

import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from tsm_keras.config import Config
from tsm_keras.convert import (ConversionError, convert_checkpoint, detect_format, init_from_pretrained,
                               load_model_from_source, load_weights_into, source_build_kwargs)
from tsm_keras.models import build_tsm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 2


def paddle_parameter_names(model):
    """A PaddleVideo .pdparams dict (parameter-name style) holding `model`'s weights: the inverse
    mapping written out by hand (OIHW kernels, [in, out] Linear, scale/offset/mean/variance)."""
    state = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            state[f"{layer.name}_weights"] = np.transpose(np.asarray(layer.kernel), (3, 2, 0, 1))
        elif isinstance(layer, keras.layers.BatchNormalization):
            for field, weight in zip(("scale", "offset", "mean", "variance"), layer.get_weights()):
                state[f"{layer.name}_{field}"] = weight
    kernel, bias = model.get_layer("fc").get_weights()
    state.update({"fc_0.w_0": kernel, "fc_0.b_0": bias})
    return state


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A random paddle-convention model and its .pdparams (written with plain pickle, like paddle.save)."""
    model = build_tsm(5, num_segments=T, convention="paddle")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if i in (0, 3)
                               else rng.normal(0, 0.1, w.shape).astype(np.float32)
                               for i, w in enumerate(layer.get_weights())])
    model.get_layer("fc").set_weights([rng.normal(0, 0.1, (2048, 5)).astype(np.float32), np.zeros(5, np.float32)])
    path = str(tmp_path_factory.mktemp("src") / "TSM_test.pdparams")
    with open(path, "wb") as f:
        pickle.dump(dict(paddle_parameter_names(model), **{"StructuredToParameterName@@": {}}), f, protocol=4)
    clip = np.random.default_rng(1).normal(size=(1, T, 64, 64, 3)).astype(np.float32)
    return dict(model=model, path=path, clip=clip, want=np.asarray(model(clip, training=False)))


def test_convert_mode_writes_a_loadable_keras_model(source, tmp_path):
    output = str(tmp_path / "out" / "tsm.keras")
    convert_checkpoint(Config(mode="convert", source=source["path"], output=output, num_classes=5, num_segments=T))
    loaded = keras.saving.load_model(output)
    assert (loaded.convention, loaded.image_size, loaded.normalize_input) == ("paddle", None, False)
    np.testing.assert_allclose(np.asarray(loaded(source["clip"], training=False)), source["want"], rtol=1e-5, atol=1e-4)
    # Any frame size: the same model takes 96x80 frames.
    assert loaded(np.zeros((1, T, 96, 80, 3), np.float32)).shape == (1, 5)
    assert detect_format(output) == "keras"
    # A .keras source at another T: rebuilt, same weights.
    again = load_model_from_source(output, num_segments=4)
    assert again.num_segments == 4
    np.testing.assert_array_equal(again.get_layer("res3a_branch2b").kernel, loaded.get_layer("res3a_branch2b").kernel)


def test_convert_mode_weights_only(source, tmp_path):
    output = str(tmp_path / "tsm.weights.h5")
    convert_checkpoint(Config(mode="convert", source=source["path"], output=output, num_classes=5, num_segments=T))
    assert detect_format(output) == "keras-weights"
    model = load_model_from_source(output)  # the architecture file beside it says convention="paddle", T
    assert (model.convention, model.num_segments, model.num_classes) == ("paddle", T, 5)
    np.testing.assert_allclose(np.asarray(model(source["clip"], training=False)), source["want"], rtol=1e-5, atol=1e-4)
    fresh = build_tsm(5, num_segments=T, convention="paddle")
    load_weights_into(fresh, output)
    np.testing.assert_array_equal(fresh.get_layer("fc").kernel, model.get_layer("fc").kernel)
    with pytest.raises(ConversionError, match="convention='paddle'"):
        load_weights_into(build_tsm(3, num_segments=T), output)  # other head: compared via the architecture file
    with pytest.raises(ConversionError, match="convention='paddle'"):
        load_weights_into(build_tsm(5, num_segments=T), output)


def test_convert_mode_errors(source, tmp_path):
    with pytest.raises(ConversionError, match="--source"):
        convert_checkpoint(Config(mode="convert", output=str(tmp_path / "x.keras")))
    with pytest.raises(ConversionError, match=".keras .*or .weights.h5"):
        convert_checkpoint(Config(mode="convert", source=source["path"], output=str(tmp_path / "x.h5")))
    with pytest.raises(ConversionError, match="5 classes.*--num_classes"):
        convert_checkpoint(Config(mode="convert", source=source["path"], output=str(tmp_path / "x.keras")))
    with pytest.raises(ConversionError, match="--backbone=resnet50"):
        convert_checkpoint(Config(mode="convert", source=source["path"], output=str(tmp_path / "x.keras"),
                                   num_classes=5, backbone="resnet101"))


def test_init_from_pretrained_skips_head_and_reports_convention(source):
    model = build_tsm(3, num_segments=T)  # convention "tsm", 3 classes: a fine-tuning target
    messages = init_from_pretrained(model, source["path"])
    assert any("head skipped" in m for m in messages) and any("convention" in m for m in messages)
    np.testing.assert_array_equal(model.get_layer("bn4c_branch2a").moving_mean,
                                  source["model"].get_layer("bn4c_branch2a").moving_mean)
    assert source_build_kwargs(source["path"])["convention"] == "paddle"


def test_unknown_formats(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ConversionError, match="unknown weights format.*pdparams"):
        load_model_from_source(str(text))
    with pytest.raises(ConversionError, match="no such file"):
        load_model_from_source(str(tmp_path / "missing.pdparams"))
    listed = tmp_path / "list.pdparams"
    with open(listed, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(ConversionError, match="holds a dict"):
        load_model_from_source(str(listed))
    empty = tmp_path / "empty.pdparams"
    with open(empty, "wb") as f:
        pickle.dump({"some.other.model": np.zeros(3)}, f)
    with pytest.raises(ConversionError, match="some.other.model"):
        load_model_from_source(str(empty))


def test_app_convert_mode(source, tmp_path):
    output = str(tmp_path / "cli.weights.h5")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "app.py"), "--mode=convert", f"--source={source['path']}",
                          f"--output={output}", "--num_classes=5", f"--num_segments={T}"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "convention=paddle" in run.stdout and os.path.exists(output)


def test_config_builds_for_the_raw_frame_pipeline(source):
    """`config=` (what eval/predict pass): the run's classes and T, and a model that takes raw 0-255 RGB."""
    from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD

    model = load_model_from_source(source["path"], config=Config(num_classes=5, num_segments=T))
    assert model.normalize_input and model.convention == "paddle"
    raw = np.random.default_rng(4).integers(0, 256, size=(1, T, 64, 64, 3)).astype(np.uint8)
    normalized = (raw.astype(np.float32) - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    np.testing.assert_allclose(np.asarray(model(raw, training=False)),
                               np.asarray(source["model"](normalized, training=False)), rtol=1e-4, atol=1e-3)
