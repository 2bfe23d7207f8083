"""PaddleVideo `.pdparams` (ResNetTSM + TSMHead) -> this model, without Paddle.

A `.pdparams` file is a pickled dict of numpy arrays. Two key styles exist:

- structured state-dict names (what `paddle.save(model.state_dict())` writes, e.g. `TSM_k400.pdparams`):
  `backbone.conv._conv.weight`, `backbone.conv._batch_norm.{weight,bias,_mean,_variance}`,
  `backbone.res2a.conv0._conv.weight` (conv0/conv1/conv2 = branch2a/2b/2c, `short` = branch1),
  `head.fc.{weight,bias}`; the `backbone.`/`head.` prefixes may be absent.
  PP-TSM (ResNetTweaksTSM + ppTSMHead, e.g. `ppTSM_k400_uniform.pdparams`) names its stem
  `backbone.conv1_1` .. `conv1_3` and its blocks `backbone.bb_{stage-2}_{i}` (`bb_1_0` = res3a);
  those files build `resnet50_vd` / `resnet101_vd`.
- parameter names (PaddleClas-era ImageNet files such as `ResNet50_pretrain.pdparams`):
  `conv1_weights`, `bn_conv1_{scale,offset,mean,variance}`, `res2a_branch2a_weights`,
  `bn2a_branch2a_scale`, ..., `fc_0.w_0`, `fc_0.b_0` (TSMHead names its fc parameters so); the
  ResNet-vd stem is `conv1_1_weights`, `bnv1_1_scale`, ... (Paddle's "bn" + name[3:]).

Conv kernels are OIHW (-> HWIO); Paddle's Linear weight is already `[in, out]`; BN epsilon is 1e-5
as here. PaddleVideo shifts channels [0, C/T) from t-1 and [C/T, 2C/T) from t+1: the model is
built with `convention="paddle"`. PP-TSM MobileNetV2 files (`ppTSM_mv2`) are mapped by `mobilenetv2.py`.
"""

import pickle
import re

import numpy as np

from tsm_keras.convert.converted import (ConversionError, ConvertedWeights, canonical_block, linear_head, resnet_layers,
                                         stage_block_index)
from tsm_keras.convert.mobilenetv2 import convert_paddle_mobilenetv2, is_paddle_mobilenetv2
from tsm_keras.models.resnet import block_name
from tsm_keras.models.resnet_vd import VD_BACKBONES

# What Paddle pickles next to the arrays; anything else in a .pdparams is refused.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("builtins", "tuple"), ("builtins", "dict"), ("builtins", "list"),
}
_IGNORED_KEYS = ("StructuredToParameterName@@",)
PADDLE_BUILD = dict(convention="paddle", shift_place="blockres", stride_in_1x1=False, shift_every=1,
                    input_convention="imagenet")

_STRUCTURED = re.compile(r"^(?:backbone\.)?(?:(conv)|res(\d)([a-z]\d*)\.(conv0|conv1|conv2|short))\."
                         r"(_conv|_batch_norm)\.(weight|bias|_mean|_variance)$")
_STRUCTURED_VD = re.compile(r"^(?:backbone\.)?(?:conv1_([123])|bb_(\d+)_(\d+)\.(conv0|conv1|conv2|short))\."
                            r"(_conv|_batch_norm)\.(weight|bias|_mean|_variance)$")
_STRUCTURED_HEAD = re.compile(r"^(?:head\.)?fc\.(weight|bias)$")
_PARAM_CONV = re.compile(r"^(?:conv1(?:_([123]))?|res(\d)([a-z]\d*)_(branch2a|branch2b|branch2c|branch1))_weights$")
_PARAM_BN = re.compile(r"^bn(?:_conv1|v1_([123])|(\d)([a-z]\d*)_(branch2a|branch2b|branch2c|branch1))_"
                       r"(scale|offset|mean|variance)$")
_PARAM_HEAD = {"fc_0.w_0": "weight", "fc_0.b_0": "bias"}
_SUB_TO_BRANCH = {"conv0": "branch2a", "conv1": "branch2b", "conv2": "branch2c", "short": "branch1"}
_BN_FIELDS = {"weight": 0, "scale": 0, "bias": 1, "offset": 1, "_mean": 2, "mean": 2, "_variance": 3,
              "variance": 3}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise ConversionError(f"refusing to unpickle {module}.{name}: a .pdparams holds only numpy arrays.")


def read_pdparams(path):
    """`.pdparams` -> `{key: np.ndarray}` with plain pickle (no Paddle); non-array entries (the
    `StructuredToParameterName@@` name table, counters) are dropped."""
    try:
        with open(path, "rb") as f:
            state = _ArraysOnlyUnpickler(f).load()
    except ConversionError as error:
        raise ConversionError(f"{path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a .pdparams"
        raise ConversionError(f"{path}: not a readable .pdparams (pickled dict of numpy arrays): {error}") from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: a .pdparams holds a dict, this file holds a {type(state).__name__}.")
    arrays = {}
    for key, value in state.items():
        # paddle.save pickles a Tensor nested in other objects as (name, ndarray).
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if key not in _IGNORED_KEYS and isinstance(value, np.ndarray):
            arrays[key] = value
    return arrays


def _layer_names(where):
    """(conv name, bn name) in our scheme before ResNet-101 renaming.

    `where` is (stage, block index, branch) in a block; (None, None, None) is the 7x7 stem conv, (None, k, None)
    the ResNet-vd stem's conv1_k.
    """
    stage, index, branch = where
    if stage is None:
        return ("conv1", "bn_conv1") if index is None else (f"conv1_{index}", f"bn_conv1_{index}")
    name = block_name(stage, index, index + 1)  # a..f, or b6, b7, ... past six blocks (ResNet-101's stage 4)
    return (f"res{name}_{branch}", f"bn{name}_{branch}")


def _where(stem, stage, suffix, branch, source):
    """Where a key's array goes: (None, None, None) for conv1, (None, k, None) for conv1_k, else
    (stage, block index, branch), the index read from the Caffe suffix (`a`, `b`, ... or `a`, `b1`, ...)."""
    if stage is None:
        return (None, None if stem is None else int(stem), None)
    return (int(stage), stage_block_index(int(stage), suffix, source), branch)


def _match(key, source):
    """(table, where, field) for a backbone key: table "conv" (field None) or "bn" (field 0-3); None if unknown."""
    match = _STRUCTURED.match(key)
    if match:
        stem, stage, suffix, sub, part, field = match.groups()
        where = (None, None, None) if stem else _where(None, stage, suffix, _SUB_TO_BRANCH[sub], source)
        return _structured_part(part, field, where)
    match = _STRUCTURED_VD.match(key)
    if match:
        stem, stage, index, sub, part, field = match.groups()
        where = ((None, int(stem), None) if stem else (int(stage) + 2, int(index), _SUB_TO_BRANCH[sub]))
        return _structured_part(part, field, where)
    match = _PARAM_CONV.match(key)
    if match:
        return ("conv", _where(*match.groups(), source), None)
    match = _PARAM_BN.match(key)
    if match:
        stem, stage, suffix, branch, field = match.groups()
        return ("bn", _where(stem, stage, suffix, branch, source), _BN_FIELDS[field])
    return None


def _structured_part(part, field, where):
    if part == "_conv":
        return ("conv", where, None) if field == "weight" else None
    return ("bn", where, _BN_FIELDS[field])


def convert_paddle_state(state, source="<pdparams>"):
    """`{paddle key: array}` (either key style, ResNet-TSM or PP-TSM) -> ConvertedWeights; ConversionError lists
    unknown keys. PaddleVideo's ppTSM_mv2 (`pptsm_mv2.py` keys) goes to `mobilenetv2.py`'s mapping."""
    if is_paddle_mobilenetv2(state):
        return convert_paddle_mobilenetv2(state, source)
    convs = {}     # (stage, block index, branch) -> OIHW kernel
    norms = {}     # (stage, block index, branch) -> [gamma, beta, mean, variance]
    head = {}
    unknown = []
    for key, value in state.items():
        match = _STRUCTURED_HEAD.match(key) or (key in _PARAM_HEAD and key)
        if match:
            field = _PARAM_HEAD[key] if key in _PARAM_HEAD else match.group(1)
            if field in head:
                raise ConversionError(f"{source}: the classifier {field} appears twice (last as {key}).")
            head[field] = value
            continue
        found = _match(key, source)
        if found is None:
            unknown.append(key)
        elif found[0] == "conv":
            _put(convs, found[1], value, key, source)
        else:
            _put_bn(norms, found[1], found[2], value, key, source)
    if unknown:
        raise ConversionError(f"{source}: keys that are not a PaddleVideo ResNet-TSM / PP-TSM backbone or TSM / "
                              f"ppTSM head: {', '.join(sorted(unknown)[:20])}"
                              + (f" ... ({len(unknown)} in all)" if len(unknown) > 20 else ""))
    if not convs:
        raise ConversionError(f"{source}: no ResNet-TSM backbone weights found (expected keys like "
                              "backbone.conv._conv.weight, backbone.conv1_1._conv.weight or conv1_weights).")

    incomplete = [f"{_layer_names(where)[1]} (has {sum(v is not None for v in values)} of gamma, beta, "
                  "mean, variance)" for where, values in norms.items() if any(v is None for v in values)]
    if incomplete:
        raise ConversionError(f"{source}: incomplete BatchNorm parameters: {', '.join(sorted(incomplete))}.")
    converted_head = linear_head(head, "paddle", source)
    stems = sorted({_layer_names(where)[0] for where in convs if where[0] is None})
    if stems not in (["conv1"], ["conv1_1", "conv1_2", "conv1_3"]):
        raise ConversionError(f"{source}: the stem has {', '.join(stems) or 'no conv'}; expected conv1 (ResNet-TSM) or "
                              "conv1_1, conv1_2, conv1_3 (PP-TSM's ResNet-vd).")
    vd = stems != ["conv1"]

    blocks = {}
    for stage, index, _ in convs:
        if stage is not None:
            blocks.setdefault(stage, set()).add(index)
    backbone, stage_blocks, layers = resnet_layers(convs, norms, blocks, _our_names, source)
    if vd:
        backbone = f"{backbone}_vd"
        if backbone not in VD_BACKBONES:
            raise ConversionError(f"{source}: a ResNet-vd stem with the blocks of {backbone[:-3]}; the supported "
                                  f"ResNet-vd backbones are {sorted(VD_BACKBONES)}.")
    notes = [f"{source}: PaddleVideo {'PP-TSM ' if vd else ''}weights, {backbone}, "
             + (f"head with {converted_head[0].shape[1]} classes" if head else "backbone only")
             + "; shift convention 'paddle' (1/T of the channels from t-1, 1/T from t+1)."]
    return ConvertedWeights(source=source, format="paddle", layers=layers, head=converted_head,
                            build=dict(PADDLE_BUILD, backbone=backbone), notes=notes)


def _our_names(where, stage_blocks):
    stage, index, branch = where
    if stage is None:
        return _layer_names(where)
    name = canonical_block(stage, index, stage_blocks)
    return (f"res{name}_{branch}", f"bn{name}_{branch}")


def _put(table, where, value, key, source):
    if where in table:
        raise ConversionError(f"{source}: {key} gives a conv kernel already given by another key (mixed key "
                              "styles naming the same layer?).")
    if value.ndim != 4:
        raise ConversionError(f"{source}: {key} has shape {value.shape}; a conv kernel is 4-D (OIHW).")
    table[where] = value


def _put_bn(table, where, index, value, key, source):
    values = table.setdefault(where, [None] * 4)
    if values[index] is not None:
        raise ConversionError(f"{source}: {key} is given twice (mixed key styles naming the same layer?).")
    values[index] = value
