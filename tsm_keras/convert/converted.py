"""The common form every source checkpoint is converted to, and how it is assigned to a TSM model.

A reader (`paddle.py`, `pytorch.py`, `keras_applications.py`) turns a file into `ConvertedWeights`:
arrays already in Keras layout, keyed by this project's Caffe/Paddle-style layer names (`conv1`,
`bn_conv1`, `res2a_branch2a`, `bn2a_branch2a`, ..., `fc`). `assign_converted` then checks them
against a model (missing and unknown layers, shapes, head class count) and sets the weights.
"""

import dataclasses
import logging
from typing import Dict, List, Optional

import keras
import numpy as np

from tsm_keras.errors import UserError
from tsm_keras.models.resnet import BACKBONES, RESNET_SPECS, block_name

logger = logging.getLogger("tsm_keras.convert")

# Build arguments a checkpoint fixes by how it was trained; a model built otherwise computes
# something else with the same weights.
STRUCTURAL_KEYS = ("backbone", "stride_in_1x1")
BEHAVIOURAL_KEYS = ("convention", "shift_place", "shift_every", "input_convention")


class ConversionError(UserError, ValueError):
    """A checkpoint that cannot be converted or does not fit the model; the message says why and what to do."""


@dataclasses.dataclass
class ConvertedWeights:
    """Weights of one checkpoint in Keras layout.

    Attributes:
        source: the file it came from (for messages).
        format: "paddle", "pytorch", "keras-applications" or "keras".
        layers: backbone layer name -> weights in Keras order: Conv2D `[kernel HWIO]`, DepthwiseConv2D
            `[kernel [h, w, channels, 1]]`,
            BatchNormalization `[gamma, beta, moving_mean, moving_variance]`.
        head: `[kernel [features, classes], bias [classes]]` of the classifier, or None
            (backbone-only checkpoints, e.g. ImageNet pretraining).
        build: build_tsm arguments the weights imply (backbone, convention, stride_in_1x1, ...).
        notes: facts worth telling the user (ignored keys, inferred settings).
    """

    source: str
    format: str
    layers: Dict[str, List[np.ndarray]]
    head: Optional[List[np.ndarray]] = None
    build: dict = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self):
        return None if self.head is None else int(self.head[0].shape[1])


def linear_head(parts, layout, source):
    """The classifier `[kernel [features, classes], bias [classes]]` from a checkpoint's `{"weight", "bias"}`, or None.

    `layout`: "paddle" (Paddle's Linear stores `[in, out]`) or "torch" (`[out, in]`, transposed here). A head with
    one of the two, or whose bias does not match its kernel, is refused with the shapes found.
    """
    if not parts:
        return None
    if set(parts) != {"weight", "bias"}:
        raise ConversionError(f"{source}: the classifier has only its {', '.join(sorted(parts))}; need weight and "
                              "bias.")
    weight, bias = np.asarray(parts["weight"]), np.asarray(parts["bias"])
    kernel = np.transpose(weight) if layout == "torch" else weight
    if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
        expected = "[out, in], [out]" if layout == "torch" else "[in, out], [out]"
        raise ConversionError(f"{source}: classifier weight {weight.shape} and bias {bias.shape} are not a "
                              f"{'PyTorch' if layout == 'torch' else 'Paddle'} Linear ({expected}).")
    return [kernel, bias]


def infer_backbone(stage_blocks, kind, source):
    """`{stage: number of blocks}` and block kind -> "resnet50" etc., or a ConversionError."""
    counts = tuple(stage_blocks.get(stage, 0) for stage in (2, 3, 4, 5))
    for depth, spec in RESNET_SPECS.items():
        if spec == (kind, counts):
            return f"resnet{depth}"
    raise ConversionError(
        f"{source}: found {kind} blocks per stage {counts} (stages 2-5), which is none of the supported "
        f"ResNets {sorted(BACKBONES)}: {{{', '.join(f'{d}: {s}' for d, s in RESNET_SPECS.items())}}}.")


def stage_block_index(stage, suffix, source):
    """Block suffix `a`, `b`, ... or `a`, `b1`, `b2`, ... (ResNet-101 stage 4) -> 0-based index."""
    if suffix == "a":
        return 0
    if len(suffix) > 1 and suffix[0] == "b" and suffix[1:].isdigit():
        return int(suffix[1:])
    if len(suffix) == 1 and "b" <= suffix <= "z":
        return ord(suffix) - ord("a")
    raise ConversionError(f"{source}: cannot read block name res{stage}{suffix}.")


def resnet_layers(convs, norms, blocks, names, source):
    """Shared by the PaddleVideo and PyTorch readers: `(backbone, stage_blocks, layers)`.

    `convs` maps a block position to its OIHW kernel, `norms` to its BatchNorm arrays, `blocks`
    {stage: block indices seen}; `names(where, stage_blocks)` gives our (conv, bn) layer names.
    Kernels become HWIO.
    """
    kind = "bottleneck" if any(branch == "branch2c" for _, _, branch in convs) else "basic"
    stage_blocks = {stage: max(indices) + 1 for stage, indices in blocks.items()}
    backbone = infer_backbone(stage_blocks, kind, source)
    layers = {}
    for where, kernel in convs.items():
        layers[names(where, stage_blocks)[0]] = [np.transpose(kernel, (2, 3, 1, 0))]
    for where, values in norms.items():
        layers[names(where, stage_blocks)[1]] = list(values)
    return backbone, stage_blocks, layers


def canonical_block(stage, index, stage_blocks):
    """Our name for a block, which depends on how many blocks its stage has (a..f or a, b1..b22)."""
    return block_name(stage, index, stage_blocks[stage])


def fold_bias_into_batchnorm(bias, gamma, beta, mean, variance, source_epsilon, target_epsilon):
    """BN(conv(x) + bias) with `source_epsilon` == BN'(conv(x)) with `target_epsilon`.

    The bias moves into the moving mean; the epsilon difference into gamma (computed in float64).
    """
    mean = np.asarray(mean, np.float64) - (0.0 if bias is None else np.asarray(bias, np.float64))
    variance = np.asarray(variance, np.float64)
    gamma = np.asarray(gamma, np.float64) * np.sqrt((variance + target_epsilon) / (variance + source_epsilon))
    return [gamma.astype(np.float32), np.asarray(beta, np.float32), mean.astype(np.float32),
            variance.astype(np.float32)]


def model_weight_layers(model):
    """name -> layer for every Conv2D / DepthwiseConv2D / BatchNormalization of the backbone, and the `fc` head
    (or None)."""
    backbone = {}
    head = None
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization)):
            backbone[layer.name] = layer
        elif isinstance(layer, keras.layers.Dense) and layer.name == "fc":
            head = layer
    return backbone, head


def _list(names, limit=12):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_build(model, converted, strict=True):
    """Compare the model's build arguments with the ones the weights imply.

    Structural differences (backbone, where the stride sits) are always errors; behavioural ones
    (shift convention, input convention) are errors when `strict`, messages otherwise (fine-tuning
    adapts to them).
    """
    messages = []
    for key, value in converted.build.items():
        have = getattr(model, key, None)
        if have is None or have == value:
            continue
        text = (f"{converted.source}: the weights need {key}={value!r} but the model was built with "
                f"{key}={have!r}")
        if key in STRUCTURAL_KEYS or (strict and key in BEHAVIOURAL_KEYS):
            raise ConversionError(text + f"; build the model with {key}={value!r} (or use "
                                  "tsm_keras.convert.load_model_from_source, which does).")
        messages.append(text + " (kept: fine-tuning will adapt).")
    return messages


def assign_converted(model, converted, skip_mismatched_head=False, strict_build=True):
    """Set `converted` into `model`; returns the list of messages worth showing.

    Raises ConversionError, listing names, when backbone layers are missing or unknown, when a
    shape differs, or when the head's class count differs and `skip_mismatched_head` is False.
    A checkpoint without head leaves the model's head at its initialization.
    """
    messages = list(converted.notes)
    messages += check_build(model, converted, strict=strict_build)
    layers, head_layer = model_weight_layers(model)
    missing = set(layers) - set(converted.layers)
    unknown = set(converted.layers) - set(layers)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"model layers with no weights in the file: {_list(missing)}")
        if unknown:
            parts.append(f"converted layers the model does not have: {_list(unknown)}")
        raise ConversionError(f"{converted.source} ({converted.format}) does not match the model "
                              f"{model.name}: " + "; ".join(parts) + ". Check --backbone and the file.")

    mismatched = []
    for name, layer in layers.items():
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(np.shape(a)) for a in converted.layers[name]]
        if expected != got:
            mismatched.append(f"{name}: model {expected}, file {got}")
    if mismatched:
        raise ConversionError(f"{converted.source}: shape mismatches: " + "; ".join(mismatched[:12])
                              + (f" ... ({len(mismatched)} in all)" if len(mismatched) > 12 else ""))

    for name, layer in layers.items():
        layer.set_weights([np.asarray(a, np.float32) for a in converted.layers[name]])

    if converted.head is None:
        messages.append(f"{converted.source} has no classifier: the head `fc` keeps its initialization.")
    else:
        kernel, bias = converted.head
        want = tuple(head_layer.kernel.shape)
        if kernel.shape[0] != want[0]:
            raise ConversionError(f"{converted.source}: the classifier takes {kernel.shape[0]} features, "
                                  f"the model's {want[0]}.")
        if kernel.shape[1] != want[1]:
            text = (f"{converted.source}: the classifier has {kernel.shape[1]} classes, the model "
                    f"{want[1]}")
            if not skip_mismatched_head:
                raise ConversionError(text + f"; pass num_classes={kernel.shape[1]} (--num_classes) to keep "
                                      "it, or skip the head to fine-tune (skip_mismatched_head=True, "
                                      "what --pretrained does).")
            messages.append(text + ": head skipped, it keeps its initialization (fine-tuning).")
        else:
            head_layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    for message in messages:
        logger.info(message)
    return messages


def converted_from_model(model, source):
    """The weights of one of this project's TSM models, in the converted form (for .keras sources)."""
    layers, head = model_weight_layers(model)
    build = {key: getattr(model, key) for key in STRUCTURAL_KEYS + BEHAVIOURAL_KEYS if hasattr(model, key)}
    return ConvertedWeights(
        source=source, format="keras",
        layers={name: [np.asarray(w) for w in layer.get_weights()] for name, layer in layers.items()},
        head=None if head is None else [np.asarray(w) for w in head.get_weights()], build=build)
