"""PP-TSM .pdparams -> TSM: logits match PaddleVideo's own ResNetTweaksTSM(50) + ppTSMHead at T=8 and T=16.

Needs paddlepaddle and ppvideo (pip install --no-deps ppvideo==2.3.1); reading .pdparams does not.
T=8 runs at 75 px: odd sizes all the way down (38, 19, 10, 5, 3), so the stride-2 convs' symmetric padding,
the stem max pool's ignored padding and the shortcuts' ceil-mode average pools are all exercised;
T=16 runs at 64 px (even sizes) with a fold of C/16.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tsm_keras.convert import ConversionError, detect_format, load_model_from_source
from tsm_keras.convert.converted import assign_converted
from tsm_keras.convert.paddle import convert_paddle_state, read_pdparams

CLASSES = 7
REFERENCE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pptsm_reference.py")


@pytest.fixture(scope="module", params=[(8, 75), (16, 64)], ids=["T8-75px", "T16-64px"])
def reference(request, tmp_path_factory):
    """A randomized PP-TSM saved as .pdparams (recognizer state dict and parameter names), a random clip and
    PaddleVideo's logits for it: made in a subprocess (paddle segfaults when imported after TensorFlow)."""
    if importlib.util.find_spec("paddle") is None or importlib.util.find_spec("ppvideo") is None:
        pytest.skip("needs paddlepaddle and ppvideo (pip install --no-deps ppvideo==2.3.1)")
    num_seg, size = request.param
    folder = tmp_path_factory.mktemp(f"pptsm_t{num_seg}")
    run = subprocess.run([sys.executable, REFERENCE_SCRIPT, str(folder), str(num_seg), str(CLASSES), str(size), "50"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = np.load(folder / "reference.npz")
    return dict(num_seg=num_seg, clip=saved["clip"], logits=saved["logits"],
                backbone_parameters=int(saved["backbone_parameters"]),
                files={style: str(folder / f"{style}.pdparams") for style in ("structured", "parameter_names")})


def keras_logits(model, clip):
    return np.asarray(model(np.transpose(clip, (0, 1, 3, 4, 2)), training=False))  # NTCHW -> NTHWC


def relative_error(got, want):
    return float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))


@pytest.mark.parametrize("style", ["structured", "parameter_names"])
def test_logits_match_paddlevideo_pptsm(reference, style):
    path = reference["files"][style]
    assert detect_format(path) == "paddle"
    model = load_model_from_source(path, num_segments=reference["num_seg"])
    assert (model.backbone, model.convention, model.num_classes) == ("resnet50_vd", "paddle", CLASSES)
    error = relative_error(keras_logits(model, reference["clip"]), reference["logits"])
    print(f"PP-TSM {style} T={reference['num_seg']}: max relative logit error {error:.3g}")
    assert error <= 1e-4
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == reference["backbone_parameters"] + 2048 * CLASSES + CLASSES


def test_parity_check_sees_the_shift_convention(reference):
    """Negative control: the same weights in a model shifting the official way (and fold C/8) miss by far more
    than the tolerance (measured: 7e-3 at T=8, 1.6e-2 at T=16, against 3e-7 and 9e-7 for the right shift)."""
    from tsm_keras.models import build_tsm

    model = build_tsm(CLASSES, num_segments=reference["num_seg"], backbone="resnet50_vd", convention="tsm")
    state = read_pdparams(reference["files"]["structured"])
    assign_converted(model, convert_paddle_state(state), strict_build=False)
    error = relative_error(keras_logits(model, reference["clip"]), reference["logits"])
    print(f"PP-TSM T={reference['num_seg']} with convention='tsm': max relative logit error {error:.3g}")
    assert error > 1e-3  # 10x the tolerance above


def test_pptsm_layout_errors(reference):
    from tsm_keras.models import build_tsm

    state = read_pdparams(reference["files"]["structured"])
    # A plain ResNet-50 cannot take PP-TSM weights: the backbone is structural.
    with pytest.raises(ConversionError, match="backbone='resnet50_vd'"):
        assign_converted(build_tsm(CLASSES, backbone="resnet50", convention="paddle"), convert_paddle_state(state))
    with pytest.raises(ConversionError, match="backbone='resnet50_vd'.*--backbone=resnet50_vd"):
        load_model_from_source(reference["files"]["structured"], backbone="resnet50")
    with pytest.raises(ConversionError, match="stem has.*conv1_1, conv1_3"):
        convert_paddle_state({k: v for k, v in state.items() if not k.startswith("backbone.conv1_2.")})
    mixed = dict(state, **{"backbone.res2a.conv0._conv.weight": state["backbone.bb_0_0.conv0._conv.weight"]})
    with pytest.raises(ConversionError, match="already given"):
        convert_paddle_state(mixed)
    with pytest.raises(ConversionError, match="bn2b_branch2a"):
        convert_paddle_state({k: v for k, v in state.items() if k != "backbone.bb_0_1.conv0._batch_norm._mean"})
    with pytest.raises(ConversionError, match=r"blocks per stage \(3, 4, 6, 2\)"):
        convert_paddle_state({k: v for k, v in state.items() if not k.startswith("backbone.bb_3_2.")})
