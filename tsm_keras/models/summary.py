"""`--mode=summary`: build the configured model and print its Keras summary."""

import numpy as np

from tsm_keras.models.tsm import build_tsm


def print_summary(config):
    model = build_tsm(**config.model_kwargs())
    model.summary(line_length=110)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    print(f"{model.name}: {config.num_segments} segments x {config.image_size}px, "
          f"{trainable:,} trainable parameters")
