"""Every layer of tsm_keras.layers and the TSM model through tests/harness.py."""

import keras
import numpy as np
import pytest

import tsm_keras
from harness import POLICIES, check_model_saving, check_precision, check_serialization
from tsm_keras.layers import FoldTime, FrameNormalization, FusedBatchNormalization, SegmentConsensus, TemporalShift

RNG = np.random.default_rng(0)
LAYERS = {
    "temporal_shift": (lambda: TemporalShift(4, shift_div=4), RNG.normal(size=(8, 3, 3, 16))),
    "temporal_shift_paddle_unidirectional": (
        lambda: TemporalShift(4, direction="unidirectional", convention="paddle"), RNG.normal(size=(8, 3, 3, 16))),
    "frame_normalization": (lambda: FrameNormalization(), RNG.uniform(0, 255, size=(4, 5, 5, 3))),
    "fold_time": (lambda: FoldTime(), RNG.normal(size=(2, 4, 3, 3, 8))),
    "segment_consensus": (lambda: SegmentConsensus(4), RNG.normal(size=(8, 10))),
    "fused_batchnorm": (lambda: FusedBatchNormalization(epsilon=1e-5, momentum=0.9), RNG.normal(1, 2, (4, 5, 5, 8))),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_serialization(name):
    build, inputs = LAYERS[name]
    check_serialization(build(), inputs.astype(np.float32))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_precision(name):
    build, inputs = LAYERS[name]
    # SegmentConsensus runs in float32 whatever the policy: the logits are float32.
    check_precision(build, inputs.astype(np.float32), output_dtype="float32" if name == "segment_consensus" else None)


def test_precision_check_can_fail():
    """A layer that ignores its compute dtype (computes and returns float32) is caught."""
    class Float32Only(keras.layers.Layer):
        def call(self, x):
            return keras.ops.cast(x, "float32") * 2.0

    with pytest.raises(AssertionError, match="output"):
        check_precision(Float32Only, np.ones((2, 3), np.float32), policies=("mixed_bfloat16",))


def test_tsm_serialization_and_saving(tiny_tsm, tiny_clips, tmp_path):
    check_serialization(tiny_tsm, tiny_clips)
    check_model_saving(tiny_tsm, tiny_clips, tmp_path)


@pytest.mark.parametrize("policy", POLICIES)
def test_tsm_precision(tiny_tsm, tiny_clips, policy):
    """Logits stay float32 under every policy, including the pure bfloat16 one the bfloat16 export uses."""
    config, weights = tiny_tsm.get_config(), tiny_tsm.get_weights()

    def build():
        model = tsm_keras.TSM.from_config(config)
        model.set_weights(weights)
        return model

    check_precision(build, tiny_clips, policies=(policy,), output_dtype="float32")
