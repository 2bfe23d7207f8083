"""Moved to `tsm_keras.runtime` (the tf.distribute strategy); kept importable for one release."""

from tsm_keras.runtime import STRATEGIES, build_strategy, is_chief  # noqa: F401
