"""keras.applications ResNet50/101 weights (`.h5`) -> this model's backbone.

keras.applications' ResNet v1 puts the stride on the first 1x1 conv of a block, gives every conv a
bias, uses BN epsilon 1.001e-5, and was trained on Caffe-style input (BGR, mean subtraction, no
std). The converted model is built with `stride_in_1x1=True`; each conv bias is folded into the
following BatchNorm (and the epsilon difference into gamma), and `input_convention="caffe"` is
recorded in its config so the pipeline normalizes frames that way (see `INPUT_CONVENTIONS`).

Layer names: `conv1_conv`/`conv1_bn`, `conv{stage}_block{n}_{0,1,2,3}_{conv,bn}` (0 = shortcut,
1..3 = branch2a..2c), `predictions` (the ImageNet classifier; softmax is not part of the logits).
Files: the legacy HDF5 layout Keras downloads (`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`,
root attribute `layer_names`, or a whole-model `.h5` with a `model_weights` group), or a Keras 3
`.weights.h5` saved from a `keras.applications.ResNet50/101` model.
"""

import re

import numpy as np

from tsm_keras.convert.converted import (ConversionError, ConvertedWeights, canonical_block,
                                         fold_bias_into_batchnorm, infer_backbone)
from tsm_keras.models.resnet import BN_EPSILON

KERAS_APPLICATIONS_BN_EPSILON = 1.001e-5
KERAS_APPLICATIONS_BUILD = dict(stride_in_1x1=True, input_convention="caffe")
_LAYER = re.compile(r"^conv(\d)_block(\d+)_([0-3])_(conv|bn)$")
_BRANCH = {"0": "branch1", "1": "branch2a", "2": "branch2b", "3": "branch2c"}
_BN_ORDER = ("gamma", "beta", "moving_mean", "moving_variance")


def _text(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_keras_applications_h5(path):
    """`.h5` -> `{layer name: {weight name: array}}` (weight names like `kernel`, `bias`, `gamma`)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "layers" in f and "layer_names" not in f.attrs:
                return _read_keras3_weights(path, f)
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ConversionError(f"{path}: an HDF5 file without Keras layer names.")
            layers = {}
            for layer_name in (_text(n) for n in group.attrs["layer_names"]):
                weights = {}
                for weight_name in (_text(n) for n in group[layer_name].attrs.get("weight_names", [])):
                    short = weight_name.split("/")[-1].split(":")[0]
                    weights[short] = np.asarray(group[layer_name][weight_name])
                if weights:
                    layers[layer_name] = weights
            return layers
    except OSError as error:
        raise ConversionError(f"{path}: not a readable HDF5 file: {error}") from None


def _read_keras3_weights(path, f):
    """Keras 3 `.weights.h5` stores layers by class-based names, so rebuild the keras.applications model."""
    import keras

    names = list(f["layers"].keys())
    convs = [n for n in names if n.startswith("conv2d")]
    if not convs or "vars/1" not in f["layers"][convs[0]]:
        raise ConversionError(f"{path}: a Keras .weights.h5 that is not a keras.applications ResNet (its convs "
                              "have no bias); for this project's own weights pass the architecture flags.")
    constructors = {53: keras.applications.ResNet50, 104: keras.applications.ResNet101}
    if len(convs) not in constructors:
        raise ConversionError(f"{path}: {len(convs)} convolutions: not a keras.applications ResNet50/101.")
    dense = [n for n in names if n.startswith("dense")]
    kwargs = dict(weights=None, include_top=bool(dense))
    if dense:
        kwargs["classes"] = int(f["layers"][dense[0]]["vars"]["0"].shape[1])
    else:
        kwargs["input_shape"] = (None, None, 3)
    model = constructors[len(convs)](**kwargs)
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001
        raise ConversionError(f"{path}: could not load it into keras.applications {model.name}: {error}") from None
    return {layer.name: {w.path.split("/")[-1]: np.asarray(w) for w in layer.weights}
            for layer in model.layers if layer.weights}


def convert_keras_applications(layers, source="<h5>"):
    """`{layer: {weight: array}}` -> ConvertedWeights (biases folded into BN, epsilon matched)."""
    convs, norms, head, unknown, blocks = {}, {}, None, [], {}
    for name, weights in layers.items():
        if name == "predictions":
            head = [weights["kernel"], weights["bias"]]
            continue
        if name in ("conv1_conv", "conv1_bn"):
            where, kind = (None, None, None), name[-4:]
        else:
            match = _LAYER.match(name)
            if not match:
                unknown.append(name)
                continue
            stage, block, branch, kind = match.groups()
            where = (int(stage), int(block) - 1, _BRANCH[branch])
            blocks.setdefault(where[0], set()).add(where[1])
        if kind == "conv":
            convs[where] = weights
        else:
            norms[where] = weights
    if unknown:
        raise ConversionError(f"{source}: layers that are not a keras.applications ResNet: "
                              f"{', '.join(sorted(unknown)[:20])}.")
    if not convs:
        raise ConversionError(f"{source}: no keras.applications ResNet layers (conv1_conv ...) found.")
    missing_bn = sorted(str(w) for w in set(convs) ^ set(norms))
    if missing_bn:
        raise ConversionError(f"{source}: convs and BatchNorms do not pair up at {', '.join(missing_bn)}.")

    kind = "bottleneck" if any(branch == "branch2c" for _, _, branch in convs) else "basic"
    stage_blocks = {stage: max(indices) + 1 for stage, indices in blocks.items()}
    backbone = infer_backbone(stage_blocks, kind, source)

    converted = {}
    for where, conv in convs.items():
        norm = norms[where]
        missing = [k for k in _BN_ORDER if k not in norm] + [k for k in ("kernel",) if k not in conv]
        if missing:
            raise ConversionError(f"{source}: {where}: missing {', '.join(missing)}.")
        stage, index, branch = where
        if stage is None:
            conv_name, bn_name = "conv1", "bn_conv1"
        else:
            block = canonical_block(stage, index, stage_blocks)
            conv_name, bn_name = f"res{block}_{branch}", f"bn{block}_{branch}"
        converted[conv_name] = [np.asarray(conv["kernel"], np.float32)]
        converted[bn_name] = fold_bias_into_batchnorm(conv.get("bias"), *(norm[k] for k in _BN_ORDER),
                                                      source_epsilon=KERAS_APPLICATIONS_BN_EPSILON,
                                                      target_epsilon=BN_EPSILON)
    notes = [f"{source}: keras.applications {backbone} weights (stride on the first 1x1, conv biases folded "
             "into BatchNorm); they expect Caffe-style frames (BGR, mean subtraction, no std): "
             "input_convention='caffe' is recorded in the model config."
             + (" Head: the ImageNet classifier (logits, no softmax)." if head else "")]
    return ConvertedWeights(source=source, format="keras-applications", layers=converted, head=head,
                            build=dict(KERAS_APPLICATIONS_BUILD, backbone=backbone), notes=notes)
