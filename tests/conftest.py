import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tsm_keras  # noqa: E402,F401  (first: oneDNN on before TensorFlow loads, as for every user; subprocesses inherit it)
import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under float32, whatever policy it sets."""
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")
