"""MobileNetV2-TSM checkpoints -> this model: the official PyTorch layout and PaddleVideo's ppTSM_mv2.

Official (`archs/mobilenet_v2.py` in a TSN, keys after `module.` / `base_model.`): `features.0.{0,1}.*` the
stem conv and BatchNorm, `features.{1..17}.conv.{k}.*` the blocks, `features.18.{0,1}.*` the 1x1 conv to
1280 channels, `new_fc.{weight,bias}` (or `classifier.*`: trained without dropout, or ImageNet). A block's
`conv` Sequential is [1x1, BN, ReLU6, depthwise 3x3, BN, ReLU6, 1x1, BN] (k = 0, 1, 3, 4, 6, 7), or
without the expansion [depthwise, BN, ReLU6, 1x1, BN] (k = 0, 1, 3, 4) in block 1. A shifted block's
expansion conv is wrapped in TemporalShift: `features.3.conv.0.net.weight`. -> `backbone="mobilenetv2"`.

PaddleVideo (`pptsm_mv2.py`, what `paddle.save(model.state_dict())` writes for ppTSM_mv2): `backbone.conv1`
the stem, `backbone.conv{g}._first_block` and `backbone.conv{g}.conv{g}_{j}` (j >= 2) the blocks of group
g = 2..8, each with `_expand_conv`, `_bottleneck_conv` (depthwise), `_linear_conv`, every one
`._conv.weight` + `._batch_norm.{weight,bias,_mean,_variance}`; `backbone.conv9` the top conv, and the
classifier inside the backbone, `backbone.out.{weight,bias}` (the head, MoViNetHead, is an identity).
Parameter names: `conv1_1_weights`, `conv1_1_bn_{scale,offset,mean,variance}`, `conv{g}_{j}_{expand,dwise,
linear}_weights`, ..., `conv9_weights`, `fc10_weights`, `fc10_offset`. -> `backbone="mobilenetv2_paddle"`
(block 1 has an expansion conv), convention "paddle".

Kernels: OIHW -> HWIO; depthwise `[C, 1, kh, kw]` -> `[kh, kw, C, 1]`. torch's Linear is `[out, in]`,
Paddle's `[in, out]`. BatchNorm epsilon is 1e-5 in both, as here.
"""

import re

import numpy as np

from tsm_keras.convert.converted import ConversionError, ConvertedWeights, linear_head
from tsm_keras.models.mobilenetv2 import INVERTED_RESIDUAL_SETTING, inverted_residual_blocks, residual_block_indices

_BN_FIELDS = {"weight": 0, "scale": 0, "bias": 1, "offset": 1, "running_mean": 2, "_mean": 2, "mean": 2,
              "running_var": 3, "_variance": 3, "variance": 3}
_BUILD = dict(stride_in_1x1=False, input_convention="imagenet", shift_place="blockres", shift_every=1)

_TORCH_END = re.compile(r"^features\.(\d+)\.([01])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_TORCH_BLOCK = re.compile(r"^features\.(\d+)\.conv\.(\d)(\.net)?\."
                          r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
_TORCH_HEAD = re.compile(r"^(new_fc|classifier)\.(weight|bias)$")
# Position in a block's `conv` Sequential -> (our layer suffix, is BatchNorm), with and without expansion.
_TORCH_LONG = {0: ("expand", False), 1: ("expand", True), 3: ("depthwise", False), 4: ("depthwise", True),
               6: ("project", False), 7: ("project", True)}
_TORCH_SHORT = {0: ("depthwise", False), 1: ("depthwise", True), 3: ("project", False), 4: ("project", True)}

_PADDLE_STRUCTURED = re.compile(r"^(?:backbone\.)?(?:(conv1|conv9)|conv([2-8])\.(?:_first_block|conv([2-8])_(\d+))"
                                r"\.(_expand_conv|_bottleneck_conv|_linear_conv))\.(_conv|_batch_norm)\."
                                r"(weight|bias|_mean|_variance)$")
_PADDLE_PARAMETER = re.compile(r"^(?:(conv1_1|conv9)|conv([2-8])_(\d+)_(expand|dwise|linear))_"
                               r"(weights|bn_scale|bn_offset|bn_mean|bn_variance)$")
_PADDLE_HEAD = re.compile(r"^(?:backbone\.)?out\.(weight|bias)$")
_PADDLE_HEAD_PARAMETERS = {"fc10_weights": "weight", "fc10_offset": "bias"}
_PADDLE_PART = {"_expand_conv": "expand", "expand": "expand", "_bottleneck_conv": "depthwise", "dwise": "depthwise",
                "_linear_conv": "project", "linear": "project"}
_PADDLE_BLOCK = re.compile(r"^(?:backbone\.)?conv[2-8]\.(?:_first_block|conv[2-8]_\d+)\.|^conv[2-8]_\d+_(?:expand|"
                           r"dwise|linear)_weights$")


def is_torch_mobilenetv2(keys):
    """Whether prefix-stripped official keys are a MobileNetV2 (`features.*`) rather than a ResNet."""
    return any(key.startswith("features.") for key in keys)


def is_paddle_mobilenetv2(keys):
    """Whether `.pdparams` keys are PaddleVideo's pptsm_mv2 (its inverted-residual blocks)."""
    return any(_PADDLE_BLOCK.match(key) for key in keys)


def _first_block_of_groups():
    """Our index of the first block of PaddleVideo's group g (conv2..conv8): {2: 1, 3: 2, 4: 4, ...}."""
    first, index = {}, 1
    for group, (_, _, count, _) in enumerate(INVERTED_RESIDUAL_SETTING, start=2):
        first[group] = index
        index += count
    return first


def _keras_kernel(name, kernel, key, source):
    if kernel.ndim != 4:
        raise ConversionError(f"{source}: {key} has shape {kernel.shape}; a conv kernel is 4-D.")
    if name.endswith("_depthwise"):
        if kernel.shape[1] != 1:
            raise ConversionError(f"{source}: {key} has shape {kernel.shape}; a depthwise kernel is [C, 1, kh, kw].")
        return np.transpose(kernel, (2, 3, 0, 1))
    return np.transpose(kernel, (2, 3, 1, 0))


class _Collector:
    """Kernels and BatchNorm arrays by our layer name, with the checks both layouts need."""

    def __init__(self, source):
        self.source, self.layers, self.norms, self.head, self.unknown = source, {}, {}, {}, []

    def conv(self, name, value, key):
        if name in self.layers:
            raise ConversionError(f"{self.source}: {key} gives the kernel of {name} a second time.")
        self.layers[name] = [_keras_kernel(name, value, key, self.source)]

    def bn(self, name, field, value, key):
        values = self.norms.setdefault(f"{name}_bn", [None] * 4)
        if values[_BN_FIELDS[field]] is not None:
            raise ConversionError(f"{self.source}: {key} is given twice.")
        values[_BN_FIELDS[field]] = value

    def head_part(self, field, value, key):
        if field in self.head:
            raise ConversionError(f"{self.source}: the classifier {field} appears twice (last as {key}).")
        self.head[field] = value

    def finish(self, kind):
        if self.unknown:
            raise ConversionError(f"{self.source}: keys that are not a {kind} MobileNetV2-TSM: "
                                  f"{', '.join(sorted(self.unknown)[:20])}"
                                  + (f" ... ({len(self.unknown)} in all)" if len(self.unknown) > 20 else ""))
        incomplete = [f"{name} (has {sum(v is not None for v in values)} of gamma, beta, mean, variance)"
                      for name, values in self.norms.items() if any(v is None for v in values)]
        if incomplete:
            raise ConversionError(f"{self.source}: incomplete BatchNorm parameters: {', '.join(sorted(incomplete))}.")
        expected = 2 + len(inverted_residual_blocks())
        blocks = {name.split("_")[0] for name in self.layers if name.startswith("block")}
        if len(blocks) + ("stem_conv" in self.layers) + ("top_conv" in self.layers) != expected:
            raise ConversionError(f"{self.source}: {len(blocks)} inverted-residual blocks and "
                                  f"{'a' if 'stem_conv' in self.layers else 'no'} stem; MobileNetV2 has 17 blocks "
                                  "between its stem and its 1x1 conv to 1280 channels.")
        return dict(self.layers, **self.norms)


def convert_torch_mobilenetv2(state, source="<pth>"):
    """`{official key without module./base_model.: array}` -> ConvertedWeights for `backbone="mobilenetv2"`."""
    found = _Collector(source)
    blocks = {}
    for key, value in state.items():
        match = _TORCH_BLOCK.match(key)
        if match:
            index, position, net, field = int(match.group(1)), int(match.group(2)), match.group(3), match.group(4)
            blocks.setdefault(index, []).append((position, field, value, key, bool(net)))
            continue
        match = _TORCH_HEAD.match(key)
        if match:
            found.head_part(match.group(2), value, key)
            continue
        match = _TORCH_END.match(key)
        if not match:
            found.unknown.append(key)
            continue
        index, sub, field = int(match.group(1)), match.group(2), match.group(3)
        if index not in (0, len(inverted_residual_blocks()) + 1):
            found.unknown.append(key)
        elif field != "num_batches_tracked":
            name = "stem_conv" if index == 0 else "top_conv"
            if sub == "0":
                found.conv(name, value, key)
            else:
                found.bn(name, field, value, key)
    shifted = set()
    for index, parts in sorted(blocks.items()):
        layout = _TORCH_LONG if max(part[0] for part in parts) >= 6 else _TORCH_SHORT
        for position, field, value, key, net in parts:
            if position not in layout or not 1 <= index <= len(inverted_residual_blocks()):
                found.unknown.append(key)
                continue
            suffix, is_bn = layout[position]
            if net:
                if suffix != "expand":
                    raise ConversionError(f"{source}: {key}: a temporal shift wrapping the {suffix} conv; the official "
                                          "code wraps only the expansion conv (conv.0).")
                shifted.add(index)
            if field == "num_batches_tracked":
                continue
            name = f"block{index}_{suffix}"
            if is_bn:
                found.bn(name, field, value, key)
            elif field == "weight":
                found.conv(name, value, key)
            else:
                found.unknown.append(key)
    layers = found.finish("official")
    head = linear_head(found.head, "torch", source)
    notes = [f"{source}: official PyTorch MobileNetV2-TSM weights, mobilenetv2, "
             + (f"head with {head[0].shape[1]} classes" if head else "backbone only") + "; shift convention 'tsm'."]
    if not shifted:
        notes.append(f"{source}: no temporal-shift wrappers (.net) in the keys: a TSN or ImageNet MobileNetV2; "
                     "the shift settings are the model's.")
    elif shifted != set(residual_block_indices()):
        raise ConversionError(f"{source}: temporal shifts in blocks {sorted(shifted)}; the official MobileNetV2-TSM "
                              f"shifts the residual blocks {residual_block_indices()}, the only layout this model has.")
    return ConvertedWeights(source=source, format="pytorch", layers=layers, head=head, notes=notes,
                            build=dict(_BUILD, backbone="mobilenetv2", convention="tsm"))


def convert_paddle_mobilenetv2(state, source="<pdparams>"):
    """`{pptsm_mv2 key (structured or parameter name): array}` -> ConvertedWeights for "mobilenetv2_paddle"."""
    found = _Collector(source)
    first = _first_block_of_groups()
    for key, value in state.items():
        match = _PADDLE_HEAD.match(key)
        if match or key in _PADDLE_HEAD_PARAMETERS:
            found.head_part(match.group(1) if match else _PADDLE_HEAD_PARAMETERS[key], value, key)
            continue
        match = _PADDLE_STRUCTURED.match(key)
        if match:
            end, group, inner_group, repeat, part, kind, field = match.groups()
            if inner_group is not None and inner_group != group:
                found.unknown.append(key)
                continue
            is_bn = kind == "_batch_norm"
            if not is_bn and field != "weight":
                found.unknown.append(key)
                continue
        else:
            match = _PADDLE_PARAMETER.match(key)
            if not match:
                found.unknown.append(key)
                continue
            end, group, repeat, part, field = match.groups()
            is_bn = field != "weights"
            field = field[len("bn_"):] if is_bn else "weight"
        if end is not None:
            name = "stem_conv" if end.startswith("conv1") else "top_conv"
        else:
            count = INVERTED_RESIDUAL_SETTING[int(group) - 2][2]
            j = 1 if repeat is None else int(repeat)
            if not 1 <= j <= count:
                found.unknown.append(key)
                continue
            name = f"block{first[int(group)] + j - 1}_{_PADDLE_PART[part]}"
        if is_bn:
            found.bn(name, field, value, key)
        else:
            found.conv(name, value, key)
    layers = found.finish("PaddleVideo pptsm_mv2")
    head = linear_head(found.head, "paddle", source)
    notes = [f"{source}: PaddleVideo ppTSM_mv2 weights, mobilenetv2_paddle, "
             + (f"head with {head[0].shape[1]} classes" if head else "backbone only")
             + "; shift convention 'paddle' (1/T of the channels from t-1, 1/T from t+1)."]
    return ConvertedWeights(source=source, format="paddle", layers=layers, head=head, notes=notes,
                            build=dict(_BUILD, backbone="mobilenetv2_paddle", convention="paddle"))
