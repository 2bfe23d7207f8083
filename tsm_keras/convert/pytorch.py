"""Official TSM PyTorch checkpoints (mit-han-lab/temporal-shift-module) -> this model.

ResNet keys (after the DataParallel `module.` prefix): `base_model.conv1.weight`, `base_model.bn1.*`,
`base_model.layer1.0.conv1.net.weight` (the shift wraps conv1 of a block as `.net`; with
`shift_place=block` it wraps the whole block: `layer1.0.net.conv1.weight`),
`base_model.layer1.0.downsample.{0,1}.*`, and the classifier `new_fc.{weight,bias}` (or
`base_model.fc.*` when trained without dropout, as in torchvision's ImageNet ResNets). Files are a
bare state dict or a dict with `state_dict` (`.pth.tar`).

The official shift: channels [0, C/8) at time t take frame t+1, [C/8, 2C/8) take t-1
(`convention="tsm"`); it shifts every other block of each stage when stage 4 has >= 23 blocks
(ResNet-101) — inferred from which blocks carry `.net`. Reading `.pth` needs torch (the `torch`
extra); the mapping itself works on numpy arrays. MobileNetV2-TSM checkpoints
(`TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100_dense.pth`) are mapped by `mobilenetv2.py`.
"""

import re

import numpy as np

from tsm_keras.convert.converted import ConversionError, ConvertedWeights, canonical_block, linear_head, resnet_layers
from tsm_keras.convert.mobilenetv2 import convert_torch_mobilenetv2, is_torch_mobilenetv2

TORCH_BUILD = dict(convention="tsm", stride_in_1x1=False, input_convention="imagenet")
_PREFIXES = ("module.", "base_model.")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(net\.)?(conv\d|bn\d|downsample\.[01])(\.net)?\.(\w+)$")
_STEM = re.compile(r"^(conv1|bn1)\.(\w+)$")
_HEAD = re.compile(r"^(new_fc|fc)\.(weight|bias)$")
_BN_FIELDS = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
_BRANCH = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "downsample.0": "branch1",
           "bn1": "branch2a", "bn2": "branch2b", "bn3": "branch2c", "downsample.1": "branch1"}


def read_torch_checkpoint(path):
    """`.pth` / `.pth.tar` -> `{key: np.ndarray}`; needs torch (imported here, lazily)."""
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path}: reading PyTorch checkpoints needs torch: pip install 'tsm-keras[torch]' "
                              "(or pip install torch --index-url https://download.pytorch.org/whl/cpu).") from None
    # weights_only keeps arbitrary pickled code out; numpy scalars (best_prec1 ...) are allowed.
    safe = [np.dtype, np.ndarray] + [type(np.dtype(t)) for t in ("float32", "float64", "int64")]
    try:
        safe.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"{path}: torch.load failed (weights_only): {error}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path}: expected a state dict (or a dict with 'state_dict'), got "
                              f"{type(checkpoint).__name__}.")
    return {key: value.detach().cpu().numpy() for key, value in checkpoint.items() if torch.is_tensor(value)}


def strip_prefixes(key):
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def convert_torch_state(state, source="<pth>"):
    """`{official key: numpy array}` -> ConvertedWeights; ConversionError lists unknown keys.

    A MobileNetV2 (`base_model.features.*`, `archs/mobilenet_v2.py`) goes to `mobilenetv2.py`'s mapping."""
    stripped = {strip_prefixes(key): value for key, value in state.items()}
    if is_torch_mobilenetv2(stripped):
        return convert_torch_mobilenetv2(stripped, source)
    convs, norms, head, unknown = {}, {}, {}, []
    shifted_conv1, shifted_block, blocks = set(), set(), {}
    for original, value in state.items():
        key = strip_prefixes(original)
        if key.endswith("num_batches_tracked"):
            continue
        match = _STEM.match(key)
        if match:
            module, field = match.groups()
            where = (None, None, None)
        else:
            match = _BLOCK.match(key)
            if match:
                stage, index, block_net, module, conv_net, field = match.groups()
                where = (int(stage) + 1, int(index), _BRANCH[module])
                blocks.setdefault(where[0], set()).add(where[1])
                if block_net:
                    shifted_block.add(where[:2])
                if conv_net and module == "conv1":
                    shifted_conv1.add(where[:2])
            else:
                match = _HEAD.match(key)
                if match:
                    name, field = match.groups()
                    if field in head:
                        raise ConversionError(f"{source}: two classifiers (fc and new_fc) in one checkpoint.")
                    head[field] = value
                else:
                    unknown.append(original)
                continue
        if module.startswith("conv") or module == "downsample.0":
            if field != "weight" or value.ndim != 4:
                unknown.append(original)
                continue
            convs[where] = value
        elif field in _BN_FIELDS:
            norms.setdefault(where, [None] * 4)[_BN_FIELDS[field]] = value
        else:
            unknown.append(original)
    if unknown:
        raise ConversionError(f"{source}: keys that are not an official TSM ResNet: "
                              f"{', '.join(sorted(unknown)[:20])}" + (f" ... ({len(unknown)} in all)"
                                                                     if len(unknown) > 20 else ""))
    if not convs:
        raise ConversionError(f"{source}: no ResNet weights found (expected keys like "
                              "module.base_model.conv1.weight).")
    incomplete = [str(where) for where, values in norms.items() if any(v is None for v in values)]
    if incomplete:
        raise ConversionError(f"{source}: incomplete BatchNorm parameters at {', '.join(incomplete)}.")

    backbone, stage_blocks, layers = resnet_layers(convs, norms, blocks, _names, source)

    build = dict(TORCH_BUILD, backbone=backbone)
    shifted = shifted_conv1 or shifted_block
    notes = []
    if shifted_conv1 and shifted_block:
        raise ConversionError(f"{source}: shifts both around blocks and inside them; not an official layout.")
    if shifted:
        build["shift_place"] = "blockres" if shifted_conv1 else "block"
        build["shift_every"] = _shift_every(shifted, stage_blocks, source)
    else:
        notes.append(f"{source}: no temporal-shift wrappers (.net) in the keys: a TSN or ImageNet ResNet; "
                     "the shift settings are the model's.")

    converted_head = linear_head(head, "torch", source)
    notes.insert(0, f"{source}: official PyTorch TSM weights, {backbone}, "
                 + (f"head with {converted_head[0].shape[1]} classes" if head else "backbone only")
                 + (f", shift_place={build['shift_place']}, shift_every={build['shift_every']}" if shifted else "")
                 + "; shift convention 'tsm'.")
    return ConvertedWeights(source=source, format="pytorch", layers=layers, head=converted_head, build=build,
                            notes=notes)


def _shift_every(shifted, stage_blocks, source):
    for every in (1, 2):
        expected = {(stage, index) for stage, count in stage_blocks.items() for index in range(count)
                    if index % every == 0}
        if shifted == expected:
            return every
    raise ConversionError(f"{source}: temporal shifts in blocks {sorted(shifted)}: neither every block nor "
                          "every other block, which this model cannot express.")


def _names(where, stage_blocks):
    stage, index, branch = where
    if stage is None:
        return ("conv1", "bn_conv1")
    name = canonical_block(stage, index, stage_blocks)
    return (f"res{name}_{branch}", f"bn{name}_{branch}")
