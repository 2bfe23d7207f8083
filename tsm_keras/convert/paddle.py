"""PaddleVideo `.pdparams` (ResNetTSM + TSMHead) -> this model, without Paddle.

A `.pdparams` file is a pickled dict of numpy arrays. Two key styles exist:

- structured state-dict names (what `paddle.save(model.state_dict())` writes, e.g. `TSM_k400.pdparams`):
  `backbone.conv._conv.weight`, `backbone.conv._batch_norm.{weight,bias,_mean,_variance}`,
  `backbone.res2a.conv0._conv.weight` (conv0/conv1/conv2 = branch2a/2b/2c, `short` = branch1),
  `head.fc.{weight,bias}`; the `backbone.`/`head.` prefixes may be absent.
- parameter names (PaddleClas-era ImageNet files such as `ResNet50_pretrain.pdparams`):
  `conv1_weights`, `bn_conv1_{scale,offset,mean,variance}`, `res2a_branch2a_weights`,
  `bn2a_branch2a_scale`, ..., `fc_0.w_0`, `fc_0.b_0` (TSMHead names its fc parameters so).

Conv kernels are OIHW (-> HWIO); Paddle's Linear weight is already `[in, out]`; BN epsilon is 1e-5
as here. PaddleVideo shifts channels [0, C/T) from t-1 and [C/T, 2C/T) from t+1: the model is
built with `convention="paddle"`.
"""

import pickle
import re

import numpy as np

from tsm_keras.convert.converted import (ConversionError, ConvertedWeights, canonical_block, resnet_layers,
                                         stage_block_index)

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
_STRUCTURED_HEAD = re.compile(r"^(?:head\.)?fc\.(weight|bias)$")
_PARAM_CONV = re.compile(r"^(?:conv1|res(\d)([a-z]\d*)_(branch2a|branch2b|branch2c|branch1))_weights$")
_PARAM_BN = re.compile(r"^bn(?:_conv1|(\d)([a-z]\d*)_(branch2a|branch2b|branch2c|branch1))_"
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


def _layer_names(stage, suffix, branch):
    """(conv name, bn name) in our scheme before ResNet-101 renaming; stage None = the stem."""
    if stage is None:
        return ("conv1", "bn_conv1")
    return (f"res{stage}{suffix}_{branch}", f"bn{stage}{suffix}_{branch}")


def convert_paddle_state(state, source="<pdparams>"):
    """`{paddle key: array}` (either key style) -> ConvertedWeights; ConversionError lists unknown keys."""
    convs = {}     # (stage, suffix, branch) -> OIHW kernel
    norms = {}     # (stage, suffix, branch) -> [gamma, beta, mean, variance]
    head = {}
    unknown = []
    for key, value in state.items():
        match = _STRUCTURED.match(key)
        if match:
            stem, stage, suffix, sub, part, field = match.groups()
            where = (None, None, None) if stem else (int(stage), suffix, _SUB_TO_BRANCH[sub])
            if part == "_conv":
                if field != "weight":
                    unknown.append(key)
                    continue
                _put(convs, where, value, key, source)
            else:
                _put_bn(norms, where, _BN_FIELDS[field], value, key, source)
            continue
        match = _STRUCTURED_HEAD.match(key) or (key in _PARAM_HEAD and key)
        if match:
            field = _PARAM_HEAD[key] if key in _PARAM_HEAD else match.group(1)
            if field in head:
                raise ConversionError(f"{source}: the classifier {field} appears twice (last as {key}).")
            head[field] = value
            continue
        match = _PARAM_CONV.match(key)
        if match:
            stage, suffix, branch = match.groups()
            _put(convs, (None, None, None) if stage is None else (int(stage), suffix, branch), value, key,
                 source)
            continue
        match = _PARAM_BN.match(key)
        if match:
            stage, suffix, branch, field = match.groups()
            where = (None, None, None) if stage is None else (int(stage), suffix, branch)
            _put_bn(norms, where, _BN_FIELDS[field], value, key, source)
            continue
        unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: keys that are not a PaddleVideo ResNet-TSM backbone or TSM head: "
                              f"{', '.join(sorted(unknown)[:20])}" + (f" ... ({len(unknown)} in all)"
                                                                     if len(unknown) > 20 else ""))
    if not convs:
        raise ConversionError(f"{source}: no ResNet-TSM backbone weights found (expected keys like "
                              "backbone.conv._conv.weight or conv1_weights).")

    incomplete = [f"{_layer_names(*where)[1]} (has {sum(v is not None for v in values)} of gamma, beta, "
                  "mean, variance)" for where, values in norms.items() if any(v is None for v in values)]
    if incomplete:
        raise ConversionError(f"{source}: incomplete BatchNorm parameters: {', '.join(sorted(incomplete))}.")
    if set(head) not in (set(), {"weight", "bias"}):
        raise ConversionError(f"{source}: the classifier has only its {', '.join(head)}; need weight and bias.")

    blocks = {}
    for stage, suffix, branch in convs:
        if stage is not None:
            blocks.setdefault(stage, set()).add(stage_block_index(stage, suffix, source))
    backbone, stage_blocks, layers = resnet_layers(convs, norms, blocks, _our_names, source)
    converted_head = None
    if head:
        weight, bias = head["weight"], head["bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[1],):
            raise ConversionError(f"{source}: classifier weight {weight.shape} and bias {bias.shape} are not "
                                  "a Paddle Linear ([in, out], [out]).")
        converted_head = [weight, bias]
    notes = [f"{source}: PaddleVideo weights, {backbone}, "
             + (f"head with {converted_head[0].shape[1]} classes" if head else "backbone only")
             + "; shift convention 'paddle' (1/T of the channels from t-1, 1/T from t+1)."]
    return ConvertedWeights(source=source, format="paddle", layers=layers, head=converted_head,
                            build=dict(PADDLE_BUILD, backbone=backbone), notes=notes)


def _our_names(where, stage_blocks):
    stage, suffix, branch = where
    if stage is None:
        return _layer_names(None, None, None)
    index = stage_block_index(stage, suffix, "")
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
