import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tsm_keras  # noqa: E402,F401  (first: oneDNN on before TensorFlow loads, as for every user; subprocesses inherit it)
import keras  # noqa: E402
import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import trained_looking  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under float32, whatever policy it sets."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def tiny_tsm():
    """One small TSM for the whole test run (ResNet-10, T=2, 32 px, 3 classes, raw 0-255 input), with
    non-trivial BatchNorm statistics. Built under float32; tests must not train or change it."""
    keras.mixed_precision.set_dtype_policy("float32")
    model = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet10", image_size=32, normalize_input=True)
    return trained_looking(model)


@pytest.fixture(scope="session")
def tiny_pptsm():
    """A small PP-TSM for the export/predict/eval paths (ResNet-50-vd, T=2, 40 px: stages 3-5 are 5, 3 and 2 px,
    so the ceil-mode shortcut pools of stages 4 and 5 meet odd sizes; 3 classes, raw 0-255 input, Paddle's
    shift), with non-trivial BatchNorm statistics. Built under float32; tests must not train or change it."""
    keras.mixed_precision.set_dtype_policy("float32")
    model = tsm_keras.build_tsm(3, num_segments=2, backbone="resnet50_vd", convention="paddle", image_size=40,
                                dropout=0.0, normalize_input=True)
    return trained_looking(model)


@pytest.fixture(scope="session")
def tiny_clips():
    """uint8-valued float32 clips `[2, 2, 32, 32, 3]` for `tiny_tsm`."""
    import numpy as np

    return np.random.default_rng(1).integers(0, 256, (2, 2, 32, 32, 3)).astype(np.float32)
