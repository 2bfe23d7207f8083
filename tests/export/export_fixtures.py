"""Constants and helpers of the export tests (imported by conftest.py and the tests)."""

import numpy as np

NUM_SEGMENTS = 4
IMAGE_SIZE = 64
SCALE_SIZE = 72
LABELS = ["walking", "running", "jumping", "waving", "sitting"]


def scale_head(model, seed=0):
    """Give the classifier trained-scale weights: logits O(1) instead of the N(0, 0.001) init's
    O(1e-3), so that parity tolerances mean something."""
    fc = model.get_layer("fc")
    kernel, bias = fc.get_weights()
    rng = np.random.default_rng(seed)
    fc.set_weights([rng.normal(0.0, 0.05, kernel.shape).astype("float32"),
                    rng.normal(0.0, 1.0, bias.shape).astype("float32")])
    return model


