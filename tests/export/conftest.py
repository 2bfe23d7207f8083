"""Tiny trained-scale TSMs shared by the export tests: ResNet-10 (and MobileNetV2), 4 segments, 64 px, 5 classes."""

import numpy as np
import pytest

from export_fixtures import IMAGE_SIZE, LABELS, NUM_SEGMENTS, scale_head


@pytest.fixture(scope="session")
def tiny_tsm():
    """Built as evaluation builds models (`normalize_input=True`: raw 0-255 frames in)."""
    import keras

    from tsm_keras import build_tsm

    keras.utils.set_random_seed(0)
    model = build_tsm(len(LABELS), num_segments=NUM_SEGMENTS, backbone="resnet10", image_size=IMAGE_SIZE,
                      dropout=0.0, normalize_input=True)
    return scale_head(model)


@pytest.fixture(scope="session")
def clips():
    """float32 [2, T, 64, 64, 3] RGB 0-255."""
    return np.random.default_rng(1).uniform(0, 255, (2, NUM_SEGMENTS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")


@pytest.fixture(scope="session")
def keras_logits(tiny_tsm, clips):
    return tiny_tsm(clips, training=False).numpy()


@pytest.fixture(scope="session")
def tiny_mobilenet_tsm():
    """The official MobileNetV2-TSM layout with random BatchNorm statistics (depthwise BatchNorms fold on export)."""
    import keras

    from tsm_keras import build_tsm

    keras.utils.set_random_seed(0)
    model = build_tsm(len(LABELS), num_segments=NUM_SEGMENTS, backbone="mobilenetv2", image_size=IMAGE_SIZE,
                      dropout=0.0, normalize_input=True)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.2, shape), rng.normal(0, 0.2, shape),
                               rng.uniform(0.5, 2.0, shape)])
    return scale_head(model)
