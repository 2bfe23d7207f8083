"""Moved to `tsm_keras.runtime` (precision, `auto` included); kept importable for one release."""

from tsm_keras.runtime import PRECISIONS, resolve_precision, set_precision  # noqa: F401
