"""Count multiply-accumulates (MACs) from the traced TensorFlow graph of a model.

The papers' "33G FLOPs" for TSM-R50 at 8x224^2 are multiply-accumulates of the convolutions and
the classifier; that is what this counts. The temporal shift is pure data movement (its
depthwise conv has 0/1 taps and exists only to copy), so it is reported apart as `shift_macs`.
"""

import numpy as np
import tensorflow as tf


def _num(shape):
    return int(np.prod([int(d) for d in shape]))


def count_macs(model, input_shape, dtype="float32"):
    """Return `{"macs": int, "shift_macs": int, "by_op": {op_type: macs}}` for one forward pass.

    `input_shape` is fully defined, e.g. `(1, 8, 224, 224, 3)`.
    """
    spec = tf.TensorSpec(input_shape, dtype)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    macs, shift_macs, by_op = 0, 0, {}
    for op in graph.get_operations():
        if op.type in ("Conv2D", "DepthwiseConv2dNative"):
            out = op.outputs[0].shape
            kernel = op.inputs[1].shape
            if op.type == "Conv2D":
                count = _num(out) * int(kernel[0]) * int(kernel[1]) * int(kernel[2])
            else:
                count = _num(out) * int(kernel[0]) * int(kernel[1])
        elif op.type in ("MatMul", "BatchMatMulV2"):
            a = op.inputs[0].shape
            out = op.outputs[0].shape
            transpose_a = op.type == "MatMul" and op.get_attr("transpose_a")
            inner = int(a[-2]) if transpose_a else int(a[-1])
            count = _num(out) * inner
        else:
            continue
        if "_shift" in op.name and op.type == "DepthwiseConv2dNative":
            shift_macs += count
            continue
        macs += count
        by_op[op.type] = by_op.get(op.type, 0) + count
    return {"macs": macs, "shift_macs": shift_macs, "by_op": by_op}
