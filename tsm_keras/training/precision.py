"""Precision policies: float32, mixed_float16 (dynamic loss scaling), mixed_bfloat16.

The model keeps float32 variables and float32 logits (its SegmentConsensus runs in float32);
softmax and the loss are computed from those. Loss scaling lives in the optimizer
(`PaddleMomentum(dynamic_loss_scale=True)`), so it sees the all-reduced gradients.
"""

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(precision):
    """Set Keras' global dtype policy; call before building the model."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r} "
                         "(--amp is the same as --precision=mixed_float16).")
    keras.config.set_dtype_policy(precision)
    return precision
