"""ONNX export (tf2onnx, the `export` extra) for ONNX Runtime and TensorRT.

Graph: input `clips` float32 `[batch, T, S, S, 3]` RGB on the 0-255 scale, centre-cropped (the
SavedModel's `serving_clips` input); outputs `logits` and `probabilities` float32 `[batch, classes]`.
Normalization is inside. The temporal shift is Slice, Pad and Concat on the NCHW tensors between the
convs (`nchw_temporal_shifts` rewrites what tf2onnx makes of the Keras layer), so the graph holds only
standard ONNX operators (`check_standard_ops`) and TensorRT builds an engine from it.
"""

import tensorflow as tf

from tsm_keras.models.inference import ClipClassifier, inference_form, model_input_spec

DEFAULT_OPSET = 17
# Operators whose presence we accept: all in the default ai.onnx domain, all supported by
# TensorRT's ONNX parser. Clip is MobileNetV2's ReLU6 (constant min 0 and max 6).
STANDARD_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "Identity", "LeakyRelu", "MatMul", "Max", "MaxPool", "Mul", "Pad",
    "ReduceMean", "Relu", "Reshape", "Shape", "Slice", "Softmax", "Squeeze", "Sub", "Transpose", "Unsqueeze",
})


def _require_tf2onnx():
    try:
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ImportError("ONNX export needs tf2onnx and onnx: pip install 'tsm-keras[export]' "
                          "(tf2onnx, onnx, onnxruntime).") from error
    import warnings

    try:  # tf2onnx 1.17 predates NumPy 2; Keras ships the patch it uses for its own ONNX export.
        with warnings.catch_warnings():  # its `hasattr(np, "object")` probe warns on NumPy 2
            warnings.simplefilter("ignore", FutureWarning)
            from keras.src.export.tf2onnx_lib import patch_tf2onnx

            patch_tf2onnx()
    except ImportError:
        pass
    return tf2onnx


def convert_function(function, input_signature, opset, output_path=None):
    """`tf2onnx.convert.from_function`, with its graph optimizers run in place; returns the ONNX proto.

    By default tf2onnx gives each optimizer pass a deep copy of the whole graph, weights included, so
    that a failing pass can be skipped: 30 % of a ResNet-50 export (11.9 s -> 8.2 s, Zen 4). Its switch is
    the `TF2ONNX_CATCH_ERRORS` environment variable, read at each conversion (in tf2onnx 1.17 its presence
    alone turns the copies off, whatever its value: it compares the variable's name to "TRUE"). Set here for
    the conversion only, unless the user set it; if a pass fails in place, the conversion runs again the
    careful way, which skips that pass as tf2onnx does by default.
    """
    import logging
    import os

    tf2onnx = _require_tf2onnx()

    def convert():
        return tf2onnx.convert.from_function(function, input_signature=input_signature, opset=opset,
                                             output_path=output_path)[0]

    key = "TF2ONNX_CATCH_ERRORS"
    if key in os.environ:  # the user's choice
        return convert()
    os.environ[key] = "FALSE"
    try:
        return convert()
    except Exception as error:  # noqa: BLE001  a pass failed on the graph itself: start over with copies
        logging.getLogger(__name__).warning("tf2onnx: an optimizer failed in place (%s: %s); converting again "
                                            "with a copy of the graph per optimizer", type(error).__name__, error)
    finally:
        del os.environ[key]
    return convert()


def export_onnx(model, path, opset=DEFAULT_OPSET, batch_size=None, fold_batchnorm=True):
    """Write `model` as ONNX to `path` (a `.onnx` file); return `path`.

    `batch_size=None` keeps the batch dimension dynamic; `fold_batchnorm` exports the inference
    form (BatchNorm folded into the convs).
    """
    model = inference_form(model, fold_batchnorm)
    _require_tf2onnx()
    num_segments, image_size = model_input_spec(model)
    if image_size is None:
        raise ValueError("ONNX export needs a model built with a fixed image_size.")
    classifier = ClipClassifier(model)
    spec = tf.TensorSpec([batch_size, num_segments, image_size, image_size, 3], tf.float32, name="clips")

    @tf.function(input_signature=[spec])
    def clips_to_scores(clips):
        logits = classifier(clips)
        return {"logits": tf.identity(logits, name="logits"),
                "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities")}

    import onnx  # installed with tf2onnx

    proto = convert_function(clips_to_scores, [spec], opset)
    nchw_temporal_shifts(proto, num_segments)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _attributes(node):
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _shift_ranges(taps):
    """`[(first, stop, offset), ...]` over the channels of a shift conv's taps `[C, 3]` (0/1, at most one
    1 a channel: tap 0 takes frame t-1, 1 frame t, 2 frame t+1), or None if the taps are not a shift."""
    import numpy as np

    if not np.isin(taps, (0.0, 1.0)).all() or not (taps.sum(axis=1) == 1).all():
        return None
    offsets = taps.argmax(axis=1) - 1
    ranges, first = [], 0
    for c in range(1, len(offsets) + 1):
        if c == len(offsets) or offsets[c] != offsets[first]:
            ranges.append((first, c, int(offsets[first])))
            first = c
    return ranges


def nchw_temporal_shifts(model, num_segments):
    """Rewrite, in place, each temporal shift of a tf2onnx graph into Slice/Pad/Concat on NCHW tensors.

    tf2onnx turns the shift (a 3x1 depthwise conv over `[N, T, H*W, C]` in TensorFlow's NHWC) into
    Transpose -> Reshape -> Transpose -> Conv(group=C) -> Transpose -> Reshape -> Transpose between the
    NCHW convs around it: four full transposes a block, which ONNX Runtime and OpenVINO execute (OpenVINO
    served R50 in 0.31 s per clip from that graph against 0.18 s from the same network exported by
    PyTorch, whose shift is slices and a concat). Here each such chain becomes a reshape of the NCHW
    tensor to `[N, T, C, H, W]`, one Slice (and a Pad of one frame for the shifted groups) per channel
    group, a Concat over channels, and the reshape back: the same values, standard operators only.
    Chains that do not match exactly (other consumers in between, other taps) are left as they are.
    Returns the number of shifts rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    graph_outputs = {output.name for output in graph.output}

    def sole_consumer(name, op_type, perm=None):
        users = consumers.get(name, [])
        if len(users) != 1 or name in graph_outputs or users[0].op_type != op_type:
            return None
        if perm is not None and _attributes(users[0]).get("perm") != perm:
            return None
        return users[0]

    def producer(name, op_type, perm=None, shared=False):
        node = producers.get(name)
        if node is None or node.op_type != op_type or (len(consumers.get(name, [])) != 1 and not shared):
            return None
        if perm is not None and _attributes(node).get("perm") != perm:
            return None
        return node

    def constant(name, values):
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    t = int(num_segments)
    replaced, count = {}, 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) != 2 or conv.input[1] not in initializers:
            continue
        attributes = _attributes(conv)
        kernel = numpy_helper.to_array(initializers[conv.input[1]])
        channels = kernel.shape[0]
        if (attributes.get("kernel_shape") != [3, 1] or attributes.get("group") != channels
                or kernel.shape != (channels, 1, 3, 1) or attributes.get("pads", [1, 0, 1, 0]) != [1, 0, 1, 0]
                or attributes.get("strides", [1, 1]) != [1, 1] or attributes.get("dilations", [1, 1]) != [1, 1]):
            continue
        ranges = _shift_ranges(kernel[:, 0, :, 0])
        before = producer(conv.input[0], "Transpose", [0, 3, 1, 2])
        reshape_in = before and producer(before.input[0], "Reshape")
        # The NHWC tensor may feed other nodes too (the residual branch): that transpose then stays.
        to_nhwc = reshape_in and producer(reshape_in.input[0], "Transpose", [0, 2, 3, 1], shared=True)
        after = sole_consumer(conv.output[0], "Transpose", [0, 2, 3, 1])
        reshape_out = after and sole_consumer(after.output[0], "Reshape")
        to_nchw = reshape_out and sole_consumer(reshape_out.output[0], "Transpose", [0, 3, 1, 2])
        if not (ranges and to_nhwc and to_nchw):
            continue
        prefix = f"{conv.name}/nchw_shift"
        source, result = to_nhwc.input[0], to_nchw.output[0]
        nodes = [helper.make_node("Shape", [source], [f"{prefix}/shape"], name=f"{prefix}/shape"),
                 helper.make_node("Slice", [f"{prefix}/shape", constant(f"{prefix}/one", [1]),
                                            constant(f"{prefix}/four", [4])], [f"{prefix}/chw"], name=f"{prefix}/chw"),
                 helper.make_node("Concat", [constant(f"{prefix}/n_t", [-1, t]), f"{prefix}/chw"],
                                  [f"{prefix}/clip_shape"], axis=0, name=f"{prefix}/clip_shape"),
                 helper.make_node("Reshape", [source, f"{prefix}/clip_shape"], [f"{prefix}/clips"],
                                  name=f"{prefix}/clips")]
        parts = []
        for index, (first, stop, offset) in enumerate(ranges):
            part = f"{prefix}/part{index}"
            if offset == 0:
                inputs = [f"{prefix}/clips", constant(f"{part}/starts", [first]), constant(f"{part}/ends", [stop]),
                          constant(f"{part}/axes", [2])]
                nodes.append(helper.make_node("Slice", inputs, [part], name=part))
            else:  # offset +1: frame t takes t+1 (the last frame gets zeros); -1: t takes t-1
                frames = (1, t) if offset > 0 else (0, t - 1)
                pads = [0, 0, 0, 0, 0, 0, 1, 0, 0, 0] if offset > 0 else [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
                nodes.append(helper.make_node(
                    "Slice", [f"{prefix}/clips", constant(f"{part}/starts", [frames[0], first]),
                              constant(f"{part}/ends", [frames[1], stop]), constant(f"{part}/axes", [1, 2])],
                    [f"{part}/frames"], name=f"{part}/frames"))
                nodes.append(helper.make_node("Pad", [f"{part}/frames", constant(f"{part}/pads", pads)], [part],
                                              mode="constant", name=part))
            parts.append(part)
        nodes.append(helper.make_node("Concat", parts, [f"{prefix}/shifted"], axis=2, name=f"{prefix}/shifted"))
        nodes.append(helper.make_node("Reshape", [f"{prefix}/shifted", f"{prefix}/shape"], [result],
                                      name=f"{prefix}/frames_out"))
        for node in (reshape_in, before, conv, after, reshape_out, to_nchw):
            replaced[id(node)] = []
        replaced[id(to_nhwc)] = [to_nhwc] + nodes  # kept while other nodes read it; pruned below if not
        count += 1
    if not count:
        return 0
    kept = []
    for node in graph.node:
        kept.extend(replaced.get(id(node), [node]))
    _cancel_transpose_pairs(kept, graph_outputs)
    _keep_live(graph, kept)
    return count


def _cancel_transpose_pairs(nodes, graph_outputs):
    """Where a Transpose reads a Transpose with the inverse permutation, read the first one's input instead."""
    producers = {out: node for node in nodes for out in node.output}
    alias = {}
    for node in nodes:
        first = producers.get(node.input[0]) if node.op_type == "Transpose" else None
        if first is None or first.op_type != "Transpose" or node.output[0] in graph_outputs:
            continue
        outer, inner = _attributes(first).get("perm"), _attributes(node).get("perm")
        if outer and inner and len(outer) == len(inner) and [outer[i] for i in inner] == list(range(len(inner))):
            alias[node.output[0]] = first.input[0]
    for node in nodes:
        for index, name in enumerate(node.input):
            while name in alias:
                name = alias[name]
            node.input[index] = name


def _keep_live(graph, nodes):
    """Set `graph`'s nodes to the `nodes` that lead to an output, and drop initializers nothing reads."""
    needed = {output.name for output in graph.output}
    live = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    live.reverse()
    del graph.node[:]
    graph.node.extend(live)
    unused = [tensor for tensor in graph.initializer if tensor.name not in needed]
    for tensor in unused:
        graph.initializer.remove(tensor)


def onnx_op_types(path):
    """Sorted `(domain, op_type)` pairs of every node in the ONNX graph at `path`."""
    import onnx

    graph = onnx.load(str(path)).graph
    return sorted({(node.domain or "ai.onnx", node.op_type) for node in graph.node})


def check_standard_ops(path):
    """Raise ValueError if the graph has a node outside the default domain or `STANDARD_OPS`."""
    unexpected = [f"{domain}::{op}" for domain, op in onnx_op_types(path)
                  if domain != "ai.onnx" or op not in STANDARD_OPS]
    if unexpected:
        raise ValueError(f"{path}: non-standard or unvetted ONNX ops {unexpected}; TensorRT may not parse them.")
    return [op for _, op in onnx_op_types(path)]


def onnxruntime_session(path, threads=None):
    """A CPU `onnxruntime.InferenceSession` for `path`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
