"""PaddleVideo .pdparams -> TSM: logits match PaddleVideo's own ResNetTSM(50) + TSM head.

Needs paddlepaddle and ppvideo (pip install --no-deps ppvideo==2.3.1); reading .pdparams does not.
"""

import importlib.util
import os
import pickle
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tsm_keras.convert import ConversionError, detect_format, load_model_from_source
from tsm_keras.convert.paddle import convert_paddle_state, read_pdparams

NUM_SEG, CLASSES, SIZE = 8, 7, 64
REFERENCE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paddle_reference.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A randomized PaddleVideo ResNetTSM(50) + Linear head saved in each key style, a random clip and
    PaddleVideo's logits for it: made in a subprocess (paddle segfaults when imported after TensorFlow)."""
    if importlib.util.find_spec("paddle") is None or importlib.util.find_spec("ppvideo") is None:
        pytest.skip("needs paddlepaddle and ppvideo (pip install --no-deps ppvideo==2.3.1)")
    folder = tmp_path_factory.mktemp("pdparams")
    run = subprocess.run([sys.executable, REFERENCE_SCRIPT, str(folder), str(NUM_SEG), str(CLASSES), str(SIZE)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = np.load(folder / "reference.npz")
    files = {style: str(folder / f"{style}.pdparams")
             for style in ("structured", "structured_no_prefix", "parameter_names", "backbone_only")}
    return dict(clip=saved["clip"], logits=saved["logits"], features=saved["features"], files=files,
                params=read_pdparams(files["parameter_names"]))


def keras_logits(model, clip):
    frames = np.transpose(clip, (0, 1, 3, 4, 2))  # NTCHW -> NTHWC
    return np.asarray(model(frames, training=False))


@pytest.mark.parametrize("style", ["structured", "structured_no_prefix", "parameter_names"])
def test_logits_match_paddlevideo(reference, style):
    path = reference["files"][style]
    assert detect_format(path) == "paddle"
    model = load_model_from_source(path, num_segments=NUM_SEG)
    assert (model.convention, model.num_classes, model.backbone) == ("paddle", CLASSES, "resnet50")
    assert model.image_size is None and not model.normalize_input
    got = keras_logits(model, reference["clip"])
    want = reference["logits"]
    delta = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    print(f"paddle {style}: max|dlogit| = {delta:.3g} abs, {delta / scale:.3g} relative (max|logit| {scale:.3g})")
    assert delta <= 1e-4 * scale


def test_backbone_only_leaves_head_and_needs_num_classes(reference):
    path = reference["files"]["backbone_only"]
    with pytest.raises(ConversionError, match="num_classes"):
        load_model_from_source(path)
    model = load_model_from_source(path, num_classes=5, num_segments=NUM_SEG)
    kernel, bias = model.get_layer("fc").get_weights()
    assert kernel.shape == (2048, 5) and not bias.any() and 0 < kernel.std() < 0.01  # N(0, 0.001) init


def test_head_class_count_mismatch(reference):
    path = reference["files"]["structured"]
    with pytest.raises(ConversionError, match=f"{CLASSES} classes.*num_classes={CLASSES}"):
        load_model_from_source(path, num_classes=3, num_segments=NUM_SEG)
    model = load_model_from_source(path, num_classes=3, num_segments=NUM_SEG, skip_mismatched_head=True)
    assert model.get_layer("fc").get_weights()[0].shape == (2048, 3)


def test_pdparams_read_without_paddle(reference, monkeypatch):
    """Plain pickle reads the file: hide paddle and read it anyway."""
    import sys

    monkeypatch.setitem(sys.modules, "paddle", None)
    state = read_pdparams(reference["files"]["parameter_names"])
    assert set(state) == set(reference["params"])
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_unknown_missing_and_shape_errors(reference, tmp_path):
    state = dict(reference["params"])
    with pytest.raises(ConversionError, match="extra_thing"):
        convert_paddle_state(dict(state, extra_thing=np.zeros(3, np.float32)))
    with pytest.raises(ConversionError, match="bn2a_branch2a"):
        convert_paddle_state({k: v for k, v in state.items() if k != "bn2a_branch2a_mean"})

    from tsm_keras.convert.converted import assign_converted
    from tsm_keras.models import build_tsm

    model = build_tsm(CLASSES, num_segments=NUM_SEG, convention="paddle")
    missing = {k: v for k, v in state.items() if k != "res5c_branch2b_weights"}
    with pytest.raises(ConversionError, match="no weights in the file: res5c_branch2b"):
        assign_converted(model, convert_paddle_state(missing))
    with pytest.raises(ConversionError, match=r"blocks per stage \(3, 4, 6, 2\)"):
        convert_paddle_state({k: v for k, v in state.items() if not k.startswith(("res5c_", "bn5c_"))})
    wrong = dict(state, res2a_branch2b_weights=np.zeros((64, 64, 1, 1), np.float32))
    with pytest.raises(ConversionError, match="res2a_branch2b"):
        assign_converted(model, convert_paddle_state(wrong))
    head = [k for k in state if k in ("fc_0.w_0", "fc_0.b_0") or re.match(r"^(head\.)?fc\.(weight|bias)$", k)]
    weight, bias = sorted(head, key=lambda k: state[k].ndim, reverse=True)
    with pytest.raises(ConversionError, match="classifier has only its bias; need weight and bias"):
        convert_paddle_state({k: v for k, v in state.items() if k != weight})
    with pytest.raises(ConversionError, match=r"weight \(2048, 7\) and bias \(8,\) are not a Paddle Linear"):
        convert_paddle_state(dict(state, **{bias: np.zeros(CLASSES + 1, np.float32)}))
    converted = convert_paddle_state(state)
    converted.build["convention"] = "tsm"  # as if the model were built with the official convention
    with pytest.raises(ConversionError, match="convention='tsm'"):
        assign_converted(model, converted)


def test_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"x": os.getcwd}, f)
    with pytest.raises(ConversionError, match="refusing to unpickle"):
        read_pdparams(str(path))


def test_reads_tensors_pickled_as_name_array_pairs(tmp_path):
    """paddle.save of Tensors nested in other objects writes (name, ndarray) pairs; the table is dropped."""
    path = tmp_path / "pairs.pdparams"
    kernel = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    with open(path, "wb") as f:
        pickle.dump({"conv1_weights": ("conv1_weights", kernel), "StructuredToParameterName@@": {"a": "b"}}, f)
    state = read_pdparams(str(path))
    assert list(state) == ["conv1_weights"]
    np.testing.assert_array_equal(state["conv1_weights"], kernel)


def test_parity_check_sees_the_shift_direction(reference):
    """Negative control: the same weights in a model shifting the official way miss by far, so the
    tolerance above does test the convention, not only the weight mapping."""
    from tsm_keras.convert.converted import assign_converted
    from tsm_keras.models import build_tsm

    model = build_tsm(CLASSES, num_segments=NUM_SEG, convention="tsm")
    assign_converted(model, convert_paddle_state(reference["params"]), strict_build=False)
    delta = float(np.max(np.abs(keras_logits(model, reference["clip"]) - reference["logits"])))
    assert delta > 1e-2 * float(np.max(np.abs(reference["logits"])))


def _ucf101_recipe(**changes):
    """flags/tsm_ucf101_frames.flags as `python app.py` parses it."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, repo)
    import app
    from tsm_keras.config import config_from_flags

    app.F.unparse_flags()
    app.F(["app.py", f"--flagfile={repo}/flags/tsm_ucf101_frames.flags"])
    return config_from_flags(app.F).replace(**changes)


@pytest.mark.parametrize("convention", ["auto", "tsm"])
def test_fine_tuning_the_ucf101_recipe_from_pdparams_keeps_paddles_shift(reference, convention):
    """`--convention=auto` (the default) takes the .pdparams' shift: before any step, the model training builds
    gives PaddleVideo's own ResNetTSM features on the same frames. Forcing the official shift does not."""
    from tsm_keras.convert import init_from_pretrained
    from tsm_keras.layers import IMAGENET_MEAN, IMAGENET_STD
    from tsm_keras.loading import resolve_convention
    from tsm_keras.models import build_tsm

    config = _ucf101_recipe(pretrained=reference["files"]["structured"], image_size=SIZE, convention=convention)
    assert (config.convention, config.num_classes, config.num_segments) == (convention, 101, NUM_SEG)
    resolved, _ = resolve_convention(config)
    assert resolved == ("paddle" if convention == "auto" else "tsm")
    config = config.replace(convention=resolved)
    # What train() builds and loads: the pipeline's raw 0-255 frames, the 101-class head left new.
    model = build_tsm(**config.model_kwargs(normalize_input=True))
    init_from_pretrained(model, config.pretrained)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    normalized = np.transpose(reference["clip"], (0, 1, 3, 4, 2))  # what PaddleVideo's backbone was fed
    raw = normalized * np.array(IMAGENET_STD, np.float32) + np.array(IMAGENET_MEAN, np.float32)
    got = np.asarray(features(raw))
    want = reference["features"]
    relative = float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))
    print(f"fine-tune features, --convention={convention}: max relative difference {relative:.3g}")
    if convention == "auto":
        assert relative <= 1e-4
    else:
        assert relative > 1e-2


def test_training_records_the_resolved_convention(reference, tmp_path, capsys):
    """`--mode=train --pretrained=X.pdparams`: the first lines say the convention and why; config.json keeps
    "paddle", so eval/export rebuild the same shift."""
    import json

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training"))
    import fake_data
    from tsm_keras.config import Config
    from tsm_keras.training.loop import train

    config = Config(model_dir=str(tmp_path / "run"), num_classes=len(fake_data.CLASSES), num_segments=NUM_SEG,
                    image_size=32, batch_size=2, epochs=1, steps_per_epoch=1, validate=False,
                    pretrained=reference["files"]["structured"], precision="float32")
    train(config, data=fake_data, stop_after_steps=0)  # set up, weights loaded; no step (R50 traces for 8 s)
    assert f"convention: paddle (the convention of {config.pretrained})" in capsys.readouterr().out
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["convention"] == "paddle"

