"""MobileNetV2-TSM checkpoints -> TSM: logits against each reference, random weights AND BatchNorm statistics.

- PaddleVideo ppTSM_mv2: `pptsm_mv2.py` itself, loaded by path in a subprocess (`pptsm_mv2_reference.py`), at T=8
  (75 px: 38, 19, 10, 5, 3 on the way down) and T=4 (64 px); both .pdparams key styles; a negative control.
- Official PyTorch (`archs/mobilenet_v2.py` + `ops/temporal_shift.py` + TSN's `new_fc`): without torch, a numpy
  forward written from that code reads a state dict with the official key names and shapes; with torch, the
  same model in torch saved as `.pth.tar` and read back through `load_model_from_source`.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tsm_keras.config import Config
from tsm_keras.convert import (ConversionError, convert_checkpoint, detect_format, init_from_pretrained,
                               load_model_from_source)
from tsm_keras.convert.converted import assign_converted
from tsm_keras.convert.paddle import convert_paddle_state, read_pdparams
from tsm_keras.convert.pytorch import convert_torch_state
from tsm_keras.models import build_tsm

CLASSES = 7
REFERENCE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pptsm_mv2_reference.py")
# archs/mobilenet_v2.py's interverted_residual_setting (t, c, n, s)
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def keras_logits(model, clip):
    return np.asarray(model(np.transpose(clip, (0, 1, 3, 4, 2)), training=False))  # NTCHW -> NTHWC


def relative_error(got, want):
    return float(np.max(np.abs(got - want))) / float(np.max(np.abs(want)))


# ---- PaddleVideo ppTSM_mv2 -----------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[(8, 75), (4, 64)], ids=["T8-75px", "T4-64px"])
def paddle_reference(request, tmp_path_factory):
    if importlib.util.find_spec("paddle") is None or importlib.util.find_spec("ppvideo") is None:
        pytest.skip("needs paddlepaddle and ppvideo (pip install --no-deps ppvideo==2.3.1)")
    num_seg, size = request.param
    folder = tmp_path_factory.mktemp(f"pptsm_mv2_t{num_seg}")
    run = subprocess.run([sys.executable, REFERENCE_SCRIPT, str(folder), str(num_seg), str(CLASSES), str(size)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = np.load(folder / "reference.npz")
    return dict(num_seg=num_seg, clip=saved["clip"], logits=saved["logits"], parameters=int(saved["parameters"]),
                files={style: str(folder / f"{style}.pdparams") for style in ("structured", "parameter_names")})


@pytest.mark.parametrize("style", ["structured", "parameter_names"])
def test_logits_match_paddlevideo_pptsm_mv2(paddle_reference, style):
    path = paddle_reference["files"][style]
    assert detect_format(path) == "paddle"
    model = load_model_from_source(path, num_segments=paddle_reference["num_seg"])
    assert (model.backbone, model.convention, model.num_classes) == ("mobilenetv2_paddle", "paddle", CLASSES)
    error = relative_error(keras_logits(model, paddle_reference["clip"]), paddle_reference["logits"])
    print(f"ppTSM_mv2 {style} T={paddle_reference['num_seg']}: max relative logit error {error:.3g}")
    assert error <= 1e-4
    # Paddle's own count of the model's trainable parameters (its `out` classifier included).
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == paddle_reference["parameters"]


def test_paddle_parity_sees_the_shift_convention(paddle_reference):
    """Negative control: the same weights shifting the official way (fold C/8, the other direction)."""
    model = build_tsm(CLASSES, num_segments=paddle_reference["num_seg"], backbone="mobilenetv2_paddle",
                      convention="tsm")
    assign_converted(model, convert_paddle_state(read_pdparams(paddle_reference["files"]["structured"])),
                     strict_build=False)
    error = relative_error(keras_logits(model, paddle_reference["clip"]), paddle_reference["logits"])
    print(f"ppTSM_mv2 T={paddle_reference['num_seg']} with convention='tsm': max relative logit error {error:.3g}")
    assert error > 1e-2  # 100x the tolerance


def test_paddle_layout_errors(paddle_reference):
    state = read_pdparams(paddle_reference["files"]["structured"])
    with pytest.raises(ConversionError, match="backbone='mobilenetv2_paddle'"):
        assign_converted(build_tsm(CLASSES, backbone="mobilenetv2", convention="paddle"), convert_paddle_state(state))
    with pytest.raises(ConversionError, match="block5_depthwise_bn"):
        convert_paddle_state({k: v for k, v in state.items()
                              if k != "backbone.conv4.conv4_2._bottleneck_conv._batch_norm._mean"})
    with pytest.raises(ConversionError, match="backbone.conv4.conv4_9"):
        extra = {"backbone.conv4.conv4_9._linear_conv._conv.weight": np.zeros((1, 1, 1, 1))}
        convert_paddle_state(dict(state, **extra))
    head = sorted((k for k in state if k in ("fc10_weights", "fc10_offset") or k.endswith(("out.weight", "out.bias"))),
                  key=lambda k: state[k].ndim, reverse=True)
    assert len(head) == 2, head
    with pytest.raises(ConversionError, match="classifier has only its bias; need weight and bias"):
        convert_paddle_state({k: v for k, v in state.items() if k != head[0]})
    with pytest.raises(ConversionError, match=rf"weight \(1280, {CLASSES}\) and bias \(3,\) are not a Paddle Linear"):
        convert_paddle_state(dict(state, **{head[1]: np.zeros(3, np.float32)}))


def test_convert_mode_and_pretrained_take_pptsm_mv2(paddle_reference, tmp_path):
    import keras

    path, num_seg = paddle_reference["files"]["structured"], paddle_reference["num_seg"]
    output = str(tmp_path / "pptsm_mv2.keras")
    convert_checkpoint(Config(mode="convert", source=path, output=output, num_classes=CLASSES, num_segments=num_seg,
                              backbone="mobilenetv2_paddle"))
    saved = keras.saving.load_model(output)
    assert (saved.backbone, saved.convention) == ("mobilenetv2_paddle", "paddle")
    assert relative_error(keras_logits(saved, paddle_reference["clip"]), paddle_reference["logits"]) <= 1e-4
    with pytest.raises(ConversionError, match="--backbone=mobilenetv2_paddle"):
        convert_checkpoint(Config(mode="convert", source=path, output=output, num_classes=CLASSES))
    # --pretrained: another class count, the head is skipped and the backbone taken.
    model = build_tsm(3, num_segments=num_seg, backbone="mobilenetv2_paddle", convention="paddle")
    messages = init_from_pretrained(model, path)
    assert any("head skipped" in message for message in messages)
    np.testing.assert_array_equal(model.get_layer("block1_expand").kernel,
                                  np.transpose(read_pdparams(path)["backbone.conv2._first_block._expand_conv._conv."
                                                                   "weight"], (2, 3, 1, 0)))


# ---- official PyTorch layout ---------------------------------------------------------------------------

def official_blocks():
    """[(features index, inp, oup, stride, expand_ratio)] as MobileNetV2.__init__ builds them."""
    blocks, inp, index = [], 32, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            blocks.append((index, inp, c, s if i == 0 else 1, t))
            inp, index = c, index + 1
    return blocks


def official_state(num_classes, shifted=True, seed=0):
    """A random state dict named and shaped as the official TSN(mobilenetv2, is_shift, dropout > 0) in DataParallel:
    written from archs/mobilenet_v2.py and ops/models.py, not from the converter. Random BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, shape):
        state[key] = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape).astype(np.float32)

    def bn(prefix, channels):
        state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        state[f"{prefix}.bias"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
        state[f"{prefix}.running_mean"] = rng.normal(0.0, 0.2, channels).astype(np.float32)
        state[f"{prefix}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        state[f"{prefix}.num_batches_tracked"] = np.array(100)

    p = "module.base_model.features"
    conv(f"{p}.0.0.weight", (32, 3, 3, 3))
    bn(f"{p}.0.1", 32)
    for index, inp, oup, stride, t in official_blocks():
        hidden = inp * t
        if t == 1:
            conv(f"{p}.{index}.conv.0.weight", (hidden, 1, 3, 3))
            bn(f"{p}.{index}.conv.1", hidden)
            conv(f"{p}.{index}.conv.3.weight", (oup, hidden, 1, 1))
            bn(f"{p}.{index}.conv.4", oup)
            continue
        net = ".net" if shifted and stride == 1 and inp == oup else ""  # len(m.conv) == 8 and use_res_connect
        conv(f"{p}.{index}.conv.0{net}.weight", (hidden, inp, 1, 1))
        bn(f"{p}.{index}.conv.1", hidden)
        conv(f"{p}.{index}.conv.3.weight", (hidden, 1, 3, 3))
        bn(f"{p}.{index}.conv.4", hidden)
        conv(f"{p}.{index}.conv.6.weight", (oup, hidden, 1, 1))
        bn(f"{p}.{index}.conv.7", oup)
    conv(f"{p}.18.0.weight", (1280, 320, 1, 1))
    bn(f"{p}.18.1", 1280)
    state["module.new_fc.weight"] = rng.normal(0.0, 0.05, (num_classes, 1280)).astype(np.float32)
    state["module.new_fc.bias"] = rng.normal(0.0, 0.1, num_classes).astype(np.float32)
    return state


def _conv_nchw(x, weight, stride=1, groups=1):
    """torch.nn.Conv2d(padding=k//2, bias=False) in float64 numpy: [N, C, H, W] -> [N, O, H', W']."""
    k = weight.shape[-1]
    pad = k // 2
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h = (x.shape[2] - k) // stride + 1
    w = (x.shape[3] - k) // stride + 1
    patches = np.stack([x[:, :, i:i + stride * h:stride, j:j + stride * w:stride]
                        for i in range(k) for j in range(k)], axis=2)  # [N, C, k*k, h, w]
    kernel = weight.reshape(weight.shape[0], weight.shape[1], k * k)
    if groups == 1:
        return np.einsum("nckhw,ock->nohw", patches, kernel)
    return np.einsum("nckhw,ck->nchw", patches, kernel[:, 0])  # depthwise: groups == channels


def official_numpy_logits(state, clip, num_segments, shift_div=8):
    """The official TSN(mobilenetv2) forward in eval mode, from its state dict: [N, T, 3, H, W] -> [N, classes]."""
    s = {key.replace("module.", "").replace("base_model.", ""): np.asarray(v, np.float64) for key, v in state.items()}
    f = "features"

    def bn(x, prefix):
        scale = s[f"{prefix}.weight"] / np.sqrt(s[f"{prefix}.running_var"] + 1e-5)
        mean, beta = s[f"{prefix}.running_mean"], s[f"{prefix}.bias"]
        return (x - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]

    def shift(x):  # ops/temporal_shift.py, TemporalShift.shift
        nt, c, h, w = x.shape
        x = x.reshape(nt // num_segments, num_segments, c, h, w)
        fold = c // shift_div
        out = np.zeros_like(x)
        out[:, :-1, :fold] = x[:, 1:, :fold]
        out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
        out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
        return out.reshape(nt, c, h, w)

    relu6 = lambda x: np.clip(x, 0.0, 6.0)  # noqa: E731
    x = clip.reshape((-1,) + clip.shape[2:]).astype(np.float64)
    x = relu6(bn(_conv_nchw(x, s[f"{f}.0.0.weight"], stride=2), f"{f}.0.1"))
    for index, inp, oup, stride, t in official_blocks():
        p = f"{f}.{index}.conv"
        if t == 1:
            y = relu6(bn(_conv_nchw(x, s[f"{p}.0.weight"], stride, groups=inp), f"{p}.1"))
            y = bn(_conv_nchw(y, s[f"{p}.3.weight"]), f"{p}.4")
        else:
            shifted = f"{p}.0.net.weight" in s
            y = _conv_nchw(shift(x) if shifted else x, s[f"{p}.0.net.weight" if shifted else f"{p}.0.weight"])
            y = relu6(bn(y, f"{p}.1"))
            y = relu6(bn(_conv_nchw(y, s[f"{p}.3.weight"], stride, groups=inp * t), f"{p}.4"))
            y = bn(_conv_nchw(y, s[f"{p}.6.weight"]), f"{p}.7")
        x = x + y if stride == 1 and inp == oup else y
    x = relu6(bn(_conv_nchw(x, s[f"{f}.18.0.weight"]), f"{f}.18.1"))
    scores = x.mean(3).mean(2) @ s["new_fc.weight"].T + s["new_fc.bias"]  # dropout: identity in eval
    return scores.reshape(-1, num_segments, scores.shape[-1]).mean(axis=1)


@pytest.mark.parametrize("num_segments,size", [(8, 75), (4, 64)])
def test_official_keys_give_the_official_logits_without_torch(num_segments, size):
    state = official_state(CLASSES)
    converted = convert_torch_state(state, source="TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100.pth")
    assert converted.build == dict(backbone="mobilenetv2", convention="tsm", stride_in_1x1=False,
                                   input_convention="imagenet", shift_place="blockres", shift_every=1)
    model = build_tsm(CLASSES, num_segments=num_segments, **converted.build)
    assign_converted(model, converted)
    np.testing.assert_array_equal(model.get_layer("block4_depthwise").kernel,
                                  np.transpose(state["module.base_model.features.4.conv.3.weight"], (2, 3, 0, 1)))
    np.testing.assert_array_equal(model.get_layer("block3_expand").kernel,
                                  np.transpose(state["module.base_model.features.3.conv.0.net.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(model.get_layer("top_conv_bn").moving_variance,
                                  state["module.base_model.features.18.1.running_var"])
    clip = np.random.default_rng(5).normal(size=(1, num_segments, 3, size, size)).astype(np.float32)
    want = official_numpy_logits(state, clip, num_segments)
    error = relative_error(keras_logits(model, clip), want)
    print(f"official mobilenetv2 (numpy reference) T={num_segments} {size}px: max relative logit error {error:.3g}")
    assert error <= 1e-4
    # Negative control: PaddleVideo's shift on the official weights.
    other = build_tsm(CLASSES, num_segments=num_segments, backbone="mobilenetv2", convention="paddle")
    assign_converted(other, converted, strict_build=False)
    wrong = relative_error(keras_logits(other, clip), want)
    print(f"official mobilenetv2 T={num_segments} with convention='paddle': max relative logit error {wrong:.3g}")
    assert wrong > 1e-2


def test_official_layout_variants_and_errors():
    state = official_state(5, shifted=False)
    # A TSN / ImageNet MobileNetV2: no .net; dropout 0 keeps the classifier as base_model.classifier.
    state["module.base_model.classifier.weight"] = state.pop("module.new_fc.weight")
    state["module.base_model.classifier.bias"] = state.pop("module.new_fc.bias")
    converted = convert_torch_state(state)
    assert converted.num_classes == 5 and any("no temporal-shift" in note for note in converted.notes)
    partly = official_state(5)
    partly["module.base_model.features.5.conv.0.weight"] = partly.pop("module.base_model.features.5.conv.0.net.weight")
    with pytest.raises(ConversionError, match=r"temporal shifts in blocks \[3, 6, 8"):
        convert_torch_state(partly)
    with pytest.raises(ConversionError, match="features.19.0.weight"):
        extra = {"module.base_model.features.19.0.weight": np.zeros((1, 1, 1, 1))}
        convert_torch_state(dict(official_state(5), **extra))
    with pytest.raises(ConversionError, match="backbone='mobilenetv2'"):
        assign_converted(build_tsm(5, backbone="mobilenetv2_paddle"), convert_torch_state(official_state(5)))
    with pytest.raises(ConversionError, match="classifier has only its weight; need weight and bias"):
        convert_torch_state({k: v for k, v in official_state(5).items() if k != "module.new_fc.bias"})
    with pytest.raises(ConversionError, match=r"weight \(5, 1280\) and bias \(4,\) are not a PyTorch Linear"):
        convert_torch_state(dict(official_state(5), **{"module.new_fc.bias": np.zeros(4, np.float32)}))


# ---- with torch: the official model itself -------------------------------------------------------------

def _torch_official_tsn(num_classes, num_segments):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TemporalShift(nn.Module):  # ops/temporal_shift.py (inplace=False), wrapping conv[0] as `net`
        def __init__(self, net, n_segment, n_div=8):
            super().__init__()
            self.net, self.n_segment, self.fold_div = net, n_segment, n_div

        def forward(self, x):
            nt, c, h, w = x.size()
            x = x.view(nt // self.n_segment, self.n_segment, c, h, w)
            fold = c // self.fold_div
            out = torch.zeros_like(x)
            out[:, :-1, :fold] = x[:, 1:, :fold]
            out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
            out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
            return self.net(out.view(nt, c, h, w))

    class InvertedResidual(nn.Module):  # archs/mobilenet_v2.py
        def __init__(self, inp, oup, stride, expand_ratio):
            super().__init__()
            hidden = int(inp * expand_ratio)
            self.use_res_connect = stride == 1 and inp == oup
            layers = [] if expand_ratio == 1 else [nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden),
                                                   nn.ReLU6()]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            features = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())]
            for _, inp, oup, stride, t in official_blocks():
                features.append(InvertedResidual(inp, oup, stride, t))
            features.append(nn.Sequential(nn.Conv2d(320, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280),
                                          nn.ReLU6()))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Dropout(0.5)  # TSN._prepare_tsn with dropout > 0

        def forward(self, x):
            return self.classifier(self.features(x).mean(3).mean(2))

    class TSN(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = MobileNetV2()
            for m in self.base_model.modules():  # ops/models.py, _prepare_base_model('mobilenetv2')
                if isinstance(m, InvertedResidual) and len(m.conv) == 8 and m.use_res_connect:
                    m.conv[0] = TemporalShift(m.conv[0], n_segment=num_segments)
            self.new_fc = nn.Linear(1280, num_classes)

        def forward(self, clips):
            out = self.new_fc(self.base_model(clips.view((-1,) + clips.shape[2:])))
            return out.view(-1, num_segments, out.shape[-1]).mean(dim=1)

    model = TSN()
    state = official_state(num_classes)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():  # the generator's arrays: its key names are checked here
            tensor.copy_(torch.from_numpy(np.asarray(state[f"module.{name}"])))
    assert set(f"module.{name}" for name in model.state_dict()) == set(state)
    return torch, model.eval()


@pytest.mark.parametrize("num_segments,size", [(8, 75), (4, 64)])
def test_logits_match_official_pytorch_mobilenetv2(tmp_path, num_segments, size):
    torch, reference = _torch_official_tsn(CLASSES, num_segments)
    clip = np.random.default_rng(6).normal(size=(1, num_segments, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(clip)).numpy()
    path = str(tmp_path / "TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100_dense.pth")
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 100, "arch": "mobilenetv2", "state_dict": state, "best_prec1": np.float64(69.5)}, path)
    model = load_model_from_source(path, num_segments=num_segments)
    assert (model.backbone, model.convention, model.num_classes) == ("mobilenetv2", "tsm", CLASSES)
    error = relative_error(keras_logits(model, clip), want)
    print(f"official PyTorch mobilenetv2 T={num_segments} {size}px: max relative logit error {error:.3g}")
    assert error <= 1e-4
    assert abs(relative_error(official_numpy_logits(state, clip, num_segments), want)) <= 1e-5
