"""Learning-rate schedule values at the recipe's boundary epochs, linear batch scaling, warmup, cosine."""

import math

import numpy as np
import pytest

from tsm_keras.config import Config
from tsm_keras.training.schedules import EpochSchedule, build_schedule, scaled_lr_values


def _lr(schedule, step):
    return float(schedule(step))


def test_k400_piecewise_values_at_boundary_epochs():
    config = Config()  # [20, 40] -> [0.02, 0.002, 0.0002] for a global batch of 128
    schedule = build_schedule(config, steps_per_epoch=10)
    assert _lr(schedule, 0) == pytest.approx(0.02)
    assert _lr(schedule, 199) == pytest.approx(0.02)   # last step of epoch 19
    assert _lr(schedule, 200) == pytest.approx(0.002)  # first step of epoch 20
    assert _lr(schedule, 399) == pytest.approx(0.002)
    assert _lr(schedule, 400) == pytest.approx(0.0002)
    assert _lr(schedule, 499) == pytest.approx(0.0002)


def test_ucf101_recipe_and_linear_batch_scaling():
    config = Config(lr=0.001, lr_boundaries=[10, 20], lr_values=[0.001, 0.0001, 0.00001], lr_batch_size=64,
                    batch_size=16, epochs=25)
    np.testing.assert_allclose(scaled_lr_values(config), [0.00025, 0.000025, 0.0000025])
    schedule = build_schedule(config, steps_per_epoch=3)
    assert _lr(schedule, 29) == pytest.approx(0.00025)
    assert _lr(schedule, 30) == pytest.approx(0.000025)
    assert _lr(schedule, 60) == pytest.approx(0.0000025)
    # --lr rescales the whole list; --lr_batch_size=0 turns batch scaling off.
    np.testing.assert_allclose(scaled_lr_values(Config(lr=0.01, batch_size=8, lr_batch_size=0)), [0.01, 0.001, 0.0001])


def test_warmup_and_cosine():
    schedule = EpochSchedule("cosine", [0.1], [], steps_per_epoch=10, epochs=11, warmup_epochs=1)
    assert _lr(schedule, 0) == pytest.approx(0.01)
    assert _lr(schedule, 9) == pytest.approx(0.1)
    assert _lr(schedule, 10) == pytest.approx(0.1)
    assert _lr(schedule, 60) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr(schedule, 110) == pytest.approx(0.0, abs=1e-9)


def test_bad_lists_are_explained():
    with pytest.raises(ValueError, match="one more entry"):
        scaled_lr_values(Config(lr_boundaries=[10], lr_values=[0.1, 0.01, 0.001]))
