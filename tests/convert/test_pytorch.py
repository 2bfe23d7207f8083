"""Official TSM PyTorch checkpoints -> TSM.

Without torch (CI): the key mapping and shapes, on a dict of numpy arrays named and shaped as the
official code's state dict. With torch: a pure-torch TSM ResNet (torchvision's ResNet v1.5 layout,
the official TemporalShift wrapping conv1 as `.net`, `new_fc`, average consensus) saved as
`.pth.tar`, converted, logits compared.
"""

import numpy as np
import pytest

from tsm_keras.convert import ConversionError, load_model_from_source
from tsm_keras.convert.converted import assign_converted
from tsm_keras.convert.pytorch import convert_torch_state
from tsm_keras.models import build_tsm

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def official_state_shapes(depth, num_classes, n_round):
    """Key -> torch shape of mit-han-lab/temporal-shift-module's TSN(resnet{depth}, is_shift, blockres),
    wrapped in DataParallel; written from torchvision's ResNet definition, not from the converter."""
    shapes = {"module.base_model.conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, channels):
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("module.base_model.bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate(STAGES[depth]):
        planes = 64 * 2 ** stage
        for index in range(blocks):
            p = f"module.base_model.layer{stage + 1}.{index}"
            shift = ".net" if index % n_round == 0 else ""
            shapes[f"{p}.conv1{shift}.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if index == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["module.new_fc.weight"] = (num_classes, 2048)
    shapes["module.new_fc.bias"] = (num_classes,)
    return shapes


def random_state(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) if s else np.array(7) for k, s in shapes.items()}


@pytest.mark.parametrize("depth,n_round", [(50, 1), (101, 2)])
def test_official_keys_map_onto_the_model(depth, n_round):
    state = random_state(official_state_shapes(depth, 11, n_round))
    converted = convert_torch_state(state, source="official.pth")
    assert converted.build == dict(backbone=f"resnet{depth}", convention="tsm", stride_in_1x1=False,
                                   input_convention="imagenet", shift_place="blockres", shift_every=n_round)
    model = build_tsm(11, num_segments=8, **{k: v for k, v in converted.build.items()})
    assign_converted(model, converted)
    last = "4b22" if depth == 101 else "4f"
    np.testing.assert_array_equal(model.get_layer(f"res{last}_branch2b").kernel,
                                  np.transpose(state[f"module.base_model.layer3.{STAGES[depth][2] - 1}.conv2.weight"],
                                               (2, 3, 1, 0)))
    np.testing.assert_array_equal(model.get_layer("res2a_branch2a").kernel,
                                  np.transpose(state["module.base_model.layer1.0.conv1.net.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(model.get_layer("res3a_branch1").kernel,
                                  np.transpose(state["module.base_model.layer2.0.downsample.0.weight"], (2, 3, 1, 0)))
    np.testing.assert_array_equal(model.get_layer("bn5a_branch1").moving_variance,
                                  state["module.base_model.layer4.0.downsample.1.running_var"])
    np.testing.assert_array_equal(model.get_layer("bn_conv1").gamma, state["module.base_model.bn1.weight"])
    np.testing.assert_array_equal(model.get_layer("fc").kernel, state["module.new_fc.weight"].T)


def test_torch_errors():
    shapes = official_state_shapes(50, 5, 1)
    with pytest.raises(ConversionError, match="module.base_model.layer9.0.conv1.weight"):
        convert_torch_state(random_state(dict(shapes, **{"module.base_model.layer9.0.conv1.weight": (1, 1, 1, 1)})))
    model = build_tsm(5, num_segments=8)
    wrong = random_state(dict(shapes, **{"module.base_model.layer1.1.conv2.weight": (64, 64, 1, 1)}))
    with pytest.raises(ConversionError, match="res2b_branch2b"):
        assign_converted(model, convert_torch_state(wrong))
    with pytest.raises(ConversionError, match="classifier has only its bias; need weight and bias"):
        convert_torch_state(random_state({k: v for k, v in shapes.items() if k != "module.new_fc.weight"}))
    with pytest.raises(ConversionError, match=r"weight \(5, 2048\) and bias \(2048,\) are not a PyTorch Linear"):
        convert_torch_state(random_state(dict(shapes, **{"module.new_fc.bias": (2048,)})))
    converted = convert_torch_state(random_state(shapes))
    converted.build["convention"] = "paddle"  # as if the model were built with the other convention
    with pytest.raises(ConversionError, match="convention='paddle'"):
        assign_converted(model, converted)


# ---- with torch: a real official-layout model as the reference ------------------------------------------

def _torch_tsm(depth, num_classes, num_segments, n_round):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TemporalShift(nn.Module):
        """The official module (ops/temporal_shift.py), shift_div 8, wrapping a block's conv1 as `net`."""

        def __init__(self, net, n_segment, n_div=8):
            super().__init__()
            self.net, self.n_segment, self.fold_div = net, n_segment, n_div

        def forward(self, x):
            nt, c, h, w = x.size()
            x = x.view(nt // self.n_segment, self.n_segment, c, h, w)
            fold = c // self.fold_div
            out = torch.zeros_like(x)
            out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left: frame t takes t+1
            out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # shift right: frame t takes t-1
            out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
            return self.net(out.view(nt, c, h, w))

    class Bottleneck(nn.Module):  # torchvision's (v1.5: stride on the 3x3)
        def __init__(self, inplanes, planes, stride, downsample):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for stage, blocks in enumerate(STAGES[depth]):
                planes, stride = 64 * 2 ** stage, 1 if stage == 0 else 2
                layers = []
                for index in range(blocks):
                    downsample = None
                    if index == 0:
                        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                                   nn.BatchNorm2d(planes * 4))
                    block = Bottleneck(inplanes, planes, stride if index == 0 else 1, downsample)
                    if index % n_round == 0:
                        block.conv1 = TemporalShift(block.conv1, num_segments)
                    layers.append(block)
                    inplanes = planes * 4
                setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Dropout(0.5)  # the official TSN replaces fc by dropout and adds new_fc

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for stage in range(4):
                x = getattr(self, f"layer{stage + 1}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class TSN(nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = ResNet()
            self.new_fc = nn.Linear(2048, num_classes)

        def forward(self, clips):  # [N, T, 3, H, W] -> [N, classes]
            out = self.new_fc(self.base_model(clips.view((-1,) + clips.shape[2:])))
            return out.view(-1, num_segments, out.shape[-1]).mean(dim=1)

    model = TSN()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0, generator=generator)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.2, generator=generator)
            elif tensor.ndim == 4:
                tensor.normal_(0.0, float(np.sqrt(2.0 / np.prod(tensor.shape[1:]))), generator=generator)
            elif name.endswith("weight") and "fc" not in name:
                tensor.uniform_(0.5, 1.5, generator=generator)
            else:
                tensor.normal_(0.0, 0.1, generator=generator)
    return torch, model.eval()


@pytest.mark.parametrize("depth,n_round", [(50, 1), (101, 2)])
def test_logits_match_official_pytorch(tmp_path, depth, n_round):
    num_segments, num_classes = 8, 6
    torch, reference = _torch_tsm(depth, num_classes, num_segments, n_round)
    clip = np.random.default_rng(1).normal(size=(1, num_segments, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(clip)).numpy()
    path = str(tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth.tar")
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 50, "arch": f"resnet{depth}", "state_dict": state, "best_prec1": np.float64(71.2)}, path)

    model = load_model_from_source(path, num_segments=num_segments, backbone=f"resnet{depth}")
    assert (model.convention, model.shift_every, model.num_classes) == ("tsm", n_round, num_classes)
    got = np.asarray(model(np.transpose(clip, (0, 1, 3, 4, 2)), training=False))
    delta, scale = float(np.max(np.abs(got - want))), float(np.max(np.abs(want)))
    print(f"pytorch resnet{depth}: max|dlogit| = {delta:.3g} abs, {delta / scale:.3g} relative "
          f"(max|logit| {scale:.3g})")
    assert delta <= 1e-4 * scale
